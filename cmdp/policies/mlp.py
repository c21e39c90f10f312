"""Feed-forward actor-critic: separate actor, reward critic and cost critic networks."""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from cmdp.policies.base import ActorCritic, PolicyOutput
from cmdp.policies.distributions import ActionDistribution, ActionHead
from cmdp.policies.encoders import ObservationEncoder

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}


def mlp(in_features: int, hidden_sizes: Sequence[int], activation: str) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden_sizes:
        linear = nn.Linear(width, h)
        nn.init.orthogonal_(linear.weight, gain=float(np.sqrt(2)))
        nn.init.zeros_(linear.bias)
        layers += [linear, ACTIVATIONS[activation]()]
        width = h
    return nn.Sequential(*layers), width


class _Critic(nn.Module):
    def __init__(self, space: gym.Space, outputs: int, hidden_sizes: Sequence[int], activation: str):
        super().__init__()
        self.encoder = ObservationEncoder(space)
        self.body, width = mlp(self.encoder.out_features, hidden_sizes, activation)
        self.head = nn.Linear(width, outputs)
        nn.init.orthogonal_(self.head.weight, gain=1.0)
        nn.init.zeros_(self.head.bias)

    def forward(self, obs: Any) -> torch.Tensor:
        return self.head(self.body(self.encoder(obs)))


class MLPActorCritic(ActorCritic):
    """Actor, reward critic and a K-output cost critic, each its own MLP over the encoded obs.

    Keeping the networks apart means the critic losses never pull the actor's features, and the
    cost critic's scale (often far from the reward's) cannot disturb the reward critic.
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        num_costs: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        log_std_init: float = -0.5,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.num_costs = int(num_costs)
        self.actor_encoder = ObservationEncoder(observation_space)
        self.actor_body, width = mlp(self.actor_encoder.out_features, hidden_sizes, activation)
        self.action_head = ActionHead(width, action_space, log_std_init)
        self.reward_critic = _Critic(observation_space, 1, hidden_sizes, activation)
        self.cost_critic = _Critic(observation_space, max(self.num_costs, 1), hidden_sizes, activation)

    def distribution(self, obs: Any):
        return self.action_head(self.actor_body(self.actor_encoder(obs)))

    def values(self, obs: Any, state: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        value = self.reward_critic(obs).squeeze(-1)
        cost_value = self.cost_critic(obs)[:, : self.num_costs]
        return value, cost_value

    def act(self, obs: Any, state: Any = None, episode_start: torch.Tensor | None = None) -> PolicyOutput:
        value, cost_value = self.values(obs)
        return PolicyOutput(self.distribution(obs), value, cost_value, None)

    def evaluate(self, batch: Mapping[str, Any]) -> PolicyOutput:
        return self.act(batch["obs"])

    def action_distribution(self, batch: Mapping[str, Any]) -> ActionDistribution:
        return self.distribution(batch["obs"])

    def actor_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.actor_encoder.parameters()
        yield from self.actor_body.parameters()
        yield from self.action_head.parameters()

    def critic_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.reward_critic.parameters()
        yield from self.cost_critic.parameters()

    def to_env_action(self, actions: torch.Tensor) -> np.ndarray:
        return self.action_head.to_env_action(actions)
