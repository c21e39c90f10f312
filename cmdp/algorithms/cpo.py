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

Logged keys: as PPO (without clip statistics), plus ``CPO/case`` (0 feasible, 1 recovery),
``CPO/step_fraction`` (accepted backtracking coefficient, 0 if rejected), ``CPO/nu/<channel>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from cmdp.algorithms.config import option
from cmdp.algorithms.engine import EpochStats, OnPolicyAlgorithm, OnPolicyConfig, masked_mean
from cmdp.algorithms.functional import conjugate_gradient, flat_grad, get_flat_params, set_flat_params, solve_cpo_step
from cmdp.errors import ConfigError


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

    def validate(self) -> None:
        super().validate()
        if self.anchor_kl > 0:
            raise ConfigError(
                f"CPO does not take anchor_kl (got {self.anchor_kl}): its step solves a trust-region "
                "problem on the surrogates alone; use PPOLag, PIDLag or FOCOPS for an anchored fine-tune"
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

    def _surrogates(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, Any]:
        out = self.policy.evaluate(batch)
        ratio = torch.exp(out.dist.log_prob(batch["actions"]) - batch["logp"])
        mask = batch["mask"]
        reward_surrogate = masked_mean(ratio * batch["adv"], mask)
        adv_c = batch["adv_c"]
        adv_c = adv_c - adv_c.reshape(-1, adv_c.shape[-1]).mean(0)  # centred, not scaled: b must stay in cost units
        cost_surrogates = torch.stack(
            [masked_mean(ratio * adv_c[..., k], mask) for k in range(adv_c.shape[-1])]
        )
        return reward_surrogate, cost_surrogates, out

    def update_policy(self, data: dict[str, Any]) -> dict[str, float]:
        c = self.config
        params = list(self.policy.actor_parameters())
        batch = self.full_batch(data)
        fvp_batch = batch
        if c.fvp_sample_fraction < 1.0 and not self.policy.is_sequence:
            m = batch["actions"].shape[0]
            idx = torch.from_numpy(self.np_rng.choice(m, max(1, int(m * c.fvp_sample_fraction)), replace=False))
            fvp_batch = {k: _take(v, idx) for k, v in batch.items()} | {"mask": None}

        reward_surr, cost_surr, out = self._surrogates(batch)
        g = flat_grad(reward_surr, params, retain_graph=True)
        b = torch.stack([flat_grad(cost_surr[k], params, retain_graph=True) for k in range(len(cost_surr))])

        # the KL gradient's graph is built once and differentiated again by every product
        kl = masked_mean(self.policy.evaluate(fvp_batch).dist.kl_from(fvp_batch["old_dist"]), fvp_batch["mask"])
        grad_kl = flat_grad(kl, params, create_graph=True)

        def fvp(v: torch.Tensor) -> torch.Tensor:
            return flat_grad(grad_kl @ v, params, retain_graph=True) + c.cg_damping * v

        h_inv_g = conjugate_gradient(fvp, g, iters=c.cg_iters)
        h_inv_b = torch.stack([conjugate_gradient(fvp, b[k], iters=c.cg_iters) for k in range(len(b))])
        violation = self._violation_per_step()
        step = solve_cpo_step(
            g=g.double(),
            b=b.double(),
            h_inv_g=h_inv_g.double(),
            h_inv_b=h_inv_b.double(),
            c=torch.as_tensor(violation, dtype=torch.float64),
            delta=c.cpo_delta,
        )
        direction = step.direction.to(g.dtype)

        old_params = get_flat_params(params)
        with torch.no_grad():
            old_reward, old_cost = float(reward_surr), cost_surr.detach().clone()
        accepted = 0.0
        coef = 1.0
        for _ in range(c.backtrack_iters):
            set_flat_params(params, old_params + coef * direction)
            with torch.no_grad():
                new_reward, new_cost, new_out = self._surrogates(batch)
                kl = float(masked_mean(new_out.dist.kl_from(batch["old_dist"]), batch["mask"]))
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
            "Train/entropy": float(masked_mean(out.dist.entropy().detach(), batch["mask"])),
        }
        for name, nu in zip(self.cost_names, step.nu.tolist()):
            info[f"CPO/nu/{name}"] = float(nu)
        return info | self.minibatch_updates(data, train_actor=False)

    def _violation_per_step(self) -> np.ndarray:
        stats = self._stats
        if stats.episode_cost is None:
            # nothing measured this epoch: treat the constraints as exactly met (no push either way)
            return np.zeros(self.env.num_costs)
        length = stats.episode_length or 1.0
        return (np.asarray(stats.episode_cost) - self.cost_limit) / max(length, 1.0)


def _take(x: Any, idx: torch.Tensor) -> Any:
    if x is None:
        return None
    if isinstance(x, dict):
        return {k: _take(v, idx) for k, v in x.items()}
    return x[idx]
