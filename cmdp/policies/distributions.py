"""Action distributions that keep their support inside the action space.

DESIGN.md section 4: a Gaussian whose mean runs past the action bound gives zero gradient once
every sample is clipped, and the policy can never come back. Here the Gaussian mean is squashed
into the box with ``tanh`` so it cannot leave it; samples are still drawn from the unsquashed
Gaussian (the log-probability stays exact and the gradient alive) and only clipped when they are
sent to the env.
"""

from __future__ import annotations

import math
from typing import Mapping

import gymnasium as gym
import numpy as np
import torch
from torch import nn

Tensor = torch.Tensor


class ActionDistribution:
    """A batch of action distributions with the operations the solvers need."""

    def sample(self) -> Tensor:
        raise NotImplementedError

    def mode(self) -> Tensor:
        raise NotImplementedError

    def log_prob(self, actions: Tensor) -> Tensor:
        raise NotImplementedError

    def entropy(self) -> Tensor:
        raise NotImplementedError

    def params(self) -> dict[str, Tensor]:
        """The tensors that define the distribution, stored in the rollout for FOCOPS and CPO."""
        raise NotImplementedError

    def kl_from(self, old: Mapping[str, Tensor]) -> Tensor:
        """KL(old || self) per sample, where ``old`` is an earlier ``params()``."""
        raise NotImplementedError

    def kl_to(self, old: Mapping[str, Tensor]) -> Tensor:
        """KL(self || old) per sample (the direction FOCOPS penalises)."""
        raise NotImplementedError


class Categorical(ActionDistribution):
    def __init__(self, logits: Tensor) -> None:
        self.logits = logits - logits.logsumexp(-1, keepdim=True)

    def sample(self) -> Tensor:
        return torch.multinomial(self.logits.exp().reshape(-1, self.logits.shape[-1]), 1).reshape(
            self.logits.shape[:-1]
        )

    def mode(self) -> Tensor:
        return self.logits.argmax(-1)

    def log_prob(self, actions: Tensor) -> Tensor:
        return self.logits.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> Tensor:
        p = self.logits.exp()
        return -(p * self.logits).sum(-1)

    def params(self) -> dict[str, Tensor]:
        return {"logits": self.logits}

    def kl_from(self, old: Mapping[str, Tensor]) -> Tensor:
        old_logits = old["logits"]
        return (old_logits.exp() * (old_logits - self.logits)).sum(-1)

    def kl_to(self, old: Mapping[str, Tensor]) -> Tensor:
        return (self.logits.exp() * (self.logits - old["logits"])).sum(-1)


# a finite stand-in for minus infinity: a masked action's probability is exactly 0 in float32
# and float64, and a row that masks everything stays a (uniform) distribution instead of NaN
_MASKED_LOGIT = -1e9


def shield_mask(step_cost: Tensor, threshold: float) -> Tensor:
    """``[..., A]`` bool: the actions a cost shield allows, from a one-step cost model's
    predictions ``step_cost`` ``[..., A, K]``.

    An action is allowed when its predicted cost summed over the channels (negative predictions
    count as 0: costs are non-negative) is at most ``threshold``. Where no action is, the one
    predicted cheapest is, so that the shielded policy always has an action to take."""
    predicted = step_cost.clamp(min=0).sum(-1)
    allowed = predicted <= threshold
    cheapest = torch.nn.functional.one_hot(predicted.argmin(-1), predicted.shape[-1]).bool()
    return torch.where(allowed.any(-1, keepdim=True), allowed, cheapest)


def shielded(dist: ActionDistribution, mask: Tensor | None) -> ActionDistribution:
    """``dist`` restricted to the actions ``mask`` allows and renormalised (None: ``dist``)."""
    if mask is None:
        return dist
    if not isinstance(dist, Categorical):
        raise TypeError(f"a cost shield masks discrete actions; got a {type(dist).__name__}")
    return Categorical(dist.logits.masked_fill(~mask, _MASKED_LOGIT))


class DiagGaussian(ActionDistribution):
    def __init__(self, mean: Tensor, log_std: Tensor) -> None:
        self.mean = mean
        self.log_std = log_std.expand_as(mean)
        self.std = self.log_std.exp()

    def sample(self) -> Tensor:
        return self.mean + self.std * torch.randn_like(self.mean)

    def mode(self) -> Tensor:
        return self.mean

    def log_prob(self, actions: Tensor) -> Tensor:
        z = (actions - self.mean) / self.std
        return (-0.5 * z.pow(2) - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self) -> Tensor:
        return (self.log_std + 0.5 * (1.0 + math.log(2 * math.pi))).sum(-1)

    def params(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "log_std": self.log_std}

    def kl_from(self, old: Mapping[str, Tensor]) -> Tensor:
        old_mean, old_log_std = old["mean"], old["log_std"]
        var_ratio = torch.exp(2 * (old_log_std - self.log_std))
        t = ((old_mean - self.mean) / self.std).pow(2)
        return 0.5 * (var_ratio + t - 1.0 - 2 * (old_log_std - self.log_std)).sum(-1)

    def kl_to(self, old: Mapping[str, Tensor]) -> Tensor:
        old_mean, old_log_std = old["mean"], old["log_std"]
        var_ratio = torch.exp(2 * (self.log_std - old_log_std))
        t = ((self.mean - old_mean) / old_log_std.exp()).pow(2)
        return 0.5 * (var_ratio + t - 1.0 - 2 * (self.log_std - old_log_std)).sum(-1)


class ActionHead(nn.Module):
    """Maps features to an :class:`ActionDistribution` for a gymnasium action space."""

    def __init__(self, in_features: int, action_space: gym.Space, log_std_init: float = -0.5) -> None:
        super().__init__()
        self.action_space = action_space
        if isinstance(action_space, gym.spaces.Discrete):
            self.kind = "categorical"
            self.net = nn.Linear(in_features, int(action_space.n))
            nn.init.orthogonal_(self.net.weight, gain=0.01)
            nn.init.zeros_(self.net.bias)
        elif isinstance(action_space, gym.spaces.Box):
            if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
                raise ValueError(
                    f"continuous actions need finite bounds so the policy mean stays inside them; "
                    f"got low={action_space.low}, high={action_space.high}"
                )
            self.kind = "gaussian"
            dim = int(np.prod(action_space.shape))
            self.net = nn.Linear(in_features, dim)
            nn.init.orthogonal_(self.net.weight, gain=0.01)
            nn.init.zeros_(self.net.bias)
            self.log_std = nn.Parameter(torch.full((dim,), float(log_std_init)))
            low = torch.as_tensor(action_space.low, dtype=torch.float32).reshape(-1)
            high = torch.as_tensor(action_space.high, dtype=torch.float32).reshape(-1)
            self.register_buffer("center", (high + low) / 2)
            self.register_buffer("half_range", (high - low) / 2)
        else:
            raise ValueError(f"action space {action_space} is not supported (Discrete or Box)")

    # log std is kept in a range where the Gaussian neither collapses to a point (no exploration,
    # no gradient) nor becomes so wide that nearly every sample is clipped at the bounds.
    LOG_STD_MIN, LOG_STD_MAX = -5.0, 1.0

    def forward(self, features: Tensor) -> ActionDistribution:
        out = self.net(features).float()  # log-probabilities in float32 also under bfloat16 autocast
        if self.kind == "categorical":
            return Categorical(out)
        mean = self.center + self.half_range * torch.tanh(out)
        log_std = self.log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX) + torch.log(self.half_range)
        return DiagGaussian(mean, log_std)

    def to_env_action(self, actions: Tensor) -> np.ndarray:
        """Convert sampled actions to what the env accepts (clipped into the box)."""
        a = actions.detach().cpu().numpy()
        if self.kind == "categorical":
            return a.astype(np.int64)
        space = self.action_space
        return np.clip(a, space.low.reshape(-1), space.high.reshape(-1)).reshape(
            (a.shape[0], *space.shape)
        ).astype(space.dtype)
