"""/docs (Swagger UI) and /redoc from the files the `fastapi-offline` package ships: no CDN is contacted
(none is reachable on an offline host, and elsewhere it would tell the CDN who reads the docs)."""
from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from mmrec.serving.api.guard import DOCS_ASSETS

ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"


def install(app: FastAPI) -> None:
    prefix = DOCS_ASSETS.rstrip("/")
    app.mount(prefix, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{prefix}/swagger-ui-bundle.js", swagger_css_url=f"{prefix}/swagger-ui.css",
            swagger_favicon_url=f"{prefix}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{prefix}/redoc.standalone.js", redoc_favicon_url=f"{prefix}/favicon.png",
                              with_google_fonts=False)
