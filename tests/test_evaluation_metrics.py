"""Metric definitions against hand-computed values, edge cases, and exact agreement of the batch path."""
from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation import metrics as M

L2 = math.log2
RANKED = [3, 1, 7, 1, 9]  # 1 repeats at position 4: counted once
RELEVANT = {1, 9, 42}  # 42 is never recommended


def test_hand_computed_values_at_5():
    assert M.precision_at_k(RANKED, RELEVANT, 5) == pytest.approx(2 / 5)
    assert M.recall_at_k(RANKED, RELEVANT, 5) == pytest.approx(2 / 3)
    dcg = 1 / L2(3) + 1 / L2(6)  # hits at positions 2 and 5
    idcg = 1 + 1 / L2(3) + 1 / L2(4)  # three relevant items
    assert M.ndcg_at_k(RANKED, RELEVANT, 5) == pytest.approx(dcg / idcg)
    assert M.mrr_at_k(RANKED, RELEVANT, 5) == pytest.approx(1 / 2)
    assert M.hit_rate_at_k(RANKED, RELEVANT, 5) == 1.0
    assert M.map_at_k(RANKED, RELEVANT, 5) == pytest.approx((1 / 2 + 2 / 5) / 3)


def test_hand_computed_values_at_2_and_1():
    assert M.precision_at_k(RANKED, RELEVANT, 2) == pytest.approx(1 / 2)
    assert M.recall_at_k(RANKED, RELEVANT, 2) == pytest.approx(1 / 3)
    assert M.ndcg_at_k(RANKED, RELEVANT, 2) == pytest.approx((1 / L2(3)) / (1 + 1 / L2(3)))
    assert M.map_at_k(RANKED, RELEVANT, 2) == pytest.approx((1 / 2) / 2)
    assert M.mrr_at_k(RANKED, RELEVANT, 1) == 0.0
    assert M.hit_rate_at_k(RANKED, RELEVANT, 1) == 0.0
    assert M.ndcg_at_k(RANKED, RELEVANT, 1) == 0.0


def test_k_larger_than_the_list():
    # Empty slots earn nothing; precision still divides by k; the ideal list is min(|R|, k) long.
    assert M.precision_at_k(RANKED, RELEVANT, 10) == pytest.approx(2 / 10)
    assert M.recall_at_k(RANKED, RELEVANT, 10) == pytest.approx(2 / 3)
    assert M.ndcg_at_k(RANKED, RELEVANT, 10) == pytest.approx(M.ndcg_at_k(RANKED, RELEVANT, 5))
    assert M.map_at_k(RANKED, RELEVANT, 10) == pytest.approx((1 / 2 + 2 / 5) / 3)
    assert M.ndcg_at_k([], {1}, 3) == 0.0


def test_duplicates_count_once():
    # Without the rule, [1, 1, 1] would score precision 1 for relevant {1}.
    assert M.precision_at_k([1, 1, 1], {1}, 3) == pytest.approx(1 / 3)
    assert M.recall_at_k([1, 1, 1], {1}, 3) == 1.0
    assert M.ndcg_at_k([1, 1, 1], {1}, 3) == 1.0
    assert M.map_at_k([1, 1, 2], {1, 2}, 3) == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_no_relevant_items_is_undefined_not_zero():
    for fn in (M.precision_at_k, M.recall_at_k, M.ndcg_at_k, M.mrr_at_k, M.hit_rate_at_k, M.map_at_k):
        assert math.isnan(fn([1, 2, 3], set(), 3)), fn.__name__
    assert math.isnan(M.graded_ndcg_at_k([1, 2], {1: 0, 2: 0.0}, 2))


@pytest.mark.parametrize("k", [0, -1])
def test_bad_k_raises(k):
    with pytest.raises(ValueError):
        M.ndcg_at_k([1], {1}, k)


def test_perfect_list_scores_one():
    assert M.ndcg_at_k([5, 6, 7], {5, 6, 7}, 3) == 1.0
    assert M.map_at_k([5, 6, 7, 8], {5, 6, 7, 8, 9}, 3) == 1.0  # min(|R|, k) denominator
    assert M.recall_at_k([5, 6, 7], {5, 6, 7, 8}, 3) == pytest.approx(3 / 4)


def test_graded_ndcg():
    rel = {1: 3, 9: 1, 42: 2, 7: 0}
    dcg = 3 / L2(3) + 1 / L2(6)
    idcg = 3 + 2 / L2(3) + 1 / L2(4)
    assert M.graded_ndcg_at_k(RANKED, rel, 5) == pytest.approx(dcg / idcg)
    dcg_e = 7 / L2(3) + 1 / L2(6)
    idcg_e = 7 + 3 / L2(3) + 1 / L2(4)
    assert M.graded_ndcg_at_k(RANKED, rel, 5, gain="exponential") == pytest.approx(dcg_e / idcg_e)
    # All grades 1 -> the binary definition.
    assert M.graded_ndcg_at_k(RANKED, {i: 1 for i in RELEVANT}, 5) == pytest.approx(M.ndcg_at_k(RANKED, RELEVANT, 5))
    with pytest.raises(ValueError):
        M.graded_ndcg_at_k(RANKED, rel, 5, gain="log")


def test_batch_agrees_exactly_with_per_user():
    rng = np.random.default_rng(7)
    n, width, n_items = 400, 20, 30  # small catalog: many duplicates and hits
    ranked = rng.integers(0, n_items, size=(n, width))
    ranked[rng.random((n, width)) < 0.1] = -1  # empty slots
    relevant = [set(rng.choice(n_items, size=rng.integers(0, 6), replace=False).tolist()) for _ in range(n)]
    hits, n_rel = M.hit_matrix(ranked, relevant)
    per_user = {
        "precision": M.precision_at_k, "recall": M.recall_at_k, "ndcg": M.ndcg_at_k,
        "mrr": M.mrr_at_k, "hit_rate": M.hit_rate_at_k, "map": M.map_at_k,
    }
    batch = M.accuracy_metrics_batch(hits, n_rel, ks=(1, 3, 10, 20, 25))
    rows = [[x if x >= 0 else None for x in r] for r in ranked.tolist()]  # None = an empty slot
    for name, fn in per_user.items():
        for k in (1, 3, 10, 20, 25):
            expected = np.array([fn(rows[u], relevant[u], k) for u in range(n)])
            np.testing.assert_array_equal(batch[f"{name}@{k}"], expected, err_msg=f"{name}@{k}")


def test_batch_single_targets_equal_sets():
    rng = np.random.default_rng(1)
    ranked = rng.integers(0, 15, size=(200, 10))
    targets = rng.integers(0, 15, size=200)
    h1, n1 = M.hit_matrix(ranked, targets)
    h2, n2 = M.hit_matrix(ranked, [{int(t)} for t in targets])
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(n1, n2)
    ndcg = M.ndcg_at_k_batch(h1, n1, 10)
    assert all(ndcg[u] == M.ndcg_at_k(ranked[u].tolist(), {int(targets[u])}, 10) for u in range(200))


def test_catalog_coverage():
    ranked = np.array([[0, 1, 2], [0, 1, 3], [1, 0, -1]])
    assert M.catalog_coverage(ranked, 10, 2) == pytest.approx(2 / 10)
    assert M.catalog_coverage(ranked, 10, 3) == pytest.approx(4 / 10)


def test_intra_list_diversity():
    vecs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
    div = M.intra_list_diversity(np.array([[0, 1, 2], [0, 3, 0], [0, -1, -1]]), vecs, 3)
    assert div[0] == pytest.approx(1 - (0 + 2 / math.sqrt(2)) / 3)  # pair cosines 0, .707, .707
    assert div[1] == pytest.approx(0.0)  # same direction; the repeat of 0 is ignored
    assert math.isnan(div[2])


def test_novelty():
    counts = np.array([99, 9, 0])  # of 99 users: item 0 seen by everyone, item 2 by no one
    nov = M.novelty(np.array([[0, 1], [2, -1]]), counts, 99, 2)
    assert nov[0] == pytest.approx((-L2(100 / 100) - L2(10 / 100)) / 2)
    assert nov[1] == pytest.approx(-L2(1 / 100))
