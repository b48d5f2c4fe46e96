"""The HTTP service: item upserts that are searchable at once, multilingual text and image search,
similar items, recommendations with reasons (the fusion transformer with `--model`, else content-based;
several variants at once for an A/B test), event ingestion with attribution to what was shown, the online
report and Prometheus counters, and the erasure of a user's events and impressions.

    build_app(settings)            the routes, guards and error handlers; no store is opened
    create_app(services, settings) the same app over opened services (closed when the app shuts down)
    open_services(data_dir, ...)   opens the catalog, interaction log and models of a data dir
    open_service(data_dir, ...)    open_services, then create_app
    openapi_spec()                 the OpenAPI document, from build_app (docs, fuzzing)

With the interaction log in Redis (`events="redis://..."`) a process keeps no state of its own beyond its
vector store, so replicas over one Redis (and the same items) can run behind any load balancer.

Routes live in mmrec/serving/api/ (one module per resource) and get what they work on through FastAPI's
`Depends`: the `Services` container on `app.state.services`, the `ServiceSettings` on `app.state.settings`.
Endpoints are plain `def`s, which FastAPI runs in its thread pool, except /recommend and /search: they
are `async` and hand their work to micro-batchers (mmrec/serving/batching.py), one worker thread each, so
concurrent requests share one model forward / one text-encoder call and one batched index query, and the
event loop never runs the CPU-bound part. The catalog serialises encoder calls with a lock (torch models
are not re-entrant), the vector store and the event log handle their own concurrency. Every input is validated before anything is written, so a request that fails changes
nothing; every refusal is a 4xx with a short reason (see mmrec/serving/api/errors.py and SECURITY.md).
Run it with `mmrec serve` (mmrec/commands/serve.py).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

import mmrec
from mmrec.serving.api import docs, errors, events, health, items, metrics, recommend, search, users
from mmrec.serving.api.dependencies import Services
from mmrec.serving.api.guard import OPEN_PATHS, Guard
from mmrec.serving.api.settings import ServiceSettings
from mmrec.serving.api.telemetry import Telemetry, TelemetryMiddleware
from mmrec.serving.batching import BatchingConfig
from mmrec.serving.language_rank import LanguageRankConfig
from mmrec.serving.variants import CONTENT, Variant, check_variants

SECURITY_SCHEMES = {
    "api-key": {"type": "apiKey", "in": "header", "name": "api-key"},
    "bearer": {"type": "http", "scheme": "bearer"},
}


def build_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The app without services: everything but opening the store (its OpenAPI document, or the frame
    that `create_app` fills)."""
    settings = settings or ServiceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        services: Services | None = getattr(app.state, "services", None)
        if services is not None:
            services.close()

    app = FastAPI(
        title="mmrec",
        version=mmrec.__version__,
        description="Multimodal, cross-lingual product search and recommendation.",
        lifespan=lifespan,
        docs_url=None,  # served from local files by api/docs.py, never from a CDN
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs else None,
    )
    app.state.settings = settings
    app.state.telemetry = Telemetry()
    errors.install(app)
    for module in (health, items, search, recommend, events, users, metrics):
        app.include_router(module.router)
    if settings.docs:
        docs.install(app)
    app.add_middleware(Guard, settings=settings)
    if settings.cors_origins:  # outside the guard: preflight requests carry no key
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["api-key", "authorization", "content-type"])
    app.add_middleware(TelemetryMiddleware, telemetry=app.state.telemetry)  # outermost: counts refusals too
    _declare_security(app)
    return app


def _declare_security(app: FastAPI) -> None:
    """Document the API keys (the guard enforces them) so that Swagger UI and schemathesis can send one."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            spec.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            for path, operations in spec["paths"].items():
                if path not in OPEN_PATHS:
                    for operation in operations.values():
                        operation["security"] = [{"api-key": []}, {"bearer": []}]
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(services: Services, settings: ServiceSettings | None = None) -> FastAPI:
    """The app over opened services; they are closed when the app shuts down."""
    app = build_app(settings)
    app.state.services = services
    return app


def openapi_spec() -> dict[str, Any]:
    """The service's OpenAPI document, without opening a store or loading models (docs, fuzzing)."""
    return build_app(ServiceSettings()).openapi()


def open_services(data_dir: str | Path, config: Any, model: str | Path | None = None, *,
                  events: str | None = None, variants: Sequence[Variant] | None = None,
                  experiment: str = "default", exploration: Mapping[str, Any] | None = None,
                  batching: BatchingConfig | None = None,
                  language_rank: LanguageRankConfig | None = None) -> Services:
    """Open (or create) the catalog and market list in `data_dir`, the interaction log (`events`: None for
    the files in `data_dir`, or a redis:// URL) and the models behind /recommend: `variants` (each a
    checkpoint path or "content", with its traffic share), or one variant "default" of `model` (a fusion
    transformer checkpoint from `mmrec train`; None: content-based). Checkpoints are checked against the
    catalog's vector space. `exploration`: variant name -> `ExplorationConfig` for the model variants that
    give new items a share of slots, from the log's per-item impressions and clicks (`mmrec serve --explore`).
    `batching`: micro-batching of concurrent /recommend and /search requests (default: on, a
    `BatchingConfig()` window; `BatchingConfig(window_ms=0)`: every request on its own). `language_rank`: the
    language-fair ordering of an unfiltered /search (default: off, plain similarity)."""
    from mmrec.serving.logs import open_interaction_log
    from mmrec.serving.markets import Markets
    from mmrec.store.catalog_store import CatalogStore

    if variants is None:
        variants = [Variant("default", 1.0, str(model) if model is not None else CONTENT)]
    elif model is not None:
        raise ValueError("give a model or variants, not both")
    check_variants(variants)
    exploration = dict(exploration or {})
    _check_exploration(variants, exploration)
    data_dir = Path(data_dir)
    event_log = open_interaction_log(events, data_dir)  # first: a Redis that is down is refused before models load
    try:
        catalog = CatalogStore.open(data_dir, config)
    except Exception:
        event_log.close()
        raise
    try:
        loaded = tuple(_load(v, catalog, exploration.get(v.name), event_log) for v in variants)
    except Exception:
        catalog.close()
        event_log.close()
        raise
    return Services(catalog=catalog, events=event_log, markets=Markets(catalog.store, data_dir / "markets.json"),
                    variants=loaded, experiment=experiment, batching=batching or BatchingConfig(),
                    language_rank=language_rank or LanguageRankConfig())


def _check_exploration(variants: Sequence[Variant], exploration: Mapping[str, Any]) -> None:
    """Exploration settings name served model variants (content-based recommending does not explore)."""
    names = {v.name: v for v in variants}
    for name in exploration:
        if name not in names:
            raise ValueError(f"--explore names no variant {name!r} (variants: {', '.join(names)})")
        if names[name].source == CONTENT:
            raise ValueError(f"--explore: variant {name!r} is content-based; exploration needs a model variant")


def _load(variant: Variant, catalog: Any, exploration: Any = None, event_log: Any = None) -> Variant:
    if variant.source == CONTENT:
        return variant
    from mmrec.serving.two_stage import ServingConfig, load_ranker

    if exploration is None or not exploration.enabled:
        return replace(variant, ranker=load_ranker(variant.source, catalog))
    return replace(variant, ranker=load_ranker(variant.source, catalog, ServingConfig(exploration=exploration),
                                               item_counts=event_log.item_counts))


def open_service(data_dir: str | Path, config: Any, model: str | Path | None = None,
                 settings: ServiceSettings | None = None, **kwargs: Any) -> FastAPI:
    """`create_app` over the services of `data_dir` (see `open_services` for the keyword arguments)."""
    return create_app(open_services(data_dir, config, model, **kwargs), settings)
