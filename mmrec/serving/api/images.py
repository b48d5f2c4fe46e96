"""Images from clients, turned into checked bytes before an encoder sees them.

A client never makes the server open a file of its choosing: `image_path` is refused unless the service
runs with an image root, and then it must resolve (symlinks and '..' first) to a regular file inside that
root. Every refused path gets the same answer, so the answer tells nothing about what exists elsewhere.
Only the header of an image is read to check it, so a decompression bomb is refused before it is decoded.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
import stat
import warnings
from pathlib import Path

from fastapi import HTTPException

from mmrec.serving.api.schemas import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS


def decode_base64(label: str, data: str) -> bytes:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, f"{label}: image_base64 is not valid base64") from None
    if len(raw) > MAX_IMAGE_BYTES:
        raise HTTPException(413, f"{label}: image is larger than {MAX_IMAGE_BYTES} bytes")
    return raw


def read_image_path(label: str, image_path: str, root: Path | None) -> bytes:
    """The bytes of `image_path` (relative to `root`, or absolute inside it)."""
    if root is None:
        raise HTTPException(400, f"{label}: image_path is not accepted by this service (it runs without "
                                 f"--image-root); send image_base64")
    refused = HTTPException(400, f"{label}: image_path must name an image file under the service's image root")
    root = root.resolve()
    try:
        path = (root / image_path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, a NUL byte
        raise refused from None
    if not path.is_relative_to(root):
        raise refused
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        raise refused from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise refused
        data = fh.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise HTTPException(413, f"{label}: image is larger than {MAX_IMAGE_BYTES} bytes")
    return data


def check_image(label: str, data: bytes) -> None:
    """400 for what cannot be an image, 413 for more than MAX_IMAGE_PIXELS pixels."""
    from PIL import Image

    if not data:
        raise HTTPException(400, f"{label}: the image is empty")
    too_big = HTTPException(413, f"{label}: image has more than {MAX_IMAGE_PIXELS} pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise too_big from None
    except Exception:  # noqa: BLE001 - PIL raises many types for bad input; none of their text is sent
        raise HTTPException(400, f"{label}: not a decodable image") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise too_big
