"""benchmarks/vla_cost_probe.py: its AUC and the one-step cost model's predictions it scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_vla import tiny_policy


@pytest.fixture(scope="module")
def probe(benchmark_script):
    with benchmark_script("vla_cost_probe") as module:
        yield module


def test_roc_auc_is_the_share_of_positive_negative_pairs_ranked_right_with_ties_half(probe):
    rng = np.random.default_rng(0)
    score = rng.integers(0, 5, 200).astype(float)  # many ties
    label = rng.random(200) < 0.3 + 0.1 * score
    pos, neg = score[label], score[~label]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert probe.roc_auc(score, label) == pytest.approx(pairs, abs=1e-12)


def test_collect_records_the_cost_model_prediction_of_the_action_taken(probe):
    torch.manual_seed(0)
    policy = tiny_policy(step_cost_model=True).eval()
    k = policy.num_costs
    with torch.no_grad():  # action a predicts a cost of a on every channel, whatever it sees
        policy.step_cost_head.bias.copy_(torch.arange(policy.num_actions).repeat_interleave(k).float())
    feats, actions, costs, starts, predicted = probe.collect(policy, steps=24, seed=0)
    assert predicted.shape == (*actions.shape, k) == (3, probe.NUM_ENVS, k)
    assert np.array_equal(predicted, np.repeat(actions[..., None], k, axis=-1).astype(np.float32))
    assert feats.shape[:2] == actions.shape and costs.shape == (*actions.shape, k) and starts[0].all()


def test_a_policy_without_a_cost_model_has_no_predictions_and_start_is_refused_for_a_vla_file(probe, tmp_path):
    torch.manual_seed(0)
    policy = tiny_policy().eval()
    *_, predicted = probe.collect(policy, steps=8, seed=0)
    assert predicted is None
    policy.save_pretrained(tmp_path / "vla.pt")
    assert probe.read_policy(tmp_path / "vla.pt", None).config == policy.config
    with pytest.raises(SystemExit, match="--start is for a solver's checkpoint"):
        probe.read_policy(tmp_path / "vla.pt", tmp_path / "vla.pt")
