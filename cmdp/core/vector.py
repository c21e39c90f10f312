"""The vector CMDP protocol every env in cmdp speaks, and helpers for batched observations.

A vector CMDP env runs ``num_envs`` copies of one constrained MDP in lock step:

``reset(seed=None) -> (obs, info)``
    ``obs`` is a batch: an array ``[num_envs, *shape]`` for Box/Discrete spaces, or a dict of
    such arrays for Dict spaces.

``step(actions) -> (obs, reward, cost, terminated, truncated, info)``
    ``reward`` float64 ``[num_envs]``, ``cost`` float64 ``[num_envs, K]``, ``terminated`` and
    ``truncated`` bool ``[num_envs]``. Finished envs are reset automatically: ``obs`` already holds
    the first observation of the next episode, and the true last observation of the finished
    episode is in ``info["final_obs"]`` (same batch layout as ``obs``; only rows where
    ``terminated | truncated`` are meaningful).

Optional ``info`` keys, all arrays of length ``num_envs``:

``"success"`` (bool)
    whether the episode that finished at this step succeeded; read where an episode ended.
``"restarted"`` (bool)
    the env's worker crashed and was replaced; its episode was ended as truncated.

``cost_names`` names the K cost channels; ``observation_space`` and ``action_space`` are the
spaces of one env (gymnasium spaces). ``max_episode_steps`` is the time limit or ``None``.

Envs whose whole state can be captured implement ``state_dict`` / ``load_state_dict`` so that a
training run resumes exactly; the default raises ``NotImplementedError`` and training then
restarts episodes on resume.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np

from cmdp.errors import ActionShapeError

Obs = Any  # np.ndarray, or dict[str, np.ndarray] for Dict spaces


class VectorCMDP(abc.ABC):
    """Base class of vector CMDP envs. See the module docstring for the contract."""

    num_envs: int
    observation_space: gym.Space
    action_space: gym.Space
    cost_names: tuple[str, ...]
    max_episode_steps: int | None = None
    metadata: dict = {}

    @property
    def num_costs(self) -> int:
        return len(self.cost_names)

    @property
    def unwrapped(self) -> "VectorCMDP":
        return self

    @abc.abstractmethod
    def reset(self, *, seed: int | None = None) -> tuple[Obs, dict]:
        """Start a new episode in every env. ``seed`` seeds env i with ``seed + i``."""

    @abc.abstractmethod
    def step(
        self, actions: np.ndarray
    ) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Advance every env one step; see the module docstring."""

    def close(self) -> None:
        """Release processes or other resources. Safe to call twice."""

    def state_dict(self) -> dict:
        """Everything needed to continue exactly (arrays, RNG states). Optional."""
        raise NotImplementedError(f"{type(self).__name__} cannot save its state")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot load a saved state")

    def check_actions(self, actions: Any) -> np.ndarray:
        """Return ``actions`` as an array of shape ``[num_envs, *action_shape]`` or raise."""
        return check_action_batch(actions, self.action_space, self.num_envs)

    def __enter__(self) -> "VectorCMDP":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_envs={self.num_envs}, costs={list(self.cost_names)}, "
            f"obs={self.observation_space}, act={self.action_space})"
        )


def check_action_batch(actions: Any, space: gym.Space, num_envs: int) -> np.ndarray:
    """Validate a batch of actions for ``num_envs`` envs with single-env action ``space``."""
    arr = np.asarray(actions)
    if isinstance(space, gym.spaces.Discrete):
        if arr.shape == (num_envs, 1):
            arr = arr[:, 0]
        if arr.shape != (num_envs,):
            raise ActionShapeError(
                f"expected {num_envs} discrete actions of shape ({num_envs},), got shape {arr.shape}"
            )
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise ActionShapeError(f"discrete actions must be integers, got {arr.dtype} values")
            arr = arr.astype(np.int64)
        bad = (arr < space.start) | (arr >= space.start + space.n)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ActionShapeError(
                f"action {int(arr[i])} for env {i} is outside Discrete({space.n}, start={space.start})"
            )
        return arr
    if isinstance(space, gym.spaces.MultiDiscrete):
        want = (num_envs, *space.shape)
        if arr.shape != want:
            raise ActionShapeError(f"expected actions of shape {want}, got {arr.shape}")
        return arr.astype(np.int64)
    if isinstance(space, gym.spaces.Box):
        want = (num_envs, *space.shape)
        if arr.shape != want:
            if arr.size == int(np.prod(want)) and arr.ndim <= 1 and space.shape in ((1,), ()):
                arr = arr.reshape(want)
            else:
                raise ActionShapeError(
                    f"expected actions of shape {want} (num_envs, *action_space.shape), got {arr.shape}"
                )
        return arr.astype(space.dtype, copy=False)
    raise ActionShapeError(f"action space {space} is not supported (Box, Discrete, MultiDiscrete)")


# ---- batched observations -------------------------------------------------------------------


def obs_map(fn, obs: Obs) -> Obs:
    """Apply ``fn`` to each array of an observation batch (array or dict of arrays)."""
    if isinstance(obs, Mapping):
        return {k: obs_map(fn, v) for k, v in obs.items()}
    return fn(obs)


def obs_where(mask: np.ndarray, a: Obs, b: Obs) -> Obs:
    """Row-wise select: rows of ``a`` where ``mask`` else rows of ``b``."""
    if isinstance(a, Mapping):
        return {k: obs_where(mask, a[k], b[k]) for k in a}
    m = mask.reshape((-1,) + (1,) * (np.ndim(a) - 1))
    return np.where(m, a, b)


def obs_stack(items: Sequence[Obs]) -> Obs:
    """Stack per-env observations into a batch."""
    first = items[0]
    if isinstance(first, Mapping):
        return {k: obs_stack([it[k] for it in items]) for k in first}
    return np.stack([np.asarray(it) for it in items])


def obs_rows(obs: Obs, index: Any) -> Obs:
    """Select rows of an observation batch."""
    return obs_map(lambda x: x[index], obs)


def obs_set_rows(dst: Obs, index: Any, src: Obs) -> None:
    """Write rows of ``src`` into ``dst`` in place."""
    if isinstance(dst, Mapping):
        for k in dst:
            obs_set_rows(dst[k], index, src[k])
    else:
        dst[index] = src
