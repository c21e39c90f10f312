"""Shared solver math: GAE against a naive reference, conjugate gradient, the CPO subproblem."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import optimize

from cmdp.algorithms.functional import conjugate_gradient, gae, solve_cpo_span_step, solve_cpo_step


def naive_gae(rewards, values, next_values, terminated, dones, gamma, lam):
    """Per-env, per-step reference: walk forward within the episode and sum discounted deltas."""
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            total, discount = 0.0, 1.0
            for u in range(t, T):
                boot = 0.0 if terminated[u, n] else gamma * next_values[u, n]
                total += discount * (rewards[u, n] + boot - values[u, n])
                if dones[u, n]:
                    break
                discount *= gamma * lam
            adv[t, n] = total
    return adv


def test_gae_matches_reference_with_truncation_and_termination():
    rng = np.random.default_rng(0)
    T, N = 12, 3
    rewards = rng.normal(size=(T, N))
    values = rng.normal(size=(T, N))
    next_values = rng.normal(size=(T, N))
    terminated = np.zeros((T, N), bool)
    truncated = np.zeros((T, N), bool)
    terminated[3, 0] = terminated[8, 1] = True
    truncated[5, 0] = truncated[6, 2] = True  # time limits: bootstrap from next_values
    dones = terminated | truncated
    ref = naive_gae(rewards, values, next_values, terminated, dones, 0.97, 0.9)
    t = lambda x: torch.as_tensor(x)  # noqa: E731
    adv, ret = gae(t(rewards), t(values), t(next_values), t(terminated), t(dones), 0.97, 0.9)
    np.testing.assert_allclose(adv.numpy(), ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ret.numpy(), ref + values, atol=1e-10)


def test_gae_per_channel_discount():
    rng = np.random.default_rng(1)
    T, N, K = 7, 2, 2
    r, v, nv = (rng.normal(size=(T, N, K)) for _ in range(3))
    term = np.zeros((T, N), bool)
    term[4, 1] = True
    gammas = torch.tensor([0.9, 0.5], dtype=torch.float64)
    adv, _ = gae(*(torch.as_tensor(x) for x in (r, v, nv, term, term)), gammas, 0.8)
    for k, g in enumerate((0.9, 0.5)):
        ref = naive_gae(r[..., k], v[..., k], nv[..., k], term, term, g, 0.8)
        np.testing.assert_allclose(adv[..., k].numpy(), ref, atol=1e-10)


def test_conjugate_gradient_solves_spd_system():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(20, 20))
    h = torch.as_tensor(a @ a.T + 20 * np.eye(20))
    b = torch.as_tensor(rng.normal(size=20))
    x = conjugate_gradient(lambda v: h @ v, b, iters=50, residual_tol=1e-24)
    np.testing.assert_allclose((h @ x).numpy(), b.numpy(), atol=1e-8)


def brute_force(g, h, bmat, c, delta):
    """The same QCQP solved directly with SLSQP over x."""
    cons = [{"type": "ineq", "fun": lambda x: delta - 0.5 * x @ h @ x}]
    cons += [{"type": "ineq", "fun": (lambda x, k=k: -(bmat[k] @ x + c[k]))} for k in range(len(c))]
    res = optimize.minimize(lambda x: -g @ x, np.zeros_like(g), constraints=cons, method="SLSQP",
                            options={"ftol": 1e-12, "maxiter": 500})
    return res.x


def problem(seed, k, dim=6):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim))
    h = a @ a.T + dim * np.eye(dim)
    g = rng.normal(size=dim)
    bmat = rng.normal(size=(k, dim))
    return h, g, bmat


def solve(h, g, bmat, c, delta):
    h_inv = np.linalg.inv(h)
    t = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
    return solve_cpo_step(t(g), t(bmat), t(h_inv @ g), t(bmat @ h_inv), t(c), delta)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cpo_step_matches_brute_force_when_feasible(k, seed):
    h, g, bmat = problem(seed, k)
    delta = 0.05
    # one constraint active at the unconstrained optimum, the others slack
    x_free = np.sqrt(2 * delta / (g @ np.linalg.inv(h) @ g)) * np.linalg.inv(h) @ g
    c = -(bmat @ x_free) + np.where(np.arange(k) == 0, 0.3 * abs(bmat[0] @ x_free), -1.0)
    step = solve(h, g, bmat, c, delta)
    assert step.feasible
    ref = brute_force(g, h, bmat, c, delta)
    np.testing.assert_allclose(step.direction.numpy(), ref, rtol=1e-4, atol=1e-5)
    assert np.all(bmat @ step.direction.numpy() + c <= 1e-6)
    if k > 1:
        assert step.nu[0] > 0 and np.allclose(step.nu[1:].numpy(), 0.0, atol=1e-8)


@pytest.mark.parametrize("k", [1, 2])
def test_cpo_recovery_when_infeasible(k):
    h, g, bmat = problem(7, k)
    delta = 0.01
    c = np.full(k, 5.0)  # far above every limit: no step in the trust region can fix it
    step = solve(h, g, bmat, c, delta)
    assert not step.feasible
    x = step.direction.numpy()
    assert 0.5 * x @ h @ x == pytest.approx(delta, rel=1e-6)  # on the trust-region boundary
    assert np.all(bmat @ x < 0)  # every violated cost decreases
    if k == 1:
        h_inv_b = np.linalg.inv(h) @ bmat[0]
        expected = -np.sqrt(2 * delta / (bmat[0] @ h_inv_b)) * h_inv_b  # Achiam et al., eq. (10.2)
        np.testing.assert_allclose(x, expected, rtol=1e-6)


def span_problem(h, g, bmat):
    """The stacked gradients, their natural-gradient directions U and the KL Gram matrix."""
    grads = np.vstack([g, bmat])
    directions = grads @ np.linalg.inv(h)
    return torch.as_tensor(directions), torch.as_tensor(grads @ directions.T)


@pytest.mark.parametrize("feasible", [True, False])
@pytest.mark.parametrize("k", [1, 2])
def test_span_step_with_its_own_gram_is_the_textbook_step(k, feasible):
    h, g, bmat = problem(3, k)
    delta = 0.05
    c = np.full(k, -0.01) if feasible else np.full(k, 5.0)
    directions, gram = span_problem(h, g, bmat)
    span = solve_cpo_span_step(gram, gram, torch.as_tensor(c), delta)
    textbook = solve(h, g, bmat, c, delta)
    assert span.feasible == textbook.feasible == feasible
    np.testing.assert_allclose((span.direction @ directions).numpy(), textbook.direction.numpy(), rtol=1e-4, atol=1e-6)


def test_span_step_holds_the_constraints_under_the_effect_it_is_given():
    """A cost gradient inflated by noise promises more than the true one delivers; the span step
    given the true effect meets the limit under the true effect, which the textbook step does not."""
    h, g, bmat = problem(5, 1)
    rng = np.random.default_rng(0)
    noisy_b = bmat + 3.0 * rng.normal(size=bmat.shape)  # the estimate the step is built from
    delta, c = 0.05, np.array([0.2])
    directions, gram = span_problem(h, g, noisy_b)
    true_effect = torch.as_tensor(np.vstack([g, bmat]) @ directions.numpy().T)
    span = solve_cpo_span_step(gram, true_effect, torch.as_tensor(c), delta)
    x = (span.direction @ directions).numpy()
    assert 0.5 * x @ h @ x <= delta * (1 + 1e-6)
    if span.feasible:
        assert bmat[0] @ x + c[0] <= 1e-6
    else:  # recovery: the largest true decrease the trust region allows
        assert bmat[0] @ x < 0
    textbook = solve(h, g, noisy_b, c, delta).direction.numpy()
    assert noisy_b[0] @ textbook + c[0] <= 1e-6  # textbook meets its own, noisy, prediction
    assert bmat[0] @ textbook + c[0] > bmat[0] @ x + c[0]  # and does less for the true cost
