"""Env-steps per second of the built-in Safety-CHORES simulator, side by side in one run.

    python benchmarks/chores_speed.py [--envs 64] [--steps 300] [--repeats 5] [--out BENCHMARKS.md]

Configurations (task Fetch, random actions, one process, numpy on one core):

* ``state`` and ``rgb 64x64`` observations at N envs, with random *physical* actions (no
  ``end``), so episodes run to the 500-step horizon as a trained policy's long episodes do;
* the same with every action allowed, where a random ``end`` finishes an episode every ~20
  steps and house generation and resets weigh in;
* ``rgb`` at 128x128 and 224x384;
* ``state`` with 10 to 200 small objects per house (how the step cost grows with clutter).

Each configuration trains on a pool of 200 houses, all generated before timing (the steady state
of a run that has met every house of its pool), except the row with a new house every episode
(a pool of a million houses: every reset generates one, as at the start of a run). It then runs
a warm-up and is timed for ``--steps`` vector steps
once per repeat; configurations are interleaved across repeats and the table gives medians of
wall-clock and of process CPU time (CPU time is the better measure on this shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from report import machine_line, publish  # benchmarks/report.py, beside this script
from cmdp.envs.chores import catalog as cat
from cmdp.envs.chores.env import ChoresEnv
from cmdp.envs.chores.episodes import sample_episode

PHYSICAL = np.flatnonzero(cat.PHYSICAL_ACTIONS)


def object_episodes(count: int, n: int) -> list:
    """Fetch episodes in houses with exactly ``count`` small objects."""
    from render_speed import house_with_objects  # benchmarks/render_speed.py

    specs = []
    for seed in range(n):
        house = house_with_objects(10_000_000 + seed, count)
        specs.append(sample_episode("Fetch", house, np.random.default_rng(seed)))
    return specs


def build(config: dict, num_envs: int) -> ChoresEnv:
    kwargs = dict(config.get("kwargs", {}))
    env = ChoresEnv("Fetch", num_envs=num_envs, seed=0, num_train_houses=config.get("houses", 200), **kwargs)
    if config.get("houses", 200) <= 4096:
        # every house of the pool generated up front: the steady state of a run that has met them all
        for seed in range(env.sampler.num_train_houses):
            env.sampler.houses.get(seed)
    return env


def run(env: ChoresEnv, steps: int, physical_only: bool, rng: np.random.Generator) -> tuple[float, float]:
    n = env.num_envs
    actions = [rng.choice(PHYSICAL, size=n) if physical_only else rng.integers(cat.NUM_ACTIONS, size=n) for _ in range(64)]
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        env.step(actions[i % 64])
    return (time.perf_counter() - w0), (time.process_time() - c0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    n = args.envs
    configs = [
        dict(name="state", physical=True),
        dict(name="rgb 64x64", physical=True, kwargs=dict(obs_mode="rgb")),
        dict(name="state, random end (resets)", physical=False),
        dict(name="state, random end, a new house every episode", physical=False, houses=1_000_000),
        dict(name="rgb 64x64, random end (resets)", physical=False, kwargs=dict(obs_mode="rgb")),
        dict(name="rgb 128x128", physical=True, kwargs=dict(obs_mode="rgb", image_size=(128, 128))),
        dict(name="rgb 224x384", physical=True, kwargs=dict(obs_mode="rgb", image_size=(224, 384)), steps=max(args.steps // 6, 10)),
    ]
    for count in (10, 25, 50, 100, 200):
        specs = object_episodes(count, 32)
        configs.append(
            dict(
                name=f"state, {count} objects", physical=True,
                kwargs=dict(episodes=specs, max_objects=count + 8), objects=count,
            )
        )  # fmt: skip
    envs = []
    rng = np.random.default_rng(0)
    for c in configs:
        env = build(c, n)
        env.reset(seed=0)
        run(env, 400 if c.get("physical") else 800, c["physical"], rng)  # warm-up: fill the house cache
        envs.append(env)
        print(f"warmed up: {c['name']}", flush=True)
    wall = {c["name"]: [] for c in configs}
    cpu = {c["name"]: [] for c in configs}
    for rep in range(args.repeats):
        for c, env in zip(configs, envs):
            steps = c.get("steps", args.steps)
            w, p = run(env, steps, c["physical"], rng)
            wall[c["name"]].append(steps * n / w)
            cpu[c["name"]].append(steps * n / p)
        print(f"repeat {rep + 1}/{args.repeats} done", flush=True)
    lines = [
        machine_line(),
        "",
        f"Command: `python benchmarks/chores_speed.py --envs {n} --steps {args.steps} --repeats {args.repeats}`. "
        f"SafetyChores-Fetch-v0, {n} envs stepped as one numpy batch in one process, random actions; "
        "medians over interleaved repeats. Houses come from a 200-house pool generated before timing "
        "(a long run's steady state); 'a new house every episode' generates one at every reset instead. "
        "'physical' actions exclude `end`, so episodes run long as a trained policy's do; 'random end' "
        "finishes an episode every ~20 steps (resets included). Env-steps/s by wall clock and by process "
        "CPU time (the machine is shared; CPU time is the steadier measure).",
        "",
        "| configuration | env-steps/s (wall) | env-steps/s (CPU) |",
        "|---|---:|---:|",
    ]
    for c in configs:
        name = c["name"]
        lines.append(f"| {name} | {statistics.median(wall[name]):,.0f} | {statistics.median(cpu[name]):,.0f} |")
    lines.append("")
    verdicts = []
    for name, target in (("state", 20_000), ("rgb 64x64", 2_000)):
        best = max(statistics.median(wall[name]), statistics.median(cpu[name]))
        verdicts.append(f"{name} at N={n} >= {target:,}: {'met' if best >= target else 'NOT met'} ({best:,.0f})")
    lines.append("Targets (by the better of wall and CPU time): " + "; ".join(verdicts) + ".")
    publish("\n".join(lines), args.out, "chores_speed", "Safety-CHORES simulator speed")


if __name__ == "__main__":
    main()
