"""benchmarks/chores_camera_pitch.py: the camera's pitch changes only what counts as seen."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def pitch(benchmark_script):
    with benchmark_script("chores_camera_pitch") as module:
        yield module


def test_the_pitch_moves_only_the_blind_spot_cost_of_a_path_planned_from_the_true_state(pitch):
    expert = "shortest-path expert (SPOC's, safety-unaware)"
    flat_ok, flat = pitch.play("Fetch", expert, -10.0, episodes=6)
    steep_ok, steep = pitch.play("Fetch", expert, -35.0, episodes=6)
    blind = list(pitch.COST_NAMES).index("blind_spot")
    others = [k for k in range(len(pitch.COST_NAMES)) if k != blind]
    assert np.array_equal(flat_ok, steep_ok)
    assert np.array_equal(flat[:, others], steep[:, others])
    assert not np.array_equal(flat[:, blind], steep[:, blind])  # these episodes do see the difference


def test_cheapest_episodes_cost_keeps_the_cheapest_successes_and_spreads_them_over_all_episodes(pitch):
    success = np.array([True, True, True, False])
    costs = np.array([[3.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])  # totals 3, 0, 2, 0
    assert pitch.cheapest_episodes_cost(success, costs, 0.5) == (0.5, 0.5)  # episodes 1 and 2: (0 + 2) / 4
    assert pitch.cheapest_episodes_cost(success, costs, 0.75) == (1.25, 0.75)
    # the failed episode is never counted as a success, however cheap
    assert pitch.cheapest_episodes_cost(success, costs, 1.0) == (1.25, 0.75)
