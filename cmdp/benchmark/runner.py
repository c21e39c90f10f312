"""The grid runner: plan the cells, run the unfinished ones, write the tables and plots.

:func:`run_grid` takes a :class:`GridConfig` (solvers x envs x seeds, small or full) and a
settings table (:mod:`cmdp.benchmark.settings`). Planning builds each env once with
:func:`cmdp.make` to learn its cost channels; ids it does not know (safety-gymnasium ids without
that package, Safety-CHORES ids before they exist) are skipped with a note.

Execution keeps at most ``workers`` cells in flight on one of three backends: in this process
(``workers=1``), a pool of worker processes, or Ray tasks (``ray=True``: a local
``ray.init(num_cpus=workers)``, or the cluster at ``address``). Every backend runs the same
:func:`~cmdp.benchmark.cells.run_cell` with one torch thread, and the driver writes each
finished cell's ``result.json`` atomically, so the files do not depend on the backend.

Resilience: a rerun with the same output directory skips the cells that have a
``result.json`` (for the same spec; a finished cell with other settings is an error, so that
one table never mixes two settings) and resumes half-finished cells from their checkpoints. A
cell that raises is recorded in its ``error.txt`` and the grid goes on; it is retried by the
next run. Ray retries a task whose worker process died, and the retry resumes from the
checkpoint. On a multi-machine Ray cluster the checkpoints live on the machine that ran the
cell (resuming across machines needs a shared file system); results always reach the driver.

Progress goes to stderr: a line when a cell starts and when it ends (with its numbers, cells
left, elapsed time and an ETA from the steps done so far), and the cells' own lines at each
evaluation.
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime
import json
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from cmdp.benchmark import cells as cellmod
from cmdp.benchmark.cells import CellSpec, eval_schedule, run_cell, summarize_final
from cmdp.benchmark.settings import ENV_SETTINGS, FULL_SEEDS, SMALL_SEEDS, EnvSettings, settings_table
from cmdp.benchmark.summary import (
    OVER_LIMIT_NOTE,
    aggregate,
    markdown_table,
    plot_env,
    write_cells_csv,
    write_results_csv,
)
from cmdp.core.subproc import default_start_method
from cmdp.errors import ConfigError, UnknownNameError
from cmdp.runlog import _atomic_write_text, _duration, to_jsonable, write_json

__all__ = ["GridConfig", "GridPlan", "GridReport", "plan_grid", "run_grid"]

Note = Callable[[str], None]

# every cell trains on one thread: cells run side by side, one per core
CELL_TORCH_THREADS = 1


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True, kw_only=True)
class GridConfig:
    """Which cells to run and where. Empty tuples mean the defaults of the chosen grid."""

    out: Path
    """Output directory (cells, tables, plots); rerunning with the same one resumes."""
    solvers: tuple[str, ...] = ()
    """Solver names (case-insensitive); default: every registered solver."""
    envs: tuple[str, ...] = ()
    """Env ids; default: the settings table's small-grid envs, or all of them with ``full``."""
    seeds: tuple[int, ...] = ()
    """Seeds; default: 0-2 for the small grid, 0-4 for the full one."""
    full: bool = False
    """The full grid: the table's ``full_steps`` and every env of the table."""
    workers: int | None = None
    """Cells run at once: worker processes (1 runs them in this process), or Ray's ``num_cpus``
    for a local Ray. Default: the number of CPUs, or a Ray cluster's CPUs with ``address``."""
    ray: bool = False
    """Run cells as Ray tasks."""
    address: str | None = None
    """Address of a running Ray cluster (implies ``ray``)."""
    steps: int | None = None
    """Override the training steps of every cell."""
    cost_limit: float | None = None
    """Limit for envs missing from the settings table (then they are run with it)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        for name in ("solvers", "envs"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"GridConfig.{name} must be a tuple of names, got {value!r}")
            object.__setattr__(self, name, tuple(dict.fromkeys(value)))
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds):
            raise ConfigError(f"seeds must be integers >= 0, got {self.seeds!r}")
        object.__setattr__(self, "seeds", tuple(dict.fromkeys(self.seeds)))
        if self.workers is not None and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1
        ):
            raise ConfigError(f"workers must be None or an integer >= 1, got {self.workers!r}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1):
            raise ConfigError(f"steps must be None or an integer >= 1, got {self.steps!r}")
        if self.address is not None:
            object.__setattr__(self, "ray", True)


@dataclass
class GridPlan:
    cells: list[CellSpec]
    skipped: list[tuple[str, str]]  # (env id, why)
    settings: dict[str, EnvSettings]  # env id -> the row used


@dataclass
class GridReport:
    out: Path
    plan: GridPlan
    results: list[dict[str, Any]]  # every finished cell, in plan order
    ran: list[str]  # cells trained by this call
    failures: dict[str, str] = field(default_factory=dict)  # cell name -> error
    seconds: float = 0.0
    table: str = ""


# ---- planning ------------------------------------------------------------------------------


def plan_grid(config: GridConfig, table: Sequence[EnvSettings] = ENV_SETTINGS, note: Note = _stderr) -> GridPlan:
    """The cells of ``config``: solvers x available envs x seeds, in that nesting order."""
    from cmdp.algorithms import ALGORITHMS, get_algorithm

    rows = settings_table(tuple(table))
    solvers = [get_algorithm(s).name for s in config.solvers] if config.solvers else list(ALGORITHMS)
    seeds = list(config.seeds or (FULL_SEEDS if config.full else SMALL_SEEDS))
    env_ids = list(config.envs) or [r.env_id for r in rows.values() if config.full or r.in_small_grid]
    cells: list[CellSpec] = []
    skipped: list[tuple[str, str]] = []
    used: dict[str, EnvSettings] = {}
    for env_id in env_ids:
        row = rows.get(env_id)
        if row is None:
            if config.cost_limit is None:
                raise ConfigError(
                    f"the benchmark has no settings for {env_id!r}; known ids: {', '.join(rows)}. "
                    "Pass a cost limit (--cost-limit) to run it with default steps, or add an EnvSettings row"
                )
            row = EnvSettings(env_id=env_id, cost_limit=config.cost_limit, small_steps=100_000, full_steps=1_000_000)
        why = _unavailable(env_id, row)
        if why is not None:
            skipped.append((env_id, why))
            note(f"cmdp benchmark: skipping {env_id}: {why}")
            continue
        used[env_id] = row
        limits = [config.cost_limit] if config.cost_limit is not None and env_id not in rows else row.limits()
        steps = config.steps or row.steps(config.full)
        for solver in solvers:
            options = row.options(solver)
            cls = get_algorithm(solver)
            try:
                steps_per_epoch = cls.Config.from_kwargs(**options).steps_per_epoch
            except ConfigError as e:
                raise ConfigError(f"the benchmark settings of {env_id} for {solver}: {e}") from e
            points = eval_schedule(steps, steps_per_epoch, row.eval_points)
            for seed in seeds:
                cells.append(
                    CellSpec(
                        solver=solver,
                        env_id=env_id,
                        seed=seed,
                        cost_limit=limits,
                        eval_points=points,
                        eval_episodes=row.eval_episodes,
                        config=to_jsonable(options),
                    )
                )
    if not cells:
        raise ConfigError(
            "no cell to run: " + ("; ".join(f"{e}: {w}" for e, w in skipped) if skipped else "no solvers or seeds")
        )
    return GridPlan(cells, skipped, used)


def _unavailable(env_id: str, row: EnvSettings) -> str | None:
    """Why ``cmdp.make`` cannot build ``env_id`` here (None if it can)."""
    from cmdp.core.registry import make, safety_gymnasium_available

    kwargs = dict(row.config.get("env_kwargs") or {})
    try:
        env = make(env_id, num_envs=1, seed=0, **kwargs)
    except UnknownNameError:
        missing = "" if safety_gymnasium_available() else " (and safety-gymnasium is not installed)"
        return f"cmdp.make does not know this id{missing}"
    except ImportError as e:
        return f"a package it needs is missing: {e}"
    except Exception as e:  # noqa: BLE001
        # An env that cannot be built here (a third-party simulator at odds with an installed
        # dependency, say) costs its own cells, not the grid's: the note says why.
        return f"building it failed: {type(e).__name__}: {e}"
    env.close()
    return None


# ---- running -------------------------------------------------------------------------------


def run_grid(
    config: GridConfig,
    table: Sequence[EnvSettings] = ENV_SETTINGS,
    note: Note = _stderr,
    command: str | None = None,
) -> GridReport:
    """Run the grid's unfinished cells, then write ``results.csv``, ``cells.csv``,
    ``results.md`` and ``plots/<env>.png`` over every finished cell. ``command`` is recorded in
    ``results.md``."""
    t0 = time.monotonic()
    plan = plan_grid(config, table, note)
    out = config.out.resolve()
    cells_dir = out / "cells"
    finished: dict[str, dict[str, Any]] = {}
    for spec in plan.cells:
        result = _finished_result(cells_dir / spec.name, spec)
        if result is not None:
            finished[spec.name] = result
    todo = [spec for spec in plan.cells if spec.name not in finished]
    write_json(out / "grid.json", {"config": config, "skipped": plan.skipped, "cells": [c.to_dict() for c in plan.cells]})
    note(
        f"cmdp benchmark: {len(plan.cells)} cells ({len(finished)} already finished, {len(todo)} to run) "
        f"in {out}; {_backend_name(config)}"
    )
    progress = GridProgress(len(plan.cells), len(finished), sum(s.total_steps for s in todo), note)
    report = GridReport(out, plan, [], [])
    completed = False
    try:
        if todo:
            _run_cells(config, todo, cells_dir, progress, report, finished)
        completed = True
    finally:  # a killed grid still records how long it ran
        report.seconds = time.monotonic() - t0
        _log_invocation(out, config, report, interrupted=not completed)
    report.results = [finished[s.name] for s in plan.cells if s.name in finished]
    report.table = write_summary(out, report.results, plan, command)
    if report.failures:
        note(f"cmdp benchmark: {len(report.failures)} cell(s) failed: {', '.join(report.failures)} (see their error.txt)")
    note(f"cmdp benchmark: done in {_duration(report.seconds)}; tables in {out / 'results.md'}")
    return report


def _run_cells(
    config: GridConfig,
    todo: list[CellSpec],
    cells_dir: Path,
    progress: "GridProgress",
    report: GridReport,
    finished: dict[str, dict[str, Any]],
) -> None:
    """Run ``todo`` on the configured backend; write each result as it arrives."""
    backend = _backend(config)
    completed = False
    try:
        for spec, result, error in _schedule(backend, todo, cells_dir, progress):
            if error is not None:
                report.failures[spec.name] = error
                (cells_dir / spec.name).mkdir(parents=True, exist_ok=True)
                (cells_dir / spec.name / cellmod.ERROR_FILE).write_text(error, encoding="utf-8")
                progress.failed(spec, error)
            else:
                write_json(cells_dir / spec.name / cellmod.RESULT_FILE, result)
                finished[spec.name] = result
                report.ran.append(spec.name)
                progress.finished(spec, result)
        completed = True
    finally:
        backend.close(abort=not completed)


def _log_invocation(out: Path, config: GridConfig, report: GridReport, interrupted: bool) -> None:
    """Append this run's wall time to ``invocations.json``: the time a grid took, summed over
    the invocations that ran cells, survives the kills and resumes of a long grid."""
    path = out / "invocations.json"
    try:
        entries = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    except ValueError:
        entries = []
    entries.append(
        {
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
            "seconds": report.seconds,
            "cells_run": len(report.ran),
            "cells_failed": len(report.failures),
            "interrupted": interrupted,
            "backend": _backend_name(config),
            # how busy the machine was: the cells' steps/s depend on it
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        }
    )
    write_json(path, entries)


def _finished_result(cell_dir: Path, spec: CellSpec) -> dict[str, Any] | None:
    path = cell_dir / cellmod.RESULT_FILE
    if not path.exists():
        return None
    try:
        result = cellmod._read_json(path)
    except ValueError:
        return None  # unreadable: run it again
    if result.get("cell") != spec.to_dict():
        raise ConfigError(
            f"{path} holds a finished cell with other settings than this grid asks for; use another --out "
            "directory, or delete that cell to run it again"
        )
    return result


def write_summary(out: Path, results: Sequence[Mapping[str, Any]], plan: GridPlan, command: str | None) -> str:
    """Write the tables and plots of ``results``; return the Markdown table."""
    if not results:
        return ""
    rows = aggregate(results)
    write_results_csv(rows, out / "results.csv")
    write_cells_csv(results, out / "cells.csv")
    table = markdown_table(rows)
    lines = ["# Benchmark results", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [
        "Final evaluation of each cell (sampled actions), mean ± std over seeds; EpCost is per episode. "
        f"{OVER_LIMIT_NOTE} Learning curves: plots/<env>.png.",
        "",
        table,
    ]
    if plan.skipped:
        lines += ["", "Skipped: " + "; ".join(f"{e} ({w})" for e, w in plan.skipped)]
    _atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    by_env: dict[str, list[Mapping[str, Any]]] = {}
    for r in results:
        by_env.setdefault(r["cell"]["env_id"], []).append(r)
    for env_id, env_results in by_env.items():
        plot_env(env_id, env_results, out / "plots" / f"{cellmod._safe(env_id)}.png")
    return table


# ---- scheduling and backends ---------------------------------------------------------------

Event = tuple[CellSpec, "dict[str, Any] | None", "str | None"]


def _schedule(backend: "_Backend", todo: list[CellSpec], cells_dir: Path, progress: "GridProgress") -> Iterable[Event]:
    """Keep ``backend.capacity`` cells in flight; yield each as it finishes."""
    pending = collections.deque(todo)
    running: dict[Any, CellSpec] = {}
    while pending or running:
        while pending and len(running) < backend.capacity:
            spec = pending.popleft()
            progress.started(spec, len(running) + 1)
            running[backend.submit(spec, cells_dir / spec.name)] = spec
        for handle, result, error in backend.wait_any(list(running)):
            yield running.pop(handle), result, error


def _cell_task(spec_data: dict[str, Any], cell_dir: str) -> dict[str, Any]:
    """A cell in a worker process or Ray task: one torch thread, the cell's directory if this
    machine can write it, else a temporary one (the result goes back to the driver anyway)."""
    import torch

    torch.set_num_threads(CELL_TORCH_THREADS)
    path = Path(cell_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = Path(tempfile.mkdtemp(prefix="cmdp-cell-"))
    return run_cell(CellSpec.from_dict(spec_data), path)


class _Backend:
    capacity: int = 1

    def submit(self, spec: CellSpec, cell_dir: Path) -> Any:
        raise NotImplementedError

    def wait_any(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any] | None, str | None]]:
        raise NotImplementedError

    def close(self, abort: bool) -> None:
        """Release the workers; ``abort`` (the grid was interrupted) also stops running cells."""


class _InlineBackend(_Backend):
    """Runs each cell in this process when it is waited for."""

    def __init__(self) -> None:
        self._jobs: dict[int, tuple[CellSpec, Path]] = {}
        self._next = 0

    def submit(self, spec: CellSpec, cell_dir: Path) -> int:
        self._next += 1
        self._jobs[self._next] = (spec, cell_dir)
        return self._next

    def wait_any(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any] | None, str | None]]:
        handle = handles[0]
        spec, cell_dir = self._jobs.pop(handle)
        try:
            return [(handle, run_cell(spec, cell_dir), None)]
        except Exception:
            return [(handle, None, traceback.format_exc())]


class _ProcessBackend(_Backend):
    """A pool of worker processes (forkserver where available: forking a process that has
    loaded torch can deadlock)."""

    def __init__(self, workers: int) -> None:
        self.capacity = workers
        self._pool = self._new_pool()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        context = multiprocessing.get_context(default_start_method())
        return concurrent.futures.ProcessPoolExecutor(max_workers=self.capacity, mp_context=context)

    def submit(self, spec: CellSpec, cell_dir: Path) -> Any:
        try:
            return self._pool.submit(_cell_task, spec.to_dict(), str(cell_dir))
        except concurrent.futures.process.BrokenProcessPool:
            # a worker process died (killed, out of memory): its cells failed, the grid goes on
            self._pool.shutdown(wait=False)
            self._pool = self._new_pool()
            return self._pool.submit(_cell_task, spec.to_dict(), str(cell_dir))

    def wait_any(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any] | None, str | None]]:
        done, _ = concurrent.futures.wait(handles, return_when=concurrent.futures.FIRST_COMPLETED)
        events = []
        for future in done:
            error = future.exception()
            if error is None:
                events.append((future, future.result(), None))
            else:
                text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
                events.append((future, None, text))
        return events

    def close(self, abort: bool) -> None:
        if abort:
            # A Ctrl-C at a terminal reaches the workers too, but a SIGTERM to this process alone
            # (kill, a scheduler) does not, and the interpreter would then wait at exit for their
            # cells to run to the end, only to drop the results. Each cell resumes from its last
            # checkpoint, so stop them now. (No public API for this before Python 3.14.)
            for process in list((getattr(self._pool, "_processes", None) or {}).values()):
                process.terminate()
        self._pool.shutdown(wait=not abort, cancel_futures=True)


class _RayBackend(_Backend):
    """Cells as Ray tasks (one CPU each). Starts a local Ray with ``num_cpus=workers`` unless
    Ray is already initialised or an address is given, and shuts down only what it started."""

    def __init__(self, workers: int | None, address: str | None) -> None:
        # every cell prints progress lines that differ only in their numbers from the other
        # seeds' lines, which Ray would fold together; read when ray is first imported
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        try:
            import ray
        except ImportError as e:
            raise ConfigError(f"--ray needs the ray package: pip install 'cmdp[ray]' ({e})") from e
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            if address is not None:
                ray.init(address=address)
            else:
                ray.init(num_cpus=workers or default_workers(), include_dashboard=False)
            self._started = True
        self.capacity = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        # a task whose worker process dies is retried (and resumes from the cell's checkpoint)
        self._task = ray.remote(num_cpus=1, max_retries=2)(_cell_task)
        self._in_flight: set[Any] = set()

    def submit(self, spec: CellSpec, cell_dir: Path) -> Any:
        ref = self._task.remote(spec.to_dict(), str(cell_dir))
        self._in_flight.add(ref)
        return ref

    def wait_any(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any] | None, str | None]]:
        ready, _ = self._ray.wait(handles, num_returns=1)
        events = []
        for ref in ready:
            self._in_flight.discard(ref)
            try:
                events.append((ref, self._ray.get(ref), None))
            except self._ray.exceptions.RayError as e:
                events.append((ref, None, str(e)))
        return events

    def close(self, abort: bool) -> None:
        if abort:  # stop the cells still running on a cluster that outlives this grid
            for ref in self._in_flight:
                self._ray.cancel(ref, force=True)
        if self._started:
            self._ray.shutdown()


def _backend(config: GridConfig) -> _Backend:
    if config.ray:
        return _RayBackend(config.workers, config.address)
    workers = config.workers or default_workers()
    return _ProcessBackend(workers) if workers > 1 else _InlineBackend()


def _backend_name(config: GridConfig) -> str:
    if config.ray:
        where = f"cluster at {config.address}" if config.address else f"local, {config.workers or default_workers()} CPU(s)"
        return f"Ray tasks ({where})"
    workers = config.workers or default_workers()
    return f"{workers} worker processes" if workers > 1 else "in this process"


# ---- progress ------------------------------------------------------------------------------


class GridProgress:
    """Progress lines for the grid: cells done and left, elapsed time, and an ETA from the env
    steps finished in this session (cells differ in length, so steps predict better than cells)."""

    def __init__(self, total: int, done: int, steps_todo: int, note: Note = _stderr) -> None:
        self.total, self.done, self.note = total, done, note
        self.steps_todo, self.steps_done = steps_todo, 0
        self.t0 = time.monotonic()
        self.cell_t0: dict[str, float] = {}

    def started(self, spec: CellSpec, running: int) -> None:
        self.cell_t0[spec.name] = time.monotonic()
        self.note(
            f"[{self.done}/{self.total}] start {spec.solver} on {spec.env_id}, seed {spec.seed}: "
            f"{spec.total_steps:,} steps ({running} running)"
        )

    def finished(self, spec: CellSpec, result: Mapping[str, Any]) -> None:
        self.done += 1
        self.steps_done += spec.total_steps
        self.note(f"[{self.done}/{self.total}] done  {spec.name} in {self._cell_time(spec)}: {summarize_final(result)} | {self._clock()}")

    def failed(self, spec: CellSpec, error: str) -> None:
        self.steps_todo -= spec.total_steps
        last = error.strip().splitlines()[-1] if error.strip() else "?"
        self.note(f"[{self.done}/{self.total}] FAILED {spec.name} after {self._cell_time(spec)}: {last} | {self._clock()}")

    def _cell_time(self, spec: CellSpec) -> str:
        return _duration(time.monotonic() - self.cell_t0.get(spec.name, self.t0))

    def _clock(self) -> str:
        elapsed = time.monotonic() - self.t0
        left = self.steps_todo - self.steps_done
        text = f"{self.total - self.done} left, elapsed {_duration(elapsed)}"
        if self.steps_done and left > 0:
            text += f", ETA {_duration(left * elapsed / self.steps_done)}"
        return text


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)
