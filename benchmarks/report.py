"""Write a benchmark's table into BENCHMARKS.md between its own markers, keeping the rest."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

import torch


def machine_line(torch_threads: int | None = None) -> str:
    """Date, machine and versions of a measurement. ``torch_threads``: the thread count the
    measured runs used (default: this process's now, which is theirs when they ran in it: the
    solvers set it, so call this after them)."""
    threads = torch.get_num_threads() if torch_threads is None else torch_threads
    model = cpu_model()
    return (
        f"Measured {dt.date.today().isoformat()} on {platform.node() or 'this machine'}: {os.cpu_count()} cores"
        f"{f' ({model})' if model else ''}, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__} ({threads} thread(s))."
    )


def cpu_model() -> str:
    """The CPU's model name ("" where /proc/cpuinfo does not say). Part of a measurement, not
    only of its speed: NumPy's BLAS picks its kernels by CPU model, and their rounding differs, so
    runs that act through NumPy can train differently on another CPU from the same seed."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def publish(table: str, out: Path | None, key: str, title: str) -> None:
    """Print ``table`` and, when ``out`` is given, write it as section ``key`` of that file."""
    print(table)
    if out is not None:
        update_section(out, key, title, table)


def update_section(path: Path, key: str, title: str, table: str) -> None:
    """Replace the block between ``<!-- key:begin -->`` and ``<!-- key:end -->`` (or append it
    under ``## title``)."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{table}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n## {title}\n\n" + block + "\n"
    path.write_text(text)
