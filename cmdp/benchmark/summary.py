"""Tables and learning-curve plots of a benchmark grid, from the cells' ``result.json`` files.

``results.csv`` and ``results.md`` have one row per (env, solver): the final evaluation's
EpRet and EpCost as mean and standard deviation over seeds (``numpy.std``, ddof 0), the
limit, the fraction of seeds whose final evaluation is over the limit on some channel, the
fraction of the later half of all evaluations that are over it, and the training throughput.
The later-half count is there because a Lagrangian's last iterate circles the constrained
optimum: a final evaluation caught at the top of a swing reads as a violation that the
evaluation before it did not show, and one caught at the bottom reads as safety.
``cells.csv`` has one row per cell. ``plots/<env>.png`` draws the training curves (the mean
return and per-channel cost of the episodes that ended in each epoch) of every solver, seeds
aggregated as their mean and a band of one standard deviation, with the limit as a dashed line
and the evaluations as points with error bars.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "OVER_LIMIT_NOTE", "SolverRow", "aggregate", "evaluation_over_limit", "late_evaluations", "markdown_table",
    "plot_env", "write_cells_csv", "write_results_csv",
]  # fmt: skip

OVER_LIMIT_NOTE = (
    "'over limit': seeds whose final EpCost exceeds the limit on some channel; 'late evals over': of "
    "the later half of every seed's evaluations, those over the limit on some channel (no tolerance "
    "for evaluation noise in either)."
)


@dataclass(frozen=True)
class SolverRow:
    """One solver on one env, over seeds."""

    env_id: str
    solver: str
    seeds: tuple[int, ...]
    steps: int
    cost_names: tuple[str, ...]
    cost_limit: tuple[float, ...]
    ep_return: tuple[float, float]  # (mean, std) over seeds
    ep_cost: tuple[float, float]  # summed over channels
    ep_costs: tuple[tuple[float, float], ...]  # per channel
    over_limit: int  # seeds whose final evaluation is over some channel's limit
    steps_per_second: float | None
    success_rate: float | None
    late_over: int  # evaluations in the later half of each seed's that are over some limit
    late_evaluations: int  # evaluations in the later halves, summed over seeds

    @property
    def over_limit_fraction(self) -> float:
        return self.over_limit / len(self.seeds)

    @property
    def late_over_fraction(self) -> float:
        return self.late_over / self.late_evaluations


def evaluation_over_limit(evaluation: Mapping[str, Any], cost_names: Sequence[str], limits: Sequence[float]) -> bool:
    """Whether an evaluation's mean episode cost is over the limit on some channel."""
    return any(evaluation["ep_costs"][name] > limit for name, limit in zip(cost_names, limits))


def late_evaluations(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The later half of a cell's evaluations (the middle one included when their number is odd)."""
    evaluations = result["evaluations"]  # never empty: the last one is the cell's final evaluation
    return evaluations[len(evaluations) // 2 :]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def aggregate(results: Sequence[Mapping[str, Any]]) -> list[SolverRow]:
    """Group cell results by (env, solver), in the order they first appear."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["cell"]["env_id"], r["cell"]["solver"]), []).append(r)
    rows = []
    for (env_id, solver), cells in groups.items():
        names = tuple(cells[0]["cost_names"])
        finals = [c["final"] for c in cells]
        speeds = [c["steps_per_second"] for c in cells if c.get("steps_per_second")]
        success = [f["success_rate"] for f in finals if f.get("success_rate") is not None]
        late = [
            evaluation_over_limit(e, c["cost_names"], c["cost_limit"]) for c in cells for e in late_evaluations(c)
        ]
        rows.append(
            SolverRow(
                env_id=env_id,
                solver=solver,
                seeds=tuple(c["cell"]["seed"] for c in cells),
                steps=int(cells[0]["steps"]),
                cost_names=names,
                cost_limit=tuple(cells[0]["cost_limit"]),
                ep_return=_mean_std([f["ep_return"] for f in finals]),
                ep_cost=_mean_std([f["ep_cost"] for f in finals]),
                ep_costs=tuple(_mean_std([f["ep_costs"][n] for f in finals]) for n in names),
                over_limit=sum(bool(c["over_limit"]) for c in cells),
                steps_per_second=float(np.mean(speeds)) if speeds else None,
                success_rate=float(np.mean(success)) if success else None,
                late_over=sum(late),
                late_evaluations=len(late),
            )
        )
    return rows


def _join(values: Sequence[Any]) -> str:
    return ";".join(str(v) for v in values)


def write_results_csv(rows: Sequence[SolverRow], path: Path) -> Path:
    """``results.csv``: one row per (env, solver); per-channel values joined with ``;``."""
    header = [
        "env", "solver", "seeds", "steps", "cost_channels", "cost_limit",
        "ep_return_mean", "ep_return_std", "ep_cost_mean", "ep_cost_std",
        "ep_cost_channels_mean", "ep_cost_channels_std",
        "over_limit_fraction", "steps_per_second", "success_rate", "late_over_fraction",
    ]  # fmt: skip
    lines = [
        [
            r.env_id, r.solver, _join(r.seeds), r.steps, _join(r.cost_names), _join(r.cost_limit),
            *r.ep_return, *r.ep_cost,
            _join(m for m, _ in r.ep_costs), _join(s for _, s in r.ep_costs),
            r.over_limit_fraction, _blank(r.steps_per_second), _blank(r.success_rate),
            r.late_over_fraction,
        ]  # fmt: skip
        for r in rows
    ]
    return _write_csv(path, header, lines)


def write_cells_csv(results: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """``cells.csv``: one row per cell with its final evaluation."""
    header = [
        "env", "solver", "seed", "steps", "cost_channels", "cost_limit", "ep_return", "ep_cost",
        "ep_cost_channels", "over_limit", "steps_per_second", "train_seconds", "eval_seconds",
        "resumed_from_step",
    ]  # fmt: skip
    lines = []
    for r in results:
        final = r["final"]
        lines.append(
            [
                r["cell"]["env_id"], r["cell"]["solver"], r["cell"]["seed"], r["steps"],
                _join(r["cost_names"]), _join(r["cost_limit"]), final["ep_return"], final["ep_cost"],
                _join(final["ep_costs"][n] for n in r["cost_names"]), int(bool(r["over_limit"])),
                _blank(r.get("steps_per_second")), r["train_seconds"], r["eval_seconds"],
                _blank(r.get("resumed_from_step")),
            ]  # fmt: skip
        )
    return _write_csv(path, header, lines)


def _blank(x: Any) -> Any:
    return "" if x is None else x


def _write_csv(path: Path, header: list[str], lines: list[list[Any]]) -> Path:
    from cmdp.runlog import _atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(lines)
    _atomic_write_text(path, buffer.getvalue())
    return path


# ---- Markdown ------------------------------------------------------------------------------


def fmt(x: float) -> str:
    """A number with about three significant digits and no exponent for everyday magnitudes."""
    if not math.isfinite(x):
        return str(x)
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def format_limits(limits: Sequence[float], number: Any = fmt) -> str:
    """Per-channel limits, or one value and "each" when every channel has the same one."""
    if len(limits) > 1 and len(set(limits)) == 1:
        return f"{number(limits[0])} each"
    return ", ".join(number(x) for x in limits)


def _pm(mean_std: tuple[float, float]) -> str:
    return f"{fmt(mean_std[0])} ± {fmt(mean_std[1])}"


def markdown_table(rows: Sequence[SolverRow]) -> str:
    """The results as a Markdown table (EpCost per channel when there are several)."""
    lines = [
        "| env | solver | seeds | steps | EpRet | success | EpCost | limit | over limit | late evals over "
        "| train steps/s |",
        "|---|---|---:|---:|---|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        if len(r.cost_names) == 1:
            cost = _pm(r.ep_cost)
        else:
            cost = ", ".join(f"{n} {_pm(ms)}" for n, ms in zip(r.cost_names, r.ep_costs))
        speed = f"{r.steps_per_second:,.0f}" if r.steps_per_second else "-"
        success = "-" if r.success_rate is None else f"{100 * r.success_rate:.0f}%"
        lines.append(
            f"| {r.env_id} | {r.solver} | {len(r.seeds)} | {r.steps:,} | {_pm(r.ep_return)} | {success} | {cost} "
            f"| {format_limits(r.cost_limit, fmt)} | {r.over_limit}/{len(r.seeds)} "
            f"| {r.late_over}/{r.late_evaluations} | {speed} |"
        )
    return "\n".join(lines)


# ---- plots ---------------------------------------------------------------------------------


def seed_band(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds of curves ``(steps, values)`` with gaps (NaN values are dropped).

    Each seed is interpolated linearly onto the union of all steps, within its own first and
    last valid step; the mean and std at a step are over the seeds valid there.
    """
    grid = np.unique(np.concatenate([s for s, _ in curves])) if curves else np.zeros(0)
    stacked = np.full((len(curves), grid.size), np.nan)
    for i, (steps, values) in enumerate(curves):
        ok = np.isfinite(values)
        if not ok.any():
            continue
        xs, ys = steps[ok], values[ok]
        inside = (grid >= xs[0]) & (grid <= xs[-1])
        stacked[i, inside] = np.interp(grid[inside], xs, ys)
    valid = np.isfinite(stacked).any(axis=0)
    grid, stacked = grid[valid], stacked[:, valid]
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(stacked, axis=0) if grid.size else np.zeros(0)
        std = np.nanstd(stacked, axis=0) if grid.size else np.zeros(0)
    return grid, mean, std


def _curve(result: Mapping[str, Any], column: str) -> tuple[np.ndarray, np.ndarray]:
    curve = result["curve"]
    j = curve["columns"].index(column)
    rows = curve["rows"]
    steps = np.array([row[0] for row in rows], dtype=np.float64)
    values = np.array([np.nan if row[j] is None else row[j] for row in rows], dtype=np.float64)
    return steps, values


def plot_env(env_id: str, results: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Learning curves of every solver on ``env_id``: return, then one panel per cost channel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    by_solver: dict[str, list[Mapping[str, Any]]] = {}
    for r in results:
        by_solver.setdefault(r["cell"]["solver"], []).append(r)
    names = list(results[0]["cost_names"])
    limits = list(results[0]["cost_limit"])
    panels = [("ep_return", "episode return", None)]
    panels += [(f"ep_cost/{n}", f"episode cost: {n}", lim) for n, lim in zip(names, limits)]
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 0.4 + 3.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for unused in grid[len(panels) :]:
        unused.set_visible(False)
    axes = grid[: len(panels)]
    seeds = sorted({r["cell"]["seed"] for r in results})
    fig.suptitle(f"{env_id}: training episodes, mean ± std over {len(seeds)} seed(s); dots: evaluations")
    for color, (solver, cells) in zip(_colors(len(by_solver)), by_solver.items()):
        for ax, (column, _, _) in zip(axes, panels):
            steps, mean, std = seed_band([_curve(c, column) for c in cells])
            if steps.size:
                ax.plot(steps, mean, color=color, label=solver, linewidth=1.4)
                ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.18, linewidth=0)
            e_steps, e_mean, e_std = _evaluation_points(cells, column)
            label = None if steps.size else solver  # no episode ended during training: the dots name it
            ax.errorbar(
                e_steps, e_mean, yerr=e_std, fmt="o", color=color, markersize=3.5, capsize=2, linewidth=1, label=label
            )
    for ax, (_, title, limit) in zip(axes, panels):
        if limit is not None:
            ax.axhline(limit, color="black", linestyle="--", linewidth=1.2, label="limit")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    if len(axes) > 1:
        axes[1].legend(*[h[-1:] for h in axes[1].get_legend_handles_labels()], fontsize=8, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _evaluation_points(cells: Sequence[Mapping[str, Any]], column: str) -> tuple[list[int], list[float], list[float]]:
    """Evaluation means and stds over seeds at each evaluation step, for one plot column."""
    by_step: dict[int, list[float]] = {}
    for c in cells:
        for e in c["evaluations"]:
            value = e["ep_return"] if column == "ep_return" else e["ep_costs"][column.split("/", 1)[1]]
            by_step.setdefault(int(e["step"]), []).append(float(value))
    steps = sorted(by_step)
    return steps, [float(np.mean(by_step[s])) for s in steps], [float(np.std(by_step[s])) for s in steps]


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]
