"""CPO: Constrained Policy Optimization, with K >= 1 constraints.

Achiam, Held, Tamar, Abbeel. "Constrained Policy Optimization" (ICML 2017),
https://arxiv.org/abs/1705.10528. Each epoch solves the trust-region subproblem

``max_x g.x  s.t.  0.5 x.H.x <= delta,  b_k.x + c_k <= 0  (k = 1..K)``

where ``g`` is the gradient of the reward surrogate, ``b_k`` of channel k's cost surrogate,
``c_k = (J_Ck - d_k) / episode length`` (the violation per step, the units of the surrogates)
and ``H`` the Fisher matrix (KL Hessian). With K > 1 the small dual problem is solved as such:
the costs are never summed into one constraint. When no step in the trust region satisfies every
constraint, CPO takes a recovery step that lowers the violated costs. A backtracking line search
then enforces the trust region and the constraints on the actual surrogates.

The step lives in the span of ``H^-1 g`` and ``H^-1 b_k``; how far it moves each objective is,
by default, predicted by cross-fitting (``cross_fit``): the gradients of one half of the epoch
judge the directions computed from the other half. The textbook prediction reuses the
gradients the step was built from, whose noise it counts as signal; on long-episode tasks with
a few thousand samples per epoch that noise is most of the cost gradient's length
(``CPO/signal`` logs the fraction that is not), and CPO then settles above its limit while
reporting every step feasible.

Logged keys: as PPO (without clip statistics), plus ``CPO/case`` (0 feasible, 1 recovery),
``CPO/step_fraction`` (accepted backtracking coefficient, 0 if rejected), ``CPO/nu/<channel>``,
``CPO/signal/<channel>`` when cross-fitting (cross-fitted over same-sample squared length of the
cost gradient in the Fisher metric: near 1 when the gradient is signal, near 0 or below when it
is noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from cmdp.algorithms.config import option
from cmdp.algorithms.engine import EpochStats, OnPolicyAlgorithm, OnPolicyConfig, masked_mean, taken_log_prob
from cmdp.algorithms.functional import (
    conjugate_gradient,
    flat_grad,
    get_flat_params,
    set_flat_params,
    solve_cpo_span_step,
)
from cmdp.errors import ConfigError
from cmdp.policies.base import state_map
from cmdp.policies.distributions import ActionDistribution


@dataclass(frozen=True, kw_only=True)
class CPOConfig(OnPolicyConfig):
    cpo_delta: float = option(0.01, "Trust region: the step's mean KL(old || new) may not exceed it.", gt=0.0)
    cg_iters: int = option(15, "Conjugate-gradient iterations for H^-1 g and H^-1 b_k.", ge=1)
    cg_damping: float = option(0.1, "Damping added to the Fisher-vector product (H + damping I).", ge=0.0)
    backtrack_coef: float = option(0.8, "Line-search step shrink factor.", gt=0.0, lt=1.0)
    backtrack_iters: int = option(20, "Line-search steps before the update is rejected.", ge=1)
    fvp_sample_fraction: float = option(
        0.2,
        "Fraction of the epoch's samples used for Fisher-vector products. The curvature estimate "
        "needs far fewer samples than the gradients; OpenAI Baselines' TRPO uses every 5th sample.",
        gt=0.0,
        le=1.0,
    )
    cross_fit: bool = option(
        True,
        "Predict the step's effect on reward and costs from the other half of the epoch (the "
        "envs split in two) rather than from the same samples the step is built from. Sampling "
        "noise makes a cost gradient look longer than it is, so the textbook linear model promises "
        "cost reductions the policy never realises (PointGoal-v0: -40 per episode predicted every "
        "epoch, cost unchanged). False gives the textbook step.",
    )

    def validate(self) -> None:
        super().validate()
        if self.anchor_kl > 0:
            raise ConfigError(
                f"CPO does not take anchor_kl (got {self.anchor_kl}): its step solves a trust-region "
                "problem on the surrogates alone; use PPOLag, PIDLag or FOCOPS for an anchored fine-tune"
            )
        if self.step_cost_coef > 0:
            raise ConfigError(
                f"CPO does not take step_cost_coef (got {self.step_cost_coef}): its step solves a "
                "trust-region problem on the surrogates alone; use PPOLag, PIDLag or FOCOPS"
            )


class CPO(OnPolicyAlgorithm):
    """Constrained Policy Optimization with one constraint per cost channel."""

    Config: ClassVar[type[OnPolicyConfig]] = CPOConfig
    name: ClassVar[str] = "CPO"

    def setup(self) -> None:
        self._stats = EpochStats(None, None, 0)

    def update_multipliers(self, stats: EpochStats) -> dict[str, float]:
        self._stats = stats  # CPO needs the episode cost when it builds its constraints
        return {}

    def _surrogates(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, ActionDistribution]:
        dist = self.policy.action_distribution(batch)
        ratio = torch.exp(taken_log_prob(dist, batch) - batch["logp"])
        mask = batch["mask"]
        reward_surrogate = masked_mean(ratio * batch["adv"], mask)
        adv_c = batch["adv_c"]
        cost_surrogates = torch.stack(
            [masked_mean(ratio * adv_c[..., k], mask) for k in range(adv_c.shape[-1])]
        )
        return reward_surrogate, cost_surrogates, dist

    def update_policy(self, data: dict[str, Any]) -> dict[str, float]:
        c = self.config
        params = list(self.policy.actor_parameters())
        batch = self.full_batch(data)
        adv_c = batch["adv_c"]
        batch["adv_c"] = adv_c - adv_c.reshape(-1, adv_c.shape[-1]).mean(0)  # centred, not scaled: b stays in cost units
        fvp_batch = batch
        if c.fvp_sample_fraction < 1.0 and not self.policy.is_sequence:
            m = batch["actions"].shape[0]
            idx = torch.from_numpy(self.np_rng.choice(m, max(1, int(m * c.fvp_sample_fraction)), replace=False))
            fvp_batch = _take(batch, idx)

        # the KL gradient's graph is built once and differentiated again by every product
        kl = masked_mean(self.policy.action_distribution(fvp_batch).kl_from(fvp_batch["old_dist"]), fvp_batch["mask"])
        grad_kl = flat_grad(kl, params, create_graph=True)

        def fvp(v: torch.Tensor) -> torch.Tensor:
            return flat_grad(grad_kl @ v, params, retain_graph=True) + c.cg_damping * v

        parts = _halves(batch, data["rewards"].shape) if c.cross_fit else None
        grads, directions, weights = [], [], []
        for part in parts or [batch]:
            reward_surr, cost_surr, _ = self._surrogates(part)
            surrogates = [reward_surr, *cost_surr]
            part_grads = torch.stack([flat_grad(s, params, retain_graph=True) for s in surrogates])
            grads.append(part_grads)
            directions.append(torch.stack([conjugate_gradient(fvp, row, iters=c.cg_iters) for row in part_grads]))
            weights.append(_sample_count(part))
        share = [w / sum(weights) for w in weights]
        grad = sum(s * g for s, g in zip(share, grads)).double()
        direction_basis = sum(s * d for s, d in zip(share, directions)).double()
        kl_gram = grad @ direction_basis.T
        if parts:
            # each half's step judged by the other half's gradients: unbiased by the step's own noise
            (grad_a, grad_b), (dir_a, dir_b) = grads, directions
            effect = share[0] * grad_b.double() @ dir_a.double().T + share[1] * grad_a.double() @ dir_b.double().T
        else:
            effect = kl_gram
        violation = self._violation_per_step()
        step = solve_cpo_span_step(
            kl_gram, effect, torch.as_tensor(violation, dtype=torch.float64), delta=c.cpo_delta
        )

        with torch.no_grad():
            reward_surr, cost_surr, dist = self._surrogates(batch)
        old_params = get_flat_params(params)
        direction = (step.direction @ direction_basis).to(old_params.dtype)
        old_reward, old_cost = float(reward_surr), cost_surr.clone()
        accepted = 0.0
        coef = 1.0
        for _ in range(c.backtrack_iters):
            set_flat_params(params, old_params + coef * direction)
            with torch.no_grad():
                new_reward, new_cost, new_dist = self._surrogates(batch)
                kl = float(masked_mean(new_dist.kl_from(batch["old_dist"]), batch["mask"]))
            ok = np.isfinite(kl) and kl <= c.cpo_delta
            if step.feasible:
                ok = ok and float(new_reward) >= old_reward
            # each cost surrogate may rise at most by the slack the constraint leaves
            slack = torch.clamp(-torch.as_tensor(violation, dtype=new_cost.dtype), min=0.0)
            ok = ok and bool(torch.all(new_cost - old_cost <= slack + 1e-8))
            if ok:
                accepted = coef
                break
            coef *= c.backtrack_coef
        if not accepted:
            set_flat_params(params, old_params)
        info = {
            "Loss/pi": -old_reward,
            "CPO/case": 0.0 if step.feasible else 1.0,
            "CPO/step_fraction": accepted,
            "Train/entropy": float(masked_mean(dist.entropy(), batch["mask"])),
        }
        for k, (name, nu) in enumerate(zip(self.cost_names, step.nu.tolist()), start=1):
            info[f"CPO/nu/{name}"] = float(nu)
            if parts:  # how much of the cost gradient's length is signal rather than sampling noise
                info[f"CPO/signal/{name}"] = float(effect[k, k] / kl_gram[k, k].clamp_min(1e-300))
        return info | self.minibatch_updates(data, train_actor=False)

    def _violation_per_step(self) -> np.ndarray:
        stats = self._stats
        if stats.episode_cost is None:
            # nothing measured this epoch: treat the constraints as exactly met (no push either way)
            return np.zeros(self.env.num_costs)
        length = stats.episode_length or 1.0
        return (np.asarray(stats.episode_cost) - self.cost_limit) / max(length, 1.0)


def _take(batch: dict[str, Any], idx: torch.Tensor) -> dict[str, Any]:
    """Rows ``idx`` of every entry of a full batch (samples, or segments with their states)."""
    return {key: state_map(lambda x: x[idx], value) for key, value in batch.items()}


def _halves(batch: dict[str, Any], rollout_shape: tuple[int, int]) -> list[dict[str, Any]] | None:
    """The batch split in two halves whose gradient noise is independent, or None if too small.

    Samples of one env's trajectory share their noise (GAE advantages overlap in time), so the
    halves are the even and the odd envs; with one env, the first and second half of the rollout.
    """
    horizon, num_envs = rollout_shape
    if "e_idx" in batch:  # segments of a sequence policy
        env, start = batch["e_idx"][:, 0], batch["t_idx"][:, 0]
    else:  # flat samples, row t * num_envs + env
        rows = torch.arange(batch["actions"].shape[0])
        env, start = rows % num_envs, rows // num_envs
    in_first = env % 2 == 0 if num_envs > 1 else start < horizon // 2
    halves = [torch.nonzero(in_first).squeeze(1), torch.nonzero(~in_first).squeeze(1)]
    if min(len(h) for h in halves) == 0:
        return None
    return [_take(batch, h) for h in halves]


def _sample_count(batch: dict[str, Any]) -> float:
    mask = batch["mask"]
    return float(batch["actions"].shape[0] if mask is None else mask.sum())
