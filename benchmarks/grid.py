"""The solver-comparison grid (``cmdp benchmark``), timed, with its table written to BENCHMARKS.md.

    python benchmarks/grid.py [cmdp benchmark flags] [--report BENCHMARKS.md]

Every flag except ``--report`` goes to ``cmdp benchmark`` unchanged (``--full``, ``--workers``,
``--ray``, ``--seeds``, ...); the default output directory is ``benchmarks/results/grid-small``
(or ``grid-full``). With ``--report`` the table of every finished cell of the grid goes into
that Markdown file between the ``grid`` markers, with the date, the machine, the command and
the measured wall time, and the learning-curve plots are copied to ``benchmarks/figures/``
where BENCHMARKS.md shows them. ``--section NAME`` writes another table beside the main one
(e.g. the Safety-CHORES cells, ``--envs SafetyChores-... --section grid_chores``). Rerunning
resumes a killed grid; the wall time written is the sum over the invocations that ran cells (``OUT/invocations.json``), with the machine's load
average at the end of the last one (the machine may be shared, and the steps/s depend on it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from report import machine_line, update_section  # benchmarks/report.py, beside this script
from cmdp.benchmark.cells import RESULT_FILE, CellSpec
from cmdp.benchmark.runner import CELL_TORCH_THREADS
from cmdp.benchmark.summary import OVER_LIMIT_NOTE, aggregate, markdown_table
from cmdp.cli import main as cmdp_main

FIGURES = Path(__file__).resolve().parent / "figures"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, help="Markdown file to write the table into (e.g. BENCHMARKS.md)")
    parser.add_argument("--out", type=Path, help="output directory (default benchmarks/results/grid-small|full)")
    parser.add_argument("--section", default="grid", help="BENCHMARKS.md section (and figure prefix) to write")
    args, passthrough = parser.parse_known_args()
    full = "--full" in passthrough
    out = args.out or Path("benchmarks/results") / f"grid-{'full' if full else 'small'}"
    code = cmdp_main(["benchmark", *passthrough, "--out", str(out)])
    if code not in (0, 1) or args.report is None:
        return code
    extra = [f"--out {args.out}"] if args.out else []
    extra += [f"--section {args.section}"] if args.section != "grid" else []
    _report(args.report, out, " ".join(["python benchmarks/grid.py", *passthrough, *extra]), args.section)
    return code


def _report(path: Path, out: Path, command: str, section: str = "grid") -> None:
    plan = json.loads((out / "grid.json").read_text())
    specs = [CellSpec.from_dict(c) for c in plan["cells"]]
    results = []
    for spec in specs:
        result_path = out / "cells" / spec.name / RESULT_FILE
        if result_path.exists():
            results.append(json.loads(result_path.read_text()))
    rows = aggregate(results)
    cell_seconds = sum(r["train_seconds"] + r["eval_seconds"] for r in results)
    runs = [e for e in json.loads((out / "invocations.json").read_text()) if e["cells_run"] or e["interrupted"]]
    seconds = sum(e["seconds"] for e in runs)
    load = runs[-1]["load_average"] if runs else None
    envs = list(dict.fromkeys(r.env_id for r in rows))
    solvers = list(dict.fromkeys(r.solver for r in rows))
    seeds = sorted({s for r in rows for s in r.seeds})
    episodes = ", ".join(f"{env} {n}" for env, n in dict((s.env_id, s.eval_episodes) for s in specs).items())
    note = f" over {len(runs)} invocations (resumed after interruptions)" if len(runs) > 1 else ""
    busy = f"; load average at the end (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in load)}" if load else ""
    lines = [
        machine_line(CELL_TORCH_THREADS),
        "",
        f"Command: `nice -n 10 {command}` (the same as `cmdp benchmark` with those flags). "
        f"{len(results)} of {len(specs)} cells: {len(solvers)} solvers x {len(envs)} envs x seeds "
        f"{', '.join(map(str, seeds))}, default settings of every solver plus the per-env rows of "
        "`cmdp/benchmark/settings.py`, one torch thread per cell. "
        f"Wall time **{seconds / 60:.1f} min**{note}{busy}; the cells' own training and evaluation "
        f"time sums to {cell_seconds / 60:.1f} min (cells run side by side, so their steps/s are under "
        "contention).",
        "",
        f"EpRet and EpCost: the final evaluation of each cell (sampled actions; episodes: {episodes}), "
        f"mean ± std over seeds; EpCost is per episode. {OVER_LIMIT_NOTE}",
        "",
        markdown_table(rows),
    ]
    if plan.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{e} ({why})" for e, why in plan["skipped"])]
    FIGURES.mkdir(exist_ok=True)
    figures = []
    for png in sorted((out / "plots").glob("*.png")):
        target = FIGURES / f"{section.replace('_', '-')}-{png.name}"
        shutil.copyfile(png, target)
        figures.append(f"![{png.stem}](benchmarks/figures/{target.name})")
    if figures:
        lines += ["", "Learning curves (training episodes, mean ± std over seeds; dots: evaluations; dashed: the limit):"]
        lines += ["", *figures]
    title = "Solver comparison grid" + ("" if section == "grid" else f" ({', '.join(envs)})")
    update_section(path, section, title, "\n".join(lines))
    print(f"wrote the grid table to {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
