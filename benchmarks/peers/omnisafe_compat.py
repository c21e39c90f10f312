"""Make omnisafe 0.5.0 and safety-gymnasium 1.0.0 importable on Python 3.11.

Both packages declare dataclass fields whose default is a numpy array. Python 3.11
refuses any unhashable default (``ValueError: mutable default ... use default_factory``),
so ``import safety_gymnasium`` fails before a single line of theirs runs. This module
wraps ``dataclasses._get_field`` so that, for a class being turned into a dataclass, an
``np.ndarray`` default found in the class body becomes ``field(default_factory=arr.copy)``.
That is what the authors meant (every instance gets its own array, equal to the default)
and it changes nothing for any other dataclass: the wrapper only looks at attributes
whose type is numpy's ndarray, and never imports numpy itself.

Install it before the peers are imported, either explicitly::

    import omnisafe_compat   # installs on import; omnisafe_compat.install() is idempotent
    import omnisafe

or, as ``benchmarks/peers/setup_omnisafe.sh`` does for the peer virtual env, from a
``.pth`` file in site-packages so every interpreter of that env has it. It is our own
code; cmdp never imports it.

A second, smaller incompatibility is with mujoco 4: safety-gymnasium reads a sensor's joint
id as ``model.sensor(i).objid`` (a one-element array) and passes it to ``model.jnt(...)``,
which mujoco 4's bindings reject, so every agent with joint sensors (the Car) fails to build.
:func:`install` also registers an import hook that, once mujoco is imported, lets
``MjModel.jnt`` take such an array as the integer it holds. mujoco is not imported early for
it: interpreters of the peer env that never touch mujoco pay nothing.
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.util
import sys
from typing import Any

_MARKER = "_cmdp_ndarray_default_patch"


def _is_ndarray(value: Any) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.ndarray)


def install() -> bool:
    """Patch ``dataclasses`` and hook mujoco's import; returns False when already done."""
    _hook_mujoco()
    original = dataclasses._get_field
    if getattr(original, _MARKER, False):
        return False

    def get_field_allowing_array_defaults(cls, a_name, a_type, *args, **kwargs):
        default = cls.__dict__.get(a_name, dataclasses.MISSING)
        if _is_ndarray(default):
            # The class attribute must become a Field: dataclasses reads it from the class.
            setattr(cls, a_name, dataclasses.field(default_factory=default.copy))
        return original(cls, a_name, a_type, *args, **kwargs)

    setattr(get_field_allowing_array_defaults, _MARKER, True)
    get_field_allowing_array_defaults.__wrapped__ = original
    dataclasses._get_field = get_field_allowing_array_defaults
    return True


def _index_from_array(key: Any) -> Any:
    """A one-element integer array as the int it holds; anything else unchanged."""
    if _is_ndarray(key) and key.size == 1 and key.dtype.kind in "iu":
        return int(key.reshape(-1)[0])
    return key


def patch_mujoco(mujoco: Any) -> None:
    """Let ``mujoco.MjModel.jnt`` take a one-element index array (idempotent)."""
    original = mujoco.MjModel.jnt
    if getattr(original, _MARKER, False):
        return

    def jnt(self, *args, **kwargs):
        return original(self, *(_index_from_array(a) for a in args), **kwargs)

    setattr(jnt, _MARKER, True)
    jnt.__wrapped__ = original
    mujoco.MjModel.jnt = jnt


class _PatchMujocoOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of ``mujoco`` to patch it once loaded."""

    def find_spec(self, name, path=None, target=None):
        if name != "mujoco":
            return None
        sys.meta_path.remove(self)  # one patch per interpreter; also lets the real finders answer
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            patch_mujoco(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def _hook_mujoco() -> None:
    if "mujoco" in sys.modules:
        patch_mujoco(sys.modules["mujoco"])
    elif not any(isinstance(f, _PatchMujocoOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchMujocoOnImport())


install()
