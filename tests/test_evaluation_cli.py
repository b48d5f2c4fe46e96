"""`mmrec evaluate` as a real process on real data."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MMREC = str(Path(sys.executable).with_name("mmrec"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MMREC, *args], capture_output=True, text=True, timeout=600)


def test_evaluate_ml100k_loo_writes_report(tmp_path):
    out = run("evaluate", "--dataset", "ml-100k", "--protocol", "loo", "--models", "popularity,itemknn",
              "--out", str(tmp_path), "--ab")
    assert out.returncode == 0, out.stderr
    for name in ("report.json", "report.md", "metrics_at_k.png", "segments_target_popularity.png"):
        assert (tmp_path / name).exists(), name
    data = json.loads((tmp_path / "report.json").read_text())
    assert set(data["models"]) == {"popularity", "itemknn"}
    assert data["split"]["protocol"] == "loo" and data["split"]["n_test_cases"] == 943
    assert data["comparisons"] and data["extra"]["interleaving (simulation on held-out cases)"]["sessions"] == 943
    # The printed table ends the output and matches the JSON.
    ndcg = data["models"]["itemknn"]["metrics"]["ndcg@10"]["mean"]
    assert f"{ndcg:.4f}" in out.stdout and "ndcg@10" in out.stdout


def test_evaluate_cross_market_on_the_simulation(tmp_path):
    out = run("evaluate", "--dataset", "emoji-market", "--protocol", "cross-market",
              "--models", "popularity,popularity-market", "--ks", "10", "--out", str(tmp_path), "--no-plots")
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "report.json").read_text())
    segs = data["models"]["popularity-market"]["segments"]
    assert "target_market" in segs and "target_language" in segs and len(segs["target_language"]) > 5
    assert not (tmp_path / "metrics_at_k.png").exists()


def test_evaluate_user_errors_are_one_line(tmp_path):
    out = run("evaluate", "--dataset", "ml-100k", "--models", "popularity,nosuch", "--out", str(tmp_path))
    assert out.returncode == 2 and "unknown model" in out.stderr and "Traceback" not in out.stderr
    out = run("evaluate", "--dataset", "ml-100k", "--ks", "10,x", "--out", str(tmp_path))
    assert out.returncode == 2 and "--ks" in out.stderr
    out = run("evaluate", "--dataset", "ml-100k", "--protocol", "cross-market", "--out", str(tmp_path))
    assert out.returncode == 2 and "cross-market" in out.stderr and "Traceback" not in out.stderr


def test_evaluate_cold_start_with_content_vectors(tmp_path):
    # Popularity cannot reach items nobody touched in training; content-kNN (real text vectors) can.
    out = run("evaluate", "--dataset", "ml-100k", "--protocol", "cold", "--models", "popularity,contentknn",
              "--ks", "10", "--out", str(tmp_path), "--no-plots")
    assert out.returncode == 0, out.stderr
    models = json.loads((tmp_path / "report.json").read_text())["models"]
    assert models["popularity"]["metrics"]["ndcg@10"]["mean"] == 0.0
    assert models["contentknn"]["metrics"]["ndcg@10"]["mean"] > 0.02


def test_evaluate_trains_mmrec_on_the_same_temporal_split(tmp_path):
    """mmrec's fusion transformer is one of the models `mmrec evaluate` compares: trained on the split's
    training events only, scored on the same test cases as the baselines."""
    out = run("evaluate", "--dataset", "ml-100k", "--protocol", "temporal", "--models", "popularity,mmrec",
              "--max-users", "150", "--mmrec-minutes", "0.3", "--ks", "10", "--out", str(tmp_path), "--no-plots")
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "report.json").read_text())
    assert set(data["models"]) == {"popularity", "mmrec"} and data["split"]["protocol"] == "temporal"
    assert data["models"]["mmrec"]["metrics"]["ndcg@10"]["mean"] > 0
    assert any(c.get("model") == "mmrec" or "mmrec" in json.dumps(c) for c in data["comparisons"])
