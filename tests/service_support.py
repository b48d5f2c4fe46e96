"""Shared by the service tests: the demo catalog, test images, and `Server`, a real `mmrec serve` process
on a free port (real encoders: USE multilingual for text, EfficientNet-Lite0 for images; the real
embedded Qdrant engine), plus `open_test_app` for the same app in-process behind FastAPI's TestClient."""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
TEXT_ENCODER = "use-m3"
WRITE_KEY = "test-write-key-0123456789abcdef"
READ_KEY = "test-read-key-0123456789abcdef"

PRODUCTS = {
    "shoe": {"en": "red running shoes", "de": "rote Laufschuhe", "fr": "chaussures de course rouges"},
    "banana": {"en": "banana", "de": "Banane", "fr": "banane"},
    "hammer": {"en": "claw hammer", "de": "Klauenhammer", "fr": "marteau"},
    "umbrella": {"en": "umbrella", "de": "Regenschirm", "fr": "parapluie"},
    "bicycle": {"en": "bicycle", "de": "Fahrrad", "fr": "vélo"},
    "coffee": {"en": "cup of coffee", "de": "Tasse Kaffee", "fr": "tasse de café"},
    "guitar": {"en": "acoustic guitar", "de": "Akustikgitarre", "fr": "guitare acoustique"},
    "watch": {"en": "wrist watch", "de": "Armbanduhr", "fr": "montre-bracelet"},
}
MARKET = {"en": "us", "de": "de", "fr": "fr"}
# Queries in languages none of the listings are in.
QUERIES = {
    "shoe": ["zapatillas para correr", "ランニングシューズ"], "banana": ["plátano", "банан"],
    "hammer": ["martillo", "молоток"], "umbrella": ["paraguas", "傘"], "bicycle": ["bicicleta", "велосипед"],
    "coffee": ["taza de café", "コーヒー"], "guitar": ["guitarra", "гитара"], "watch": ["reloj de pulsera", "腕時計"],
}


def catalog_items() -> list[dict]:
    return [
        {"item_id": f"{p}:{lang}", "product_id": p, "title": title, "language": lang, "market": MARKET[lang],
         "category": "demo", "price": 10.0 + i, "in_stock": p != "watch"}
        for i, (p, titles) in enumerate(PRODUCTS.items()) for lang, title in titles.items()
    ]


def png_bytes(kind: str) -> bytes:
    image = Image.new("RGB", (160, 160), "white")
    draw = ImageDraw.Draw(image)
    if kind == "stripes":
        for x in range(0, 160, 20):
            draw.rectangle([x, 0, x + 9, 159], fill="black")
    else:
        draw.ellipse([30, 30, 130, 130], fill=(200, 30, 30))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; a no-op if it already exited."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def serve_env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("MMREC_API_KEY", None)
    env.pop("MMREC_READ_ONLY_API_KEY", None)
    return env


def mmrec_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """`mmrec ARGS` in a subprocess, to its end."""
    return subprocess.run([sys.executable, "-m", "mmrec.cli", *args], capture_output=True, text=True,
                          env={**serve_env(), **(env or {})}, timeout=timeout, cwd=REPO)


class Server:
    """`mmrec serve` in a subprocess; `.client` talks to it (with `headers`, e.g. an API key)."""

    def __init__(self, data_dir: Path, *extra: str, headers: dict[str, str] | None = None,
                 env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(data_dir.parent / f"serve-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mmrec.cli", "serve", "--port", str(self.port), "--data-dir", str(data_dir),
             "--text-encoder", TEXT_ENCODER, *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env={**serve_env(), **(env or {})},
        )
        self.client = httpx.Client(base_url=self.url, timeout=60, headers=headers)
        deadline = time.monotonic() + 240
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mmrec serve exited with {self.proc.returncode}: {Path(self.log.name).read_text()}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("mmrec serve did not come up in 240 s")
            time.sleep(0.25)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.client.close()

    def stop(self) -> None:
        stop_process(self.proc)
        self.client.close()
        self.log.close()


def open_test_services(data_dir: Path, image_encoder: str | None = "efficientnet-lite0"):
    """The services `mmrec serve` opens, in this process (for FastAPI's TestClient)."""
    from mmrec.serving.app import open_services
    from mmrec.store.catalog_store import CatalogConfig

    return open_services(data_dir, CatalogConfig(text_encoder=TEXT_ENCODER, image_encoder=image_encoder))


def in_process_client(app, headers: dict[str, str] | None = None):
    """TestClient (httpx over ASGI, no socket) with a loopback Host, as the default allow-list wants."""
    from fastapi.testclient import TestClient

    return TestClient(app, base_url="http://127.0.0.1", headers=headers)
