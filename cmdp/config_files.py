"""Config files (TOML, YAML, JSON) and ``--set key=value`` overrides for the command line.

Both produce plain dicts; :func:`merge_configs` combines them (later wins, nested tables merged
key by key). What the keys mean is up to the caller: ``cmdp train`` passes them to the solver's
constructor, where unknown keys are rejected with the closest valid names.
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from cmdp.errors import ConfigError

__all__ = ["load_config_file", "merge_configs", "parse_set_overrides", "parse_value", "SUPPORTED_EXTENSIONS"]

SUPPORTED_EXTENSIONS = (".toml", ".yaml", ".yml", ".json")


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a config file into a dict, choosing the parser by extension.

    ``.toml`` is read with ``tomllib``; ``.yaml``/``.yml`` with ``yaml.safe_load`` semantics
    (tags that would construct python objects are rejected) extended so that ``3e-4`` is a
    float, as in YAML 1.2, not the string PyYAML's YAML 1.1 rules make of it; ``.json`` with
    ``json``. An empty YAML file is an empty dict.

    Raises :class:`~cmdp.errors.ConfigError` for a missing file, an unknown extension, a syntax
    error (the message names the file and, where the parser reports it, the line), a top level
    that is not a mapping, or a YAML mapping key that is not a string.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise ConfigError(
            f"config file {path}: unknown extension {path.suffix or '(none)'!r}; "
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start})") from None

    if ext == ".toml":
        data = _load_toml(path, text)
    elif ext == ".json":
        data = _load_json(path, text)
    else:
        data = _load_yaml(path, text)
    if data is None:  # an empty YAML document
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: the top level must be a mapping of option names to values, "
            f"got a {_yaml_type_name(data)}"
        )
    _check_keys(path, data)
    return data


def _load_toml(path: Path, text: str) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError(
                f"cannot read {path}: TOML needs python >= 3.11 or the 'tomli' package"
            ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # the message ends with "(at line L, column C)"
        raise ConfigError(f"cannot parse TOML file {path}: {e}") from None


def _load_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"cannot parse JSON file {path}, line {e.lineno}, column {e.colno}: {e.msg}") from None


def _load_yaml(path: Path, text: str) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_safe_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.constructor.ConstructorError as e:
        where = _yaml_where(path, e)
        tag = _yaml_tag(e)
        if tag is not None:
            raise ConfigError(
                f"{where}: the YAML tag {tag!r} is not allowed: config files are read with "
                "yaml.safe_load, which builds only mappings, lists, strings, numbers, booleans "
                "and null, never python objects"
            ) from None
        raise ConfigError(f"{where}: {e.problem or e}") from None
    except yaml.MarkedYAMLError as e:
        raise ConfigError(f"cannot parse YAML file {_yaml_where(path, e)}: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse YAML file {path}: {e}") from None


_LOADER: Any = None


def _safe_loader() -> Any:
    """``yaml.SafeLoader`` that also reads ``1e-3`` and ``5E+2`` as floats.

    PyYAML follows YAML 1.1, where a float needs a dot, so ``lr: 3e-4`` would be the string
    ``"3e-4"`` and fail later with a confusing type error. YAML 1.2 (and TOML, JSON) call it a
    float; so do we.
    """
    global _LOADER
    if _LOADER is None:
        import yaml

        class Loader(yaml.SafeLoader):
            pass

        Loader.add_implicit_resolver(
            "tag:yaml.org,2002:float",
            re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
            list("-+0123456789"),
        )
        _LOADER = Loader
    return _LOADER


def _yaml_where(path: Path, e: Any) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if mark is None:
        return str(path)
    return f"{path}, line {mark.line + 1}, column {mark.column + 1}"


def _yaml_tag(e: Any) -> str | None:
    m = re.search(r"tag '([^']+)'", str(getattr(e, "problem", "") or ""))
    return m.group(1) if m else None


def _yaml_type_name(data: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(data), type(data).__name__
    )


def _check_keys(path: Path, data: Mapping[Any, Any], prefix: str = "") -> None:
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"config file {path}: key {prefix}{key!r} must be a string, got {_yaml_type_name(key)}")
        if isinstance(value, dict):
            _check_keys(path, value, f"{prefix}{key}.")


# ---- --set overrides ------------------------------------------------------------------------

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*$")
_CONSTANTS = {"true": True, "false": False, "null": None, "none": None}


def parse_set_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``["key=value", ...]`` into a dict, converting each value with :func:`parse_value`.

    A dotted key sets a nested entry: ``env_kwargs.obs_mode=state`` gives
    ``{"env_kwargs": {"obs_mode": "state"}}``. A later item for the same key wins. Raises
    :class:`~cmdp.errors.ConfigError` naming the item when it has no ``=``, its key is not a
    dotted identifier, or its value is malformed.
    """
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set actor_lr=3e-4")
        key, _, text = item.partition("=")
        key = key.strip()
        if not _KEY.match(key):
            raise ConfigError(
                f"--set {item!r}: {key!r} is not an option name (letters, digits, '_', '-'; "
                "dots for nested keys such as env_kwargs.obs_mode)"
            )
        try:
            value = parse_value(text)
        except ValueError as e:
            raise ConfigError(f"--set {item!r}: {e}") from None
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
    return out


def parse_value(text: str) -> Any:
    """Convert command-line text to a value, without evaluating code.

    In order: ``true``/``false`` (any case) -> bool; ``null``/``none`` -> None; an int
    (``4096``, ``1_000_000``); a float (``3e-4``, ``.5``, ``inf``, ``nan``); a JSON value
    (``[64, 64]``, ``{"a": 1}``, ``"quoted text"``); a python literal (``(64, 64)``,
    ``['a', 'b']``, ``'quoted'``) via ``ast.literal_eval``, which only reads literals. Anything
    else is the string itself (``tanh``). Raises ValueError when the text starts like a list,
    dict or quoted string but does not parse as one, rather than silently passing a string on.
    """
    s = text.strip()
    if s == "":
        raise ValueError("empty value (write key='' for an empty string)")
    lowered = s.lower()
    if lowered in _CONSTANTS:
        return _CONSTANTS[lowered]
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        pass
    try:
        return json.loads(s)
    except (json.JSONDecodeError, RecursionError):
        pass
    if s[0] in "[({'\"":
        try:
            return _literal(ast.literal_eval(s))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            kind = {"[": "list", "(": "tuple", "{": "mapping"}.get(s[0], "quoted string")
            raise ValueError(
                f"{s!r} looks like a {kind} but does not parse as one; quote strings inside "
                'it, e.g. [64, 64] or ["a", "b"]'
            ) from None
    return s


def _literal(value: Any) -> Any:
    """Tuples from ``literal_eval`` become lists, matching what JSON, TOML and YAML give."""
    if isinstance(value, (tuple, list)):
        return [_literal(v) for v in value]
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset, bytes, complex)):
        raise ValueError(f"{type(value).__name__} values are not supported")
    return value


def merge_configs(*configs: Mapping[str, Any]) -> dict[str, Any]:
    """Merge dicts left to right: a later value replaces an earlier one, except that two
    mappings under the same key are merged recursively (so ``--set env_kwargs.x=1`` keeps the
    file's other ``env_kwargs``). The inputs are not modified."""
    out: dict[str, Any] = {}
    for config in configs:
        for key, value in config.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = merge_configs(out[key], value)
            elif isinstance(value, Mapping):
                out[key] = merge_configs(value)
            else:
                out[key] = value
    return out

