"""FOCOPS: First Order Constrained Optimization in Policy Space.

Zhang, Vuong, Ross. "First Order Constrained Optimization in Policy Space" (NeurIPS 2020),
https://arxiv.org/abs/2002.06506. Each update first solves the constrained problem in the
nonparametric policy space (its optimum is ``pi_old * exp((A_R - nu . A_C) / lambda)``), then
projects it back onto the parametric policy by minimising, per state,
``KL(pi_theta || pi_old) - (1 / lambda) * ratio * (A_R - nu . A_C)``, counting only states whose
KL is still within ``focops_eta``. The cost multipliers ``nu`` ascend on the violation and are
capped at ``lambda_max`` (nu_max in the paper).

Logged keys: as PPOLag (``Multiplier/<channel>`` are the nu's), plus ``Train/kl_term`` and
``Train/kl_inside`` (fraction of states inside the trust region).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch

from cmdp.algorithms.config import option
from cmdp.algorithms.engine import OnPolicyConfig, masked_mean, taken_log_prob
from cmdp.algorithms.ppo_lag import PPOLag, PPOLagConfig


@dataclass(frozen=True, kw_only=True)
class FOCOPSConfig(PPOLagConfig):
    focops_lambda: float = option(1.5, "Temperature lambda of the nonparametric optimum (paper: 1.5).", gt=0.0)
    focops_eta: float = option(
        0.02, "Per-state trust region: states whose KL(pi_theta || pi_old) exceeds it stop contributing.", gt=0.0
    )
    lambda_max: float | None = option(2.0, "Upper bound nu_max on every cost multiplier nu (paper: 2).", gt=0.0)
    lambda_init: float = option(0.0, "Initial nu.", ge=0.0)


class FOCOPS(PPOLag):
    """FOCOPS with one nu per cost channel."""

    Config: ClassVar[type[OnPolicyConfig]] = FOCOPSConfig
    name: ClassVar[str] = "FOCOPS"

    def actor_loss(self, out, mb: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        logp = taken_log_prob(out.dist, mb)
        ratio = torch.exp(logp - mb["logp"])
        kl = out.dist.kl_to(mb["old_dist"])
        inside = (kl.detach() <= c.focops_eta).float()
        per_state = (kl - ratio * mb["adv"] / c.focops_lambda) * inside
        entropy = out.dist.entropy()
        loss = masked_mean(per_state, mb["mask"]) - c.entropy_coef * masked_mean(entropy, mb["mask"])
        return loss, {
            "kl_term": masked_mean(kl.detach(), mb["mask"]),
            "kl_inside": masked_mean(inside, mb["mask"]),
            "ratio": masked_mean(ratio.detach(), mb["mask"]),
            "entropy": masked_mean(entropy.detach(), mb["mask"]),
        }
