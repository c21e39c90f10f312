"""Run directories: ``config.json``, ``progress.csv``, TensorBoard events and a live progress line.

Every training run writes into one directory (:func:`default_run_dir` names it
``runs/{algo}-{env_id}-s{seed}-{YYYYmmdd-HHMMSS}``):

``config.json``
    the full configuration, written when the logger opens (atomically; tuples become lists,
    numpy and torch scalars become python numbers, anything else unserialisable its ``repr``).
``progress.csv``
    one row per :meth:`RunLogger.log` call (once per epoch): a ``step`` column, then one column
    per metric key in order of first appearance. A key that first appears later extends the
    header and the file is rewritten with empty cells for the earlier rows, so columns never
    shift. An epoch that does not report a key leaves its cell empty.
``events.out.tfevents.*``
    the same scalars for TensorBoard (``tensorboard --logdir runs``), when tensorboard imports.

Resuming (``resume_step=N``) keeps the rows with ``step <= N`` and drops the rest, and purges
TensorBoard events after step N, so an interrupted run continued from its checkpoint at step N
has no duplicated or orphaned steps.

The logger is the sink of the engine, never a data channel: nothing reads metrics back from it.

The module is named ``runlog`` rather than ``logging`` so that it can never be confused with
the standard library's ``logging`` module in imports, tracebacks or editors.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import io
import json
import math
import numbers
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TextIO

__all__ = [
    "ProgressBar",
    "RunLogger",
    "default_run_dir",
    "read_progress",
    "to_jsonable",
    "write_json",
]

CONFIG_FILE = "config.json"
PROGRESS_FILE = "progress.csv"
STEP_COLUMN = "step"

_tensorboard_warned = False


# ---- run directories and JSON -------------------------------------------------------------


def default_run_dir(
    algo: str, env_id: str, seed: int, root: str | os.PathLike = "runs", *, now: datetime | None = None
) -> Path:
    """The default directory of a run: ``{root}/{algo}-{env_id}-s{seed}-{YYYYmmdd-HHMMSS}``.

    ``now`` is the local time used for the stamp (default: the current time). Characters of
    ``algo`` and ``env_id`` that are unsafe in file names (``/`` in ``ALE/Pong-v5``, spaces, ...)
    become ``_``. If that directory already exists (two runs started in the same second), a
    suffix ``-2``, ``-3``, ... is added. Nothing is created on disk: :class:`RunLogger` creates the
    directory when it opens, so a run whose construction fails leaves no empty directory behind.
    """
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    name = f"{_safe_name(algo)}-{_safe_name(env_id)}-s{seed}-{stamp}"
    path = Path(root) / name
    suffix = 2
    while path.exists():
        path = Path(root) / f"{name}-{suffix}"
        suffix += 1
    return path


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "unnamed"


def to_jsonable(obj: Any) -> Any:
    """A JSON-serialisable copy of ``obj``.

    Mappings become dicts with string keys; tuples, lists, sets and numpy arrays become lists;
    numpy and torch scalars become python numbers (one-element tensors too, larger tensors
    lists); paths become strings; enums their value; dataclass instances dicts of their fields.
    Floats stay floats, including NaN and inf (written as JSON ``NaN``/``Infinity``, which
    python's ``json`` reads back). Anything else (a cost function, an env object) becomes its
    ``repr`` string, so that an exotic config value never stops a run from logging.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        items = [to_jsonable(v) for v in obj]
        try:
            return sorted(items)
        except TypeError:  # mixed types: keep an arbitrary but valid order
            return items
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist) and type(obj).__module__.split(".")[0] in ("numpy", "torch"):
        return to_jsonable(tolist())
    return repr(obj)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``to_jsonable(data)`` to ``path`` (indented, keys in insertion order) atomically:
    a temporary file beside it is renamed over it, so a reader never sees half a file."""
    path = Path(path)
    text = json.dumps(to_jsonable(data), indent=2) + "\n"
    _atomic_write_text(path, text)
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_progress(path: str | os.PathLike) -> list[dict[str, float | None]]:
    """Read a ``progress.csv`` (or the one in a run directory) as a list of rows.

    Each row maps column name to a float, or ``None`` for an empty cell; ``step`` is an int.
    Cells that are not numbers are kept as strings.
    """
    path = Path(path)
    if path.is_dir():
        path = path / PROGRESS_FILE
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return []
        rows = []
        for cells in reader:
            if len(cells) != len(header):
                continue  # a line cut short by a crash mid-write
            row: dict[str, Any] = {}
            for key, cell in zip(header, cells):
                row[key] = _parse_cell(cell)
            if isinstance(row.get(STEP_COLUMN), float):
                row[STEP_COLUMN] = int(row[STEP_COLUMN])
            rows.append(row)
    return rows


def _parse_cell(cell: str) -> float | str | None:
    if cell == "":
        return None
    try:
        return float(cell)
    except ValueError:
        return cell


# ---- progress bar -------------------------------------------------------------------------


class ProgressBar:
    """A one-line training progress display without external dependencies.

    Shows steps/total, percent, steps per second (averaged since the bar opened), ETA, and the
    latest ``Metrics/EpRet``, episode cost summed over channels (``Metrics/EpCost``, or the sum
    of the ``Metrics/EpCost/<channel>`` keys) and every ``Multiplier/<channel>``. Metrics missing
    from an update (an epoch in which no episode ended) keep their previous values.

    On a terminal (``stream.isatty()``) the line is redrawn in place with ``\\r`` at most every
    ``tty_interval`` seconds and cut to the terminal width so it never wraps. Elsewhere (CI
    logs, files, pytest) a plain line is printed at the first update, then at most once every
    ``interval`` seconds, and once more at :meth:`close` if the final state was not printed.

    ``initial`` is the step the bar starts from (a resumed run), so the rate counts only the
    steps made since it opened. ``enabled=False`` makes every method a no-op.
    """

    def __init__(
        self,
        total: int | None = None,
        *,
        initial: int = 0,
        stream: TextIO | None = None,
        interval: float = 10.0,
        tty_interval: float = 0.1,
        tty: bool | None = None,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.tty_interval = tty_interval
        self.tty = _isatty(self.stream) if tty is None else tty
        self._clock = clock
        self._initial = initial
        self._t0 = clock()
        self._step = initial
        self._now = self._t0
        self._last_draw: float | None = None
        self._drawn_state: int | None = None  # the step the visible line shows
        self._drawn_width = 0
        self._ep_ret: float | None = None
        self._ep_cost: float | None = None
        self._multipliers: dict[str, float] = {}
        self._closed = False
        encoding = (getattr(self.stream, "encoding", None) or "").lower()
        self._unicode = "utf" in encoding

    def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> None:
        """Record the global step and the latest metrics; redraw or print if it is time to."""
        if not self.enabled or self._closed:
            return
        self._step = int(step)
        self._now = self._clock()
        if metrics:
            self._absorb(metrics)
        wait = self.tty_interval if self.tty else self.interval
        if self._last_draw is None or self._now - self._last_draw >= wait:
            self._draw()

    def close(self) -> None:
        """Show the final state (if it is not already shown) and end the line. Idempotent."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._last_draw is None:
            return  # never updated: nothing to report
        if self._drawn_state != self._step:
            self._draw()
        if self.tty:
            self._write("\n")

    def render(self, width: int | None = None) -> str:
        """The current progress line (without ``\\r`` or newline). With ``width``, trailing fields
        that do not fit are left out whole rather than cut mid-number."""
        parts = self._parts()
        line = parts[0]
        for part in parts[1:]:
            if width is not None and len(line) + 3 + len(part) > width:
                break
            line += " | " + part
        return line if width is None else line[:width]

    def _parts(self) -> list[str]:
        parts = []
        step_text = f"{self._step:,}"
        if self.total:
            frac = min(max(self._step / self.total, 0.0), 1.0)
            prefix = f"{step_text}/{self.total:,} {100 * frac:5.1f}%"
            if self.tty:
                prefix = f"{self._bar(frac)} {prefix}"
            parts.append(prefix)
        else:
            parts.append(f"{step_text} steps")
        elapsed = self._now - self._t0
        rate = (self._step - self._initial) / elapsed if elapsed > 0 else None
        parts.append(f"{_si(rate)} steps/s" if rate is not None else "- steps/s")
        if self.total:
            remaining = max(self.total - self._step, 0)
            if remaining == 0:
                parts.append(f"done in {_duration(elapsed)}")
            elif rate:
                parts.append(f"ETA {_duration(remaining / rate)}")
            else:
                parts.append("ETA -")
        if self._ep_ret is not None:
            parts.append(f"EpRet {_num(self._ep_ret)}")
        if self._ep_cost is not None:
            parts.append(f"EpCost {_num(self._ep_cost)}")
        lam = "\u03bb" if self._unicode else "lambda"
        for name, value in self._multipliers.items():
            parts.append(f"{lam}[{name}] {_num(value)}")
        return parts

    def _absorb(self, metrics: Mapping[str, Any]) -> None:
        if "Metrics/EpRet" in metrics and _is_number(metrics["Metrics/EpRet"]):
            self._ep_ret = float(metrics["Metrics/EpRet"])
        if "Metrics/EpCost" in metrics and _is_number(metrics["Metrics/EpCost"]):
            self._ep_cost = float(metrics["Metrics/EpCost"])
        else:
            channels = [
                float(v) for k, v in metrics.items() if k.startswith("Metrics/EpCost/") and _is_number(v)
            ]
            if channels:
                self._ep_cost = sum(channels)
        for key, value in metrics.items():
            if key.startswith("Multiplier/") and _is_number(value):
                self._multipliers[key[len("Multiplier/"):]] = float(value)

    def _draw(self) -> None:
        if self.tty:
            line = self.render(width=shutil.get_terminal_size(fallback=(120, 24)).columns - 1)
            # pad over the tail of a longer previous line instead of relying on ANSI clear codes
            pad = " " * max(self._drawn_width - len(line), 0)
            self._write("\r" + line + pad)
            self._drawn_width = len(line)
        else:
            self._write(self.render() + "\n")
        self._last_draw = self._now
        self._drawn_state = self._step

    def _bar(self, frac: float, width: int = 20) -> str:
        full, empty = ("\u2588", "\u2591") if self._unicode else ("#", ".")
        n = int(frac * width)
        return full * n + empty * (width - n)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream must not stop training
            self.enabled = False


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _num(v: float) -> str:
    return f"{v:.4g}"


def _si(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e4:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


# ---- the run logger -----------------------------------------------------------------------


class RunLogger:
    """Writes one run's ``config.json``, ``progress.csv``, TensorBoard events and progress line.

    Args:
        run_dir: the run directory; created (with parents) if missing.
        config: the run's full configuration, written to ``run_dir/config.json`` at once.
        tensorboard: also write TensorBoard event files. If ``torch.utils.tensorboard`` cannot be
            imported, a warning is issued once per process and the run continues without them.
        progress_bar: show a :class:`ProgressBar` on ``progress_stream`` (default stderr).
        total_steps: the step count at which training ends (for percent and ETA), or None.
        resume_step: continue an earlier run whose last checkpoint was taken at this step:
            rows of an existing ``progress.csv`` with ``step > resume_step`` are dropped (as are
            later TensorBoard events) and new rows are appended. ``None`` starts afresh: an
            existing ``progress.csv`` is replaced, with a warning, and TensorBoard hides the
            events earlier sessions wrote to the directory (the files stay on disk).
        progress_interval: seconds between plain progress lines when the stream is not a TTY.
        progress_stream: where the progress line goes (default ``sys.stderr``).

    Use :meth:`log` once per epoch and :meth:`close` at the end (or use it as a context
    manager). One file handle stays open for the CSV; each row is one write and one flush.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        config: Mapping[str, Any],
        *,
        tensorboard: bool = True,
        progress_bar: bool = True,
        total_steps: int | None = None,
        resume_step: int | None = None,
        progress_interval: float = 10.0,
        progress_stream: TextIO | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.run_dir / CONFIG_FILE
        self.csv_path = self.run_dir / PROGRESS_FILE
        self.resume_step = resume_step
        write_json(self.config_path, config)

        self._columns: list[str] = [STEP_COLUMN]
        self._column_set: set[str] = {STEP_COLUMN}
        self._file: TextIO | None = None
        self._writer: Any = None
        self._last_step: int | None = None
        self._closed = False
        if resume_step is not None and self.csv_path.exists():
            self._truncate_after(resume_step)
        else:
            if self.csv_path.exists() and self.csv_path.stat().st_size > 0:
                warnings.warn(
                    f"{self.csv_path} exists and this run starts afresh: it is replaced "
                    "(pass resume_step to continue it instead)",
                    stacklevel=2,
                )
            self.csv_path.write_text("", encoding="utf-8")

        self._tb: Any = self._open_tensorboard(resume_step) if tensorboard else None
        self.progress = ProgressBar(
            total_steps,
            initial=resume_step or 0,
            stream=progress_stream,
            interval=progress_interval,
            enabled=progress_bar,
        )

    # ---- public API

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` at global step ``step``: one CSV row, TensorBoard scalars, progress.

        Values may be python, numpy or one-element torch numbers (bools are written as 0/1),
        ``None`` (an empty cell, no TensorBoard point) or strings (CSV only). Keys are the
        column names, e.g. ``Metrics/EpCost/hazard``; ``step`` is reserved. Both files are
        flushed before returning, so a crash loses at most the row being written.
        """
        if self._closed:
            raise RuntimeError(f"RunLogger for {self.run_dir} is closed")
        step = int(step)
        cells: dict[str, str] = {}
        scalars: dict[str, float] = {}
        for key, value in metrics.items():
            if not isinstance(key, str):
                raise TypeError(f"metric keys must be strings, got {key!r}")
            if key == STEP_COLUMN:
                raise ValueError(f"{STEP_COLUMN!r} is the CSV's step column; pass the step as the first argument")
            cell, scalar = _cell(key, value)
            cells[key] = cell
            if scalar is not None:
                scalars[key] = scalar

        new = [k for k in cells if k not in self._column_set]
        if new:
            self._extend_columns(new)
        if self._file is None:
            self._open_csv(write_header=True)
        self._writer.writerow([str(step)] + [cells.get(c, "") for c in self._columns[1:]])
        self._file.flush()
        self._last_step = step

        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        self.progress.update(step, metrics)

    def close(self) -> None:
        """Flush and close the files and finish the progress line. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.progress.close()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    @property
    def columns(self) -> list[str]:
        """The CSV header: ``step`` then the metric keys in order of first appearance."""
        return list(self._columns)

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- CSV

    def _open_csv(self, write_header: bool) -> None:
        self._file = open(self.csv_path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        if write_header:
            self._writer.writerow(self._columns)

    def _extend_columns(self, new: Iterable[str]) -> None:
        for key in new:
            self._columns.append(key)
            self._column_set.add(key)
        if self._file is None and not _has_content(self.csv_path):
            return  # nothing written yet: the header goes out with the first row
        # Rare (a key first seen mid-run, e.g. the first finished episode): rewrite the file with
        # the longer header and padded rows, rather than misaligning or dropping columns.
        if self._file is not None:
            self._file.close()
            self._file = None
        _, rows = _read_rows(self.csv_path)
        self._rewrite(rows)
        self._open_csv(write_header=False)

    def _truncate_after(self, resume_step: int) -> None:
        header, rows = _read_rows(self.csv_path)
        if header is None:
            self.csv_path.write_text("", encoding="utf-8")
            return
        if not header or header[0] != STEP_COLUMN:
            raise ValueError(f"{self.csv_path} is not a cmdp progress file (first column is not {STEP_COLUMN!r})")
        self._columns = list(header)
        self._column_set = set(header)
        kept = []
        for cells in rows:
            try:
                row_step = int(float(cells[0]))
            except ValueError:
                continue
            if row_step <= resume_step:
                kept.append(cells)
        self._rewrite(kept)
        self._open_csv(write_header=False)

    def _rewrite(self, rows: list[list[str]]) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(self._columns)
        width = len(self._columns)
        for cells in rows:
            writer.writerow(cells + [""] * (width - len(cells)))
        _atomic_write_text(self.csv_path, buf.getvalue())

    # ---- TensorBoard

    def _open_tensorboard(self, resume_step: int | None) -> Any:
        global _tensorboard_warned
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as e:  # ImportError, or a broken tensorboard/protobuf install
            if not _tensorboard_warned:
                _tensorboard_warned = True
                warnings.warn(
                    f"TensorBoard logging is off: torch.utils.tensorboard could not be imported "
                    f"({type(e).__name__}: {e}); install the 'tensorboard' package to get event "
                    "files. progress.csv is still written.",
                    stacklevel=3,
                )
            return None
        # TensorBoard hides events at or after purge_step written by earlier sessions in this
        # directory: after the resume step when resuming, all of them when starting afresh.
        purge = 0 if resume_step is None else resume_step + 1
        return SummaryWriter(log_dir=str(self.run_dir), purge_step=purge)


def _cell(key: str, value: Any) -> tuple[str, float | None]:
    """The CSV text and TensorBoard scalar (None: no point) of one metric value."""
    if value is None:
        return "", None
    if isinstance(value, str):
        return value, None
    if hasattr(value, "item") and not isinstance(value, numbers.Number):
        size = getattr(value, "size", None)
        numel = value.numel() if hasattr(value, "numel") else (size if isinstance(size, int) else 1)
        if numel != 1:
            raise TypeError(f"metric {key!r} must be a single number, got an array of {numel} values")
        value = value.item()
    if isinstance(value, bool):
        return str(int(value)), float(value)
    if isinstance(value, numbers.Integral):
        return str(int(value)), float(value)
    if isinstance(value, numbers.Real):
        v = float(value)
        return repr(v), v  # repr: the shortest text that reads back as the same float
    raise TypeError(f"metric {key!r} must be a number, None or a string, got {type(value).__name__}")


def _has_content(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def _read_rows(path: Path) -> tuple[list[str] | None, list[list[str]]]:
    """The header and the complete rows of a CSV. A row whose cell count differs from the
    header's (a line cut short by a crash mid-write) is dropped."""
    if not _has_content(path):
        return None, []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return None, []
        rows = [cells for cells in reader if len(cells) == len(header)]
    return header, rows
