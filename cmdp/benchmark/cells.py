"""One cell of the benchmark grid: one solver trained on one env with one seed.

A cell trains in chunks and evaluates between them: :attr:`CellSpec.eval_points` are the
global steps (whole epochs) after which the policy is evaluated with ``evaluate(episodes)``,
the last one at the end of training. The learning curves come from the run's own
``progress.csv`` (the training episodes of every epoch); the evaluations give the final
numbers of the tables.

Files of a cell directory ``cells/<solver>_<env>_<seed>/``:

``cell.json``
    the spec (solver, env, seed, limits, steps, solver options) and the package versions of
    the process that ran it; written when the cell starts.
``run/``
    the solver's run directory: ``config.json``, ``progress.csv``, ``checkpoint.pt``.
``partial.json``
    the evaluations so far and the training time, rewritten (atomically) after each one.
``result.json``
    everything above plus the final numbers and the curve; the grid driver writes it
    (atomically) when the cell has finished, and a cell with a ``result.json`` is finished.

Resuming a half-finished cell: ``learn()`` writes ``run/checkpoint.pt`` at the end of every
chunk, so a cell killed during a chunk resumes from the checkpoint of the last evaluation
point it reached, with the evaluations recorded in ``partial.json`` (an evaluation missing
because the kill came between the checkpoint and ``partial.json`` is run again; evaluation is
deterministic). Checkpoints resume exactly, so the resumed cell gives the numbers of an
uninterrupted one. A cell with no usable checkpoint restarts from scratch.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from cmdp.benchmark.summary import evaluation_over_limit, format_limits
from cmdp.errors import CheckpointError, ConfigError
from cmdp.runlog import read_progress, to_jsonable, write_json

__all__ = ["CellSpec", "environment_info", "eval_schedule", "run_cell"]

CELL_FILE = "cell.json"
PARTIAL_FILE = "partial.json"
RESULT_FILE = "result.json"
ERROR_FILE = "error.txt"
RUN_SUBDIR = "run"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True, kw_only=True)
class CellSpec:
    """What one cell trains. Plain values only: it crosses process and machine boundaries."""

    solver: str
    """Solver name as registered (``PPOLag``)."""
    env_id: str
    seed: int
    cost_limit: list[float]
    """Per-episode limit: one value for every channel, or one per channel."""
    eval_points: list[int]
    """Global steps after which to evaluate, increasing; the last is where training ends."""
    eval_episodes: int
    config: dict[str, Any] = field(default_factory=dict)
    """Solver options (JSON values)."""

    @property
    def total_steps(self) -> int:
        return self.eval_points[-1]

    @property
    def name(self) -> str:
        """The cell's directory name: ``<solver>_<env>_<seed>`` with unsafe characters as ``_``."""
        return f"{_safe(self.solver)}_{_safe(self.env_id)}_{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CellSpec":
        return cls(**dict(data))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "x"


def eval_schedule(total_steps: int, steps_per_epoch: int, points: int) -> list[int]:
    """``points`` evaluation steps evenly spaced in whole epochs, the last at the end of training
    (``total_steps`` rounded up to whole epochs); fewer when there are fewer epochs."""
    epochs = max(1, math.ceil(total_steps / steps_per_epoch))
    at = sorted({max(1, math.ceil(epochs * k / points)) for k in range(1, points + 1)})
    return [e * steps_per_epoch for e in at]


# ---- package versions --------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def environment_info() -> dict[str, Any]:
    """Versions of python and the packages that shape the numbers, the cmdp git commit (and
    whether ``cmdp/`` differs from it), host and platform. Computed once per process."""
    versions: dict[str, Any] = {"python": platform.python_version()}
    for package in ("cmdp", "numpy", "torch", "gymnasium", "scipy", "ray", "safety-gymnasium"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    commit, dirty = _git_state(Path(__file__).resolve().parents[2])
    return {
        "versions": versions,
        "cmdp_git_commit": commit,
        "cmdp_git_dirty": dirty,
        "host": socket.gethostname(),
        "platform": platform.platform(),
    }


def _git_state(root: Path) -> tuple[str | None, bool | None]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:  # an installed copy, not a checkout
        return None, None
    status = git("status", "--porcelain", "--", "cmdp")
    return commit, (None if status is None else bool(status))


# ---- running a cell ------------------------------------------------------------------------

Reporter = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class _Partial:
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    timed_steps: int = 0  # steps whose training time is in train_seconds
    eval_seconds: float = 0.0
    resumed_from_step: int | None = None


def run_cell(spec: CellSpec, cell_dir: str | Path, report: Reporter = _stderr) -> dict[str, Any]:
    """Train and evaluate one cell in ``cell_dir``, resuming from its checkpoint if it has one.

    Returns the cell's result (what the driver writes to ``result.json``); ``report`` receives
    a progress line after each evaluation. Does not write ``result.json`` itself.
    """
    from cmdp.algorithms import get_algorithm

    cell_dir = Path(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    info = environment_info()
    write_json(cell_dir / CELL_FILE, {"cell": spec.to_dict(), **info})
    cls = get_algorithm(spec.solver)
    algo, partial = _resume(cls, spec, cell_dir, report)
    if algo is None:
        algo, partial = _fresh(cls, spec, cell_dir), _Partial()
    try:
        for point in spec.eval_points:
            if algo.global_step < point:
                start, t0 = algo.global_step, time.perf_counter()
                algo.learn(point)
                partial.train_seconds += time.perf_counter() - t0
                partial.timed_steps += algo.global_step - start
            if any(e["step"] == point for e in partial.evaluations):
                continue
            t0 = time.perf_counter()
            evaluation = {"step": algo.global_step} | algo.evaluate(episodes=spec.eval_episodes)
            partial.eval_seconds += time.perf_counter() - t0
            partial.evaluations.append(to_jsonable(evaluation))
            write_json(cell_dir / PARTIAL_FILE, {"cell": spec.to_dict(), **asdict(partial)})
            report(_progress_line(spec, evaluation))
        cost_names = list(algo.cost_names)
        limits = algo.cost_limit.tolist()
    finally:
        algo.close()
    final = partial.evaluations[-1]
    return {
        "name": spec.name,
        "cell": spec.to_dict(),
        **info,
        "cost_names": cost_names,
        "cost_limit": limits,
        "final": final,
        "over_limit": evaluation_over_limit(final, cost_names, limits),
        "evaluations": partial.evaluations,
        "steps": final["step"],
        "train_seconds": partial.train_seconds,
        "eval_seconds": partial.eval_seconds,
        "steps_per_second": partial.timed_steps / partial.train_seconds if partial.train_seconds > 0 else None,
        "resumed_from_step": partial.resumed_from_step,
        "curve": read_curve(cell_dir / RUN_SUBDIR, cost_names),
    }


def _fresh(cls: type, spec: CellSpec, cell_dir: Path) -> Any:
    for stale in (cell_dir / RUN_SUBDIR, cell_dir / PARTIAL_FILE, cell_dir / ERROR_FILE):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    options = dict(spec.config) | {"progress_bar": False, "tensorboard": False}
    limit: Any = spec.cost_limit[0] if len(spec.cost_limit) == 1 else spec.cost_limit
    return cls(spec.env_id, cost_limit=limit, seed=spec.seed, run_dir=str(cell_dir / RUN_SUBDIR), **options)


def _resume(cls: type, spec: CellSpec, cell_dir: Path, report: Reporter) -> tuple[Any, _Partial]:
    """The cell's solver restored from its checkpoint with the evaluations so far, or
    ``(None, _)`` when there is nothing usable to resume from."""
    checkpoint = cell_dir / RUN_SUBDIR / CHECKPOINT_FILE
    partial_path = cell_dir / PARTIAL_FILE
    if not checkpoint.exists():
        return None, _Partial()
    saved: dict[str, Any] = {}
    if partial_path.exists():
        try:
            saved = _read_json(partial_path)
        except ValueError:
            saved = {}
    if saved and saved.get("cell") != spec.to_dict():
        report(f"  {spec.name}: its partial results are for other settings; starting it again")
        return None, _Partial()
    try:
        algo = cls.load(checkpoint)
    except (CheckpointError, ConfigError, OSError) as e:
        report(f"  {spec.name}: cannot resume from {checkpoint} ({e}); starting it again")
        return None, _Partial()
    step = algo.global_step
    if step not in spec.eval_points:  # not written by this grid at an evaluation point
        algo.close()
        report(f"  {spec.name}: its checkpoint is at step {step:,}, not an evaluation point; starting it again")
        return None, _Partial()
    algo.run_dir = cell_dir / RUN_SUBDIR
    fields = {k: saved[k] for k in ("evaluations", "train_seconds", "timed_steps", "eval_seconds") if k in saved}
    partial = _Partial(**fields)
    partial.evaluations = [e for e in partial.evaluations if e["step"] <= step]
    partial.resumed_from_step = step
    report(f"  {spec.name}: resuming from its checkpoint at step {step:,} of {spec.total_steps:,}")
    return algo, partial


def _read_json(path: Path) -> dict[str, Any]:
    import json

    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def read_curve(run_dir: Path, cost_names: list[str]) -> dict[str, Any]:
    """The training curve of a run: per epoch, the step, the mean return and each channel's mean
    cost of the episodes that ended in it (None where none ended)."""
    columns = ["step", "ep_return"] + [f"ep_cost/{name}" for name in cost_names]
    keys = ["step", "Metrics/EpRet"] + [f"Metrics/EpCost/{name}" for name in cost_names]
    path = run_dir / "progress.csv"
    rows = read_progress(path) if path.exists() else []
    return {"columns": columns, "rows": [[row.get(k) for k in keys] for row in rows]}


def _progress_line(spec: CellSpec, evaluation: Mapping[str, Any]) -> str:
    costs = ", ".join(f"{k} {v:.3g}" for k, v in evaluation["ep_costs"].items())
    limits = format_limits(spec.cost_limit, "{:g}".format)
    share = 100 * evaluation["step"] / spec.total_steps
    return (
        f"  {spec.name}: step {evaluation['step']:,}/{spec.total_steps:,} ({share:.0f}%)  "
        f"EpRet {evaluation['ep_return']:.3g}  EpCost {costs} (limit {limits})"
    )


def summarize_final(result: Mapping[str, Any]) -> str:
    """One line for the grid's progress: final return and costs against the limits."""
    final = result["final"]
    costs = ", ".join(f"{name} {final['ep_costs'][name]:.3g}" for name in result["cost_names"])
    limits = format_limits(result["cost_limit"], "{:g}".format)
    flag = "OVER" if result["over_limit"] else "ok"
    return f"EpRet {final['ep_return']:.3g}, EpCost {costs} (limit {limits}, {flag})"
