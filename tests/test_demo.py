"""`mmrec demo`, the main job, end to end on the real built-in data (a short training budget)."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mmrec.cli", "demo", *args], capture_output=True, text=True,
                          env=env, timeout=3600)  # a hang guard: the first run builds the text space (~20 min on a busy box)


def test_demo_end_to_end_recommends_across_languages_and_reuses_its_work(tmp_path):
    data = tmp_path / "demo"
    first = run("--data-dir", str(data), "--train-minutes", "0.5", "--no-progress")
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads((data / "demo_report.json").read_text())
    ev = report["evaluation"]
    assert ev["mmrec"]["ndcg@10"]["mean"] > ev["popularity (per market)"]["ndcg@10"]["mean"]
    # a German history, recommendations listed in Japanese: the language differs from the history's
    assert report["examples"] and all(r["language"] == "ja" and r["market"] == "JP"
                                      for ex in report["examples"] for r in ex["recommendations"])
    assert all(r["because"] for ex in report["examples"] for r in ex["recommendations"])
    assert "mmrec serve --data-dir" in first.stdout and (data / "model.pt").exists()

    second = run("--data-dir", str(data), "--train-minutes", "0.5", "--no-progress")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "0 listings embedded now" in second.stdout and "reusing" in second.stdout
    assert json.loads((data / "demo_report.json").read_text())["seconds"] < report["seconds"]


def test_demo_rejects_the_same_market_twice_in_one_line(tmp_path):
    out = run("--data-dir", str(tmp_path), "--history-market", "JP", "--target-market", "JP")
    assert out.returncode == 2 and "must differ" in out.stderr and "Traceback" not in out.stderr
