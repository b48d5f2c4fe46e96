"""Every error the service answers is a 4xx (or a 503 when the vector store or the event log is down) with
a short reason, as `{"detail": "..."}`: never a traceback, never more than a few words of the client's own
input (which may be huge, or not even encodable as UTF-8), never a memory address."""
from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from encoders.base import ImageDecodeError
from index import DimensionError, PayloadError, StoreError, UnknownItemError
from mmrec.serving.interaction_log import EventLogError

log = logging.getLogger(__name__)

MAX_ECHO = 100  # characters of client input an error message may quote
MAX_REASONS = 3
_ADDRESS = re.compile(r"<[^<>]{0,200}? at 0x[0-9a-fA-F]+>")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(text: Any, limit: int = MAX_ECHO) -> str:
    """`text` safe to send: valid UTF-8, no control characters or object addresses, at most `limit` chars."""
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    text = _UNPRINTABLE.sub("?", _ADDRESS.sub("<object>", text))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(error: dict[str, Any]) -> str:
    loc = ".".join(clean(part, 40) for part in error.get("loc", ()) if part not in ("body", "query", "path"))
    msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    ctx = error.get("ctx") or {}
    if error.get("type") == "json_invalid" and "error" in ctx:
        msg = f"{msg} ({ctx['error']})"
    return f"{loc}: {clean(msg)}" if loc else clean(msg)


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """The fields at fault and what is wrong with them; unlike FastAPI's default, without the input."""
    errors = list(exc.errors())
    reasons = [_reason(e) for e in errors[:MAX_REASONS]]
    if len(errors) > MAX_REASONS:
        reasons.append(f"and {len(errors) - MAX_REASONS} more")
    return JSONResponse({"detail": "; ".join(reasons) or "invalid request"}, status_code=422)


def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"detail": clean(exc.detail, 500)}, status_code=exc.status_code, headers=exc.headers)


def _status(code: int):
    def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": clean(exc, 500)}, status_code=code)

    return handler


def _store_down(request: Request, exc: StoreError) -> JSONResponse:
    log.error("store error on %s: %s", request.url.path, exc)
    return JSONResponse({"detail": "vector store unavailable"}, status_code=503)


def _log_down(request: Request, exc: EventLogError) -> JSONResponse:
    log.error("event log error on %s: %s", request.url.path, exc)
    return JSONResponse({"detail": "event log unavailable"}, status_code=503)


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(ImageDecodeError, _status(400))
    app.add_exception_handler(PayloadError, _status(400))
    app.add_exception_handler(DimensionError, _status(400))
    app.add_exception_handler(UnknownItemError, _status(404))
    app.add_exception_handler(StoreError, _store_down)  # type: ignore[arg-type]
    app.add_exception_handler(EventLogError, _log_down)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
