"""What a safety-gymnasium episode costs as safety-gymnasium ships it, when the compiled model is
kept (cmdp.core.safety_gymnasium_worlds), and when the observation and hazard cost are vectorised
and the repeated forwards skipped as well (cmdp.core.safety_gymnasium_vectorised, what cmdp.make
does), measured side by side.

    .peers/omnisafe/bin/python benchmarks/safety_gymnasium_reset.py [--env SafetyPointGoal1-v0]
        [--episodes 8] [--out BENCHMARKS.md]

Three envs of the same id in this process play the same episodes (same seeds, same uniformly
random actions), taking turns at going first. Each episode's reset and its steps are timed in
CPU seconds of this process (the machine is shared; its CPU time hardly depends on the load).
After every step the envs' outputs are compared: the table says whether they were equal
throughout. The first resets, which compile (and verify the kept model against a compile), and
the episodes in which the vectorised env checks its results against safety-gymnasium's (its
skipped forwards only after its observation) are played before timing starts.

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

from cmdp.core.safety_gymnasium_vectorised import VERIFIED_STEPS, same_bits, vectorise_task  # noqa: E402
from cmdp.core.safety_gymnasium_worlds import VERIFIED_RESETS, reuse_compiled_world  # noqa: E402

SHIPPED, KEPT, VECTORISED = "as shipped (compiled at every reset)", "compiled world kept", "kept, and vectorised task"


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
    """Equal bit for bit: observations' bytes and dtypes, rewards, costs and episode ends."""
    if len(a) != len(b) or not same_bits(a[0], b[0]):
        return False
    return all(same_bits(x[0], y[0]) and x[1:] == y[1:] for x, y in zip(a[1:], b[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="SafetyPointGoal1-v0")
    parser.add_argument("--episodes", type=int, default=8, help="timed episodes per env")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to update (e.g. BENCHMARKS.md)")
    parser.add_argument("--section", default="safety_gymnasium_reset")
    args = parser.parse_args()

    envs = {name: safety_gymnasium.make(args.env) for name in (SHIPPED, KEPT, VECTORISED)}
    if not (reuse_compiled_world(envs[KEPT]) and reuse_compiled_world(envs[VECTORISED])):
        raise SystemExit(f"{args.env}: this env cannot keep its compiled world (it renders or sees images)")
    if not vectorise_task(envs[VECTORISED]):
        raise SystemExit(f"{args.env}: this task has neither safety-gymnasium's own observation nor hazards")
    horizon = envs[KEPT].spec.max_episode_steps or 1000
    rng = np.random.default_rng(0)
    shape = envs[KEPT].action_space.shape
    for seed in range(VERIFIED_RESETS + 1):  # the compiles, and the kept model's verification
        actions = rng.uniform(-1, 1, (10, *shape))
        for env in envs.values():
            play(env, seed, actions)
    verified = envs[VECTORISED].unwrapped.task.vectorised.verified
    seed = VERIFIED_RESETS + 1
    while min(verified.values()) < VERIFIED_STEPS:  # the vectorised task's verification
        actions = rng.uniform(-1, 1, (horizon, *shape))
        for env in envs.values():
            play(env, seed, actions)
        seed += 1
    times = {name: ([], []) for name in envs}
    identical = True
    for episode in range(args.episodes):
        actions = rng.uniform(-1, 1, (horizon, *shape))
        names = list(envs)
        order = names[episode % len(names) :] + names[: episode % len(names)]
        outputs = {}
        for name in order:
            reset_seconds, step_seconds, outputs[name] = play(envs[name], 1000 + episode, actions)
            times[name][0].append(reset_seconds)
            times[name][1].append(step_seconds / (len(outputs[name]) - 1))
        first, *others = outputs.values()
        identical &= all(same(first, other) for other in others)
    if not all(envs[name].unwrapped.world_model_reuse.enabled for name in (KEPT, VECTORISED)):
        raise SystemExit(f"{args.env}: the kept model did not reproduce the compile; nothing to measure")
    vectorised = envs[VECTORISED].unwrapped.task.vectorised
    if not vectorised.enabled:
        raise SystemExit(f"{args.env}: the vectorised task differed from safety-gymnasium's; nothing to measure")

    rows, rates = [], {}
    for name, (resets, steps) in times.items():
        reset_ms, step_ms = 1e3 * statistics.median(resets), 1e3 * statistics.median(steps)
        episode_ms = reset_ms + horizon * step_ms
        rates[name] = horizon / episode_ms * 1e3
        rows.append(
            f"| {name} | {reset_ms:,.1f} | {step_ms:.3f} | {reset_ms / horizon:.3f} | {rates[name]:,.0f} |"
        )
    kept, compiled, fast = rates[KEPT], rates[SHIPPED], rates[VECTORISED]
    what = ", ".join(vectorised.verified)
    table = "\n".join(
        [
            machine_line(),
            "",
            f"Command: `python benchmarks/safety_gymnasium_reset.py --env {args.env} --episodes {args.episodes}` "
            f"(with the peer env's python). `{args.env}`, {args.episodes} episodes of {horizon:,} steps per env, "
            "uniformly random actions, medians of CPU milliseconds of this process.",
            "",
            "| env | reset (ms) | step (ms) | reset per step of the episode (ms) | env steps per CPU-second |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
            f"Env steps per CPU-second against safety-gymnasium as shipped: keeping the compiled world "
            f"**{kept / compiled:.2f}x**, and vectorising the task on top **{fast / compiled:.2f}x** "
            f"({fast / kept:.2f}x the kept world's; vectorised: {what}). "
            f"Observations, rewards, costs and episode ends equal bit for bit in every timed step: "
            f"**{'yes' if identical else 'NO'}**.",
        ]
    )
    publish(table, args.out, args.section, f"safety-gymnasium resets and steps ({args.env})")
    if not identical:
        raise SystemExit("the envs' episodes differed")


if __name__ == "__main__":
    main()
