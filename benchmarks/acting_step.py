"""What one step of acting costs in torch and in NumPy (``numpy_acting``), side by side.

    python benchmarks/acting_step.py [--repeats 7] [--out BENCHMARKS.md]

Part 1: the acting step alone (three MLPs, sampling, log-probability, env action) of the
default MLP policy on SafetyPointGoal1-v0's shapes (60 observations, 2 actions, one cost),
for batches of 1 to 64 envs. Part 2: training env-steps/s and rollout seconds per epoch of
PPOLag on the built-in PointGoal-v0 with its defaults (16 envs), with ``numpy_acting`` on and
off. Both are interleaved across repeats and reported as medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from report import machine_line, publish  # benchmarks/report.py, beside this script
from cmdp.algorithms import PPOLag
from cmdp.policies.encoders import obs_to_tensor
from cmdp.policies.mlp import MLPActorCritic
from cmdp.policies.numpy_acting import NumpyActing, numpy_obs

BATCHES = (1, 2, 16, 64)


def torch_step(policy: MLPActorCritic, obs: torch.Tensor) -> None:
    with torch.no_grad():
        out = policy.act(obs)
        action = out.dist.sample()
        out.dist.log_prob(action)
        out.dist.params()
    policy.to_env_action(action)


def per_call_us(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def acting_times(repeats: int, calls: int) -> dict[int, dict[str, float]]:
    obs_space = gym.spaces.Box(-np.inf, np.inf, (60,), np.float32)
    policy = MLPActorCritic(obs_space, gym.spaces.Box(-1, 1, (2,), np.float32), num_costs=1)
    acting = NumpyActing.from_policy(policy)
    rng = np.random.default_rng(0)
    times: dict[int, dict[str, list[float]]] = {n: {"torch": [], "numpy": []} for n in BATCHES}
    for _ in range(repeats):
        for n in BATCHES:
            obs = obs_to_tensor(rng.standard_normal((n, 60)).astype(np.float32), obs_space)
            times[n]["torch"].append(per_call_us(lambda: torch_step(policy, obs), calls))
            times[n]["numpy"].append(per_call_us(lambda: acting.act(numpy_obs(obs)), calls))
    return {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}


def training_rates(repeats: int, epochs: int) -> dict[bool, dict[str, float]]:
    runs = {flag: PPOLag("PointGoal-v0", cost_limit=25.0, seed=0, run_dir=False, progress_bar=False, numpy_acting=flag) for flag in (True, False)}
    per_epoch = runs[True].config.steps_per_epoch
    for algo in runs.values():
        algo.learn(per_epoch)  # warm-up
    samples: dict[bool, dict[str, list[float]]] = {flag: {"sps": [], "rollout": []} for flag in runs}
    for _ in range(repeats):
        for flag, algo in runs.items():
            t0, rollout = time.perf_counter(), 0.0
            for _ in range(epochs):
                algo.learn(algo.global_step + per_epoch)
                rollout += algo.last_info["Time/Rollout"]
            samples[flag]["sps"].append(epochs * per_epoch / (time.perf_counter() - t0))
            samples[flag]["rollout"].append(rollout / epochs)
    return {flag: {k: statistics.median(v) for k, v in s.items()} for flag, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000, help="acting calls per batch size and repeat")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per setting and repeat")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to update (e.g. BENCHMARKS.md)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    acting = acting_times(args.repeats, args.calls)
    training = training_rates(args.repeats, args.epochs)
    lines = [
        machine_line(),
        "",
        f"Command: `python benchmarks/acting_step.py --repeats {args.repeats} --calls {args.calls} --epochs {args.epochs}`. "
        f"Medians over {args.repeats} interleaved repeats.",
        "",
        "One acting step of the default MLP policy ([64, 64] tanh) on SafetyPointGoal1-v0's shapes "
        "(60 observations, 2 actions, one cost): the actor and both critics, sampling, the log-probability and "
        f"the env action; {args.calls} calls per batch size and repeat.",
        "",
        "| envs | torch µs | NumPy µs | torch / NumPy |",
        "|---:|---:|---:|---:|",
        *(
            f"| {n} | {t['torch']:.1f} | {t['numpy']:.1f} | {t['torch'] / t['numpy']:.2f}x |"
            for n, t in acting.items()
        ),
        "",
        f"PPOLag on PointGoal-v0 with its defaults (16 envs, 4096 steps per epoch), {args.epochs} epochs per "
        "setting and repeat after one warm-up epoch:",
        "",
        "| numpy_acting | train env-steps/s | rollout s per epoch |",
        "|---|---:|---:|",
        *(f"| {flag} | {r['sps']:,.0f} | {r['rollout']:.3f} |" for flag, r in training.items()),
        "",
        f"Training with NumPy acting is {training[True]['sps'] / training[False]['sps']:.2f}x as fast; its rollout takes "
        f"{training[True]['rollout'] / training[False]['rollout']:.2f} of the time.",
    ]
    publish("\n".join(lines), args.out, "acting-step", "Acting step: torch and NumPy")


if __name__ == "__main__":
    main()
