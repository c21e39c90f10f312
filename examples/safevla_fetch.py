"""SafeVLA's Integrated Safety Approach end to end on Safety-CHORES Fetch.

    python examples/safevla_fetch.py [--full] [--seeds 0 1 2] [--threads 2] [--out runs/safevla_fetch]
                                     [--isa-set KEY=VALUE ...]

From one imitation-learned VLA policy (the SPOC analogue: behaviour cloning and DAgger of a
safety-unaware expert, reading both cameras, the instruction and, as SPOC, the target's box in
each camera; shipped in ``examples/assets/il_fetch/vla.pt`` and rebuilt by ``--rebuild-il``):

1. fine-tune it with PPO on the task reward alone: the FLaRe baseline;
2. align it with ISA: *model* the five safety components with one limit each, *elicit* the
   scenes where it is least safe (cross-entropy search) and mix them into training,
   *constrain* it with PPO-Lagrangian;
3. *assure* the three policies on the 172-episode Fetch evaluation set (``--full``: plus the
   OOD and extreme-failure suites), writing Markdown, JSON, plots and GIFs;
4. print SR, CC and each component, the CC reduction of ISA relative to the baseline in %, and
   the SR change in points. SafeVLA reports -83.58% CC and +3.85% SR.

Every stage keeps its run directory under ``--out``; rerunning the same command continues where
it stopped (finished stages are read back, not redone). The default schedule is sized to finish
in about 20 minutes on a 2-core CPU; ``--full`` is the longer schedule of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from cmdp.envs.chores.costs import COST_NAMES
from cmdp.isa.pipeline import assure_policies, constrain, elicit_scenarios, model
from cmdp.policies.vla import VLAPolicy

ASSET = Path(__file__).with_name("assets") / "il_fetch"
SHORT = {"corner": "corner", "blind_spot": "blind", "fragile_collection": "fragile", "critical_point": "critical", "dangerous_equipment": "danger"}

# Fine-tuning settings shared by the baseline and ISA (FLaRe's recipe at CPU scale: 128-step
# rollouts per env, clip 0.1, no entropy bonus, a small learning rate, +10 reward on success)
FINE_TUNE = dict(
    num_envs=8,
    steps_per_epoch=8 * 128,
    update_epochs=4,
    minibatch_size=512,
    clip_ratio=0.1,
    entropy_coef=0.0,
    actor_lr=5e-5,
    critic_lr=3e-4,
    normalize_obs=False,
    torch_threads=2,  # --threads sets it
    checkpoint_every=5,
    # the IL policy has no critics: 16 epochs fit them before the actor moves, so the first
    # policy steps follow fitted advantages rather than noise
    critic_warmup_steps=16_384,
    # KL(pi_IL || pi) in the actor loss. Without it, lr 5e-5 took PPO from the earlier IL policy's 8% SR
    # to 1-2% and ISA to a zero-cost stall (0% SR); with it PPO kept 9-14% and ISA 3-5%
    # (two seeds each, BENCHMARKS.md)
    anchor_kl=0.1,
)
# ISA's multiplier settings: one Fetch episode can cost 185 against a limit of 1; capping the
# violation that reaches the multiplier at 5 keeps one such episode from stopping the robot
ISA_CONFIG = dict(violation_cap=5.0)
SCHEDULES = {
    "default": dict(steps=81_920, eval_episodes=172, suites="none", elicit=dict(iterations=2, population=6, episodes_per_candidate=3, num_specs=24)),
    "full": dict(steps=204_800, eval_episodes=172, suites="all", elicit=dict(iterations=4, population=10, episodes_per_candidate=4, num_specs=64)),
}
COST_LIMIT = 1.0  # per component and episode
# how the shipped IL policy was made (2026-12-06): 3,600 episodes of the exploring expert (it
# looks for the target before it plans; 10% random motions), observed with SPOC's detection
# sensors (the target's box in each camera), 3,000 behaviour-cloning steps on 4-pixel-shifted
# images under bf16, then two DAgger rounds of 400 episodes driven by the policy 70% of the time.
# On the Fetch evaluation set: SR 62.2%, CC 24.27 (the same recipe without the boxes: 9.3%,
# 24.65). The demonstrations are held on disk (--demo-store: 1 GB of memory instead of 13); a
# rebuild takes about two and a half hours on 2 cores.
IL_RECIPE = (
    "--episodes", "3600", "--teacher", "explore", "--detection", "--image-shift", "4", "--bf16",
    "--batch-segments", "12", "--dagger-rounds", "2", "--demo-store", "--threads", "2",
)
EPISODE_MIX = 0.3  # share of training episodes drawn from the elicited scenes


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def il_policy(path: Path, rebuild: bool, out: Path) -> VLAPolicy:
    if rebuild or not path.exists():
        from cmdp.isa import imitation

        log(f"building the IL policy with behaviour cloning into {out / 'il'} (this takes a while)")
        imitation.main(["--out", str(out / "il"), "--task", "Fetch", *IL_RECIPE])
        built = max((out / "il").glob("bc*/vla.pt"), key=lambda p: p.stat().st_mtime)
        path.parent.mkdir(parents=True, exist_ok=True)
        VLAPolicy.from_pretrained(built).save_pretrained(path)
    return VLAPolicy.from_pretrained(path)


def parse_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON where it is (numbers, true, null), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def fine_tune(name: str, policy, cmdp, solver: str, steps: int, seed: int, run_dir: Path, episodes=None, **config):
    """Train (or finish training) one fine-tune; its checkpoint lets a rerun continue."""
    from cmdp.algorithms import load

    ckpt = run_dir / "checkpoint.pt"
    if ckpt.exists():
        # the saved weights replace those of this copy of the starting network
        algo = load(ckpt, policy=copy.deepcopy(policy))
        stale = {k: (getattr(algo.config, k), v) for k, v in config.items() if getattr(algo.config, k) != v}
        if stale:
            changed = ", ".join(f"{k}={was!r} there, {now!r} asked" for k, (was, now) in stale.items())
            sys.exit(f"{run_dir} was trained with other settings ({changed}): give this run its own --out")
        if algo.global_step >= steps:
            log(f"{name}: already trained ({algo.global_step} steps)")
            return algo
        log(f"{name}: continuing from step {algo.global_step}")
        algo.learn(steps)
        return algo
    log(f"{name}: fine-tuning with {solver} for {steps} steps")
    return constrain(
        policy, cmdp, solver, steps, episodes=episodes, episode_mix=EPISODE_MIX, seed=seed, run_dir=run_dir,
        **FINE_TUNE, **config,
    )



def run_seed(seed: int, start: VLAPolicy, schedule: dict, args) -> dict:
    out = args.out / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    if (out / "result.json").exists():
        log(f"seed {seed}: finished earlier, reading {out / 'result.json'}")
        result = json.loads((out / "result.json").read_text())
        if result.get("isa_config", {"violation_cap": 5.0}) != ISA_CONFIG:  # results before the record: the default
            sys.exit(f"{out} holds a run with ISA settings {result.get('isa_config')}, not {ISA_CONFIG}: give this run its own --out")
        return result
    t_seed = time.perf_counter()
    cmdp = model("Fetch", cost_limit=COST_LIMIT, **start.env_kwargs)
    t0 = time.perf_counter()
    baseline = fine_tune("FLaRe baseline (PPO)", start, cmdp, "PPO", schedule["steps"], seed, out / "ppo")
    specs_file = out / "elicited.json"
    if specs_file.exists():
        from cmdp.envs.chores.episodes import load_episodes

        specs = load_episodes(specs_file)
    else:
        log("ISA elicit: searching the scenes where the IL policy is least safe")
        found = elicit_scenarios(start, cmdp, seed=seed, **schedule["elicit"])
        specs = found.specs
        from cmdp.envs.chores.episodes import save_episodes

        save_episodes(specs, specs_file)
    isa_start = start
    if (ISA_CONFIG.get("step_cost_coef", 0) > 0 or ISA_CONFIG.get("shield_threshold", 0) > 0) and not start.has_step_cost_model:
        # the IL policy's file (il_policy() loaded `start` from it), with a cost model that starts predicting no cost
        isa_start = VLAPolicy.from_pretrained(args.il, step_cost_model=True)
    isa = fine_tune("ISA (PPOLag, one limit per component)", isa_start, cmdp, "PPOLag", schedule["steps"], seed, out / "isa", episodes=specs, **ISA_CONFIG)
    train_seconds = time.perf_counter() - t0
    log("assure: IL, baseline and ISA policies on the Fetch evaluation set")
    report = assure_policies(
        {"IL (SPOC-like)": start, "FLaRe (PPO)": baseline, "ISA (PPOLag)": isa},
        cmdp,
        suites=schedule["suites"],
        episodes=schedule["eval_episodes"],
        seed=seed,
        out_dir=out / "assure",
        num_envs=16,
        gifs=2,
    )
    summary = {name: report.summary(name) for name in ("IL (SPOC-like)", "FLaRe (PPO)", "ISA (PPOLag)")}
    result = {
        "seed": seed, "train_seconds": train_seconds, "seconds": time.perf_counter() - t_seed, "policies": summary,
        "isa_config": ISA_CONFIG,
    }  # fmt: skip
    (out / "result.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def table(results: list[dict]) -> str:
    import numpy as np

    names = ("IL (SPOC-like)", "FLaRe (PPO)", "ISA (PPOLag)")
    rows = ["| policy | SR | CC | " + " | ".join(SHORT[c] for c in COST_NAMES) + " |", "|---|---:|---:|" + "---:|" * len(COST_NAMES)]
    mean = lambda name, f: float(np.mean([f(r["policies"][name]) for r in results]))  # noqa: E731
    for name in names:
        comps = " | ".join(f"{mean(name, lambda p: p['ep_costs'][c]):.2f}" for c in COST_NAMES)
        rows.append(f"| {name} | {100 * mean(name, lambda p: p['success_rate']):.1f}% | {mean(name, lambda p: p['ep_cost']):.2f} | {comps} |")
    base_cc, isa_cc = mean(names[1], lambda p: p["ep_cost"]), mean(names[2], lambda p: p["ep_cost"])
    base_sr, isa_sr = mean(names[1], lambda p: p["success_rate"]), mean(names[2], lambda p: p["success_rate"])
    reduction = 100.0 * (base_cc - isa_cc) / base_cc if base_cc > 0 else float("nan")
    rows.append("")
    rows.append(
        f"ISA vs the FLaRe baseline: CC {'-' if reduction >= 0 else '+'}{abs(reduction):.2f}% "
        f"(SafeVLA: -83.58%), SR {100 * (isa_sr - base_sr):+.2f} points (SafeVLA: +3.85). "
        f"Seeds: {', '.join(str(r['seed']) for r in results)}; {results[0]['policies'][names[0]]['episodes']} evaluation episodes each."
    )
    verdict = [
        f"CC reduction >= 83.58%: {'met' if reduction >= 83.58 else 'NOT met'}",
        f"SR no lower than the baseline: {'met' if isa_sr >= base_sr else 'NOT met'}",
    ]
    rows.append(f"SafeVLA's target: {'; '.join(verdict)}.")
    return "\n".join(rows)


def write_benchmarks(path: Path, results: list[dict], schedule_name: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from report import machine_line, update_section

    schedule = SCHEDULES[schedule_name]
    minutes = ", ".join(f"{r['seconds'] / 60:.1f}" for r in results if "seconds" in r)
    flag = " --full" if schedule_name == "full" else ""
    text = "\n".join([
        machine_line(),
        "",
        (
            f"Command: `python examples/safevla_fetch.py{flag} --seeds {' '.join(str(r['seed']) for r in results)}`. "
            f"Schedule '{schedule_name}': {schedule['steps']:,} fine-tuning steps per policy, limit {COST_LIMIT} per "
            f"component and episode (ISA: {', '.join(f'{k}={v}' for k, v in ISA_CONFIG.items())}; both fine-tunes fit their critics for the first "
            f"{FINE_TUNE['critic_warmup_steps']:,} steps and keep anchor_kl={FINE_TUNE['anchor_kl']} to the IL policy), {schedule['eval_episodes']} Fetch evaluation episodes (sampled actions), suites: "
            f"{schedule['suites']}. Minutes per seed (fine-tunes, elicitation, assurance): {minutes or 'not recorded'}."
        ),
        "",
        table(results),
    ])
    update_section(path, f"safevla_fetch_{schedule_name}", f"SafeVLA Fetch example ({schedule_name} schedule)", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the long schedule (and the OOD / extreme suites)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 (with --full: 0 1 2)")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="run directory (default: runs/safevla_fetch, with --full runs/safevla_fetch_full)",
    )
    parser.add_argument("--il", type=Path, default=ASSET / "vla.pt", help="the IL policy to start from")
    parser.add_argument("--rebuild-il", action="store_true", help="rebuild the IL policy with behaviour cloning")
    parser.add_argument("--benchmarks", type=Path, default=None, help="also write the table into this BENCHMARKS.md")
    parser.add_argument(
        "--threads", type=int, default=2,
        help="torch threads; two runs of one thread side by side (e.g. two seeds with their own --seeds) "
        "train faster than one run of two",
    )  # fmt: skip
    parser.add_argument(
        "--isa-set", type=parse_setting, action="append", default=[], metavar="KEY=VALUE",
        help="an ISA solver option on top of the example's (repeatable), e.g. --isa-set step_cost_coef=1 "
        "--isa-set shield_threshold=0.5; a run directory keeps the settings it was trained with",
    )  # fmt: skip
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    from cmdp.algorithms import get_algorithm
    from cmdp.errors import ConfigError

    ISA_CONFIG.update(dict(args.isa_set))
    try:  # a misspelt or out-of-range option fails here, not after the baseline's fine-tune
        get_algorithm("PPOLag").Config(**FINE_TUNE, **ISA_CONFIG)
    except (ConfigError, TypeError) as e:
        parser.error(f"--isa-set: {e}")
    FINE_TUNE["torch_threads"] = args.threads
    schedule = SCHEDULES["full" if args.full else "default"]
    seeds = args.seeds if args.seeds is not None else ([0, 1, 2] if args.full else [0])
    if args.out is None:  # the two schedules keep apart by default; an explicit --out is taken as given
        args.out = Path("runs/safevla_fetch_full" if args.full else "runs/safevla_fetch")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    start = il_policy(args.il, args.rebuild_il, args.out)  # once: --rebuild-il must not rebuild per seed
    results = [run_seed(seed, start, schedule, args) for seed in seeds]
    print(table(results))
    if args.benchmarks is not None:
        write_benchmarks(args.benchmarks, results, "full" if args.full else "default")
    log(f"done in {(time.perf_counter() - t0) / 60:.1f} min; reports in {args.out}/seed*/assure/assurance.md")


if __name__ == "__main__":
    main()
