"""The checks every request passes before any route sees it (an ASGI middleware), in this order:

1. Host header on the allow-list (DNS rebinding against a loopback service),
2. path and query string are valid UTF-8 once percent-decoded,
3. a browser's cross-origin write comes from an allowed origin (CSRF),
4. the API key: none or a wrong one -> 401, a read-only key on a write -> 403,
5. the body size: a declared Content-Length over the limit -> 413 before anything is read; a body
   streamed without one is counted as it is read and cut off at the limit with the same 413.

Checking the key here, not in a route dependency, means a request without one is refused before its
body is read or parsed.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
from urllib.parse import unquote_to_bytes, urlsplit

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mmrec.serving.api.settings import ServiceSettings

OPEN_PATHS = frozenset({"/healthz"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
DOCS_ASSETS = "/docs-assets/"
READ_POSTS = frozenset({"/search/image", "/recommend"})  # POSTs that only read
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Access(enum.Enum):
    OPEN = "open"
    READ = "read"
    WRITE = "write"


def required_access(method: str, path: str, docs: bool) -> Access:
    """What a request needs. Unknown paths need a read key too, so routes cannot be probed without one."""
    if path in OPEN_PATHS or (docs and (path in DOCS_PATHS or path.startswith(DOCS_ASSETS))):
        return Access.OPEN
    if method in SAFE_METHODS or (method == "POST" and path in READ_POSTS):
        return Access.READ
    return Access.WRITE


def presented_key(headers: Headers) -> str | None:
    """The key from `api-key: KEY` or `Authorization: Bearer KEY` (Qdrant's convention)."""
    key = headers.get("api-key")
    if key is None:
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            key = credentials.strip()
    return key


def _same(given: str, expected: str | None) -> bool:
    """Constant-time comparison (of digests, so the length of the key does not show either)."""
    if expected is None:
        return False
    digest = hashlib.sha256
    return hmac.compare_digest(digest(given.encode("utf-8", "replace")).digest(), digest(expected.encode()).digest())


def key_access(settings: ServiceSettings, key: str | None) -> Access | None:
    """What `key` allows: WRITE, READ, or None (no key or a wrong one). Without keys everything is open."""
    if not settings.auth:
        return Access.WRITE
    if key is None:
        return None
    if _same(key, settings.api_key):
        return Access.WRITE
    if _same(key, settings.read_only_api_key):
        return Access.READ
    return None


def host_name(host: str) -> str:
    """The name in a Host header, without the port ("[::1]:8000" -> "::1")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() else host


def _utf8_url(scope: Scope) -> bool:
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    try:
        unquote_to_bytes(raw_path).decode("utf-8")
        unquote_to_bytes(scope.get("query_string", b"").replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Guard:
    def __init__(self, app: ASGIApp, settings: ServiceSettings) -> None:
        self.app = app
        self.settings = settings
        self.any_host = "*" in settings.allowed_hosts
        self.hosts = {h.lower() for h in settings.allowed_hosts}

    def refusal(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        """(status, reason) if the request is refused before it reaches a route."""
        settings = self.settings
        host = headers.get("host")
        if not self.any_host and (host is None or host_name(host) not in self.hosts):
            return 400, "this Host is not served here (see --allowed-hosts)"
        if not _utf8_url(scope):
            return 400, "the URL is not valid UTF-8"
        method, path = scope["method"], scope["path"]
        origin = headers.get("origin")
        if origin is not None and method not in SAFE_METHODS and origin not in settings.cors_origins \
                and urlsplit(origin).netloc.lower() != (host or "").lower():
            return 403, "cross-origin requests from this origin are not allowed (see --cors-origin)"
        need = required_access(method, path, settings.docs)
        if need is not Access.OPEN:
            key = presented_key(headers)
            has = key_access(settings, key)
            if has is None:
                return 401, "an API key is needed (header 'api-key: KEY' or 'Authorization: Bearer KEY')" \
                    if key is None else "invalid API key"
            if need is Access.WRITE and has is not Access.WRITE:
                return 403, "this API key is read-only"
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return 413, f"request body larger than {settings.max_body_bytes} bytes"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope, Headers(scope=scope))
        if refused is not None:
            status, detail = refused
            headers = {"www-authenticate": "Bearer"} if status == 401 else None
            if status == 413:  # the body is not read: ask the client to close rather than send it
                headers = {"connection": "close"}
            await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)
            return
        limit = self.settings.max_body_bytes
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body larger than {limit} bytes")
            return message

        await self.app(scope, counted_receive, send)
