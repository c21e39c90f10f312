"""What the navigation camera's pitch does to the Safety-CHORES costs, measured with the experts.

    python benchmarks/chores_camera_pitch.py [--task Fetch] [--pitches -10 -20 -27 -35] [--out BENCHMARKS.md]

The blind-spot cost charges touching an object that the navigation camera saw in the last 100
steps but does not see now, so the camera's geometry is part of the cost's definition. The
experts plan from the true state: their paths do not depend on the camera (the exploring expert
looks for its target with it, so its path can), and a change in their cost between pitches is the
geometry's alone. SafeVLA's camera is pitched further down (27 degrees) than ours (20); this
says whether a steeper camera would by itself make the blind-spot cost easier to avoid.

Part 2: how the experts' cost is spread over the evaluation episodes at the default pitch: the
share of episodes that cost nothing, and the cumulative cost (over all episodes) of a policy that
did the expert's cheapest episodes and gave up at no cost on the rest, at each success rate
given by ``--success-rates``. It is a reference for what the cost target asks, not a bound.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from report import machine_line, publish  # benchmarks/report.py, beside this script
from cmdp.envs.chores.costs import COST_NAMES
from cmdp.envs.chores.env import ChoresEnv
from cmdp.envs.chores.expert import ExploringExpert, ShortestPathExpert
from cmdp.envs.chores.render import CameraSpec
from cmdp.isa.report import SHORT_NAMES

EXPERTS = {
    "shortest-path expert (SPOC's, safety-unaware)": lambda env: ShortestPathExpert(env, safe=False, seed=0),
    "exploring expert (the IL policy's teacher)": lambda env: ExploringExpert(env, seed=0),
    "safe expert (keeps clearance)": lambda env: ShortestPathExpert(env, safe=True, seed=0),
}
DEFAULT_PITCH = CameraSpec().pitch


def play(task: str, expert: str, pitch: float, episodes: int) -> tuple[np.ndarray, np.ndarray]:
    """(success [E], cost per component [E, K]) of one expert on the evaluation set."""
    env = ChoresEnv(task, num_envs=1, seed=0, split="eval", max_episode_steps=600, camera=CameraSpec(pitch=pitch))
    env.reset(seed=0)
    policy = EXPERTS[expert](env)
    running = np.zeros(len(COST_NAMES))
    success, costs = [], []
    while len(success) < episodes:
        _, _, cost, terminated, truncated, info = env.step(policy.act())
        running += cost[0]
        if terminated[0] or truncated[0]:
            success.append(bool(info["episode"][0]["success"]))
            costs.append(running.copy())
            running[:] = 0.0
    return np.array(success), np.array(costs)


def cheapest_episodes_cost(success: np.ndarray, costs: np.ndarray, rate: float) -> tuple[float, float]:
    """(CC, SR) over all episodes when only the cheapest successful episodes, enough for ``rate``
    success, are done and every other episode is given up at no cost."""
    total = costs.sum(axis=1)
    done = np.flatnonzero(success)[np.argsort(total[success], kind="stable")]
    keep = done[: int(np.ceil(rate * len(total)))]
    return float(total[keep].sum() / len(total)), len(keep) / len(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="Fetch", choices=("ObjectNav", "PickUp", "Fetch"))
    parser.add_argument("--pitches", type=float, nargs="+", default=[-10.0, -20.0, -27.0, -35.0])
    parser.add_argument("--episodes", type=int, default=None, help="default: the whole evaluation set")
    parser.add_argument("--success-rates", type=float, nargs="+", default=[0.752, 0.81, 0.9])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if DEFAULT_PITCH not in args.pitches:
        args.pitches.append(DEFAULT_PITCH)
    from cmdp.envs.chores.eval_sets import load_eval_set

    episodes = args.episodes or len(load_eval_set(args.task))
    rows = [
        "| expert | camera pitch (deg) | SR | CC | " + " | ".join(SHORT_NAMES[c] for c in COST_NAMES) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(COST_NAMES),
    ]
    at_default = {}
    t0 = time.perf_counter()
    for expert in EXPERTS:
        for pitch in sorted(args.pitches, reverse=True):
            success, costs = play(args.task, expert, pitch, episodes)
            if pitch == DEFAULT_PITCH:
                at_default[expert] = (success, costs)
            comps = " | ".join(f"{v:.2f}" for v in costs.mean(axis=0))
            rows.append(f"| {expert} | {pitch:g} | {success.mean():.1%} | {costs.sum(axis=1).mean():.2f} | {comps} |")
            print(rows[-1], file=sys.stderr, flush=True)
    spread = [
        "| expert (camera at the default pitch) | episodes at zero cost | CC quartiles (25/50/75%) | "
        + " | ".join(f"CC, cheapest episodes for SR {rate:.1%}" for rate in args.success_rates)
        + " |",
        "|---|---:|---|" + "---:|" * len(args.success_rates),
    ]
    for expert, (success, costs) in at_default.items():
        total = costs.sum(axis=1)
        quartiles = " / ".join(f"{q:.1f}" for q in np.quantile(total, [0.25, 0.5, 0.75]))
        cells = []
        for rate in args.success_rates:
            cc, sr = cheapest_episodes_cost(success, costs, rate)
            cells.append(f"{cc:.2f}" + ("" if sr >= rate else f" (SR {sr:.1%}: too few successes)"))
        spread.append(f"| {expert} | {np.mean(total == 0):.1%} | {quartiles} | " + " | ".join(cells) + " |")
    table = "\n".join(
        [
            machine_line(),
            "",
            f"Command: `python benchmarks/chores_camera_pitch.py --task {args.task} --pitches "
            f"{' '.join(f'{p:g}' for p in args.pitches)}`. The experts on the {episodes} {args.task} evaluation "
            f"episodes (state observations, 600-step horizon), once per camera pitch; {time.perf_counter() - t0:.0f} s.",
            "",
            *rows,
            "",
            *spread,
        ]
    )
    publish(table, args.out, "chores_camera_pitch", "Safety-CHORES costs and the camera's pitch")


if __name__ == "__main__":
    main()
