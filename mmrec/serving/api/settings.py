"""How the service guards itself (see SECURITY.md). The defaults are the safe ones: no client access to
server files, loopback Host names only, no cross-origin callers, docs from local files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
# The largest legitimate request: one item with an 8 MiB image as base64 (~11 MiB of JSON), or a
# batch of 256 items with long descriptions. Larger bodies are refused with 413 before they are read.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ServiceSettings:
    """api_key: needed for every call but /healthz and the docs; it allows writes. read_only_api_key:
    allows reads only (a write with it is 403). No keys: anyone who can reach the port may do anything,
    which is why `mmrec serve` then binds to loopback only.
    allowed_hosts: the Host header values served ("*": any); the loopback names by default, so a web
    page cannot reach a loopback service through a DNS name it controls (DNS rebinding).
    cors_origins: web origins allowed to call the API from a browser (none by default).
    image_root: the only directory `image_path` may name files in; None: `image_path` is refused.
    max_body_bytes: larger request bodies are answered 413 before they are parsed.
    docs: serve /docs, /redoc and /openapi.json (from the package's files, never a CDN)."""

    api_key: str | None = None
    read_only_api_key: str | None = None
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    cors_origins: tuple[str, ...] = ()
    image_root: Path | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    docs: bool = True

    def __post_init__(self) -> None:
        for name in ("api_key", "read_only_api_key"):
            key = getattr(self, name)
            if key is not None and (not key or key != key.strip() or not key.isprintable() or not key.isascii()):
                raise ValueError(f"{name} must be printable ASCII without surrounding spaces")
        if self.read_only_api_key is not None and self.api_key is None:
            raise ValueError("a read-only API key needs an API key for writes beside it")
        if self.read_only_api_key is not None and self.read_only_api_key == self.api_key:
            raise ValueError("the read-only API key must differ from the API key")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")

    @property
    def auth(self) -> bool:
        """Whether callers need a key."""
        return self.api_key is not None
