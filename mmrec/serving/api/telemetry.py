"""The Prometheus counters a deployment scrapes from GET /metrics: requests, latencies and errors per
endpoint, plus impressions per surface and variant and events per kind. Per process: each replica is
scraped on its own and Prometheus adds them up.

Endpoints are labelled by route template (`/items/{item_id:path}`), never by the path itself, so no item
or user id becomes a label (and the number of series stays bounded); requests no route matched, or that
were refused before routing (a missing key, a foreign Host), are labelled "unmatched".
"""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED = "unmatched"


class Telemetry:
    """One registry per app (several apps in one process, as in tests, do not share counters)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mmrec_requests", "HTTP requests answered, by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.errors = Counter("mmrec_request_errors", "HTTP requests answered with a 4xx or 5xx status",
                              ["endpoint", "method", "status_class"], registry=self.registry)
        self.latency = Histogram("mmrec_request_duration_seconds", "time to answer a request, by endpoint",
                                 ["endpoint", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.impressions = Counter("mmrec_impressions", "lists shown (logged impressions), by surface and variant",
                                   ["surface", "variant"], registry=self.registry)
        self.events = Counter("mmrec_events", "events appended, by kind and whether they name a request_id",
                              ["kind", "attributed"], registry=self.registry)


class TelemetryMiddleware:
    """Counts and times every HTTP request; outermost, so requests the guard refuses count too."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or UNMATCHED
            method = scope["method"]
            t = self.telemetry
            t.requests.labels(endpoint, method, str(status)).inc()
            t.latency.labels(endpoint, method).observe(time.perf_counter() - start)
            if status >= 400:
                t.errors.labels(endpoint, method, f"{status // 100}xx").inc()
