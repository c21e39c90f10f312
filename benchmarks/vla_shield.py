"""A cost shield on a fine-tuned VLA policy: how success and cost move with its threshold.

    python benchmarks/vla_shield.py [--policy ppo|isa] [--seeds 0 1 2] [--thresholds 0 0.3 0.25 0.2] [--threads 1]
                                    [--runs runs/vla_shield] [--out BENCHMARKS.md]

Per seed, the FLaRe baseline of ``examples/safevla_fetch.py`` (``--policy isa``: its ISA
fine-tune, with the example's elicitation and settings) is fine-tuned from the shipped IL
policy with the example's recipe, a one-step cost model riding along
(``VLAConfig(step_cost_model=True)``: a critic head fitted to the taken actions' costs; it does
not touch the actor). The trained policy is then assured on the 172-episode Fetch evaluation
set once per threshold, loaded with the solver option ``shield_threshold`` (0: no shield), so
that it samples only among the actions its cost model predicts to cost at most the threshold
on the step. Training does not use the shield: a shield in training keeps the model from ever
seeing the actions it masks (see BENCHMARKS.md). The fine-tunes and each assurance are kept
under ``--runs``; a rerun reads them back. With ``--out`` the table goes into that Markdown file
under the ``vla_shield`` markers.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from report import machine_line, publish  # benchmarks/report.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import safevla_fetch as example  # noqa: E402  (the example's recipe, not a copy of it)

from cmdp.algorithms import load  # noqa: E402
from cmdp.envs.chores.costs import COST_NAMES  # noqa: E402
from cmdp.isa.pipeline import assure_policies, model  # noqa: E402
from cmdp.policies.vla import VLAPolicy  # noqa: E402


WHAT = {"ppo": "FLaRe baseline (PPO)", "isa": "ISA fine-tune (PPOLag, its elicited scenes and settings)"}


def fine_tuned(policy: str, seed: int, start: VLAPolicy, cmdp, runs: Path) -> Path:
    """The run directory of seed's fine-tune (trained here unless done): the example's baseline
    ('ppo') or its ISA fine-tune ('isa': PPOLag with the example's settings and elicited scenes)."""
    from cmdp.envs.chores.episodes import load_episodes, save_episodes

    schedule = example.SCHEDULES["default"]
    run_dir = runs / f"seed{seed}" / policy
    if policy == "ppo":
        example.fine_tune("FLaRe baseline (PPO) with a one-step cost model", start, cmdp, "PPO", schedule["steps"], seed, run_dir)
        return run_dir
    specs_file = runs / f"seed{seed}" / "elicited.json"
    if not specs_file.exists():
        save_episodes(example.elicit_scenarios(start, cmdp, seed=seed, **schedule["elicit"]).specs, specs_file)
    example.fine_tune(
        "ISA (PPOLag) with a one-step cost model", start, cmdp, "PPOLag", schedule["steps"], seed, run_dir,
        episodes=load_episodes(specs_file), **example.ISA_CONFIG,
    )  # fmt: skip
    return run_dir


def assured(run_dir: Path, seed: int, threshold: float, start: VLAPolicy, cmdp, episodes: int) -> dict:
    """The assurance summary of a fine-tune under the shield ``threshold`` (read back if done)."""
    out = run_dir.parent / f"{run_dir.name}-shield-{threshold:g}"
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    # load() fills the network it is given with the saved weights: a copy, so that `start` stays
    # the IL policy the next seed's elicitation and fine-tune begin from
    algo = load(run_dir / "checkpoint.pt", policy=copy.deepcopy(start), shield_threshold=threshold)
    report = assure_policies({"policy": algo}, cmdp, suites="none", episodes=episodes, seed=seed, out_dir=out, num_envs=16, gifs=0)
    summary = report.summary("policy")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", choices=("ppo", "isa"), default="ppo", help="which of the example's fine-tunes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.3, 0.25, 0.2])
    parser.add_argument("--episodes", type=int, default=172)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=Path, default=Path("runs/vla_shield"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if any(t < 0 for t in args.thresholds):
        parser.error(f"thresholds must be >= 0 (0: no shield), got {args.thresholds}")
    torch.set_num_threads(args.threads)
    example.FINE_TUNE["torch_threads"] = args.threads
    steps = example.SCHEDULES["default"]["steps"]  # fine_tuned() trains for this many
    t0 = time.perf_counter()
    start = VLAPolicy.from_pretrained(example.ASSET / "vla.pt", step_cost_model=True)
    cmdp = model("Fetch", cost_limit=example.COST_LIMIT, **start.env_kwargs)
    results: dict[float, list[dict]] = {t: [] for t in args.thresholds}
    for seed in args.seeds:
        run_dir = fine_tuned(args.policy, seed, start, cmdp, args.runs)
        for t in args.thresholds:
            results[t].append(assured(run_dir, seed, t, start, cmdp, args.episodes))
            s = results[t][-1]
            print(f"seed {seed}, threshold {t:g}: SR {s['success_rate']:.1%}, CC {s['ep_cost']:.2f}", flush=True)

    def mean(t: float, f) -> float:
        return float(np.mean([f(s) for s in results[t]]))

    rows = [
        "| shield threshold | SR | CC | " + " | ".join(example.SHORT[c] for c in COST_NAMES) + " | CC of successful episodes | per seed: SR / CC |",
        "|---|---:|---:|" + "---:|" * len(COST_NAMES) + "---:|---|",
    ]
    for t in args.thresholds:
        comps = " | ".join(f"{mean(t, lambda s: s['ep_costs'][c]):.2f}" for c in COST_NAMES)
        per_seed = "; ".join(f"{s['success_rate']:.1%} / {s['ep_cost']:.2f}" for s in results[t])
        succ = [s.get("ep_cost_success") for s in results[t]]
        succ_cell = f"{np.mean(succ):.2f}" if all(v is not None for v in succ) else "-"
        rows.append(
            f"| {'none' if t == 0 else f'{t:g}'} | {mean(t, lambda s: s['success_rate']):.1%} | {mean(t, lambda s: s['ep_cost']):.2f} | "
            f"{comps} | {succ_cell} | {per_seed} |"
        )
    text = "\n".join([
        machine_line(args.threads),
        "",
        f"Command: `python benchmarks/vla_shield.py --policy {args.policy} --seeds {' '.join(map(str, args.seeds))} --thresholds "
        f"{' '.join(f'{t:g}' for t in args.thresholds)} --threads {args.threads}`. Per seed: the example's "
        f"{WHAT[args.policy]} ({steps:,} steps from `examples/assets/il_fetch/vla.pt`) fine-tuned with a one-step cost model, "
        f"then assured on {args.episodes} Fetch evaluation episodes (sampled actions) once per shield threshold: the "
        "policy samples only among the actions whose predicted cost on the step, summed over the five channels, is at "
        f"most the threshold. Means over seeds {', '.join(map(str, args.seeds))}; {(time.perf_counter() - t0) / 60:.1f} min "
        "in this invocation (fine-tunes and assurances read back from earlier invocations are not counted).",
        "",
        *rows,
    ])  # fmt: skip
    key = "vla_shield" if args.policy == "ppo" else "vla_shield_isa"
    title = "A cost shield on the fine-tuned VLA policy" if args.policy == "ppo" else "A cost shield on ISA's fine-tuned VLA policy"
    publish(text, args.out, key, title)


if __name__ == "__main__":
    main()
