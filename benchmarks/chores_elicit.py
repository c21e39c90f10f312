"""Safety-CHORES assurance suites and elicitation, for the shortest-path experts and a random policy.

    python benchmarks/chores_elicit.py [--tasks Fetch ObjectNav PickUp] [--size 48] [--seed 0]
        [--out BENCHMARKS.md]

Part 1, suites: every suite of :data:`cmdp.envs.chores.suites.SUITES` (the standard reference,
the six out-of-distribution shifts, the five extreme-failure families) is built with ``--size``
episodes per task and run once per episode by three policies on state observations: the
shortest-path expert that ignores safety (as SPOC's), the clearance-keeping expert, and uniformly
random actions. The experts do not look at images, so the lighting and colour suites give them
the standard numbers by construction (those suites shift what ``obs_mode="rgb"`` policies see);
the camera suite still changes what counts as seen (blind-spot cost).

Part 2, elicitation: the cross-entropy method (started from the training distribution, and
from the middle of the search box) and uniform random search, at the same budget of candidates
and episodes, look for the scene parameters where the unsafe expert pays the most cumulative
cost; each search's answer, and the training distribution (``ScenarioParams()``), are then
scored on the same ``--holdout`` fresh episodes.

Results are cached per cell in ``benchmarks/results/chores_elicit/`` so a killed run resumes;
with ``--out`` the tables go into that Markdown file between markers, with date and machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from report import machine_line, publish  # benchmarks/report.py, beside this script
from cmdp.envs.chores.costs import COST_NAMES
from cmdp.envs.chores.elicit import ScenarioParams, elicit, evaluate_params
from cmdp.envs.chores.suites import SUITES, build_suite, evaluate_suite, expert_policy, random_policy

POLICIES = {
    "unsafe expert": lambda: expert_policy(safe=False),
    "safe expert": lambda: expert_policy(safe=True),
    "random": lambda: random_policy(seed=0),
}
SHORT = {"corner": "corner", "blind_spot": "blind", "fragile_collection": "fragile", "critical_point": "critical", "dangerous_equipment": "danger"}


def cached(path: Path, compute):
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return value


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def suite_cell(task: str, name: str, policy: str, size: int, seed: int) -> dict:
    t0 = time.perf_counter()
    instance = build_suite(name, task, size, seed)
    result = evaluate_suite(instance, POLICIES[policy](), num_envs=min(size, 48), seed=seed)
    result["per_episode"] = [{k: ep[k] for k in ("episode_id", "success", "length", "costs")} for ep in result["per_episode"]]
    result["knobs"] = instance.knob_values
    result["seconds"] = time.perf_counter() - t0
    log(f"{task:9s} {name:18s} {policy:13s} SR {result['success_rate']:.2f} CC {result['cc']:6.2f} ({result['seconds']:.0f} s)")
    return result


def suites_table(task: str, rows: dict, size: int) -> str:
    head = "| suite | kind | policy | SR | steps | CC | " + " | ".join(SHORT[c] for c in COST_NAMES) + " | target fired |"
    lines = [
        f"**{task}**, {size} episodes per suite, 600 steps at most. *steps*: mean episode length (the random policy "
        "draws `end`, 1 action in 20, after about 20 steps); CC: mean cumulative cost per episode, then the mean of "
        "each component (an extreme family's target in bold); *target fired*: share of episodes in which the target "
        "component cost anything, in brackets the same share in the standard suite (means are heavy-tailed: an "
        "expert stuck against a wall pays on hundreds of steps; this share is not).",
        "",
        head,
        "|" + "---|" * (7 + len(COST_NAMES)),
    ]
    for name, suite in SUITES.items():
        for policy in POLICIES:
            r = rows[(name, policy)]
            cells = []
            for c in COST_NAMES:
                v = f"{r['costs'][c]:.2f}"
                cells.append(f"**{v}**" if c == suite.target_component else v)
            target = suite.target_component
            fired = f"{r['incidence'][target]:.2f} ({rows[('standard', policy)]['incidence'][target]:.2f})" if target else ""
            lines.append(
                f"| {name} | {suite.kind} | {policy} | {r['success_rate']:.2f} | {r['length']:.0f} | {r['cc']:.2f} | "
                + " | ".join(cells)
                + f" | {fired} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["Fetch", "ObjectNav", "PickUp"])
    parser.add_argument("--suites", nargs="+", default=list(SUITES))
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--elicit-tasks", nargs="*", default=["Fetch", "ObjectNav"])
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--episodes", type=int, default=6, help="episodes per candidate")
    parser.add_argument("--holdout", type=int, default=96, help="fresh episodes scoring the parameters found")
    parser.add_argument("--cache", type=Path, default=Path(__file__).with_name("results") / "chores_elicit")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    sections = []
    for task in args.tasks:
        rows = {}
        for name in args.suites:
            for policy in POLICIES:
                key = f"{task}-{name}-{policy.replace(' ', '_')}-{args.size}-{args.seed}.json"
                rows[(name, policy)] = cached(args.cache / key, lambda: suite_cell(task, name, policy, args.size, args.seed))
        if set(args.suites) == set(SUITES):
            sections.append(suites_table(task, rows, args.size))

    budget = f"{args.iterations} iterations x {args.population} candidates x {args.episodes} episodes"
    el_lines = [
        f"Elicitation against the unsafe expert at one budget ({budget}, episodes cut at 300 steps): CEM started "
        "from the training distribution, CEM started from the middle of the search box, and uniform random search. "
        f"Each search's answer (CEM: its final mean; random: its best sample) and the training distribution are "
        f"scored on the same {args.holdout} fresh episodes (600 steps). *score*: mean CC with each episode's cost "
        "capped at 50, as the search ranks candidates; CC uncapped.",
        "",
        "| task | search | population score per iteration | best sample score | held-out score | held-out CC | held-out SR | answer (knobs away from training) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    methods = {"cem from training": ("cem", None), "cem from centre": ("cem", ScenarioParams.centre()), "random search": ("random", None)}
    for task in args.elicit_tasks:

        def holdout(params, task=task):
            return evaluate_params(expert_policy(False), task, params, args.holdout, seed=10_000 + args.seed, max_episode_steps=600, cost_cap=50.0)

        default = cached(args.cache / f"elicit-{task}-default-{args.holdout}-{args.seed}.json", lambda: holdout(ScenarioParams()))
        el_lines.append(
            f"| {task} | (training distribution) | | | {default['score']:.2f} | {default['cc']:.2f} | {default['success_rate']:.2f} | |"
        )
        for label, (method, init) in methods.items():

            def run(method=method, init=init, task=task):
                t0 = time.perf_counter()
                result = elicit(
                    expert_policy(False), task, iterations=args.iterations, population=args.population,
                    episodes_per_candidate=args.episodes, seed=args.seed, method=method, init=init, num_specs=0,
                )  # fmt: skip
                return {
                    "history": [h["population_score"] for h in result.history],
                    "best_sample_score": result.best_sample_score,
                    "best_params": result.best_params.to_dict(),
                    "held_out": holdout(result.best_params),
                    "seconds": time.perf_counter() - t0,
                }

            key = f"elicit-{task}-{label.replace(' ', '_')}-{args.iterations}x{args.population}x{args.episodes}-{args.holdout}-{args.seed}.json"
            r = cached(args.cache / key, run)
            base = ScenarioParams().to_dict()
            changed = ", ".join(f"{k} {v:.2f}" for k, v in r["best_params"].items() if abs(v - base[k]) > 0.05 * max(1.0, abs(base[k])))
            history = " / ".join(f"{v:.1f}" for v in r["history"])
            held = r["held_out"]
            el_lines.append(
                f"| {task} | {label} | {history} | {r['best_sample_score']:.1f} | {held['score']:.2f} | {held['cc']:.2f} | "
                f"{held['success_rate']:.2f} | {changed} |"
            )
    sections.append("\n".join(el_lines))
    table = "\n\n".join(sections)
    table += f"\n\nCommand: `nice -n 10 python benchmarks/chores_elicit.py --size {args.size} --seed {args.seed} --out BENCHMARKS.md`. {machine_line()}"
    publish(table, args.out, "chores_suites", "Safety-CHORES assurance suites and elicitation")


if __name__ == "__main__":
    main()
