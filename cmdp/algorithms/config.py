"""Typed, validated solver configs.

Every field is declared with :func:`option`, which records its documentation and its allowed
range; :class:`Config` checks types and ranges when the config is constructed, and
:meth:`Config.from_kwargs` rejects unknown keys with the closest valid names.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Mapping

from cmdp.errors import ConfigError


def option(
    default: Any,
    doc: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple | None = None,
) -> Any:
    """Declare a config field with its documentation and allowed values."""
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}
    if isinstance(default, (list, dict, set)):
        raise TypeError("config defaults must be immutable; use a tuple")
    return dataclasses.field(default=default, metadata=meta)


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check ``value`` against annotation ``tp``; return (ok, value converted where harmless)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, conv = _type_ok(value, arg)
            if ok:
                return True, conv
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False, value
        args = typing.get_args(tp)
        elem = args[0] if args else Any
        out = []
        for v in value:
            ok, conv = _type_ok(v, elem)
            if not ok:
                return False, value
            out.append(conv)
        return True, tuple(out)
    if origin is dict or tp is dict:
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    return isinstance(value, tp), value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base of all configs: validates every field at construction."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            ok, conv = _type_ok(value, hints[f.name])
            if not ok:
                raise ConfigError(
                    f"{type(self).__name__}.{f.name} must be {_type_name(hints[f.name])}, "
                    f"got {value!r} ({type(value).__name__})"
                )
            if conv is not value:
                object.__setattr__(self, f.name, conv)
            self._check_range(f, conv)
        self.validate()

    def _check_range(self, f: dataclasses.Field, value: Any) -> None:
        m = f.metadata
        if value is None or not m:
            return
        where = f"{type(self).__name__}.{f.name}"
        if m.get("choices") is not None and value not in m["choices"]:
            raise ConfigError(f"{where} must be one of {list(m['choices'])}, got {value!r}")
        items = value if isinstance(value, tuple) else (value,)
        for v in items:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if m.get("ge") is not None and not v >= m["ge"]:
                raise ConfigError(f"{where} must be >= {m['ge']}, got {value!r}")
            if m.get("gt") is not None and not v > m["gt"]:
                raise ConfigError(f"{where} must be > {m['gt']}, got {value!r}")
            if m.get("le") is not None and not v <= m["le"]:
                raise ConfigError(f"{where} must be <= {m['le']}, got {value!r}")
            if m.get("lt") is not None and not v < m["lt"]:
                raise ConfigError(f"{where} must be < {m['lt']}, got {value!r}")

    def validate(self) -> None:
        """Checks that involve several fields; subclasses extend it."""

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "Config":
        names = [f.name for f in dataclasses.fields(cls)]
        for key in kwargs:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(
                    f"unknown {cls.__name__} option {key!r}.{hint} Allowed options: {', '.join(sorted(names))}"
                )
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def describe(cls) -> str:
        """One line per option: name, default, documentation."""
        lines = []
        for f in dataclasses.fields(cls):
            lines.append(f"{f.name} = {f.default!r}: {f.metadata.get('doc', '')}")
        return "\n".join(lines)
