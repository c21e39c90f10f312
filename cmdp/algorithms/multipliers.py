"""Lagrange multipliers, one per cost channel, behind one interface.

PPO-Lagrangian and PID-Lagrangian are the same solver holding different multipliers. Every
multiplier is driven once per epoch by ``update(episode_cost)``, the mean per-episode cost of
each channel over the episodes that finished in that epoch (the units of ``cost_limit``). The
violation it reacts to is ``J_C - d``, divided by ``max(d, 0.1)`` when ``normalize`` is set so that
step sizes and gains mean the same for a limit of 0.3 and a limit of 25. ``violation_cap``
bounds that violation from above: with few, heavy-tailed episodes per epoch (one Safety-CHORES
episode may cost 185 against a limit of 1), a single epoch would otherwise move the multiplier
by ``damping * 184`` at once.

State dicts hold plain python floats and lists, so they survive ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping, Sequence

import numpy as np

from cmdp.errors import ConfigError


def _limits(cost_limit: Any) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(cost_limit, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ConfigError(f"cost_limit must be one or more finite numbers >= 0, got {cost_limit!r}")
    return arr


def _check(name: str, value: float | None, *, ge: float | None = None, gt: float | None = None) -> None:
    if value is None:
        return
    if not np.isfinite(value) or (ge is not None and value < ge) or (gt is not None and value <= gt):
        bound = f">= {ge}" if ge is not None else f"> {gt}"
        raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")


class Multiplier(abc.ABC):
    """One non-negative multiplier per cost channel."""

    cost_limit: np.ndarray

    def __init__(
        self, cost_limit: Any, normalize: bool, upper_bound: float | None, violation_cap: float | None = None
    ) -> None:
        self.cost_limit = _limits(cost_limit)
        self.normalize = bool(normalize)
        _check("upper_bound", upper_bound, gt=0.0)
        _check("violation_cap", violation_cap, gt=0.0)
        self.upper_bound = upper_bound
        self.violation_cap = violation_cap

    @property
    @abc.abstractmethod
    def value(self) -> np.ndarray:
        """Current multipliers ``[K]``, each >= 0."""

    @abc.abstractmethod
    def update(self, episode_cost: Sequence[float] | np.ndarray) -> None:
        """Step with the mean per-episode cost ``[K]`` of the episodes of this epoch."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def capped_cost(self, episode_cost: Sequence[float] | np.ndarray) -> np.ndarray:
        """The episode costs ``[K]``, checked, each at most the limit plus ``violation_cap``."""
        cost = np.asarray(episode_cost, dtype=np.float64).reshape(-1)
        if cost.shape != self.cost_limit.shape:
            raise ValueError(f"expected {self.cost_limit.size} episode costs, got {cost.size}")
        bad = ~np.isfinite(cost)
        if bad.any():
            raise ValueError(f"episode cost of channel {int(np.flatnonzero(bad)[0])} is not finite: {cost.tolist()}")
        if self.violation_cap is not None:
            cost = np.minimum(cost, self.cost_limit + self.violation_cap * (self.scale if self.normalize else 1.0))
        return cost

    def violation(self, episode_cost: Sequence[float] | np.ndarray) -> np.ndarray:
        v = self.capped_cost(episode_cost) - self.cost_limit
        return v / self.scale if self.normalize else v

    # The violation is measured relative to the limit, (J_C - d) / d, so that a channel with a
    # small limit reacts as fast as one with a large limit; the floor keeps a zero limit finite.
    MIN_SCALE = 0.1

    @property
    def scale(self) -> np.ndarray:
        return np.maximum(self.cost_limit, self.MIN_SCALE)

    def _clip(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, 0.0, self.upper_bound if self.upper_bound is not None else np.inf)


class GradientMultiplier(Multiplier):
    """Gradient ascent on lambda, with optional proportional damping.

    ``lambda_I`` ascends on the violation ``v = J_C - d`` (SGD: ``lambda_I += lr * v``; Adam:
    numpy Adam on the gradient ``v``), projected onto ``[0, upper_bound]``; the multiplier used is
    ``lambda = clip(lambda_I + damping * v)``. With ``damping = 0`` this is the textbook
    PPO-Lagrangian update (Ray et al., 2019). Pure gradient ascent makes policy and multiplier two
    coupled integrators, which oscillate (Stooke et al., 2020, Fig. 1); the proportional term damps
    that oscillation, so the last iterate settles near the stochastic constrained optimum.

    SGD steps in proportion to the size of the violation; Adam (OmniSafe's choice, lr 0.035)
    takes steps of about ``lr`` whatever the violation, which is why SGD is the default here.
    """

    def __init__(
        self,
        cost_limit: Any,
        init: float = 0.001,
        lr: float = 0.02,
        optimizer: str = "sgd",
        upper_bound: float | None = None,
        normalize: bool = True,
        damping: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        violation_cap: float | None = None,
    ) -> None:
        super().__init__(cost_limit, normalize, upper_bound, violation_cap)
        _check("init", init, ge=0.0)
        _check("lr", lr, gt=0.0)
        _check("damping", damping, ge=0.0)
        if optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
        if upper_bound is not None and init > upper_bound:
            raise ConfigError(f"init ({init}) must not exceed upper_bound ({upper_bound})")
        k = self.cost_limit.size
        self.lr, self.optimizer, self.damping = float(lr), optimizer, float(damping)
        self.betas, self.eps = betas, eps
        self.integral = np.full(k, float(init))
        self.last_violation = np.zeros(k)
        self._m = np.zeros(k)
        self._v = np.zeros(k)
        self._t = 0

    @property
    def value(self) -> np.ndarray:
        return self._clip(self.integral + self.damping * self.last_violation)

    def update(self, episode_cost: Sequence[float] | np.ndarray) -> None:
        v = self.violation(episode_cost)
        if self.optimizer == "sgd":
            step = self.lr * v
        else:
            b1, b2 = self.betas
            self._t += 1
            self._m = b1 * self._m + (1 - b1) * v
            self._v = b2 * self._v + (1 - b2) * v * v
            m_hat = self._m / (1 - b1**self._t)
            v_hat = self._v / (1 - b2**self._t)
            step = self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
        self.integral = self._clip(self.integral + step)
        self.last_violation = v

    def state_dict(self) -> dict[str, Any]:
        return {
            "integral": self.integral.tolist(),
            "last_violation": self.last_violation.tolist(),
            "m": self._m.tolist(),
            "v": self._v.tolist(),
            "t": self._t,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.integral = np.asarray(state["integral"], dtype=np.float64)
        self.last_violation = np.asarray(state["last_violation"], dtype=np.float64)
        self._m = np.asarray(state["m"], dtype=np.float64)
        self._v = np.asarray(state["v"], dtype=np.float64)
        self._t = int(state["t"])


class PIDMultiplier(Multiplier):
    """PID control of the multiplier on the episode cost.

    Stooke, Achiam, Abbeel, "Responsive Safety in Reinforcement Learning by PID Lagrangian
    Methods" (ICML 2020), https://arxiv.org/abs/2007.03964, Algorithm 2:
    ``I = max(0, I + ki * v)``; ``P`` is the EMA (weight ``alpha_p`` on the old value) of ``v``;
    ``D = max(0, C - C_delayed)`` where ``C`` is the EMA (``alpha_d``) of the episode cost and
    ``C_delayed`` its value ``d_delay`` updates earlier; ``lambda = clip(kp P + I + kd D)``.
    """

    def __init__(
        self,
        cost_limit: Any,
        kp: float = 0.1,
        ki: float = 0.01,
        kd: float = 0.01,
        d_delay: int = 10,
        alpha_p: float = 0.0,
        alpha_d: float = 0.0,
        init: float = 0.0,
        upper_bound: float | None = None,
        normalize: bool = True,
        violation_cap: float | None = None,
    ) -> None:
        super().__init__(cost_limit, normalize, upper_bound, violation_cap)
        for name, value in (("kp", kp), ("ki", ki), ("kd", kd), ("init", init)):
            _check(name, value, ge=0.0)
        for name, value in (("alpha_p", alpha_p), ("alpha_d", alpha_d)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
        if not isinstance(d_delay, int) or d_delay < 1:
            raise ConfigError(f"d_delay must be an integer >= 1, got {d_delay!r}")
        k = self.cost_limit.size
        self.kp, self.ki, self.kd = float(kp), float(ki), float(kd)
        self.d_delay, self.alpha_p, self.alpha_d = d_delay, float(alpha_p), float(alpha_d)
        self.integral = np.full(k, float(init))
        self.p_term = np.zeros(k)
        self.cost_ema = np.zeros(k)
        self.history: list[list[float]] = []  # delayed cost EMAs, oldest first
        self._value = self._clip(self.integral.copy())

    @property
    def value(self) -> np.ndarray:
        return self._value

    def update(self, episode_cost: Sequence[float] | np.ndarray) -> None:
        v = self.violation(episode_cost)
        cost = self.capped_cost(episode_cost)
        if self.normalize:
            cost = cost / self.scale
        self.integral = np.maximum(0.0, self.integral + self.ki * v)
        self.p_term = self.alpha_p * self.p_term + (1 - self.alpha_p) * v
        self.cost_ema = self.alpha_d * self.cost_ema + (1 - self.alpha_d) * cost
        delayed = np.asarray(self.history[0]) if self.history else self.cost_ema
        d_term = np.maximum(0.0, self.cost_ema - delayed)
        self.history = (self.history + [self.cost_ema.tolist()])[-self.d_delay :]
        self._value = self._clip(self.kp * self.p_term + self.integral + self.kd * d_term)

    def state_dict(self) -> dict[str, Any]:
        return {
            "integral": self.integral.tolist(),
            "p_term": self.p_term.tolist(),
            "cost_ema": self.cost_ema.tolist(),
            "history": [list(h) for h in self.history],
            "value": self._value.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.integral = np.asarray(state["integral"], dtype=np.float64)
        self.p_term = np.asarray(state["p_term"], dtype=np.float64)
        self.cost_ema = np.asarray(state["cost_ema"], dtype=np.float64)
        self.history = [list(h) for h in state["history"]]
        self._value = np.asarray(state["value"], dtype=np.float64)


MULTIPLIERS = {"gradient": GradientMultiplier, "pid": PIDMultiplier}


def make_multiplier(kind: str, cost_limit: Any, **kwargs: Any) -> Multiplier:
    """Build a multiplier by kind: 'gradient' or 'pid'."""
    if kind not in MULTIPLIERS:
        raise ConfigError(f"unknown multiplier kind {kind!r}; allowed: {sorted(MULTIPLIERS)}")
    return MULTIPLIERS[kind](cost_limit, **kwargs)
