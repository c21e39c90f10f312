"""The assurance report: JSON, Markdown, PNG plots and GIFs of the worst-cost episodes.

:func:`write_report` writes, into one run directory:

``assurance.json``
    ``{"task", "cost_names", "settings", "seconds", "policies": {name: {...}}, "files"}``. Each
    policy holds the evaluation-set metrics at its top (``success_rate``, ``ep_cost``,
    ``ep_costs`` component -> mean, ``ep_length``, ``sel``, ``ep_cost_success``,
    ``ep_cost_failure``, ...; see :func:`cmdp.isa.assure.episode_metrics`), a ``suites``
    object keyed by suite name with the same fields (plus ``kind``, ``description``,
    ``knobs``), and ``worst_episodes`` with their GIFs. With exactly one policy, the file
    also carries ``"policy"`` (its name) and that policy's fields at the top level, so
    ``report["success_rate"]`` and ``report["suites"]`` work directly.
``episodes.json``
    Every episode: ``{policy: {set: [{episode_id, success, length, cost, costs,
    expert_length, sel}, ...]}}``, from which every number of the report can be recomputed.
``assurance.md``
    Tables a person can read: the evaluation set and SR / CC per suite side by side when
    there are several policies, one table per policy with a row per set, the plots, and the
    GIFs.
``plots/cost_histograms.png``
    Per policy, histograms of the episode cost over all, successful and failed episodes of
    the evaluation set (as SafeVLA's Figure 3).
``plots/cost_components.png``
    Per policy, the five components' mean costs stacked per set.
``plots/suites.png``
    SR and CC per set, the policies side by side.
``gifs/<policy>-<set>-<episode>.gif``
    Top-down replays of each policy's worst-cost episodes (:func:`cmdp.isa.assure.replay_frames`).
"""

from __future__ import annotations

import math
import platform
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from cmdp.envs.chores.costs import COST_NAMES
from cmdp.isa.assure import EVAL_SET, AssuranceReport, EpisodeSet, Policy, WorstEpisode, relative_path, replay_frames
from cmdp.runlog import write_json

JSON_FILE = "assurance.json"
MARKDOWN_FILE = "assurance.md"
EPISODES_FILE = "episodes.json"
SHORT_NAMES = {
    "corner": "corner",
    "blind_spot": "blind spot",
    "fragile_collection": "fragile",
    "critical_point": "critical",
    "dangerous_equipment": "danger",
}
"""Column headings of the five components."""


def write_report(
    report: AssuranceReport,
    out_dir: str | Path,
    *,
    policies: Mapping[str, Policy] | None = None,
    sets: Mapping[str, EpisodeSet] | None = None,
    note: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write every file of the report to ``out_dir``; returns ``report.files`` (kind -> path).

    GIFs need the ``policies`` and episode ``sets`` that were measured (they are replayed);
    without them, or with ``gifs=0``, none are made. ``note`` receives progress lines."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report.out_dir = out
    files: dict[str, Any] = {}
    if policies is not None and sets is not None and report.config.gifs > 0:
        files["gifs"] = write_gifs(report, policies, sets, out / "gifs", note=note)
    plots = out / "plots"
    files["cost_histograms"] = plot_cost_histograms(report, plots / "cost_histograms.png")
    files["cost_components"] = plot_components(report, plots / "cost_components.png")
    files["suites"] = plot_sets(report, plots / "suites.png")
    files["episodes"] = write_json(
        out / EPISODES_FILE,
        {
            name: {s: [ep.to_dict() for ep in r.episodes] for s, r in result.sets.items()}
            for name, result in report.policies.items()
        },
    )
    files["markdown"] = out / MARKDOWN_FILE
    files["json"] = out / JSON_FILE
    report.files = files
    (out / MARKDOWN_FILE).write_text(markdown(report), encoding="utf-8")
    write_json(out / JSON_FILE, report.to_dict())
    return files


# ---- tables -------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


_METRIC_HEAD = ["n", "SR", "CC"] + [SHORT_NAMES[c] for c in COST_NAMES] + ["length", "SEL"]


def _metric_cells(m: Mapping[str, Any]) -> list[str]:
    return (
        [str(m["episodes"]), _pct(m["success_rate"]), _num(m["ep_cost"])]
        + [_num(m["ep_costs"][c]) for c in COST_NAMES]
        + [_num(m["ep_length"], 1), _num(m["sel"], 3)]
    )


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1) -> str:
    align = ["---" if i < right_from else "---:" for i in range(len(head))]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _set_metrics(report: AssuranceReport, policy: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, r.metrics()) for name, r in report.policies[policy].sets.items()]


def summary_table(report: AssuranceReport) -> str:
    """One Markdown table, a row per policy and set: n, SR, CC, the five components, length, SEL."""
    rows = []
    for policy in report.policies:
        for set_name, m in _set_metrics(report, policy):
            rows.append([policy, set_name] + _metric_cells(m))
    return _table(["policy", "set"] + _METRIC_HEAD, rows, right_from=2)


def markdown(report: AssuranceReport) -> str:
    """The readable report (``assurance.md``)."""
    cfg = report.config
    names = list(report.policies)
    first = next(iter(report.policies.values()))
    eval_n = len(first.sets[EVAL_SET].episodes)
    suite_names = [s for s in first.sets if s != EVAL_SET]
    suite_n = len(first.sets[suite_names[0]].episodes) if suite_names else 0
    mode = "most likely actions" if cfg.deterministic else "sampled actions (solvers and VLAs)"
    lines = [
        f"# Assurance report: {cfg.task}",
        "",
        f"Policies: {', '.join(f'`{n}` ({report.policies[n].source})' for n in names)}.",
        f"{eval_n} episodes of {first.sets[EVAL_SET].description}"
        + (f"; {len(suite_names)} suites of {suite_n} episodes each" if suite_names else "; no suites")
        + f". Seed {cfg.seed}, {cfg.num_envs} envs, {mode}.",
        f"Written {datetime.now().strftime('%Y-%m-%d %H:%M')} on {platform.node() or 'this machine'} "
        f"({platform.machine()}, Python {platform.python_version()}); the run took {report.seconds:.0f} s.",
        "",
        "SR: success rate. CC: cumulative cost, the mean over episodes of the five components summed "
        "(each component counts the steps on which it fired); the component columns are their means. "
        "length: mean episode length in steps. SEL: success weighted by expert episode length, "
        "success x L_expert / max(L_expert, L), averaged; episodes the expert fails count 0 (as in SafeVLA).",
        "",
    ]
    if len(names) > 1:
        lines += ["## Side by side", "", f"### Evaluation set ({eval_n} episodes)", ""]
        lines.append(
            _table(["policy"] + _METRIC_HEAD, [[n] + _metric_cells(report.policies[n].sets[EVAL_SET].metrics()) for n in names])
        )
        lines += ["", "### SR / CC per set", ""]
        rows = []
        for set_name in first.sets:
            cells = []
            for n in names:
                m = report.policies[n].sets[set_name].metrics()
                cells.append(f"{_pct(m['success_rate'])} / {_num(m['ep_cost'])}")
            rows.append([_set_label(first.sets[set_name])] + cells)
        lines += [_table(["set"] + names, rows), ""]
    for n in names:
        result = report.policies[n]
        lines += [f"## `{n}`", ""]
        rows = [[_set_label(result.sets[s])] + _metric_cells(m) for s, m in _set_metrics(report, n)]
        lines += [_table(["set"] + _METRIC_HEAD, rows), ""]
        m = result.sets[EVAL_SET].metrics()
        lines.append(
            f"Evaluation set: CC {_num(m['ep_cost_success'])} over {m['successes']} successful episodes, "
            f"{_num(m['ep_cost_failure'])} over {m['episodes'] - m['successes']} failed ones; "
            f"{m['costly_episodes']} of {m['episodes']} episodes cost something; "
            f"{m['sel_missing']} without an expert length."
        )
        lines.append("")
        if result.worst:
            lines += ["Worst-cost episodes:", ""]
            for w in result.worst:
                lines.append(_worst_line(w, report.out_dir))
            lines.append("")
    lines += ["## Plots", ""]
    for key, title in (
        ("cost_histograms", "Episode cost over all, successful and failed episodes (evaluation set)"),
        ("cost_components", "Mean cost per component and set"),
        ("suites", "Success rate and cumulative cost per set"),
    ):
        if key in report.files:
            lines += [f"![{title}]({relative_path(report.files[key], report.out_dir)})", ""]
    lines += ["## Sets", ""]
    for set_name, r in first.sets.items():
        knobs = ", ".join(f"{k} {v:.3g}" for k, v in r.knobs.items())
        lines.append(f"- **{set_name}** ({r.kind}): {r.description}" + (f"; {knobs}" if knobs else ""))
    lines.append("")
    return "\n".join(lines)


def _set_label(r: Any) -> str:
    return r.name if r.kind in ("eval", "reference") else f"{r.name} ({r.kind})"


def _worst_line(w: WorstEpisode, root: Path | None) -> str:
    r = w.result
    parts = ", ".join(f"{SHORT_NAMES[c]} {int(v)}" for c, v in r.costs.items() if v > 0) or "no cost"
    outcome = "success" if r.success else "failure"
    text = f"- {w.set_name} `{r.episode_id}`: CC {r.cost:.0f} ({parts}), {r.length} steps, {outcome}"
    if w.gif is not None:
        exact = "" if w.replay_exact else " (the replay differed from the measured episode)"
        text += f": ![{r.episode_id}]({relative_path(w.gif, root)}){exact}"
    return text


# ---- plots ---------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _component_colors() -> list[tuple[float, float, float]]:
    from cmdp.envs.chores.render import COST_COLORS

    return [tuple(v / 255 for v in c) for c in COST_COLORS]


def plot_cost_histograms(report: AssuranceReport, path: Path) -> Path:
    """Rows: policies; columns: all, successful and failed episodes of the evaluation set;
    histograms of the episode cost on shared bins, the mean marked."""
    names = list(report.policies)
    per_policy = []
    for n in names:
        eps = report.policies[n].sets[EVAL_SET].episodes
        cc = np.array([ep.cost for ep in eps])
        ok = np.array([ep.success for ep in eps], dtype=bool)
        per_policy.append((cc, cc[ok], cc[~ok]))
    top = max(float(max(cc.max(initial=0.0) for cc, _, _ in per_policy)), 1.0)
    width = max(1, math.ceil((top + 1) / 30))  # integer costs: one bin per value up to 30 bins
    bins = np.arange(0, top + width + 1, width) - 0.5
    fig = _figure(11, 0.6 + 2.4 * len(names))
    axes = fig.subplots(len(names), 3, squeeze=False, sharex=True)
    fig.suptitle(f"{report.task}: episode cost (CC) on the evaluation set")
    for row, (n, groups) in enumerate(zip(names, per_policy)):
        for col, (label, values, color) in enumerate(
            zip(("all", "successful", "failed"), groups, ("tab:blue", "tab:green", "tab:red"))
        ):
            ax = axes[row, col]
            if values.size:
                ax.hist(values, bins=bins, color=color, alpha=0.8)
                ax.axvline(values.mean(), color="black", linestyle="--", linewidth=1)
            mean = f"mean {values.mean():.2f}" if values.size else "none"
            ax.set_title(f"{n}: {label} ({values.size} episodes, {mean})", fontsize=9)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("episodes")
            if row == len(names) - 1:
                ax.set_xlabel("episode cost")
    return _save(fig, path)


def plot_components(report: AssuranceReport, path: Path) -> Path:
    """One panel per policy: the five components' mean costs stacked, one bar per set."""
    names = list(report.policies)
    colors = _component_colors()
    sets = list(next(iter(report.policies.values())).sets)
    fig = _figure(max(6.0, 1.2 + 0.6 * len(sets)) , 0.8 + 3.0 * len(names))
    axes = fig.subplots(len(names), 1, squeeze=False, sharey=True)[:, 0]
    fig.suptitle(f"{report.task}: mean cost per component")
    x = np.arange(len(sets))
    for ax, n in zip(axes, names):
        bottom = np.zeros(len(sets))
        for c, color in zip(COST_NAMES, colors):
            values = np.array([report.policies[n].sets[s].metrics()["ep_costs"][c] or 0.0 for s in sets])
            ax.bar(x, values, bottom=bottom, color=color, label=SHORT_NAMES[c], width=0.7)
            bottom += values
        ax.set_title(n, fontsize=10)
        ax.set_ylabel("cost per episode")
        ax.set_xticks(x, sets, rotation=35, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(COST_NAMES), fontsize=8)
    return _save(fig, path)


def plot_sets(report: AssuranceReport, path: Path) -> Path:
    """Two panels, SR and CC per set, one bar per policy in each group."""
    from matplotlib import colormaps

    names = list(report.policies)
    sets = list(next(iter(report.policies.values())).sets)
    fig = _figure(max(7.0, 1.5 + 0.35 * len(sets) * len(names)), 6.5)
    ax_sr, ax_cc = fig.subplots(2, 1, sharex=True)
    width = 0.8 / len(names)
    x = np.arange(len(sets))
    cmap = colormaps["tab10"]
    for i, n in enumerate(names):
        m = [report.policies[n].sets[s].metrics() for s in sets]
        offset = x - 0.4 + width * (i + 0.5)
        ax_sr.bar(offset, [100 * (v["success_rate"] or 0.0) for v in m], width, color=cmap(i % 10), label=n)
        ax_cc.bar(offset, [v["ep_cost"] or 0.0 for v in m], width, color=cmap(i % 10), label=n)
    ax_sr.set_ylabel("success rate (%)")
    ax_sr.set_ylim(0, 100)
    ax_cc.set_ylabel("cumulative cost (CC)")
    ax_cc.set_xticks(x, sets, rotation=35, ha="right", fontsize=8)
    for ax in (ax_sr, ax_cc):
        ax.grid(axis="y", alpha=0.3)
    ax_sr.legend(fontsize=8)
    ax_sr.set_title(f"{report.task}: success rate and cumulative cost per set", fontsize=10)
    return _save(fig, path)


# ---- GIFs -----------------------------------------------------------------------------------------


def write_gifs(
    report: AssuranceReport,
    policies: Mapping[str, Policy],
    sets: Mapping[str, EpisodeSet],
    out_dir: Path,
    note: Callable[[str], None] | None = None,
) -> list[Path]:
    """Replay each policy's worst-cost episodes (one replay per policy and set) and write them
    as GIFs; records each GIF's path and ``replay_exact`` on its :class:`WorstEpisode`."""
    from cmdp.envs.chores.render import write_episode

    cfg = report.config
    written: list[Path] = []
    total = sum(len(r.worst) for r in report.policies.values())
    for name, result in report.policies.items():
        by_set: dict[str, list[WorstEpisode]] = {}
        for w in result.worst:
            by_set.setdefault(w.set_name, []).append(w)
        for set_name, targets in by_set.items():
            if note is not None:
                note(f"assure: GIFs {len(written) + 1}-{len(written) + len(targets)} of {total}: replaying {name} on {set_name}")
            frames = replay_frames(
                policies[name], sets[set_name], targets, num_envs=cfg.num_envs, seed=cfg.seed,
                obs_mode=cfg.obs_mode, size=cfg.gif_size, max_frames=cfg.gif_max_frames,
            )  # fmt: skip
            for w, shots in zip(targets, frames):
                if not shots:
                    continue
                shots = shots + [shots[-1]] * 8  # hold the summary frame for a second
                file = out_dir / f"{_slug(name)}-{_slug(set_name)}-{_slug(w.result.episode_id)}.gif"
                w.gif = write_episode(shots, file, fps=8)
                written.append(w.gif)
    return written


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"
