"""Checkpoint files: written atomically, read with ``torch.load(weights_only=True)``.

``weights_only`` loading accepts tensors and plain containers of python scalars and strings,
nothing that can run code. Numpy arrays (env states, observations, RNG states) are therefore
stored as ``{"__ndarray__": tensor, "dtype": str}`` and converted back on load.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmdp.errors import CheckpointError

FORMAT = "cmdp-checkpoint"
VERSION = 1


def to_storable(tree: Any) -> Any:
    """Replace numpy arrays and numpy scalars in a nested structure by storable values."""
    if isinstance(tree, np.ndarray):
        if tree.dtype == object:
            raise TypeError("object arrays cannot be stored in a checkpoint")
        kind = str(tree.dtype)
        # torch has no unsigned 16/32/64-bit tensors with full op support; a view keeps the bits
        if tree.dtype in (np.uint16, np.uint32, np.uint64):
            tree = tree.view({2: np.int16, 4: np.int32, 8: np.int64}[tree.dtype.itemsize])
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(tree).copy()), "dtype": kind}
    if isinstance(tree, np.generic):
        return tree.item()
    if isinstance(tree, dict):
        return {k: to_storable(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_storable(v) for v in tree)
    return tree


def from_storable(tree: Any) -> Any:
    """Inverse of :func:`to_storable`."""
    if isinstance(tree, dict):
        if "__ndarray__" in tree and set(tree) == {"__ndarray__", "dtype"}:
            arr = tree["__ndarray__"].numpy()
            return arr.view(np.dtype(tree["dtype"])) if arr.dtype != np.dtype(tree["dtype"]) else arr
        return {k: from_storable(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(from_storable(v) for v in tree)
    return tree


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` with ``torch.save`` to a temporary file beside ``path``, then rename it.

    A process killed mid-write leaves the previous checkpoint untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load(path: str | os.PathLike) -> dict:
    """Read a checkpoint safely; a missing, truncated or foreign file raises CheckpointError."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        refused = [line.strip() for line in str(e).splitlines() if "Unsupported global" in line]
        if refused:
            # a readable file that stores a Python object: say which, not "corrupted"
            raise CheckpointError(
                f"checkpoint {path} stores a Python object that a safe (weights_only) load refuses: "
                f"{refused[0]}; it was written by code that put such an object in the run's config"
            ) from e
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupted and cannot be read ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cmdp checkpoint (no '{FORMAT}' header)")
    if data.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {data.get('version')}, this cmdp reads {VERSION}"
        )
    return data
