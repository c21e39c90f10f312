"""The last iterate against tail averages (``average_last``) on the LP gridworlds.

    python benchmarks/gridworld_tail_average.py [--solvers PPOLag FOCOPS] [--seeds 0 1 2]
        [--epochs 150] [--fractions 0.1 0.2 0.33 0.5] [--envs GridWorld-v0 TwoChannelGrid-v0]
        [--out BENCHMARKS.md]

Averaging changes only the weights a run ends with, not its training, so one run per seed gives
the last iterate and the average over every tail fraction: a ``learn`` callback keeps one
``WeightAverage`` of the actor per fraction, over the epochs ``average_last`` would take. The
schedule and the verdict are those of ``gridworld_solvers.py`` (exact evaluation; met: every
cost <= 1.05 x its limit and return >= 0.9 x the LP optimum).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from gridworld_solvers import judge  # beside this script
from report import machine_line, publish
from cmdp.algorithms import ALGORITHMS
from cmdp.algorithms.engine import WeightAverage, in_averaged_tail
from cmdp.envs.gridworld import DEFAULT_COST_LIMIT
from cmdp.envs.two_channel import DEFAULT_COST_LIMITS

LIMITS = {"GridWorld-v0": [DEFAULT_COST_LIMIT], "TwoChannelGrid-v0": list(DEFAULT_COST_LIMITS)}


def run(name: str, env_id: str, seed: int, epochs: int, fractions: list[float]) -> dict:
    """The verdict on the last iterate (key 0.0) and on the average of each tail fraction."""
    limits = LIMITS[env_id]
    algo = ALGORITHMS[name](env_id, cost_limit=limits, seed=seed, run_dir=False, progress_bar=False, lr_schedule="linear")
    total = epochs * algo.config.steps_per_epoch
    actor = list(algo.policy.actor_parameters())
    averages = {f: WeightAverage(actor) for f in fractions}

    def accumulate(algo, info):
        for f, average in averages.items():
            if in_averaged_tail(algo.global_step, total, f):
                average.add(actor)

    algo.learn(total, callback=accumulate)
    verdicts = {0.0: judge(algo, limits)}
    for f, average in averages.items():
        average.put_into(actor)
        verdicts[f] = judge(algo, limits)
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solvers", nargs="+", default=["PPOLag"], choices=list(ALGORITHMS))
    parser.add_argument("--envs", nargs="+", default=list(LIMITS), choices=list(LIMITS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.33, 0.5])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not all(0.0 < f < 1.0 for f in args.fractions):
        parser.error(f"--fractions must lie in (0, 1), got {args.fractions}")
    columns = [0.0, *args.fractions]
    rows = []
    for name in args.solvers:
        for env_id in args.envs:
            runs = [run(name, env_id, seed, args.epochs, args.fractions) for seed in args.seeds]
            cells = []
            for f in columns:
                met = sum(r[f]["meets"] for r in runs)
                worst = max(float(np.max(r[f]["cost_ratio"])) for r in runs)
                cells.append(f"{met}/{len(runs)}, {worst:.2f}")
            rows.append(f"| {name} | {env_id} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    lines = [
        machine_line(),  # after the runs: the solvers set the thread count
        f"Command: `python benchmarks/gridworld_tail_average.py --solvers {' '.join(args.solvers)} --envs "
        f"{' '.join(args.envs)} --seeds {' '.join(map(str, args.seeds))} --epochs {args.epochs} --fractions "
        f"{' '.join(map(str, args.fractions))}`: {args.epochs} epochs of 4096 steps, linearly decaying actor "
        "learning rate, otherwise defaults. Per column: runs that meet the criterion (every cost <= 1.05 x "
        "limit, return >= 0.9 x optimum), then the worst cost / limit over seeds and channels.",
        "",
        "| solver | env | last iterate | " + " | ".join(f"average of last {f:g}" for f in args.fractions) + " |",
        "|---|---|" + "---:|" * len(columns),
        *rows,
    ]
    publish("\n".join(lines), args.out, "gridworld_tail_average", "Tail averaging on the LP gridworlds")


if __name__ == "__main__":
    main()
