"""Every solver on the LP gridworlds, evaluated exactly against the constrained optimum.

    python benchmarks/gridworld_solvers.py [--seeds 0 1 2] [--epochs 90] [--out BENCHMARKS.md]

The schedule is the one the behaviour tests use (epochs of 4096 steps, actor learning rate
decaying linearly). The learned policy is read off as a table and evaluated with the
gridworld's exact linear-system evaluation, so the numbers carry no Monte-Carlo noise. A run
"meets" the criterion of the tests when every channel's cost is at most 5% above its limit and
the return is at least 90% of the LP constrained optimum.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from report import machine_line, update_section  # benchmarks/report.py, beside this script
from cmdp.algorithms import ALGORITHMS
from cmdp.envs.gridworld import DEFAULT_COST_LIMIT, evaluate_policy_exact, learned_policy_table, solve_lp
from cmdp.envs.two_channel import DEFAULT_COST_LIMITS

def run(name: str, env_id: str, limits: list[float], seed: int, epochs: int) -> dict:
    algo = ALGORITHMS[name](env_id, cost_limit=limits, seed=seed, run_dir=False, progress_bar=False, lr_schedule="linear")
    t0 = time.perf_counter()
    algo.learn(epochs * algo.config.steps_per_epoch)
    seconds = time.perf_counter() - t0
    value = evaluate_policy_exact(algo.env.unwrapped, learned_policy_table(algo))
    optimum = solve_lp(algo.env.unwrapped, limits)
    ratio = value.costs / np.asarray(limits)
    return {
        "return_ratio": value.return_ / optimum.return_,
        "cost_ratio": ratio,
        "meets": bool(np.all(ratio <= 1.05) and value.return_ >= 0.9 * optimum.return_),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=90)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    cases = [(name, "GridWorld-v0", [DEFAULT_COST_LIMIT]) for name in ALGORITHMS]
    cases.append(("PPOLag", "TwoChannelGrid-v0", list(DEFAULT_COST_LIMITS)))
    lines = [
        machine_line(),
        f"Command: `python benchmarks/gridworld_solvers.py --seeds {' '.join(map(str, args.seeds))} --epochs {args.epochs}`: "
        f"{args.epochs} epochs of 4096 steps, default settings plus a linearly decaying actor learning rate. "
        "Cost and return are exact expectations of the final policy, as ratios to the limit and to the LP "
        "constrained optimum. 'meets': every cost <= 1.05 x limit and return >= 0.9 x optimum.",
        "",
        "| solver | env | per seed: return / optimum, cost / limit | meets | s per run |",
        "|---|---|---|---:|---:|",
    ]
    for name, env_id, limits in cases:
        results = [run(name, env_id, limits, seed, args.epochs) for seed in args.seeds]
        per_seed = "; ".join(
            f"{r['return_ratio']:.2f}, {'/'.join(f'{c:.2f}' for c in r['cost_ratio'])}" for r in results
        )
        met = sum(r["meets"] for r in results)
        secs = np.median([r["seconds"] for r in results])
        lines.append(f"| {name} | {env_id} | {per_seed} | {met}/{len(results)} | {secs:.0f} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        update_section(args.out, "gridworld", "Solvers on the LP gridworlds", table)


if __name__ == "__main__":
    main()
