"""PID-Lagrangian: PPO-Lagrangian whose multipliers are PID controllers on the cost.

Stooke, Achiam, Abbeel. "Responsive Safety in Reinforcement Learning by PID Lagrangian
Methods" (ICML 2020), https://arxiv.org/abs/2007.03964. Same objective as PPOLag; the
proportional and derivative terms damp the oscillation of a pure integral (gradient) update.

Logged keys: as PPOLag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from cmdp.algorithms.config import option
from cmdp.algorithms.engine import OnPolicyConfig
from cmdp.algorithms.multipliers import Multiplier, PIDMultiplier
from cmdp.algorithms.ppo_lag import PPOLag, violation_cap_option


@dataclass(frozen=True, kw_only=True)
class PIDLagConfig(OnPolicyConfig):
    pid_kp: float = option(0.1, "Proportional gain on the (EMA-smoothed) violation J_C - d.", ge=0.0)
    pid_ki: float = option(0.01, "Integral gain: the integral of J_C - d, kept >= 0.", ge=0.0)
    pid_kd: float = option(0.01, "Derivative gain on the rise of the smoothed cost over pid_d_delay epochs.", ge=0.0)
    pid_d_delay: int = option(10, "Epochs between the two costs whose difference is the derivative.", ge=1)
    pid_alpha_p: float = option(0.0, "EMA weight of the old value when smoothing the proportional error.", ge=0.0, lt=1.0)
    pid_alpha_d: float = option(0.0, "EMA weight of the old value when smoothing the cost for the derivative.", ge=0.0, lt=1.0)
    lambda_init: float = option(0.0, "Initial multiplier (and integral) value.", ge=0.0)
    normalize_violation: bool = option(
        True, "The gains act on (J_C - d) / max(d, 0.1) and on J_C / max(d, 0.1), so they are scale-free."
    )
    lambda_max: float | None = option(None, "Upper bound on every multiplier (None: unbounded).", gt=0.0)
    violation_cap: float | None = violation_cap_option()


class PIDLag(PPOLag):
    """PPO-Lagrangian holding PID multipliers instead of gradient-ascent ones."""

    Config: ClassVar[type[OnPolicyConfig]] = PIDLagConfig
    name: ClassVar[str] = "PIDLag"

    def build_multiplier(self) -> Multiplier:
        c = self.config
        return PIDMultiplier(
            self.cost_limit,
            kp=c.pid_kp,
            ki=c.pid_ki,
            kd=c.pid_kd,
            d_delay=c.pid_d_delay,
            alpha_p=c.pid_alpha_p,
            alpha_d=c.pid_alpha_d,
            init=c.lambda_init,
            upper_bound=c.lambda_max,
            normalize=c.normalize_violation,
            violation_cap=c.violation_cap,
        )
