"""experiments/noise_defense.py: its retrieval measure on cases worked out by hand."""

import numpy as np
import pytest

from conftest import experiment


@pytest.fixture(scope="module")
def mod():
    return experiment("noise_defense")


def test_ndcg_and_recall_at_10_by_hand(mod):
    """Query i's one relevant document is document i. Query 0 finds it first (gain 1), query 1 third
    (1/log2 4 = 0.5), query 2 twelfth (outside the top 10: 0), by cosine whatever the vectors' lengths."""
    d = 20
    docs = np.eye(d, dtype=np.float32) * 3.0  # lengths do not matter
    q = np.zeros((3, d), np.float32)
    q[0, 0] = 1.0
    q[1] = 0.1
    q[1, 1] = 0.5
    q[1, [5, 6]] = 0.9  # two documents closer than its own
    q[2] = 0.1
    q[2, 2] = 0.2
    q[2, 3:14] = 0.5  # eleven documents closer than its own
    out = mod.retrieval(q, docs[:20])
    assert out["ndcg@10"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert out["recall@10"] == pytest.approx(2 / 3)


def test_noise_of_a_given_level_moves_cosine_as_expected(mod):
    """The defense's noise on unit vectors of dimension 384: λ = 0.05 leaves cosine ≈ 1/√(1 + 384·λ²) ≈ 0.72."""
    rng = np.random.default_rng(0)
    e = mod.unit(rng.normal(size=(2000, 384)))
    noised = e + 0.05 * rng.normal(size=e.shape)
    cos = (mod.unit(noised) * e).sum(1)
    assert cos.mean() == pytest.approx(1 / np.sqrt(1 + 384 * 0.05**2), abs=0.01)
