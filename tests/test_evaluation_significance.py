"""Paired bootstrap / t-test, offline A/B simulations, and written reports."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from evaluation.ab import ab_split, interleave, team_draft
from evaluation.baselines import ItemKNN, Popularity
from evaluation.protocol import evaluate
from evaluation.report import build_report, format_table, write_report
from evaluation.significance import bootstrap_ci, compare, holm, paired_bootstrap, paired_t_test
from evaluation.splits import leave_one_out


@pytest.fixture(scope="module")
def ml100k_results():
    from mmrec.data.datasets import load

    ds = load("ml-100k")
    split = leave_one_out(ds.events, items=ds.items)
    pop = Popularity().fit(split.train)
    knn = ItemKNN(history_window=20).fit(split.train)
    results = {
        "popularity": evaluate(pop, split, ks=(5, 10, 20), fit=False, progress=False),
        "itemknn": evaluate(knn, split, ks=(5, 10, 20), fit=False, progress=False),
    }
    return split, pop, knn, results


def test_bootstrap_ci_brackets_the_mean():
    x = np.random.default_rng(0).binomial(1, 0.2, size=2000).astype(float)
    ci = bootstrap_ci(x, n_boot=1000)
    assert ci.low < ci.mean < ci.high and ci.n == 2000
    half = 1.96 * math.sqrt(0.2 * 0.8 / 2000)  # normal approximation for a proportion
    assert ci.high - ci.low == pytest.approx(2 * half, rel=0.2)
    with_nan = np.r_[x, np.nan]
    assert bootstrap_ci(with_nan, n_boot=200).n == 2000  # undefined users are dropped


def test_paired_tests_identical_and_different():
    rng = np.random.default_rng(1)
    a = rng.random(500)
    diff, low, high, p = paired_bootstrap(a, a.copy(), n_boot=500)
    assert diff == low == high == 0.0 and p == 1.0
    b = a + 0.05 + 0.01 * rng.standard_normal(500)
    c = compare(b, a, metric="x", name_a="b", name_b="a", n_boot=500)
    assert c.significant and c.low > 0 and c.p_bootstrap <= 0.01
    t, p_t = paired_t_test(b, a)
    ref = stats.ttest_rel(b, a)
    assert t == pytest.approx(ref.statistic) and p_t == pytest.approx(ref.pvalue)
    with pytest.raises(ValueError, match="different users"):
        compare(a, b, users_a=np.arange(500), users_b=np.arange(1, 501))


def test_pairing_matters():
    # Two models with a small but consistent per-user difference on highly varying users: the paired
    # interval excludes 0 even though the two unpaired intervals overlap.
    rng = np.random.default_rng(2)
    base = rng.random(300)
    better = base + 0.01
    a, b = bootstrap_ci(better, n_boot=500), bootstrap_ci(base, n_boot=500)
    assert a.low < b.high  # unpaired intervals overlap
    assert compare(better, base, n_boot=500).significant


def test_holm():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_team_draft_interleaving_rules():
    rng = np.random.default_rng(0)
    a, b = np.array([1, 2, 3, 4, 5]), np.array([3, 6, 1, 7, 8])
    shown, team = team_draft(a, b, 6, rng)
    assert len(shown) == 6 and len(set(shown)) == 6
    for who, lst in ((0, a.tolist()), (1, b.tolist())):
        mine = [x for x, t in zip(shown, team) if t == who]
        assert mine == sorted(mine, key=lst.index)  # each team contributes in its own order
    assert abs(team.count(0) - team.count(1)) <= 1


def test_interleaving_and_ab_on_ml100k(ml100k_results):
    split, pop, knn, _ = ml100k_results
    same = interleave(knn, knn, split.test, split.n_items, k=10, seed=0)
    # Identical rankers: wins are a coin flip, the interval must contain 0.5.
    assert same.low <= 0.5 <= same.high
    res = interleave(knn, pop, split.test, split.n_items, k=10, seed=0)
    assert res.sessions == len(split.test) and res.wins_a + res.wins_b + res.ties == res.sessions
    ab = ab_split(knn, pop, split.test, split.n_items, k=10, position_bias=True, seed=0)
    assert ab.sessions_a + ab.sessions_b == len(split.test)
    assert 0 <= ab.ctr_a <= 1 and ab.ctr_a_low <= ab.ctr_a <= ab.ctr_a_high
    # The offline interleaving verdict agrees with the offline metric's direction.
    knn_hr = evaluate(knn, split, ks=(10,), fit=False, progress=False).mean("hit_rate@10")
    pop_hr = evaluate(pop, split, ks=(10,), fit=False, progress=False).mean("hit_rate@10")
    assert (res.win_rate_a > 0.5) == (knn_hr > pop_hr)


def test_report_files_and_numbers(ml100k_results, tmp_path):
    split, _, _, results = ml100k_results
    report = build_report(results, split, title="ML-100k LOO", reference="popularity", n_boot=300)
    files = write_report(report, tmp_path)
    for key in ("json", "markdown", "metrics_at_k", "segments_target_popularity"):
        assert key in files and (tmp_path / files[key].split("/")[-1]).exists()
    data = json.loads((tmp_path / "report.json").read_text())
    for name, res in results.items():
        assert data["models"][name]["metrics"]["ndcg@10"]["mean"] == pytest.approx(res.mean("ndcg@10"))
    # 3 metrics x 3 cutoffs, each compared with the reference, Holm-adjusted.
    assert len(data["comparisons"]) == 9 and all(c["p_holm"] >= c["p_bootstrap"] for c in data["comparisons"])
    md = (tmp_path / "report.md").read_text()
    assert "| itemknn |" in md and "metrics_at_k.png" in md
    table = format_table(report)
    assert "ndcg@10" in table and "itemknn" in table
    png = (tmp_path / "metrics_at_k.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_report_refuses_results_from_different_cases(ml100k_results):
    from mmrec.data.datasets import load

    split, pop, _, results = ml100k_results
    other = leave_one_out(load("ml-100k").events, max_users=100, seed=1)
    stray = evaluate(Popularity(), other, ks=(5, 10, 20), progress=False)
    with pytest.raises(ValueError, match="different cases"):
        build_report({"a": results["popularity"], "b": stray}, split)
