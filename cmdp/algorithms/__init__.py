"""Solvers: PPO (unconstrained baseline), PPOLag, PIDLag, FOCOPS, CPO, and a registry by name.

Every solver takes ``(env, cost_limit=..., seed=..., run_dir=..., **config)``; ``env`` is an env id,
a :class:`~cmdp.core.vector.VectorCMDP`, or a callable returning a gymnasium env. The config keys
are the fields of the solver's ``Config`` dataclass (``PPOLag.Config.describe()`` lists them).
"""

from __future__ import annotations

import difflib

from cmdp.algorithms.cpo import CPO
from cmdp.algorithms.engine import EpochStats, OnPolicyAlgorithm, OnPolicyConfig
from cmdp.algorithms.focops import FOCOPS
from cmdp.algorithms.pid_lag import PIDLag
from cmdp.algorithms.ppo import PPO
from cmdp.algorithms.ppo_lag import PPOLag
from cmdp.errors import UnknownNameError

ALGORITHMS: dict[str, type[OnPolicyAlgorithm]] = {a.name: a for a in (PPO, PPOLag, PIDLag, FOCOPS, CPO)}

# names used by peers (OmniSafe calls PID-Lagrangian "CPPOPID")
_ALIASES = {"cppopid": "PIDLag", "ppolagrangian": "PPOLag", "ppo-lag": "PPOLag", "ppo_lag": "PPOLag", "pid-lag": "PIDLag"}


def register_algorithm(cls: type[OnPolicyAlgorithm]) -> type[OnPolicyAlgorithm]:
    """Add a solver to the registry (usable as a class decorator)."""
    ALGORITHMS[cls.name] = cls
    return cls


def get_algorithm(name: str) -> type[OnPolicyAlgorithm]:
    """Look a solver up by name, case-insensitively; unknown names get the closest matches."""
    lowered = {k.lower(): v for k, v in ALGORITHMS.items()}
    key = name.lower()
    key = _ALIASES.get(key, key).lower()
    if key in lowered:
        return lowered[key]
    close = difflib.get_close_matches(name, list(ALGORITHMS), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownNameError(f"unknown algorithm {name!r}{hint} Available: {', '.join(ALGORITHMS)}")


def load(path, env=None, **overrides) -> OnPolicyAlgorithm:
    """Load any solver's checkpoint (the class is read from the file)."""
    return OnPolicyAlgorithm.load(path, env=env, **overrides)


__all__ = [
    "ALGORITHMS",
    "CPO",
    "FOCOPS",
    "PIDLag",
    "PPO",
    "PPOLag",
    "EpochStats",
    "OnPolicyAlgorithm",
    "OnPolicyConfig",
    "get_algorithm",
    "load",
    "register_algorithm",
]
