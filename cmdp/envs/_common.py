"""Shared machinery of the built-in pure-numpy CMDPs: argument checks, seeding and exact state.

Every built-in env here steps all ``num_envs`` copies as one numpy batch and draws all of its
randomness from ONE :class:`numpy.random.Generator` per vector env. A run is therefore a
deterministic function of ``(seed, num_envs, constructor kwargs, actions)``. (The protocol's
"env i is seeded with ``seed + i``" describes envs built from independent copies; a batched env
has one stream, so env i's episodes depend on ``num_envs`` too.)
"""

from __future__ import annotations

import abc
import math
from typing import Any, Callable, Mapping

import numpy as np

from cmdp.core.vector import VectorCMDP
from cmdp.errors import CheckpointError, ConfigError


# ---- argument checks ------------------------------------------------------------------------


def check_int(env: str, name: str, value: Any, *, lo: int, hi: int | None = None) -> int:
    """Return ``value`` as an int in ``[lo, hi]`` or raise a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{env}: {name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{env}: {name} must be an integer {allowed}, got {value}")
    return value


def check_float(
    env: str,
    name: str,
    value: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """Return ``value`` as a finite float in the given interval or raise a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{env}: {name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    bad = not math.isfinite(value)
    if lo is not None:
        bad |= value <= lo if lo_open else value < lo
    if hi is not None:
        bad |= value >= hi if hi_open else value > hi
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ConfigError(f"{env}: {name} must be a finite number in {left}{lo_s}, {hi_s}{right}, got {value!r}")
    return value


def check_seed(env: str, seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ConfigError(f"{env}: seed must be None or an integer >= 0, got {seed!r}")
    return int(seed)


# ---- the base class -------------------------------------------------------------------------


class BatchedCMDP(VectorCMDP, abc.ABC):
    """A VectorCMDP whose state is a fixed set of numpy arrays plus one Generator.

    Subclasses list the attribute names of their per-env state arrays in ``_state_fields`` and
    implement ``_reset_rows(rows)`` (start new episodes in the rows given by an index array,
    drawing from ``self._rng``) and ``step``. ``_config()`` returns the constructor arguments
    that define the CMDP; a saved state only loads into an env built with the same ones.
    """

    _state_fields: tuple[str, ...] = ()

    def __init__(self, num_envs: int, seed: int | None) -> None:
        name = type(self).__name__
        self.num_envs = check_int(name, "num_envs", num_envs, lo=1)
        self._rng = np.random.default_rng(check_seed(name, seed))
        self._started = False
        self._obs: np.ndarray | None = None

    # subclasses -------------------------------------------------------------------------------

    @abc.abstractmethod
    def _reset_rows(self, rows: np.ndarray) -> None:
        """Start new episodes in ``rows`` (int index array), including the step counter."""

    @abc.abstractmethod
    def _observe(self) -> np.ndarray:
        """The observation batch of the current state (float32, fresh array)."""

    @abc.abstractmethod
    def _config(self) -> dict[str, Any]:
        """Constructor arguments that define the CMDP (python scalars, strings, lists)."""

    # protocol ---------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None) -> tuple[np.ndarray, dict]:
        """Start a new episode in every env.

        ``seed`` replaces the generator by ``np.random.default_rng(seed)``, so ``reset(seed=s)``
        on any env equals a fresh env built with ``seed=s`` and reset without a seed. Without a
        seed the current generator continues.
        """
        seed = check_seed(type(self).__name__, seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._reset_rows(np.arange(self.num_envs))
        self._started = True
        self._obs = self._observe()
        return self._obs.copy(), {}

    def _require_started(self) -> None:
        if not self._started:
            raise RuntimeError(f"{type(self).__name__}: call reset() before step()")

    # exact state ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue bit-exactly: state arrays, step counters, generator
        state, current observation, and the config the state belongs to."""
        return {
            "env": type(self).__name__,
            "config": self._config(),
            "num_envs": self.num_envs,
            "started": self._started,
            "rng": self._rng.bit_generator.state,
            "obs": None if self._obs is None else self._obs.copy(),
            "arrays": {k: getattr(self, k).copy() for k in self._state_fields},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        name = type(self).__name__
        needed = {"env", "config", "num_envs", "started", "rng", "obs", "arrays"}
        if not isinstance(state, Mapping) or not needed <= set(state):
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise CheckpointError(f"{name}: not an env state (need keys {sorted(needed)}, got {got})")
        if state["env"] != name:
            raise CheckpointError(f"{name}: the saved state belongs to a {state['env']} env")
        if int(state["num_envs"]) != self.num_envs:
            raise CheckpointError(
                f"{name}: the saved state has num_envs={state['num_envs']}, this env has {self.num_envs}"
            )
        mine, theirs = self._config(), dict(state["config"])
        diff = sorted(k for k in set(mine) | set(theirs) if _plain(mine.get(k)) != _plain(theirs.get(k)))
        if diff:
            detail = ", ".join(f"{k}: saved {theirs.get(k)!r} vs env {mine.get(k)!r}" for k in diff)
            raise CheckpointError(f"{name}: the saved state was made with other settings ({detail})")
        arrays = state["arrays"]
        for k in self._state_fields:
            if k not in arrays:
                raise CheckpointError(f"{name}: the saved state lacks the array {k!r}")
            cur, new = getattr(self, k), np.asarray(arrays[k])
            if new.shape != cur.shape or new.dtype != cur.dtype:
                raise CheckpointError(
                    f"{name}: saved array {k!r} has shape {new.shape} {new.dtype}, expected {cur.shape} {cur.dtype}"
                )
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = dict(state["rng"])
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{name}: the saved generator state is invalid ({e})") from e
        for k in self._state_fields:
            setattr(self, k, np.array(arrays[k], copy=True, order="C"))
        self._rng = rng
        self._started = bool(state["started"])
        self._obs = None if state["obs"] is None else np.array(state["obs"], dtype=np.float32, copy=True)


def _plain(value: Any) -> Any:
    """Compare configs after a checkpoint round trip (tuples come back as lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def rejection_sample(
    rng: np.random.Generator,
    count: int,
    half_width: float,
    valid: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    candidates: int = 16,
    rounds: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``count`` points uniformly from ``[-half_width, half_width]^2`` subject to ``valid``.

    ``valid(rows, cand)`` gets the indices (into ``range(count)``) of the rows still to be placed
    and candidates ``[len(rows), candidates, 2]`` and returns a bool mask ``[len(rows),
    candidates]``. Each round draws ``candidates`` points for every unplaced row at once and keeps
    the first valid one, so the loop runs over rounds, never over envs. Returns the points
    ``[count, 2]`` and a bool mask of the rows that found one within ``rounds`` rounds.
    """
    out = np.zeros((count, 2))
    rows = np.arange(count)
    for _ in range(rounds):
        if rows.size == 0:
            break
        cand = rng.uniform(-half_width, half_width, size=(rows.size, candidates, 2))
        ok = valid(rows, cand)
        found = ok.any(axis=1)
        first = ok.argmax(axis=1)
        out[rows[found]] = cand[np.flatnonzero(found), first[found]]
        rows = rows[~found]
    placed = np.ones(count, dtype=bool)
    placed[rows] = False
    return out, placed
