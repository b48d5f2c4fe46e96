"""Debian packages the project uses: the colour emoji font and Unicode's emoji groups (built-in data),
Fashion-MNIST (a benchmark), CLDR's emoji names in ~100 languages (tuning data of the default text
encoder), and redis-server (the shared event log of service replicas; its tests start
one on a free port).

Run by `make setup`. As root it installs what is missing; otherwise it says once what is missing and
how to get it, and what needs it degrades (emoji-market without images, the Redis tests skipped)
instead of failing.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# package -> a file that proves it is installed
PACKAGES: dict[str, str] = {
    "fonts-noto-color-emoji": "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "unicode-data": "/usr/share/unicode/emoji/emoji-test.txt",
    # real product photos for the zero-shot image benchmark (bench/encoders_crossmodal.py)
    "dataset-fashion-mnist": "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
    # `mmrec serve --events redis://...` and the tests of it (they start their own server, not the system's)
    "redis-server": "/usr/bin/redis-server",
    # emoji names in ~100 languages (mmrec/data/cldr.py): tuning data of the default text encoder and the
    # languages benchmark (bench/encoders_languages.py)
    "unicode-cldr-core": "/usr/share/unicode/cldr/common/annotations/en.xml",
}


def missing() -> list[str]:
    return [pkg for pkg, probe in PACKAGES.items() if not Path(probe).exists()]


def ensure() -> int:
    todo = missing()
    if not todo:
        return 0
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"mmrec: note: missing Debian packages {' '.join(todo)}; install them with "
              f"`sudo apt-get install {' '.join(todo)}` (without them emoji-market has no images/groups and "
              f"the Redis tests are skipped)")
        return 0
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    result = subprocess.run(["apt-get", "install", "-y", "-qq", *todo], env=env)
    if result.returncode != 0:
        print(f"mmrec: note: could not install {' '.join(todo)} (apt-get exit {result.returncode})")
    return 0


if __name__ == "__main__":
    sys.exit(ensure())
