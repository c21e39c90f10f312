"""PPO: the unconstrained baseline.

Schulman, Wolski, Dhariwal, Radford, Klimov. "Proximal Policy Optimization Algorithms" (2017),
https://arxiv.org/abs/1707.06347. Objective: maximise the clipped surrogate of the reward
advantage; costs are measured and logged, never optimised. FLaRe's RL fine-tune is this.

Logged keys: ``Metrics/*`` (episode return, length, cost per channel), ``Loss/pi``,
``Loss/value``, ``Loss/cost_value``, ``Train/KL``, ``Train/clip_fraction``, ``Train/entropy``,
``Train/StopPass``, ``Time/*``.
"""

from __future__ import annotations

from typing import ClassVar

from cmdp.algorithms.engine import OnPolicyAlgorithm, OnPolicyConfig


class PPO(OnPolicyAlgorithm):
    """Unconstrained PPO; ``cost_limit`` is optional and only reported."""

    Config: ClassVar[type[OnPolicyConfig]] = OnPolicyConfig
    name: ClassVar[str] = "PPO"
    constrained: ClassVar[bool] = False
