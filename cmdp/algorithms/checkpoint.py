"""Checkpoint files: written atomically, read with ``torch.load(weights_only=True)``.

``weights_only`` loading accepts tensors and plain containers of python scalars and strings,
nothing that can run code. Numpy arrays (env states, observations, RNG states) are therefore
stored as ``{"__ndarray__": tensor, "dtype": str}`` and converted back on load. A value no
such load accepts (a function in a run's env kwargs) is replaced by a marker
``{"__unstorable__": description}`` that the loading code asks the caller to fill in again.
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


# leaves and containers that torch.load(weights_only=True) gives back as they were saved
_PLAIN_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)
_PLAIN_KEYS = (type(None), bool, int, float, str)
UNSTORABLE = "__unstorable__"
"""Key of the marker ``{UNSTORABLE: description}`` that stands in a checkpoint for a value it
cannot store (see :func:`without_unstorable`)."""


def as_plain_data(tree: Any) -> Any:
    """``tree`` as a checkpoint gives it back, as far as a checkpoint can store it.

    A value with a ``to_dict()`` method (an episode spec, a config) becomes its dict; numpy
    scalars become python scalars; dicts, lists and tuples are rebuilt with their items
    converted. Plain data and numpy arrays stay as they are (arrays are stored by
    :func:`to_storable`). Anything else (a function, an env object, a mapping that is not a
    dict) is kept as it is, so the code that uses ``tree`` still works; :func:`without_unstorable`
    then finds it.
    """
    to_dict = getattr(tree, "to_dict", None)
    if callable(to_dict) and not isinstance(tree, type):
        return as_plain_data(to_dict())
    if isinstance(tree, np.generic):
        return tree.item()
    if type(tree) is dict:
        return {_plain_scalar(k): as_plain_data(v) for k, v in tree.items()}
    if type(tree) in (list, tuple):
        return type(tree)(as_plain_data(v) for v in tree)
    if type(tree) is set:
        return {_plain_scalar(v) for v in tree}
    return tree


def _plain_scalar(value: Any) -> Any:
    # dict keys and set items must stay hashable: only numpy scalars are converted there
    return value.item() if isinstance(value, np.generic) else value


def without_unstorable(tree: Any) -> Any:
    """A copy of an :func:`as_plain_data` tree with every value that a ``weights_only`` load
    refuses replaced by the marker ``{UNSTORABLE: what it was}``; :func:`find_unstorable`
    lists the markers. Numpy arrays (not of dtype object) count as storable."""
    if _is_storable_leaf(tree):
        return tree
    if type(tree) is dict and all(type(k) in _PLAIN_KEYS for k in tree):
        return {k: without_unstorable(v) for k, v in tree.items()}
    if type(tree) in (list, tuple):
        return type(tree)(without_unstorable(v) for v in tree)
    if type(tree) is set and all(_is_storable_leaf(v) for v in tree):
        return set(tree)
    return {UNSTORABLE: _describe_object(tree)}


def find_unstorable(tree: Any, path: str = "") -> dict[str, str]:
    """Where ``tree`` holds :data:`UNSTORABLE` markers and what each stands for, e.g.
    ``{"cost_fn": "function my_cost", "episodes[3]": "mymodule.Spec"}`` (a top-level key of a
    dict is written bare, deeper keys and indices in brackets)."""
    if isinstance(tree, dict):
        if set(tree) == {UNSTORABLE}:
            return {path: str(tree[UNSTORABLE])}
        found: dict[str, str] = {}
        for k, v in tree.items():
            found |= find_unstorable(v, f"{path}[{k!r}]" if path else str(k))
        return found
    if isinstance(tree, (list, tuple)):
        found = {}
        for i, v in enumerate(tree):
            found |= find_unstorable(v, f"{path}[{i}]")
        return found
    return {}


def _is_storable_leaf(value: Any) -> bool:
    if type(value) in _PLAIN_LEAVES or type(value) in (torch.Tensor, torch.nn.Parameter):
        return True
    return isinstance(value, np.ndarray) and value.dtype != object


def _describe_object(value: Any) -> str:
    kind = type(value)
    type_name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    name = getattr(value, "__qualname__", None)  # functions and classes name themselves
    return f"{type_name} {name}" if isinstance(name, str) else type_name


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
