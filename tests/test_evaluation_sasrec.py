"""SASRec on real MovieLens-100k: it learns (beats popularity), is seeded, and keeps torch out of
`import evaluation`."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from evaluation.baselines import Popularity
from evaluation.protocol import evaluate
from evaluation import Histories, leave_one_out

torch = pytest.importorskip("torch")
from evaluation.baselines.sasrec import SASRec, SASRecConfig
from evaluation.losses import full_softmax_cross_entropy  # noqa: E402


@pytest.fixture(scope="module")
def events():
    from mmrec.data.datasets import load

    return load("ml-100k").events


@pytest.fixture(scope="module")
def split(events):
    return leave_one_out(events)


def test_import_evaluation_does_not_import_torch():
    code = "import sys, evaluation, evaluation.baselines; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_chunked_cross_entropy_is_the_full_softmax_cross_entropy():
    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(300, 16, generator=g, dtype=torch.float64)
    w0 = torch.randn(50, 16, generator=g, dtype=torch.float64)
    target = torch.randint(0, 50, (300,), generator=g)
    h1, w1 = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    ref = torch.nn.functional.cross_entropy(h1 @ w1.T, target)
    ref.backward()
    h2, w2 = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    out = full_softmax_cross_entropy(h2, w2, target, chunk=7)  # chunk not dividing N
    out.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(h2.grad, h1.grad)
    torch.testing.assert_close(w2.grad, w1.grad)


def test_low_precision_cross_entropy_stays_close_to_the_exact_one():
    g = torch.Generator().manual_seed(1)
    h0 = torch.randn(300, 16, generator=g) * 0.5
    w0 = torch.randn(50, 16, generator=g) * 0.5
    target = torch.randint(0, 50, (300,), generator=g)
    grads = []
    for low in (False, True):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        loss = full_softmax_cross_entropy(h, w, target, chunk=7, low_precision=low)
        loss.backward()
        grads.append((loss.detach(), h.grad, w.grad))
    (l0, gh0, gw0), (l1, gh1, gw1) = grads
    assert abs(float(l1 - l0)) < 1e-2 * float(l0)  # bfloat16 keeps ~3 significant digits
    for a, b in ((gh0, gh1), (gw0, gw1)):
        assert float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)) > 0.999


def test_sasrec_learns_and_beats_popularity(split):
    cfg = SASRecConfig(max_len=50, max_epochs=8, patience=2, eval_max_cases=None, progress=False)
    model = SASRec(cfg)
    res = evaluate(model, split, ks=(10,), progress=False)
    pop = evaluate(Popularity(), split, ks=(10,), progress=False)
    log = model.log_
    assert log[-1]["loss"] < log[0]["loss"]
    assert model.best_valid_ndcg10_ > log[0]["valid_ndcg@10"]  # validation improved after epoch 1
    assert res.mean("ndcg@10") > pop.mean("ndcg@10"), (res.mean("ndcg@10"), pop.mean("ndcg@10"))
    # Full ranking: every row is a permutation prefix over real items, history excluded.
    assert (res.recommendations >= 0).all()
    for i in range(0, len(split.test), 101):
        assert not set(res.recommendations[i].tolist()) & set(split.test.histories[i].tolist())
    assert model.describe()["epochs_run"] == len(log)


def test_sasrec_is_seeded(events):
    small = leave_one_out(events, max_users=150, seed=0)
    cfg = SASRecConfig(max_len=30, hidden=32, max_epochs=2, seed=5, progress=False)
    a = SASRec(cfg).fit(small.train, small.valid)
    b = SASRec(cfg).fit(small.train, small.valid)
    ra = a.recommend(small.test.histories, 10)
    rb = b.recommend(small.test.histories, 10)
    np.testing.assert_array_equal(ra.items, rb.items)
    assert [e["loss"] for e in a.log_] == [e["loss"] for e in b.log_]
    # Ad-hoc histories, including an empty one (deterministic, finite output).
    out = a.recommend(Histories.from_lists([[0, 1, 2], []]), 5)
    assert out.items.shape == (2, 5) and (out.items >= 0).all()
    assert a.user_vectors([[0, 1, 2]]).shape == (1, cfg.hidden)


def test_bce_objective_and_bad_loss(events):
    small = leave_one_out(events, max_users=150, seed=0)
    model = SASRec(SASRecConfig(max_len=30, hidden=32, max_epochs=2, loss="bce", progress=False))
    model.fit(small.train, small.valid)
    assert len(model.log_) == 2 and model.log_[1]["loss"] < model.log_[0]["loss"]
    with pytest.raises(ValueError, match="loss"):
        SASRec(SASRecConfig(loss="hinge")).fit(small.train)


def test_time_budget_stops_training(split):
    cfg = SASRecConfig(max_len=30, hidden=32, max_epochs=50, max_train_seconds=0.01, progress=False)
    model = SASRec(cfg).fit(split.train, split.valid)
    assert model.stopped_ == "time budget" and len(model.log_) == 1
