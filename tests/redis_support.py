"""A real `redis-server` for the tests: started on a free port in a temp dir, with the configuration the
service needs (append-only file, fsync on every write, no RDB snapshots), stopped at the end. Tests that
need one are skipped where Debian's redis-server is not installed (`make setup` installs it as root)."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from service_support import free_port, stop_process

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (make setup as root)")


class RedisServer:
    """`redis-server` in `directory`; `.url` names DB 0 (with the password, if one is set)."""

    def __init__(self, directory: Path, *, password: str | None = None, durable: bool = True):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.durable = durable
        auth = f":{password}@" if password is not None else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        """Start (again: same port, directory and files) and wait until it answers."""
        import redis

        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
                "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        if self.durable:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        if self.password is not None:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, decode_responses=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.client.ping():
                    return
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {(self.dir / 'redis.log').read_text()}") from None
            time.sleep(0.05)

    def data_files(self) -> list[Path]:
        """The files Redis keeps its data in (the append-only files; not its log)."""
        return [p for p in self.dir.rglob("*") if p.is_file() and p.name != "redis.log"]

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.client.close()

    def stop(self) -> None:
        stop_process(self.proc)
        self.client.close()
