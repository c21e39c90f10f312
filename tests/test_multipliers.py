"""Multipliers: direction, projection, proportionality, PID terms, state round trips, bad values."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from cmdp.algorithms.multipliers import GradientMultiplier, PIDMultiplier, make_multiplier
from cmdp.errors import ConfigError


def test_gradient_multiplier_rises_above_and_never_goes_negative():
    m = GradientMultiplier([1.0, 2.0], init=0.0, lr=0.1, damping=0.0)
    m.update([3.0, 1.0])
    assert m.value[0] > 0 and m.value[1] == 0.0
    for _ in range(50):
        m.update([0.0, 0.0])
    assert np.all(m.value == 0.0)


def test_sgd_step_is_proportional_to_the_violation():
    small, large = GradientMultiplier([1.0], init=1.0, lr=0.1), GradientMultiplier([1.0], init=1.0, lr=0.1)
    small.update([1.5])
    large.update([3.0])
    assert (large.value[0] - 1.0) == pytest.approx(4 * (small.value[0] - 1.0))


def test_violation_is_relative_to_the_limit():
    a, b = GradientMultiplier([0.5], init=0.0, lr=0.1), GradientMultiplier([25.0], init=0.0, lr=0.1)
    a.update([1.0])
    b.update([50.0])
    assert a.value[0] == pytest.approx(b.value[0])


def test_adam_matches_torch_adam():
    limits = np.array([1.0, 2.0, 0.5])
    m = GradientMultiplier(limits, init=0.5, lr=0.05, optimizer="adam", normalize=False)
    lam = torch.tensor([0.5, 0.5, 0.5], requires_grad=True)
    opt = torch.optim.Adam([lam], lr=0.05)
    rng = np.random.default_rng(0)
    for _ in range(20):
        cost = rng.uniform(0, 3, size=3)
        m.update(cost)
        opt.zero_grad()
        (-(lam * torch.as_tensor(cost - limits, dtype=torch.float32)).sum()).backward()
        opt.step()
        with torch.no_grad():
            lam.clamp_(min=0.0)
        np.testing.assert_allclose(m.value, lam.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_upper_bound_and_damping():
    m = GradientMultiplier([1.0], init=0.0, lr=1.0, upper_bound=0.5, damping=0.0)
    m.update([10.0])
    assert m.value[0] == 0.5
    d = GradientMultiplier([1.0], init=0.0, lr=0.01, damping=0.3)
    d.update([2.0])
    assert d.value[0] == pytest.approx(0.01 + 0.3)  # integral step plus the proportional term


def test_pid_terms():
    p = PIDMultiplier([1.0], kp=1.0, ki=0.0, kd=0.0)
    p.update([1.5])
    assert p.value[0] == pytest.approx(0.5)  # proportional reacts at once
    p.update([0.5])
    assert p.value[0] == 0.0
    i = PIDMultiplier([1.0], kp=0.0, ki=0.1, kd=0.0)
    g = GradientMultiplier([1.0], init=0.0, lr=0.1, damping=0.0)
    for cost in [2.0, 3.0, 0.5, 1.5]:
        i.update([cost])
        g.update([cost])
        assert i.value[0] == pytest.approx(g.value[0])  # integral-only is gradient ascent
    d = PIDMultiplier([10.0], kp=0.0, ki=0.0, kd=1.0, d_delay=3)
    seen = []
    for cost in [0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 10.0]:
        d.update([cost])
        seen.append(d.value[0])
    # the cost rose by 1 limit at update 4; the derivative compares with the cost 3 updates back
    assert seen[:3] == [0.0, 0.0, 0.0] and seen[3] == pytest.approx(1.0) and seen[-1] == 0.0


@pytest.mark.parametrize("kind", ["gradient", "pid"])
def test_state_round_trip_through_weights_only_load(kind):
    a = make_multiplier(kind, [1.0, 3.0])
    rng = np.random.default_rng(0)
    for _ in range(5):
        a.update(rng.uniform(0, 5, size=2))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = make_multiplier(kind, [1.0, 3.0])
    b.load_state_dict(torch.load(buf, weights_only=True))
    for _ in range(5):
        cost = rng.uniform(0, 5, size=2)
        a.update(cost)
        b.update(cost)
        np.testing.assert_array_equal(a.value, b.value)


def test_bad_values_raise():
    with pytest.raises(ConfigError, match="lr"):
        GradientMultiplier([1.0], lr=-1.0)
    with pytest.raises(ConfigError, match="init"):
        GradientMultiplier([1.0], init=-0.1)
    with pytest.raises(ConfigError, match="must not exceed upper_bound"):
        GradientMultiplier([1.0], init=2.0, upper_bound=1.0)
    with pytest.raises(ConfigError, match="kd"):
        PIDMultiplier([1.0], kd=-1.0)
    with pytest.raises(ConfigError, match="d_delay"):
        PIDMultiplier([1.0], d_delay=0)
    with pytest.raises(ConfigError, match="cost_limit"):
        GradientMultiplier([-1.0])
    with pytest.raises(ConfigError, match="allowed"):
        make_multiplier("bang-bang", [1.0])
    with pytest.raises(ValueError, match="not finite"):
        GradientMultiplier([1.0]).update([float("nan")])
    with pytest.raises(ConfigError, match="violation_cap"):
        PIDMultiplier([1.0], violation_cap=0.0)


@pytest.mark.parametrize("kind", ["gradient", "pid"])
def test_violation_cap_bounds_the_jump_of_one_heavy_tailed_epoch(kind):
    # one Safety-CHORES epoch: a single episode of cost 185 against a limit of 1
    gains = {"gradient": {"lr": 0.02, "damping": 0.3, "init": 0.0}, "pid": {"kp": 0.1, "ki": 0.01, "kd": 0.01}}[kind]
    free = make_multiplier(kind, [1.0, 1.0], **gains)
    capped = make_multiplier(kind, [1.0, 1.0], violation_cap=5.0, **gains)
    for m in (free, capped):
        m.update([185.0, 3.0])
    assert free.value[0] > 15.0  # what the cap is for
    assert capped.value[0] == pytest.approx(make_multiplier(kind, [1.0], **gains).value[0] + _one_step(kind, [6.0], gains))
    # below the cap nothing changes, channel by channel
    assert capped.value[1] == pytest.approx(free.value[1])
    # the cap is in the units of the violation: relative to the limit when normalised
    raw = make_multiplier(kind, [4.0], violation_cap=5.0, normalize=False, **gains)
    raw.update([100.0])
    ref = make_multiplier(kind, [4.0], normalize=False, **gains)
    ref.update([9.0])
    assert raw.value[0] == pytest.approx(ref.value[0])


def _one_step(kind, cost, gains) -> float:
    m = make_multiplier(kind, [1.0], **gains)
    before = m.value[0]
    m.update(cost)
    return float(m.value[0] - before)


@pytest.mark.parametrize("algo", ["PPOLag", "PIDLag", "FOCOPS"])
def test_solvers_pass_the_violation_cap_to_their_multipliers(algo):
    import cmdp.algorithms as algorithms

    cls = getattr(algorithms, algo)
    solver = cls("GridWorld-v0", cost_limit=1.0, seed=0, violation_cap=4.0, steps_per_epoch=64)
    assert solver.multiplier.violation_cap == 4.0
    with pytest.raises(ConfigError, match="violation_cap"):
        cls("GridWorld-v0", cost_limit=1.0, seed=0, violation_cap=-1.0)
