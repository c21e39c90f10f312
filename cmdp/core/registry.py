"""One registry of env ids: built-in CMDPs first, then any gymnasium id, then safety-gymnasium ids.

``make(env_id, num_envs=1, seed=None, **kwargs)`` returns a :class:`~cmdp.core.vector.VectorCMDP`.
Built-in ids are registered with :func:`register`; any other id is looked up in gymnasium's
registry (cost read from ``info["cost"]`` or computed by a ``cost_fn``) and then in
safety-gymnasium's when that package imports.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass
from typing import Any, Callable

from cmdp.core.vector import VectorCMDP
from cmdp.errors import UnknownNameError

EnvFactory = Callable[..., VectorCMDP]


@dataclass(frozen=True)
class EnvSpec:
    env_id: str
    factory: EnvFactory
    description: str = ""


_REGISTRY: dict[str, EnvSpec] = {}


def register(env_id: str, factory: EnvFactory, description: str = "") -> None:
    """Register a built-in id. ``factory(num_envs=..., seed=..., **kwargs)`` builds the vector env."""
    if env_id in _REGISTRY and _REGISTRY[env_id].factory is not factory:
        raise ValueError(f"env id {env_id!r} is already registered")
    _REGISTRY[env_id] = EnvSpec(env_id, factory, description)


def builtin_ids() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def builtin_specs() -> list[EnvSpec]:
    _load_builtins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def _load_builtins() -> None:
    import cmdp.envs  # noqa: F401  (registers the built-in ids on import)


def _gymnasium_ids() -> list[str]:
    import gymnasium

    return list(gymnasium.registry.keys())


def safety_gymnasium_available() -> bool:
    return importlib.util.find_spec("safety_gymnasium") is not None


def _safety_gymnasium_ids() -> list[str]:
    if not safety_gymnasium_available():
        return []
    try:
        import safety_gymnasium

        # safety-gymnasium 1.0.0 exports no `registry`: its ids are the set
        # utils.registration.safe_registry (they are in gymnasium's registry too, but made through
        # gymnasium.make their 6-tuple steps fail gymnasium's checker)
        registry = getattr(safety_gymnasium, "registry", None)
        if registry is None:
            from safety_gymnasium.utils.registration import safe_registry as registry
        return list(registry)
    except Exception:  # a broken optional install must not break make() for other ids
        return []


def make(env_id: str, num_envs: int = 1, seed: int | None = None, **kwargs: Any) -> VectorCMDP:
    """Build a vector CMDP env for ``env_id`` with ``num_envs`` copies.

    ``seed`` seeds the first reset (env i gets ``seed + i``). Extra keyword arguments go to the
    env's constructor; for gymnasium ids ``cost_fn(obs, action, next_obs, info) -> float | array``,
    ``cost_names`` and ``vectorization="sync" | "subproc" | "ray"`` are understood as well.
    """
    if not isinstance(env_id, str):
        raise TypeError(f"env_id must be a string, got {type(env_id).__name__}")
    if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
        raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    _load_builtins()
    if env_id in _REGISTRY:
        env = _REGISTRY[env_id].factory(num_envs=num_envs, seed=seed, **kwargs)
        return env
    from cmdp.core import gym_adapter

    if env_id in _safety_gymnasium_ids():
        return gym_adapter.make_safety_gymnasium(env_id, num_envs=num_envs, seed=seed, **kwargs)
    if env_id in _gymnasium_ids():
        return gym_adapter.make_gymnasium(env_id, num_envs=num_envs, seed=seed, **kwargs)
    known = list(_REGISTRY) + _gymnasium_ids() + _safety_gymnasium_ids()
    close = difflib.get_close_matches(env_id, known, n=5, cutoff=0.5)
    hint = f"; closest registered ids: {', '.join(close)}" if close else ""
    raise UnknownNameError(
        f"unknown env id {env_id!r}{hint}. `cmdp envs` lists the built-in ids; any gymnasium id "
        "works too" + ("" if safety_gymnasium_available() else " (safety-gymnasium is not installed)")
    )
