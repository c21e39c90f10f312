"""What a safety-gymnasium episode costs when its world is compiled at every reset, and when the
compiled model is kept (cmdp.core.safety_gymnasium_worlds), measured side by side.

    .peers/omnisafe/bin/python benchmarks/safety_gymnasium_reset.py [--env SafetyPointGoal1-v0]
        [--episodes 8] [--out BENCHMARKS.md]

Two envs of the same id in this process, one as safety-gymnasium makes it and one that keeps its
compiled world, play the same episodes (same seeds, same uniformly random actions), alternating
which goes first. Each episode's reset and its steps are timed in CPU seconds of this process
(the machine is shared; its CPU time hardly depends on the load). After every step both envs'
outputs are compared: the table says whether they were equal throughout. The first resets,
which compile (and verify the kept model against a compile), are played before timing starts.

Needs safety-gymnasium, so it runs in the peer env (``bash benchmarks/peers/setup_omnisafe.sh``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import omnisafe_compat  # noqa: E402,F401  (safety-gymnasium's dataclasses on Python 3.11)
import safety_gymnasium  # noqa: E402
from report import machine_line, publish  # noqa: E402  (benchmarks/report.py)

from cmdp.core.safety_gymnasium_worlds import VERIFIED_RESETS, reuse_compiled_world  # noqa: E402


def play(env, seed: int, actions: np.ndarray) -> tuple[float, float, list]:
    """CPU seconds of the reset and of the steps, and the outputs, of one episode."""
    start = time.process_time()
    obs, _ = env.reset(seed=seed)
    reset_seconds = time.process_time() - start
    outputs = [obs]
    start = time.process_time()
    for action in actions:
        step = env.step(action)
        outputs.append(step[:5])
        if step[3] or step[4]:
            break
    return reset_seconds, time.process_time() - start, outputs


def same(a: list, b: list) -> bool:
    if len(a) != len(b) or not np.array_equal(a[0], b[0]):
        return False
    return all(np.array_equal(x[0], y[0]) and x[1:] == y[1:] for x, y in zip(a[1:], b[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="SafetyPointGoal1-v0")
    parser.add_argument("--episodes", type=int, default=8, help="timed episodes per env")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to update (e.g. BENCHMARKS.md)")
    parser.add_argument("--section", default="safety_gymnasium_reset")
    args = parser.parse_args()

    envs = {"compiled at every reset": safety_gymnasium.make(args.env), "kept": safety_gymnasium.make(args.env)}
    if not reuse_compiled_world(envs["kept"]):
        raise SystemExit(f"{args.env}: this env cannot keep its compiled world (it renders or sees images)")
    horizon = envs["kept"].spec.max_episode_steps or 1000
    rng = np.random.default_rng(0)
    shape = envs["kept"].action_space.shape
    for seed in range(VERIFIED_RESETS + 1):  # the compiles, and the kept model's verification
        actions = rng.uniform(-1, 1, (10, *shape))
        for env in envs.values():
            play(env, seed, actions)
    times = {name: ([], []) for name in envs}
    identical = True
    for episode in range(args.episodes):
        actions = rng.uniform(-1, 1, (horizon, *shape))
        order = list(envs) if episode % 2 == 0 else list(envs)[::-1]
        outputs = {}
        for name in order:
            reset_seconds, step_seconds, outputs[name] = play(envs[name], 1000 + episode, actions)
            times[name][0].append(reset_seconds)
            times[name][1].append(step_seconds / (len(outputs[name]) - 1))
        identical &= same(*outputs.values())
    reuse = envs["kept"].unwrapped.world_model_reuse
    if not reuse.enabled:
        raise SystemExit(f"{args.env}: the kept model did not reproduce the compile; nothing to measure")

    rows, rates = [], {}
    for name, (resets, steps) in times.items():
        reset_ms, step_ms = 1e3 * statistics.median(resets), 1e3 * statistics.median(steps)
        episode_ms = reset_ms + horizon * step_ms
        rates[name] = horizon / episode_ms * 1e3
        rows.append(
            f"| {name} | {reset_ms:,.1f} | {step_ms:.3f} | {reset_ms / horizon:.3f} | {rates[name]:,.0f} |"
        )
    kept, compiled = rates["kept"], rates["compiled at every reset"]
    table = "\n".join(
        [
            machine_line(),
            "",
            f"Command: `python benchmarks/safety_gymnasium_reset.py --env {args.env} --episodes {args.episodes}` "
            f"(with the peer env's python). `{args.env}`, {args.episodes} episodes of {horizon:,} steps per env, "
            "uniformly random actions, medians of CPU milliseconds of this process.",
            "",
            "| world | reset (ms) | step (ms) | reset per step of the episode (ms) | env steps per CPU-second |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
            f"Keeping the compiled world: **{kept / compiled:.2f}x** the env steps per CPU-second. "
            f"Observations, rewards, costs and episode ends equal bit for bit in every timed step: "
            f"**{'yes' if identical else 'NO'}**.",
        ]
    )
    publish(table, args.out, args.section, f"safety-gymnasium resets ({args.env})")
    if not identical:
        raise SystemExit("the two envs' episodes differed")


if __name__ == "__main__":
    main()
