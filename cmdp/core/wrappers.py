"""Vector CMDP wrappers: a delegating base, observation normalisation, reward/cost scaling.

There is no time-limit wrapper: the vector protocol cannot reset one env on its own, so time
limits live in the adapters (``max_episode_steps`` of :func:`cmdp.core.gym_adapter.make_gymnasium`
and :func:`~cmdp.core.gym_adapter.from_env_fns`) and in the built-in envs.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np

from cmdp.core.running_stats import RunningMeanStd
from cmdp.core.vector import Obs, VectorCMDP
from cmdp.errors import CheckpointError, ConfigError


class VectorWrapper(VectorCMDP):
    """Delegates everything to ``env``; subclasses override what they change.

    ``state_dict()`` is ``{"env": env.state_dict()}`` plus the wrapper's own entries, and raises
    NotImplementedError when the wrapped env cannot save its state. Attributes not defined
    here are looked up on ``env``.
    """

    def __init__(self, env: VectorCMDP) -> None:
        if not isinstance(env, VectorCMDP):
            raise TypeError(f"{type(self).__name__} wraps a VectorCMDP, got {type(env).__name__}")
        self.env = env
        self._observation_space: gym.Space | None = None
        self._action_space: gym.Space | None = None

    @property
    def observation_space(self) -> gym.Space:  # type: ignore[override]
        return self.env.observation_space if self._observation_space is None else self._observation_space

    @observation_space.setter
    def observation_space(self, space: gym.Space) -> None:
        self._observation_space = space

    @property
    def action_space(self) -> gym.Space:  # type: ignore[override]
        return self.env.action_space if self._action_space is None else self._action_space

    @action_space.setter
    def action_space(self, space: gym.Space) -> None:
        self._action_space = space

    @property
    def num_envs(self) -> int:  # type: ignore[override]
        return self.env.num_envs

    @property
    def cost_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.env.cost_names

    @property
    def max_episode_steps(self) -> int | None:  # type: ignore[override]
        return self.env.max_episode_steps

    @property
    def metadata(self) -> dict:  # type: ignore[override]
        return self.env.metadata

    @property
    def unwrapped(self) -> VectorCMDP:
        return self.env.unwrapped

    def reset(self, *, seed: int | None = None) -> tuple[Obs, dict]:
        return self.env.reset(seed=seed)

    def step(self, actions: Any) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        return self.env.step(actions)

    def close(self) -> None:
        self.env.close()

    def state_dict(self) -> dict:
        return {"env": self.env.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "env" not in state:
            raise CheckpointError(f"{type(self).__name__} state has no 'env' entry; keys: {sorted(state)}")
        self.env.load_state_dict(state["env"])

    def __getattr__(self, name: str) -> Any:
        # only called for names not found normally; guards keep copy/pickle from recursing
        if name.startswith("_") or "env" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return getattr(self.env, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}<{self.env!r}>"


def _is_float_box(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and np.issubdtype(space.dtype, np.floating)


class NormalizeObservation(VectorWrapper):
    """Standardises observations with running statistics: ``clip((x - mean) / sqrt(var + epsilon))``.

    What is normalised: a float Box observation, or the float Box keys of a Dict observation
    (integer Boxes such as uint8 images, Discrete and other keys pass through unchanged; a
    space with nothing to normalise passes through entirely). The normalised parts become
    ``Box(-clip, clip)`` float32 in ``observation_space``.

    Statistics: updated (while ``update`` is true) with every observation batch ``reset`` and
    ``step`` return, i.e. with first observations of new episodes, not with ``final_obs``.
    Within a step the stats are updated first, then ``obs`` and ``info["final_obs"]`` are both
    normalised with the updated stats, so bootstrapping values see the same scale as the
    policy. Set ``update=False`` to freeze them (evaluation).

    Args:
        env: the vector env to wrap.
        clip: bound on the normalised values (None: no clipping).
        epsilon: added to the variance before the square root.
        update: whether to update the statistics.
        obs_rms: statistics to use, shared with another ``NormalizeObservation`` (e.g. a
            training env's ``obs_rms`` for an evaluation env): a :class:`RunningMeanStd` for a Box
            space, a dict key -> :class:`RunningMeanStd` for a Dict space. Default: new ones.

    ``state_dict()`` holds the statistics (``obs_rms``) and the inner env's state.
    """

    def __init__(
        self,
        env: VectorCMDP,
        clip: float | None = 10.0,
        epsilon: float = 1e-8,
        update: bool = True,
        obs_rms: RunningMeanStd | Mapping[str, RunningMeanStd] | None = None,
    ) -> None:
        super().__init__(env)
        if clip is not None and not clip > 0:
            raise ConfigError(f"clip must be > 0 or None, got {clip!r}")
        if not (np.isfinite(epsilon) and epsilon >= 0):
            raise ConfigError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
        self.clip = None if clip is None else float(clip)
        self.epsilon = float(epsilon)
        self.update = bool(update)
        space = env.observation_space
        if isinstance(space, gym.spaces.Dict):
            shapes = {k: s.shape for k, s in space.spaces.items() if _is_float_box(s)}
        elif _is_float_box(space):
            shapes = {None: space.shape}
        else:
            shapes = {}
        self._rms: dict[str | None, RunningMeanStd] = self._check_rms(obs_rms, shapes)
        bound = np.inf if self.clip is None else self.clip
        normalized = {k: gym.spaces.Box(-bound, bound, shape, np.float32) for k, shape in shapes.items()}
        if None in normalized:
            self.observation_space = normalized[None]
        elif normalized:
            self.observation_space = gym.spaces.Dict({k: normalized.get(k, s) for k, s in space.spaces.items()})

    @property
    def obs_rms(self) -> RunningMeanStd | dict[str, RunningMeanStd] | None:
        """The statistics: one RunningMeanStd (Box), a dict per key (Dict), or None (nothing to do)."""
        if None in self._rms:
            return self._rms[None]
        return dict(self._rms) if isinstance(self.env.observation_space, gym.spaces.Dict) else None

    @staticmethod
    def _check_rms(obs_rms: Any, shapes: dict[str | None, tuple]) -> dict[str | None, RunningMeanStd]:
        if obs_rms is None:
            return {k: RunningMeanStd(shape) for k, shape in shapes.items()}
        given = dict(obs_rms) if isinstance(obs_rms, Mapping) else {None: obs_rms}
        if set(given) != set(shapes):
            want = "one RunningMeanStd" if None in shapes else f"a dict with keys {sorted(shapes)}"
            raise ConfigError(f"obs_rms must be {want} for this observation space, got {obs_rms!r}")
        for k, rms in given.items():
            if not isinstance(rms, RunningMeanStd) or rms.shape != tuple(shapes[k]):
                where = "" if k is None else f" for key {k!r}"
                raise ConfigError(f"obs_rms{where} must be a RunningMeanStd of shape {shapes[k]}, got {rms!r}")
        return given

    def normalize(self, obs: Obs) -> Obs:
        """Normalise an observation batch with the current statistics (no update; input unchanged)."""
        if not self._rms:
            return obs
        if None in self._rms:
            return self._rms[None].normalize(obs, self.clip, self.epsilon)
        out = dict(obs)
        for k, rms in self._rms.items():
            out[k] = rms.normalize(obs[k], self.clip, self.epsilon)
        return out

    def _update_stats(self, obs: Obs) -> None:
        if self.update:
            for k, rms in self._rms.items():
                rms.update(obs if k is None else obs[k])

    def reset(self, *, seed: int | None = None) -> tuple[Obs, dict]:
        obs, info = self.env.reset(seed=seed)
        self._update_stats(obs)
        return self.normalize(obs), info

    def step(self, actions: Any) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, reward, cost, terminated, truncated, info = self.env.step(actions)
        self._update_stats(obs)
        if "final_obs" in info:
            info = dict(info, final_obs=self.normalize(info["final_obs"]))
        return self.normalize(obs), reward, cost, terminated, truncated, info

    def state_dict(self) -> dict:
        return {**super().state_dict(), "obs_rms": self.obs_rms_state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.load_obs_rms_state(state.get("obs_rms"))

    def obs_rms_state_dict(self) -> dict:
        """Only the statistics, for callers that save them apart from the env state."""
        return {("" if k is None else k): rms.state_dict() for k, rms in self._rms.items()}

    def load_obs_rms_state(self, saved: Mapping[str, Any] | None) -> None:
        """Load statistics saved by :meth:`obs_rms_state_dict` (or the ``obs_rms`` entry of a state)."""
        want = {("" if k is None else k) for k in self._rms}
        if saved is None or set(saved) != want:
            got = None if saved is None else sorted(saved)
            raise CheckpointError(f"saved observation statistics have keys {got}; this env needs {sorted(want)}")
        for k, rms in self._rms.items():
            rms.load_state_dict(saved["" if k is None else k])


class ScaleRewardCost(VectorWrapper):
    """Multiplies rewards by ``reward_scale`` and costs by ``cost_scale``.

    ``cost_scale`` is one factor for every channel or one per cost channel. Both must be finite
    and > 0: a zero or negative factor would silently change what is optimised. Remember that
    cost limits apply to the scaled cost.
    """

    def __init__(self, env: VectorCMDP, reward_scale: float = 1.0, cost_scale: float | Sequence[float] = 1.0) -> None:
        super().__init__(env)
        k = env.num_costs
        scale = np.asarray(cost_scale, dtype=np.float64)
        if scale.ndim == 0:
            scale = np.full(k, float(scale))
        if scale.shape != (k,):
            raise ConfigError(
                f"cost_scale must be one number or {k} (one per cost channel {list(env.cost_names)}), "
                f"got {cost_scale!r}"
            )
        if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise ConfigError(f"cost_scale must be finite and > 0, got {cost_scale!r}")
        if not (np.isfinite(reward_scale) and reward_scale > 0):
            raise ConfigError(f"reward_scale must be finite and > 0, got {reward_scale!r}")
        self.reward_scale = float(reward_scale)
        self.cost_scale = scale

    def step(self, actions: Any) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, reward, cost, terminated, truncated, info = self.env.step(actions)
        return obs, reward * self.reward_scale, cost * self.cost_scale, terminated, truncated, info
