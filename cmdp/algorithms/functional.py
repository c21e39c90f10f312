"""Shared math of the solvers, as plain functions: GAE, conjugate gradient, flat parameter
vectors, and the CPO trust-region subproblem with any number of constraints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from scipy import optimize

Tensor = torch.Tensor


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    dones: Tensor,
    gamma: float | Tensor,
    lam: float | Tensor,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016, https://arxiv.org/abs/1506.02438).

    ``rewards``, ``values`` and ``next_values`` are ``[T, N]`` or ``[T, N, K]`` (one channel per
    cost). ``next_values[t]`` is the value of the state reached by step t: for a step whose
    episode was truncated (time limit) it is the value of the true final observation, so the
    advantage bootstraps; for a terminated step it is ignored. ``dones = terminated | truncated``
    cuts the recursion between episodes. ``gamma`` and ``lam`` may be per-channel tensors ``[K]``.
    Returns ``(advantages, returns)`` with ``returns = advantages + values``.
    """
    extra = rewards.dim() - terminated.dim()
    shape = terminated.shape + (1,) * extra
    not_term = (~terminated).to(rewards.dtype).reshape(shape)
    not_done = (~dones).to(rewards.dtype).reshape(shape)
    deltas = (rewards + gamma * next_values * not_term - values).detach().cpu().numpy()
    decay = (gamma * lam * not_done).detach().cpu().numpy()
    # the recursion runs over time in NumPy: per step it is a few operations on [N] rows, where
    # torch's dispatch (3-5 µs per operation here) would cost ten times the arithmetic
    adv_np = np.empty(rewards.shape, dtype=deltas.dtype)
    last = np.zeros(rewards.shape[1:], dtype=deltas.dtype)
    for t in range(rewards.shape[0] - 1, -1, -1):
        last = deltas[t] + decay[t] * last
        adv_np[t] = last
    adv = torch.from_numpy(adv_np).to(device=rewards.device, dtype=rewards.dtype)
    return adv, adv + values


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int = 15, residual_tol: float = 1e-10
) -> Tensor:
    """Approximately solve ``A x = b`` for symmetric positive definite ``A`` given ``x -> A x``."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr <= residual_tol:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap + 1e-12)
        x += alpha * p
        r -= alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def flat_grad(
    y: Tensor, params: Sequence[torch.nn.Parameter], retain_graph: bool = False, create_graph: bool = False
) -> Tensor:
    """Gradient of scalar ``y`` w.r.t. ``params`` as one flat vector (zeros for unused ones)."""
    grads = torch.autograd.grad(
        y, list(params), retain_graph=retain_graph or create_graph, create_graph=create_graph, allow_unused=True
    )
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def get_flat_params(params: Iterable[torch.nn.Parameter]) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def set_flat_params(params: Iterable[torch.nn.Parameter], flat: Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(flat[offset : offset + n].reshape(p.shape))
            offset += n


@dataclass
class CPOStep:
    """Solution of the CPO subproblem: ``direction`` is the parameter step ``x``.

    ``feasible`` is False when no step inside the trust region satisfies every linearised
    constraint; ``direction`` is then the recovery step. ``nu`` are the constraint multipliers
    and ``lam`` the trust-region multiplier (0 for a recovery step).
    """

    direction: Tensor
    feasible: bool
    nu: Tensor
    lam: float


def solve_cpo_step(
    g: Tensor, b: Tensor, h_inv_g: Tensor, h_inv_b: Tensor, c: Tensor, delta: float
) -> CPOStep:
    """Solve ``max_x g.x  s.t.  0.5 x.H.x <= delta,  b_k.x + c_k <= 0`` for K >= 1 constraints.

    Achiam, Held, Tamar, Abbeel, "Constrained Policy Optimization" (ICML 2017),
    https://arxiv.org/abs/1705.10528, Appendix 10.2, generalised to K constraints through the
    dual: with ``q = g.H^-1 g``, ``r = B H^-1 g``, ``S = B H^-1 B^T``, the dual over the
    constraint multipliers ``nu >= 0`` is the convex problem
    ``min_nu sqrt(2 delta (q - 2 r.nu + nu.S.nu)) - nu.c``, after which
    ``lam = sqrt((q - 2 r.nu + nu.S.nu) / (2 delta))`` and ``x = H^-1 (g - B^T nu) / lam``.
    The constraints are kept apart, never summed. ``b`` is ``[K, P]``, ``c`` is ``[K]`` (cost
    minus limit in the units of ``b.x``).

    Feasibility is checked first: the smallest KL that satisfies all linearised constraints is
    ``max_{mu >= 0} mu.c - 0.5 mu.S.mu``. Above ``delta`` the problem is infeasible and the step
    is the minimum-KL direction toward the constraints, ``-H^-1 B^T mu``, scaled to the trust
    region boundary (for K = 1 the paper's ``-sqrt(2 delta / s) H^-1 b``).
    """
    g_np = g.detach().double()
    q = float(g_np @ h_inv_g.double())
    r = (b.double() @ h_inv_g.double()).numpy()
    s_mat = (b.double() @ h_inv_b.double().T).numpy()
    s_mat = 0.5 * (s_mat + s_mat.T) + 1e-10 * np.eye(len(r))  # symmetric, and safe for parallel b's
    c_np = c.detach().double().numpy()
    k = len(c_np)
    bounds = [(0.0, None)] * k

    # 1) feasibility: minimum KL needed to satisfy the linearised constraints
    if np.any(c_np > 0):
        res = optimize.minimize(
            lambda mu: (0.5 * mu @ s_mat @ mu - mu @ c_np, s_mat @ mu - c_np),
            np.maximum(c_np, 0.0) / np.maximum(np.diag(s_mat), 1e-12),
            jac=True,
            bounds=bounds,
            method="L-BFGS-B",
        )
        mu = np.maximum(res.x, 0.0)
        min_kl = float(mu @ c_np - 0.5 * mu @ s_mat @ mu)
        if min_kl > delta:
            quad = float(mu @ s_mat @ mu)
            scale = np.sqrt(2.0 * delta / max(quad, 1e-12))
            direction = -scale * (torch.as_tensor(mu, dtype=h_inv_b.dtype) @ h_inv_b)
            return CPOStep(direction, False, torch.as_tensor(mu), 0.0)

    # 2) feasible: the dual over nu >= 0
    def dual(nu: np.ndarray) -> tuple[float, np.ndarray]:
        a = max(q - 2.0 * r @ nu + nu @ s_mat @ nu, 1e-12)
        root = np.sqrt(2.0 * delta * a)
        grad = np.sqrt(2.0 * delta) * (s_mat @ nu - r) / np.sqrt(a) - c_np
        return root - nu @ c_np, grad

    res = optimize.minimize(dual, np.zeros(k), jac=True, bounds=bounds, method="L-BFGS-B")
    nu = np.maximum(res.x, 0.0)
    a = max(q - 2.0 * r @ nu + nu @ s_mat @ nu, 1e-12)
    lam = float(np.sqrt(a / (2.0 * delta)))
    direction = (h_inv_g.double() - torch.as_tensor(nu) @ h_inv_b.double()) / lam
    return CPOStep(direction.to(h_inv_g.dtype), True, torch.as_tensor(nu), lam)


def solve_cpo_span_step(kl_gram: Tensor, effect: Tensor, c: Tensor, delta: float) -> CPOStep:
    """The CPO subproblem over steps ``x = w @ U`` with ``U = H^-1 [g; b_1; ..; b_K]``.

    ``kl_gram[i, j] = G_i . H^-1 G_j`` for the stacked gradients ``G = [g; b_1; ..; b_K]``, so a
    step's KL is ``0.5 w.kl_gram.w``. ``effect[i, j]`` is the predicted change of objective ``i``
    (0: reward surrogate, k: cost surrogate k) per unit of ``w_j``. With ``effect = kl_gram`` this
    is :func:`solve_cpo_step`'s textbook step restricted to the span it lives in anyway; an
    ``effect`` estimated from other samples than ``G`` (see ``CPOConfig.cross_fit``) predicts
    what the step will really do to the costs instead of what it does to the noise in ``G``.

    The span is whitened (``w = W z`` with ``W^T kl_gram W = I``), which turns the problem into
    :func:`solve_cpo_step` with ``H = I``. Returns a :class:`CPOStep` whose ``direction`` is ``w``
    (``[K + 1]``).
    """
    gram = kl_gram.detach().double().numpy()
    eigvals, eigvecs = np.linalg.eigh(0.5 * (gram + gram.T))
    keep = eigvals > max(float(eigvals.max()), 1e-300) * 1e-10  # drop directions the data cannot tell apart
    whiten = torch.from_numpy(eigvecs[:, keep] / np.sqrt(eigvals[keep]))
    per_z = effect.detach().double() @ whiten
    step = solve_cpo_step(g=per_z[0], b=per_z[1:], h_inv_g=per_z[0], h_inv_b=per_z[1:], c=c, delta=delta)
    return CPOStep(whiten @ step.direction.double(), step.feasible, step.nu, step.lam)
