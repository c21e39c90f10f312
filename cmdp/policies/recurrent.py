"""A recurrent (GRU) actor-critic: the smallest sequence policy.

It exercises the sequence-policy interface of :mod:`cmdp.policies.base` (state carried between
steps, reset at episode starts, trajectory-segment minibatches) that the VLA transformer uses too.
Actor and critics keep separate GRUs so the two optimisers never update shared weights.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from cmdp.policies.base import ActorCritic, PolicyOutput
from cmdp.policies.distributions import ActionDistribution, ActionHead
from cmdp.policies.encoders import ObservationEncoder
from cmdp.policies.mlp import mlp

Tensor = torch.Tensor


class _GRUTrunk(nn.Module):
    def __init__(self, space: gym.Space, hidden_sizes: Sequence[int], activation: str, memory: int) -> None:
        super().__init__()
        self.encoder = ObservationEncoder(space)
        self.body, width = mlp(self.encoder.out_features, hidden_sizes, activation)
        self.cell = nn.GRUCell(width, memory)
        self.memory = memory

    def features(self, obs: Any) -> Tensor:
        return self.body(self.encoder(obs))

    def step(self, feat: Tensor, h: Tensor, start: Tensor | None) -> Tensor:
        if start is not None:
            h = torch.where(start[:, None], torch.zeros_like(h), h)
        return self.cell(feat, h)


def _flatten_time(obs: Any) -> tuple[Any, int, int]:
    if isinstance(obs, Mapping):
        first = next(iter(obs.values()))
        b, length = first.shape[:2]
        return {k: v.reshape(b * length, *v.shape[2:]) for k, v in obs.items()}, b, length
    b, length = obs.shape[:2]
    return obs.reshape(b * length, *obs.shape[2:]), b, length


class GRUActorCritic(ActorCritic):
    """GRU actor and GRU critics; the state is ``(h_actor, h_critic)``, each ``[N, memory]``."""

    is_sequence = True

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        num_costs: int,
        hidden_sizes: Sequence[int] = (64,),
        activation: str = "tanh",
        memory: int = 64,
        log_std_init: float = -0.5,
    ) -> None:
        super().__init__()
        self.num_costs = int(num_costs)
        self.actor = _GRUTrunk(observation_space, hidden_sizes, activation, memory)
        self.action_head = ActionHead(memory, action_space, log_std_init)
        self.critic = _GRUTrunk(observation_space, hidden_sizes, activation, memory)
        self.value_head = nn.Linear(memory, 1 + self.num_costs)

    def initial_state(self, batch_size: int) -> tuple[Tensor, Tensor]:
        z = torch.zeros(batch_size, self.actor.memory)
        return (z, z.clone())

    def act(self, obs: Any, state: Any = None, episode_start: Tensor | None = None) -> PolicyOutput:
        n = (next(iter(obs.values())) if isinstance(obs, Mapping) else obs).shape[0]
        h_a, h_c = state if state is not None else self.initial_state(n)
        h_a = self.actor.step(self.actor.features(obs), h_a, episode_start)
        h_c = self.critic.step(self.critic.features(obs), h_c, episode_start)
        v = self.value_head(h_c)
        return PolicyOutput(self.action_head(h_a), v[:, 0], v[:, 1:], (h_a, h_c))

    def values(self, obs: Any, state: Any = None) -> tuple[Tensor, Tensor]:
        out = self.act(obs, state, None)
        return out.value, out.cost_value

    def evaluate(self, batch: Mapping[str, Any]) -> PolicyOutput:
        h_a, h_c = batch["state"]
        v = self.value_head(self._unroll(self.critic, batch, h_c))
        return PolicyOutput(self.action_head(self._unroll(self.actor, batch, h_a)), v[..., 0], v[..., 1:], None)

    def action_distribution(self, batch: Mapping[str, Any]) -> ActionDistribution:
        """As :meth:`evaluate`'s distribution, without running the critic GRU."""
        return self.action_head(self._unroll(self.actor, batch, batch["state"][0]))

    @staticmethod
    def _unroll(trunk: _GRUTrunk, batch: Mapping[str, Any], h: Tensor) -> Tensor:
        """The trunk's memory after each step of the ``[B, L]`` segments, from ``h``."""
        flat, b, length = _flatten_time(batch["obs"])
        feats = trunk.features(flat).reshape(b, length, -1)
        starts = batch["episode_start"]
        outs = []
        for t in range(length):
            h = trunk.step(feats[:, t], h, starts[:, t])
            outs.append(h)
        return torch.stack(outs, 1)

    def actor_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.actor.parameters()
        yield from self.action_head.parameters()

    def critic_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.critic.parameters()
        yield from self.value_head.parameters()

    def to_env_action(self, actions: Tensor) -> np.ndarray:
        return self.action_head.to_env_action(actions)
