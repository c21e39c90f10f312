"""cmdp envs as OmniSafe environments: OmniSafe's solvers train on any cmdp env id.

    import cmdp.interop.omnisafe            # registers every built-in id as "cmdp:<id>"
    import omnisafe
    agent = omnisafe.Agent("PPOLag", "cmdp:PointGoal-v0", custom_cfgs={...})
    agent.learn()

Other ids :func:`cmdp.make` knows (gymnasium ids, safety-gymnasium ids) are registered with
:func:`register`. Keyword arguments for :func:`cmdp.make` travel in OmniSafe's own
``custom_cfgs={"env_cfgs": {...}}``, e.g. ``{"obs_mode": "state"}`` for Safety-CHORES.

How cmdp's vector protocol is mapped onto OmniSafe 0.5's ``omnisafe.envs.core.CMDP`` contract
(read from OmniSafe's ``envs/core.py``, its safety-gymnasium env and its wrappers and adapters):

* Tensors: observations, rewards, costs, ``terminated`` and ``truncated`` are float32 torch
  tensors on OmniSafe's device, as OmniSafe's own safety-gymnasium env returns them. With
  ``num_envs == 1`` they are one env's values (``obs`` of shape ``[obs_dim]``, scalars for the
  rest) and an action is one env's action: OmniSafe adds the batch dimension with its
  ``Unsqueeze`` wrapper, and its ``Evaluator`` steps such an env unbatched. With more envs every
  value has a leading ``num_envs`` dimension.
* Auto-reset and time limits: cmdp envs reset themselves and truncate at their own time limit,
  so ``need_auto_reset_wrapper`` and ``need_time_limit_wrapper`` are False. When an episode
  ends, ``info["final_observation"]`` holds the true last observation (all rows, meaningful
  where the episode ended) and, with several envs, ``info["_final_observation"]`` the bool mask
  of those rows, which OmniSafe's ``ObsNormalize`` uses to normalise only them.
* Costs: OmniSafe supports one cost signal. An env with K > 1 cost channels (Safety-CHORES has
  five) hands OmniSafe the **sum** of its channels, so OmniSafe's ``cost_limit`` applies to the
  summed per-episode cost; a warning says so when such an env is built. The per-channel costs
  of each step are in ``info["costs"]`` (``[num_envs, K]``). cmdp's own solvers keep one limit
  and one multiplier per channel.
* Spaces: OmniSafe's networks and wrappers take a flat ``Box`` observation and a ``Box`` action.
  Observations are flattened to float32 as ``gymnasium.spaces.flatten`` would (Discrete becomes
  one-hot, Dict keys are concatenated in order). A ``Discrete(n)`` action space is offered as
  ``Box(-1, 1, (n,))`` and the env takes the argmax: OmniSafe's Gaussian policy then acts as a
  stochastic policy over the n actions. MultiDiscrete actions and Text observations are refused.
* Seeding: ``set_seed(seed)`` resets with ``seed`` (env i gets ``seed + i``, cmdp's rule), as
  OmniSafe's safety-gymnasium env does; ``reset()`` without a seed continues each env's stream.

Importing this module imports omnisafe, which must be importable: on Python 3.11 omnisafe 0.5.0
needs the import hook of ``benchmarks/peers/omnisafe_compat.py``, which the peer env built by
``benchmarks/peers/setup_omnisafe.sh`` installs at start-up. ``import cmdp`` never imports this
module.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, ClassVar

import gymnasium as gym
import numpy as np
import torch

try:
    from omnisafe.envs.core import CMDP, env_register, env_unregister
except ImportError as e:
    raise ImportError(
        "cmdp.interop.omnisafe needs omnisafe (0.5): `bash benchmarks/peers/setup_omnisafe.sh` builds an env "
        f"with it ({e})"
    ) from e
except ValueError as e:  # Python 3.11 rejects the numpy-array dataclass defaults of safety-gymnasium
    raise ImportError(
        "omnisafe / safety-gymnasium failed to import on this Python: import benchmarks/peers/omnisafe_compat.py "
        f"before them, or use the env built by benchmarks/peers/setup_omnisafe.sh ({e})"
    ) from e

import cmdp
from cmdp.core import registry
from cmdp.core.vector import Obs, VectorCMDP
from cmdp.errors import ConfigError, UnknownNameError

__all__ = ["PREFIX", "CmdpOmniSafeEnv", "register", "registered_ids", "omnisafe_id"]

PREFIX = "cmdp:"
"""OmniSafe env ids of cmdp envs are ``PREFIX + <cmdp id>``."""

# Arguments OmniSafe's Evaluator passes to every env it builds; they mean nothing to cmdp.make.
_OMNISAFE_RENDER_ARGS = ("render_mode", "camera_id", "camera_name", "width", "height")


def omnisafe_id(env_id: str) -> str:
    """The OmniSafe id of cmdp id ``env_id`` (unchanged if it already has the prefix)."""
    return env_id if env_id.startswith(PREFIX) else PREFIX + env_id


class CmdpOmniSafeEnv(CMDP):
    """A cmdp vector env behind OmniSafe's ``CMDP`` interface. See the module docstring.

    Built by OmniSafe (``omnisafe.envs.core.make``) as ``CmdpOmniSafeEnv(env_id, num_envs=...,
    device=..., **env_cfgs)``; ``env_cfgs`` go to :func:`cmdp.make`.
    """

    _support_envs: ClassVar[list[str]] = []
    need_auto_reset_wrapper = False
    need_time_limit_wrapper = False

    def __init__(self, env_id: str, num_envs: int = 1, device: Any = "cpu", **kwargs: Any) -> None:
        super().__init__(env_id)
        for name in _OMNISAFE_RENDER_ARGS:
            kwargs.pop(name, None)
        self.cmdp_id = env_id[len(PREFIX) :]
        self._num_envs = int(num_envs)
        self._device = torch.device(device)
        self._env: VectorCMDP = cmdp.make(self.cmdp_id, num_envs=self._num_envs, **kwargs)
        try:
            self._observation_space, self._flatten = flat_observations(self._env.observation_space)
            self._action_space, self._env_action = box_actions(self._env.action_space)
        except ConfigError:
            self._env.close()
            raise
        self._metadata = dict(self._env.metadata)
        self.cost_names = tuple(self._env.cost_names)
        if len(self.cost_names) > 1:
            warnings.warn(
                f"{env_id} has {len(self.cost_names)} cost channels {list(self.cost_names)}; OmniSafe supports one "
                "cost, so it gets their sum per step and its cost_limit applies to the summed episode cost "
                "(per-channel costs are in info['costs'])",
                stacklevel=2,
            )

    @property
    def max_episode_steps(self) -> int | None:
        return self._env.max_episode_steps

    def _tensor(self, x: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        # a copy: OmniSafe's ObsNormalize writes into info["final_observation"] in place, and
        # cmdp envs may hand out views of their own buffers
        t = torch.tensor(x, dtype=dtype, device=self._device)
        return t[0] if self._num_envs == 1 else t

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[torch.Tensor, dict]:
        obs, _ = self._env.reset(seed=seed)
        return self._tensor(self._flatten(obs)), {}

    def step(
        self, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        actions = np.asarray(action.detach().cpu().numpy(), dtype=np.float32)
        if self._num_envs == 1:
            actions = actions.reshape(1, *self._action_space.shape)
        obs, reward, cost, terminated, truncated, info = self._env.step(self._env_action(actions))
        out_info: dict[str, Any] = {"costs": self._tensor(cost)}
        done = terminated | truncated
        if done.any() and "final_obs" in info:
            out_info["final_observation"] = self._tensor(self._flatten(info["final_obs"]))
            if self._num_envs > 1:
                out_info["_final_observation"] = torch.as_tensor(done, device=self._device)
        if "success" in info:
            out_info["success"] = self._tensor(info["success"])
        return (
            self._tensor(self._flatten(obs)),
            self._tensor(reward),
            self._tensor(np.sum(cost, axis=1)),
            self._tensor(terminated),
            self._tensor(truncated),
            out_info,
        )

    def set_seed(self, seed: int) -> None:
        self.reset(seed=seed)

    def render(self) -> Any:
        render = getattr(self._env.unwrapped, "render", None)
        if render is None:
            raise NotImplementedError(f"cmdp env {self.cmdp_id} cannot render")
        return render()

    def close(self) -> None:
        self._env.close()


# ---- spaces ---------------------------------------------------------------------------------


def flat_observations(space: gym.Space) -> tuple[gym.spaces.Box, Callable[[Obs], np.ndarray]]:
    """OmniSafe's flat float32 Box for ``space`` and a function flattening a batch ``[n, ...]``.

    Same layout as ``gymnasium.spaces.flatten`` applied row by row.
    """
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1 and space.dtype == np.float32:
        return space, lambda batch: batch  # the common case costs nothing per step
    flat = _batch_flattener(space)
    low_high = gym.spaces.flatten_space(space)
    box = gym.spaces.Box(low_high.low.astype(np.float32), low_high.high.astype(np.float32), dtype=np.float32)
    return box, flat


def _batch_flattener(space: gym.Space) -> Callable[[Any], np.ndarray]:
    if isinstance(space, gym.spaces.Box):
        return lambda x: np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    if isinstance(space, gym.spaces.Discrete):
        eye = np.eye(space.n, dtype=np.float32)
        return lambda x: eye[np.asarray(x, dtype=np.int64) - space.start]
    if isinstance(space, gym.spaces.MultiBinary):
        return lambda x: np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    if isinstance(space, gym.spaces.MultiDiscrete):
        eyes = [np.eye(n, dtype=np.float32) for n in space.nvec.ravel()]
        starts = np.ravel(space.start)

        def one_hots(x: Any) -> np.ndarray:
            rows = np.asarray(x, dtype=np.int64).reshape(len(x), -1) - starts
            return np.concatenate([eye[rows[:, j]] for j, eye in enumerate(eyes)], axis=1)

        return one_hots
    if isinstance(space, gym.spaces.Dict):
        parts = [(key, _batch_flattener(sub)) for key, sub in space.spaces.items()]
        return lambda x: np.concatenate([fn(x[key]) for key, fn in parts], axis=1)
    raise ConfigError(
        f"observation space {space} cannot be given to OmniSafe; allowed: Box, Discrete, MultiBinary, "
        "MultiDiscrete and Dict of those (flattened to one float32 vector)"
    )


def box_actions(space: gym.Space) -> tuple[gym.spaces.Box, Callable[[np.ndarray], np.ndarray]]:
    """OmniSafe's Box action space for ``space`` and a function mapping a batch of its actions."""
    if isinstance(space, gym.spaces.Box):
        if len(space.shape) != 1:
            return (
                gym.spaces.Box(space.low.ravel(), space.high.ravel(), dtype=space.dtype),
                lambda a: a.reshape(len(a), *space.shape).astype(space.dtype, copy=False),
            )
        return space, lambda a: a.astype(space.dtype, copy=False)
    if isinstance(space, gym.spaces.Discrete):
        box = gym.spaces.Box(-1.0, 1.0, shape=(int(space.n),), dtype=np.float32)
        return box, lambda a: np.argmax(a, axis=1).astype(np.int64) + int(space.start)
    raise ConfigError(
        f"action space {space} cannot be given to OmniSafe; allowed: Box, and Discrete (offered as a Box with one "
        "dimension per action; the env takes the argmax)"
    )


# ---- registration ---------------------------------------------------------------------------


def registered_ids() -> list[str]:
    """The OmniSafe ids of the cmdp envs registered so far."""
    return list(CmdpOmniSafeEnv._support_envs)


def register(*env_ids: str) -> list[str]:
    """Make cmdp env ids available to OmniSafe as ``"cmdp:<id>"``; returns their OmniSafe ids.

    Every id :func:`cmdp.make` knows is accepted: built-in ids (all registered on import),
    gymnasium ids, and safety-gymnasium ids when that package is installed.
    """
    known = set(registry.builtin_ids())
    new = []
    for env_id in env_ids:
        cmdp_id = env_id[len(PREFIX) :] if env_id.startswith(PREFIX) else env_id
        if cmdp_id not in known and not _gymnasium_or_safety_id(cmdp_id):
            raise UnknownNameError(
                f"{cmdp_id!r} is not an env id cmdp.make knows (`cmdp envs` lists the built-in ids; gymnasium and "
                "safety-gymnasium ids work too)"
            )
        new.append(PREFIX + cmdp_id)
    ids = sorted(set(CmdpOmniSafeEnv._support_envs) | set(new))
    if ids != CmdpOmniSafeEnv._support_envs:
        # OmniSafe's registry reads the supported ids when a class is registered, so re-register
        env_unregister(CmdpOmniSafeEnv)
        CmdpOmniSafeEnv._support_envs = ids
        env_register(CmdpOmniSafeEnv)
    return new


def _gymnasium_or_safety_id(env_id: str) -> bool:
    return env_id in gym.registry or env_id in registry._safety_gymnasium_ids()


CmdpOmniSafeEnv._support_envs = [PREFIX + i for i in registry.builtin_ids()]
env_register(CmdpOmniSafeEnv)
