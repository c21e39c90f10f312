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
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

_MARKER = "_cmdp_ndarray_default_patch"


def _is_ndarray(value: Any) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.ndarray)


def install() -> bool:
    """Patch ``dataclasses``; returns False when it was already patched."""
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


install()
