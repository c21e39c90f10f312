"""Every solver on the LP gridworlds, evaluated exactly against the constrained optimum.

    python benchmarks/gridworld_solvers.py [--seeds 0 1 2] [--epochs 90] [--out BENCHMARKS.md]
        [--solvers PPOLag FOCOPS] [--set lambda_damping=0.3 ...] [--section gridworld-averaged]

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
from report import machine_line, publish  # benchmarks/report.py, beside this script
from cmdp.algorithms import ALGORITHMS
from cmdp.config_files import parse_set_overrides
from cmdp.envs.gridworld import DEFAULT_COST_LIMIT, evaluate_policy_exact, learned_policy_table, solve_lp
from cmdp.envs.two_channel import DEFAULT_COST_LIMITS

def run(name: str, env_id: str, limits: list[float], seed: int, epochs: int, overrides: dict | None = None) -> dict:
    fields = ALGORITHMS[name].Config.__dataclass_fields__
    extra = {k: v for k, v in (overrides or {}).items() if k in fields}  # each solver takes the options it has
    algo = ALGORITHMS[name](
        env_id, cost_limit=limits, seed=seed, run_dir=False, progress_bar=False, lr_schedule="linear", **extra
    )
    t0 = time.perf_counter()
    algo.learn(epochs * algo.config.steps_per_epoch)
    seconds = time.perf_counter() - t0
    return judge(algo, limits) | {"seconds": seconds}


def judge(algo, limits: list[float]) -> dict:
    """The exact value of ``algo``'s current policy against the LP optimum, and the tests' verdict."""
    value = evaluate_policy_exact(algo.env.unwrapped, learned_policy_table(algo))
    optimum = solve_lp(algo.env.unwrapped, limits)
    ratio = value.costs / np.asarray(limits)
    return {
        "return_ratio": value.return_ / optimum.return_,
        "cost_ratio": ratio,
        "meets": bool(np.all(ratio <= 1.05) and value.return_ >= 0.9 * optimum.return_),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=90)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--section", default="gridworld", help="BENCHMARKS.md section to write (beside the main table)")
    parser.add_argument("--solvers", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config option for every solver that has it (e.g. lambda_damping=0.3)")  # fmt: skip
    args = parser.parse_args()
    overrides = parse_set_overrides(args.overrides)
    unknown = [k for k in overrides if not any(k in ALGORITHMS[n].Config.__dataclass_fields__ for n in args.solvers)]
    if unknown:
        parser.error(f"no selected solver has the option(s) {', '.join(unknown)}")

    cases = [(name, "GridWorld-v0", [DEFAULT_COST_LIMIT]) for name in args.solvers]
    if "PPOLag" in args.solvers:
        cases.append(("PPOLag", "TwoChannelGrid-v0", list(DEFAULT_COST_LIMITS)))
    command = " ".join(
        ["python benchmarks/gridworld_solvers.py --seeds", *map(str, args.seeds), f"--epochs {args.epochs}"]
        + (["--solvers", *args.solvers] if args.solvers != list(ALGORITHMS) else [])
        + [f"--set {item}" for item in args.overrides]
        + ([f"--section {args.section}"] if args.section != "gridworld" else [])
    )
    rows = []
    for name, env_id, limits in cases:
        results = [run(name, env_id, limits, seed, args.epochs, overrides) for seed in args.seeds]
        per_seed = "; ".join(
            f"{r['return_ratio']:.2f}, {'/'.join(f'{c:.2f}' for c in r['cost_ratio'])}" for r in results
        )
        met = sum(r["meets"] for r in results)
        secs = np.median([r["seconds"] for r in results])
        rows.append(f"| {name} | {env_id} | {per_seed} | {met}/{len(results)} | {secs:.0f} |")
        print(rows[-1], flush=True)
    lines = [
        machine_line(),  # after the runs: the solvers set the thread count
        f"Command: `{command}`: "
        f"{args.epochs} epochs of 4096 steps, default settings plus a linearly decaying actor learning rate. "
        "Cost and return are exact expectations of the final policy, as ratios to the limit and to the LP "
        "constrained optimum. 'meets': every cost <= 1.05 x limit and return >= 0.9 x optimum.",
        "",
        "| solver | env | per seed: return / optimum, cost / limit | meets | s per run |",
        "|---|---|---|---:|---:|",
        *rows,
    ]
    title = "Solvers on the LP gridworlds" + (f" ({args.section})" if args.section != "gridworld" else "")
    publish("\n".join(lines), args.out, args.section, title)


if __name__ == "__main__":
    main()
