"""A NumPy copy of a feed-forward policy's acting path, used during rollouts.

Acting for a handful of envs is dozens of tiny operations (three small MLPs, sampling, the
log-probability, the conversion to env actions). Each torch operation costs 3-5 µs of dispatch
on this project's machine whatever its size, each NumPy one about 1 µs: for one env and
64x64 networks the whole step took 44 µs in NumPy against 274 µs in torch
(``benchmarks/acting_step.py``, BENCHMARKS.md section acting-step). Training still runs in torch; :meth:`NumpyActing.from_policy`
copies the weights once per rollout, while they cannot change.

Sampling draws its Gaussian noise (or its categorical draw) from torch's global generator, as
the torch path does, so a seed and a checkpoint give the same actions either way. Values,
log-probabilities and actions agree with torch's to float32 rounding (within 1e-5 in
``tests/test_numpy_acting.py``); the update recomputes log-probabilities in torch, so the first
PPO ratio is 1 to that rounding.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from cmdp.policies.encoders import ObservationEncoder, _Flatten, _OneHot

_ACTIVATIONS: dict[type, Callable[[np.ndarray], np.ndarray]] = {
    nn.Tanh: np.tanh,
    nn.ReLU: lambda x: np.maximum(x, 0),
    nn.ELU: lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    # GELU needs erf, which NumPy lacks: such policies act in torch
}
_HALF_LOG_2PI = np.float32(0.5 * math.log(2 * math.pi))


class ActingStep(NamedTuple):
    """One step of acting for a batch of envs, as NumPy arrays."""

    env_action: np.ndarray  # what env.step takes (clipped into the action box)
    action: np.ndarray  # what the policy sampled: float32 [N, dim] or int64 [N]
    logp: np.ndarray  # [N]
    value: np.ndarray  # [N]
    cost_value: np.ndarray  # [N, K]
    dist_params: dict[str, np.ndarray]  # as ActionDistribution.params()
    action_mask: np.ndarray | None = None  # [N, A] bool: the actions a cost shield allowed


class _Network:
    """Linear layers with an activation between them, none after the last."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]], activation: Callable) -> None:
        self.layers = layers
        self.activation = activation

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for weight_t, bias in self.layers[:-1]:
            x = self.activation(x @ weight_t + bias)
        weight_t, bias = self.layers[-1]
        return x @ weight_t + bias


def _network(body: nn.Sequential, head: nn.Linear) -> _Network | None:
    layers, activation = [], None
    for module in body:
        if isinstance(module, nn.Linear):
            layers.append(module)
        elif type(module) in _ACTIVATIONS and activation in (None, _ACTIVATIONS[type(module)]):
            activation = _ACTIVATIONS[type(module)]
        else:
            return None
    arrays = [
        (m.weight.detach().numpy().T.astype(np.float32, copy=True), m.bias.detach().numpy().astype(np.float32, copy=True))
        for m in [*layers, head]
    ]
    return _Network(arrays, activation or (lambda x: x))


def _encoder(encoder: ObservationEncoder) -> Callable[[Any], np.ndarray] | None:
    """The encoder as a function of NumPy observations, or None if it has a learnt part."""

    def leaf(module: nn.Module) -> Callable[[np.ndarray], np.ndarray] | None:
        if isinstance(module, _Flatten):
            return lambda x: np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        if isinstance(module, _OneHot):
            eye = np.eye(module.n, dtype=np.float32)
            return lambda x: eye[np.asarray(x, dtype=np.int64).reshape(-1) - module.start]
        return None

    if encoder.keys is None:
        return leaf(encoder.leaf)
    parts = [(key, leaf(encoder.parts[key])) for key in encoder.keys]
    if any(fn is None for _, fn in parts):
        return None
    return lambda obs: np.concatenate([fn(obs[key]) for key, fn in parts], axis=-1)


class NumpyActing:
    """A frozen NumPy copy of an :class:`~cmdp.policies.mlp.MLPActorCritic`'s acting path."""

    def __init__(
        self,
        encode: Callable[[Any], np.ndarray],
        actor: _Network,
        reward_critic: _Network,
        cost_critic: _Network,
        num_costs: int,
        action_space: gym.Space,
        center: np.ndarray | None = None,
        half_range: np.ndarray | None = None,
        log_std: np.ndarray | None = None,
    ) -> None:
        self.encode = encode
        self.actor, self.reward_critic, self.cost_critic = actor, reward_critic, cost_critic
        self.num_costs = num_costs
        self.categorical = isinstance(action_space, gym.spaces.Discrete)
        if not self.categorical:
            self.center, self.half_range, self.log_std = center, half_range, log_std
            self.std = np.exp(log_std)
            self._log_std_rows: dict[int, np.ndarray] = {}
            self.low = action_space.low.reshape(-1)
            self.high = action_space.high.reshape(-1)
            self.action_shape, self.action_dtype = action_space.shape, action_space.dtype

    @classmethod
    def from_policy(cls, policy: nn.Module) -> "NumpyActing | None":
        """A copy of ``policy``'s current weights, or None where the policy is not an
        MLPActorCritic on the CPU whose parts all have a NumPy counterpart here."""
        from cmdp.policies.mlp import MLPActorCritic

        if type(policy) is not MLPActorCritic or any(p.device.type != "cpu" for p in policy.parameters()):
            return None
        # the three encoders are built alike from the observation space; a parameter-free one
        # (the only kind with a NumPy counterpart) is the same function in all three
        encode = _encoder(policy.actor_encoder)
        networks = [
            _network(policy.actor_body, policy.action_head.net),
            _network(policy.reward_critic.body, policy.reward_critic.head),
            _network(policy.cost_critic.body, policy.cost_critic.head),
        ]
        if encode is None or any(n is None for n in networks):
            return None
        head = policy.action_head
        if head.kind == "categorical":
            return cls(encode, *networks, policy.num_costs, head.action_space)
        with torch.no_grad():
            log_std = head.log_std.clamp(head.LOG_STD_MIN, head.LOG_STD_MAX) + torch.log(head.half_range)
        return cls(
            encode,
            *networks,
            policy.num_costs,
            head.action_space,
            head.center.numpy().copy(),
            head.half_range.numpy().copy(),
            log_std.numpy().copy(),
        )

    def values(self, obs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Reward values [N] and cost values [N, K] of a batch of observations."""
        return self._values(self.encode(obs))

    def _values(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.reward_critic(x)[:, 0], self.cost_critic(x)[:, : self.num_costs]

    def act(self, obs: Any) -> ActingStep:
        """Sample an action for each observation of the batch."""
        x = self.encode(obs)
        value, cost_value = self._values(x)
        out = self.actor(x)
        if self.categorical:
            logits = out - _logsumexp(out)
            action = torch.multinomial(torch.from_numpy(np.exp(logits)), 1).numpy().reshape(-1)
            logp = np.take_along_axis(logits, action[:, None], axis=-1)[:, 0]
            return ActingStep(action, action, logp, value, cost_value, {"logits": logits})
        mean = self.center + self.half_range * np.tanh(out)
        action = mean + self.std * torch.randn(mean.shape).numpy()
        z = (action - mean) / self.std
        logp = (-0.5 * z * z - self.log_std - _HALF_LOG_2PI).sum(-1)
        env_action = np.clip(action, self.low, self.high).reshape((len(action), *self.action_shape))
        log_std = self._log_std_rows.get(len(mean))
        if log_std is None:  # the same rows every step: made once per batch size
            log_std = self._log_std_rows[len(mean)] = np.tile(self.log_std, (len(mean), 1))
        return ActingStep(
            env_action.astype(self.action_dtype, copy=False), action, logp, value, cost_value, {"mean": mean, "log_std": log_std}
        )


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(-1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(-1, keepdims=True))


def numpy_obs(obs: Any) -> Any:
    """The NumPy view of a batch of observations converted by ``obs_to_tensor``."""
    if isinstance(obs, Mapping):
        return {k: v.numpy() for k, v in obs.items()}
    return obs.numpy()
