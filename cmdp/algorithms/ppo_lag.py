"""PPO-Lagrangian: PPO on the Lagrangian of the CMDP, one multiplier per cost channel.

Ray, Achiam, Amodei. "Benchmarking Safe Exploration in Deep Reinforcement Learning" (2019),
https://cdn.openai.com/safexp-short.pdf. Objective, the min-max of DESIGN.md:
``min_theta max_{lambda >= 0}  -J_R(theta) + sum_k lambda_k (J_Ck(theta) - d_k)``.
The multipliers ascend on the episode cost of the episodes that finished in this epoch; the actor
ascends the combined advantage ``(A_R - sum_k lambda_k A_Ck) / (1 + sum_k lambda_k)``, built from
raw advantages and scaled by the same weighting of their standard deviations, so reward and cost
share one scale and the lambda needed stays bounded (standardising only the reward advantage
makes it grow without bound). ``advantage_scaling='reward'`` selects OmniSafe's scaling instead,
for comparisons with it.

Logged keys: as PPO, plus ``Multiplier/<channel>`` for each cost channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np

from cmdp.algorithms.config import option
from cmdp.algorithms.engine import EpochStats, OnPolicyAlgorithm, OnPolicyConfig
from cmdp.algorithms.multipliers import GradientMultiplier, Multiplier


def violation_cap_option():
    """The ``violation_cap`` option, shared by every config whose multipliers accept it."""
    return option(
        None,
        "Upper bound on the violation one epoch reports to the multiplier (relative to the limit "
        "when normalize_violation is set): with few, heavy-tailed episodes per epoch it stops one "
        "costly episode from throwing the multiplier up at once. None: no bound.",
        gt=0.0,
    )


@dataclass(frozen=True, kw_only=True)
class PPOLagConfig(OnPolicyConfig):
    lambda_init: float = option(0.001, "Initial value of every multiplier.", ge=0.0)
    lambda_lr: float = option(
        0.02,
        "Multiplier step size: each epoch adds lambda_lr times the violation J_C - d (divided by "
        "max(d, 0.1) when normalize_violation is set) with 'sgd', or an Adam step of about lambda_lr.",
        gt=0.0,
    )
    lambda_optimizer: str = option(
        "sgd",
        "'sgd' steps in proportion to the size of the violation; 'adam' (OmniSafe's choice, lr "
        "0.035) takes steps of about lambda_lr whatever the violation.",
        choices=("sgd", "adam"),
    )
    lambda_damping: float = option(
        0.1,
        "Proportional damping: the multiplier used is the ascended value plus lambda_damping times "
        "the last violation. 0 gives textbook gradient ascent, whose multiplier and policy "
        "oscillate around the optimum instead of settling (see GradientMultiplier).",
        ge=0.0,
    )
    normalize_violation: bool = option(
        True, "Measure the violation relative to the limit, (J_C - d) / max(d, 0.1), so lambda_lr is scale-free."
    )
    lambda_max: float | None = option(None, "Upper bound on every multiplier (None: unbounded).", gt=0.0)
    violation_cap: float | None = violation_cap_option()


class PPOLag(OnPolicyAlgorithm):
    """PPO-Lagrangian with per-channel gradient-ascent multipliers."""

    Config: ClassVar[type[OnPolicyConfig]] = PPOLagConfig
    name: ClassVar[str] = "PPOLag"

    def setup(self) -> None:
        self.multiplier = self.build_multiplier()

    def build_multiplier(self) -> Multiplier:
        c = self.config
        return GradientMultiplier(
            self.cost_limit,
            init=c.lambda_init,
            lr=c.lambda_lr,
            optimizer=c.lambda_optimizer,
            upper_bound=c.lambda_max,
            normalize=c.normalize_violation,
            damping=c.lambda_damping,
            violation_cap=c.violation_cap,
        )

    def update_multipliers(self, stats: EpochStats) -> dict[str, float]:
        if stats.episode_cost is not None:
            self.multiplier.update(stats.episode_cost)
        return {f"Multiplier/{name}": float(v) for name, v in zip(self.cost_names, self.multiplier.value)}

    def advantage_weights(self) -> tuple[float, np.ndarray]:
        lam = np.asarray(self.multiplier.value, dtype=np.float64)
        return 1.0 / (1.0 + lam.sum()), lam / (1.0 + lam.sum())

    def solver_state(self) -> dict[str, Any]:
        return {"multiplier": self.multiplier.state_dict()}

    def load_solver_state(self, state: Mapping[str, Any]) -> None:
        self.multiplier.load_state_dict(state["multiplier"])
