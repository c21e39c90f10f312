"""Speed of the VLA policy: acting cost along an episode (KV cache) and PPOLag training rate.

    python benchmarks/vla_speed.py [--envs 8] [--repeats 5] [--train-epochs 2] [--detection] [--out BENCHMARKS.md]

1. **Acting step time** of :class:`cmdp.policies.vla.VLAPolicy` (default ``VLAConfig``) for a
   batch of ``--envs`` envs at episode steps 10 and 400, with the KV cache: a whole 410-step
   episode is acted ``--repeats`` times on real ``SafetyChores-Fetch-v0`` rgb 64x64
   observations, and the median over steps 8-12 and 398-402 of all repeats is reported, in wall
   time and in this process's CPU time (the machine is shared; CPU time is what the policy
   costs, wall time what a user waits). The target is a ratio (step 400 / step 10) of at most
   1.3. For contrast, the cost of one step without a cache (recomputing the episode so far
   with ``evaluate``) at the same two steps.
2. **Training rate** of PPOLag with the VLA on ``SafetyChores-Fetch-v0`` (rgb 64x64,
   ``--envs`` envs, 128-step rollouts per env as FLaRe uses, 4 update passes, minibatches of
   512 steps): env steps per second of ``learn`` after a warm-up epoch, with the split between
   rollout (rendering, env, acting) and update.

With ``--out`` the table goes into that Markdown file under the ``vla`` markers.

3. **The IL policy** (``--il-eval DIR/il_eval.json ...``, files written by
   ``python -m cmdp.isa.imitation``): success rate, episode length and cumulative cost per
   component of each imitation-learned policy on the evaluation set, beside the shortest-path
   expert it imitates on the same episodes; written under the ``vla_il`` markers. ``--no-speed``
   skips parts 1 and 2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import cmdp
from report import machine_line, publish  # benchmarks/report.py, beside this script
from cmdp.algorithms import PPOLag
from cmdp.policies.vla import VLAPolicy

ENV_ID = "SafetyChores-Fetch-v0"
ENV_KWARGS = {"obs_mode": "rgb", "image_size": (64, 64)}
EARLY, LATE = 10, 400


def _observations(num_envs: int, steps: int, env_kwargs: dict) -> list[dict[str, torch.Tensor]]:
    """Real observations of a random-action run, with the episode step set to the one acted."""
    env = cmdp.make(ENV_ID, num_envs=num_envs, seed=0, **env_kwargs)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(64):
        frames.append({k: torch.from_numpy(np.array(v)) for k, v in obs.items()})
        obs, *_ = env.step(rng.integers(env.action_space.n, size=num_envs))
    env.close()
    out = []
    for t in range(steps):
        o = dict(frames[t % len(frames)])
        o["time_step"] = torch.full((num_envs, 1), t, dtype=torch.int64)
        out.append(o)
    return out


def acting_times(policy: VLAPolicy, num_envs: int, repeats: int) -> dict[str, float]:
    steps = LATE + 3
    obs = _observations(num_envs, steps, policy.env_kwargs)
    wall = {EARLY: [], LATE: []}
    cpu = {EARLY: [], LATE: []}
    with torch.no_grad():
        for _ in range(repeats):
            state = policy.initial_state(num_envs)
            for t in range(steps):
                start = torch.full((num_envs,), t == 0)
                w0, c0 = time.perf_counter(), time.process_time()
                state = policy.act(obs[t], state, start).state
                w1, c1 = time.perf_counter(), time.process_time()
                for mark in (EARLY, LATE):
                    if abs(t - mark) <= 2:
                        wall[mark].append(w1 - w0)
                        cpu[mark].append(c1 - c0)
        recompute = {}
        for mark in (EARLY, LATE):
            seq = {k: torch.stack([obs[t][k] for t in range(mark + 1)], dim=1) for k in obs[0]}
            starts = torch.zeros(num_envs, mark + 1, dtype=torch.bool)
            starts[:, 0] = True
            c0 = time.process_time()
            policy.evaluate({"obs": seq, "episode_start": starts, "state": None, "mask": None})
            recompute[mark] = time.process_time() - c0
    result = {f"wall_{m}": statistics.median(wall[m]) for m in wall} | {f"cpu_{m}": statistics.median(cpu[m]) for m in cpu}
    result |= {f"recompute_{m}": recompute[m] for m in recompute}
    return result


def training_rate(num_envs: int, epochs: int, env_kwargs: dict) -> dict[str, float]:
    algo = PPOLag(
        ENV_ID, cost_limit=2.3, seed=0, run_dir=False, network="vla", num_envs=num_envs,
        steps_per_epoch=128 * num_envs, update_epochs=4, minibatch_size=512, progress_bar=False,
        env_kwargs=env_kwargs,
    )  # fmt: skip
    per_epoch = algo.config.steps_per_epoch
    algo.learn(per_epoch)  # warm-up
    rollout = update = 0.0
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        algo.learn(algo.global_step + per_epoch)
        rollout += algo.last_info["Time/Rollout"]
        update += algo.last_info["Time/Update"]
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    algo.close()
    steps = epochs * per_epoch
    return {"sps": steps / wall, "sps_cpu": steps / cpu, "rollout": rollout / wall, "update": update / wall, "steps": steps}


def expert_on(task: str, split: str) -> dict[str, float]:
    """The safety-unaware shortest-path expert on the whole evaluation set of ``task``."""
    from cmdp.envs.chores.eval_sets import load_eval_set
    from cmdp.envs.chores.expert import run_expert
    from cmdp.envs.chores.suites import summarize

    episodes = len(load_eval_set(task))
    env = cmdp.make(f"SafetyChores-{task}-v0", num_envs=1, seed=0, split=split)  # one env: each episode once
    done = summarize(run_expert(env, episodes, seed=0))
    env.close()
    return {
        "success_rate": done["success_rate"],
        "ep_length": done["length"],
        "ep_cost": done["cc"],
        "ep_costs": done["costs"],
        "episodes": done["episodes"],
    }


def il_table(paths: list[Path]) -> str:
    import json

    rows, task, split = [], None, None
    for path in paths:
        report = json.loads(path.read_text())
        task, split = report["il_policy"].get("task", report["expert"]["task"]), report["split"]
        stages = report.get("stages") or [{"stage": "bc", **report["bc"]}]
        name = " + ".join(s["stage"] for s in stages) + (", target boxes" if report.get("detection") else "")
        rows.append((f"IL policy ({name})", report["il_policy"]))
    expert = expert_on(task, split)
    names = list(expert["ep_costs"])
    lines = [
        f"Safety-CHORES {task}, {split} set ({expert['episodes']} episodes, horizon 600), actions sampled "
        "from the policy. IL policies: default `VLAConfig`, made by `python -m cmdp.isa.imitation` "
        "(its `il_eval.json`); the expert is the safety-unaware shortest-path teacher on the same episodes.",
        "",
        "| policy | SR | CC | " + " | ".join(names) + " | episode length |",
        "|---|---:|---:|" + "---:|" * len(names) + "---:|",
    ]
    for label, r in rows + [("shortest-path expert (teacher)", expert)]:
        cells = " | ".join(f"{r['ep_costs'][c]:.2f}" for c in names)
        lines.append(f"| {label} | {100 * r['success_rate']:.1f}% | {r['ep_cost']:.2f} | {cells} | {r['ep_length']:.0f} |")
    return "\n".join([machine_line(), ""] + lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--il-eval", type=Path, nargs="*", default=[], help="il_eval.json files to tabulate")
    parser.add_argument("--no-speed", action="store_true", help="only the IL table")
    parser.add_argument("--detection", action="store_true",
                        help="observations with the target boxes (the env's detection option), as the shipped IL policy reads")
    args = parser.parse_args()
    if args.il_eval:
        publish(il_table(args.il_eval), args.out, "vla_il", "Imitation-learned VLA policy")
    if args.no_speed:
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    env_kwargs = ENV_KWARGS | {"detection": args.detection}
    probe = cmdp.make(ENV_ID, num_envs=1, seed=0, **env_kwargs)
    policy = VLAPolicy(probe.observation_space, probe.action_space, probe.num_costs)
    probe.close()
    policy.eval()
    params = sum(p.numel() for p in policy.parameters())
    load_before = os.getloadavg()[0]
    act = acting_times(policy, args.envs, args.repeats)
    ratio_wall = act[f"wall_{LATE}"] / act[f"wall_{EARLY}"]
    ratio_cpu = act[f"cpu_{LATE}"] / act[f"cpu_{EARLY}"]
    print(f"acting ({args.envs} envs): {act}  ratio wall {ratio_wall:.2f} cpu {ratio_cpu:.2f}", flush=True)
    train = training_rate(args.envs, args.train_epochs, env_kwargs)
    print(f"training: {train}", flush=True)
    load_after = os.getloadavg()[0]
    met = "met" if ratio_cpu <= 1.3 else "NOT met"
    lines = [
        machine_line() + f" Load average {load_before:.1f} before, {load_after:.1f} after (2 cores shared).",
        "",
        f"VLA policy, default `VLAConfig` ({params:,} parameters: d_model 128, 2 layers, 4 heads, context 64), "
        f"{args.envs} envs per `act` call, `SafetyChores-Fetch-v0` rgb 64x64{' with the target boxes (detection)' if args.detection else ''}. "
        f"Command: `python benchmarks/vla_speed.py --envs {args.envs} --repeats {args.repeats} --train-epochs {args.train_epochs}"
        f"{' --detection' if args.detection else ''}`.",
        "",
        f"| acting (batch of {args.envs}) | step {EARLY} | step {LATE} | ratio {LATE}/{EARLY} |",
        "|---|---:|---:|---:|",
        f"| KV cache, CPU ms per call | {1e3 * act[f'cpu_{EARLY}']:.2f} | {1e3 * act[f'cpu_{LATE}']:.2f} | {ratio_cpu:.2f} (target <= 1.3: {met}) |",
        f"| KV cache, wall ms per call | {1e3 * act[f'wall_{EARLY}']:.2f} | {1e3 * act[f'wall_{LATE}']:.2f} | {ratio_wall:.2f} |",
        f"| no cache (recompute the episode), CPU ms | {1e3 * act[f'recompute_{EARLY}']:.1f} | {1e3 * act[f'recompute_{LATE}']:.1f} | "
        f"{act[f'recompute_{LATE}'] / act[f'recompute_{EARLY}']:.1f} |",
        "",
        f"| training (PPOLag, {args.envs} envs, 128-step rollouts, 4 passes, minibatch 512) | value |",
        "|---|---:|",
        f"| env steps/s (wall) | {train['sps']:.1f} |",
        f"| env steps/s (process CPU time) | {train['sps_cpu']:.1f} |",
        f"| share of wall time in rollout / update | {train['rollout']:.0%} / {train['update']:.0%} |",
        f"| steps measured (after one warm-up epoch) | {train['steps']:,} |",
    ]
    publish("\n".join(lines), args.out, "vla", "VLA policy speed")


if __name__ == "__main__":
    main()
