"""Training throughput of every solver on the built-in point task, measured side by side.

    python benchmarks/throughput.py [--env PointGoal-v0] [--epochs 6] [--repeats 3] [--out BENCHMARKS.md]

For each solver with default settings: end-to-end env-steps/s of ``learn`` (after one warm-up
epoch), and the split of time between rollout (policy forward + env step) and update. Also the
raw step rate of the vector env alone with random actions. Solvers are interleaved across
repeats so machine noise hits all of them alike; medians are reported. With ``--out`` the
table is written into that Markdown file between markers, with the date and the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

import cmdp
from report import machine_line, publish  # benchmarks/report.py, beside this script
from cmdp.algorithms import ALGORITHMS

def raw_env_rate(env_id: str, num_envs: int, steps: int = 200_000) -> float:
    env = cmdp.make(env_id, num_envs=num_envs, seed=0)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    space = env.action_space
    vector_steps = steps // num_envs
    actions = [
        rng.uniform(space.low, space.high, size=(num_envs, *space.shape)).astype(space.dtype)
        if hasattr(space, "low")
        else rng.integers(space.n, size=num_envs)
        for _ in range(64)
    ]
    t0 = time.perf_counter()
    for i in range(vector_steps):
        env.step(actions[i % 64])
    return vector_steps * num_envs / (time.perf_counter() - t0)


def solver_rate(name: str, env_id: str, epochs: int, limit: float) -> dict[str, float]:
    algo = ALGORITHMS[name](env_id, cost_limit=limit, seed=0, run_dir=False, progress_bar=False)
    per_epoch = algo.config.steps_per_epoch
    algo.learn(per_epoch)  # warm-up: first-call allocations and lazy imports
    rollout = update = 0.0
    t0 = time.perf_counter()
    for _ in range(epochs):
        algo.learn(algo.global_step + per_epoch)
        rollout += algo.last_info["Time/Rollout"]
        update += algo.last_info["Time/Update"]
    seconds = time.perf_counter() - t0
    algo.close()
    return {"sps": epochs * per_epoch / seconds, "rollout": rollout / seconds, "update": update / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="PointGoal-v0")
    parser.add_argument("--epochs", type=int, default=6, help="timed epochs per solver and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cost-limit", type=float, default=25.0)
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to update (e.g. BENCHMARKS.md)")
    args = parser.parse_args()

    results: dict[str, list[dict[str, float]]] = {name: [] for name in ALGORITHMS}
    raw: list[float] = []
    for _ in range(args.repeats):
        raw.append(raw_env_rate(args.env, num_envs=16))
        for name in ALGORITHMS:
            results[name].append(solver_rate(name, args.env, args.epochs, args.cost_limit))

    default = ALGORITHMS["PPO"].Config()
    lines = [
        machine_line(),
        "",
        f"Command: `python benchmarks/throughput.py --env {args.env} --epochs {args.epochs} --repeats {args.repeats}`. "
        f"Default settings: {default.num_envs} envs, {default.steps_per_epoch} steps per epoch, "
        f"{default.update_epochs} update passes, minibatches of {default.minibatch_size}, MLP {list(default.hidden_sizes)}. "
        f"Medians over {args.repeats} interleaved repeats of {args.epochs} epochs each.",
        "",
        f"Raw `{args.env}` vector env, 16 envs, random actions: **{statistics.median(raw):,.0f} env-steps/s**.",
        "",
        "| solver | train env-steps/s | rollout share | update share |",
        "|---|---:|---:|---:|",
    ]
    for name, runs in results.items():
        sps = statistics.median(r["sps"] for r in runs)
        ro = statistics.median(r["rollout"] for r in runs)
        up = statistics.median(r["update"] for r in runs)
        lines.append(f"| {name} | {sps:,.0f} | {ro:.0%} | {up:.0%} |")
    publish("\n".join(lines), args.out, "throughput", "Training throughput")


if __name__ == "__main__":
    main()
