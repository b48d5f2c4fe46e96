"""The `mmrec` console script, run as a real process."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MMREC = str(Path(sys.executable).with_name("mmrec"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MMREC, *args], capture_output=True, text=True, timeout=300)


def test_packages_import():
    import encoders  # noqa: F401
    import evaluation  # noqa: F401
    import index  # noqa: F401
    import mmrec

    assert mmrec.data.datasets.load and mmrec.load_catalog


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    assert "datasets" in out.stdout and "demo" in out.stdout


def test_datasets_list_and_info():
    out = run("datasets", "list")
    assert out.returncode == 0
    for name in ("ml-1m", "ml-100k", "complete-journey", "emoji-market"):
        assert name in out.stdout
    info = run("datasets", "info", "ml-100k")
    assert info.returncode == 0 and "100,000" in info.stdout


def test_user_errors_are_one_line_without_traceback():
    out = run("datasets", "info", "no-such-data")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "mmrec: error: unknown dataset 'no-such-data'; built-in datasets: ml-1m, ml-100k, complete-journey, emoji-market"
    )
    assert "Traceback" not in out.stderr
