"""GET /metrics (Prometheus text format: requests, latencies and errors per endpoint, impressions, events;
see telemetry.py) and GET /metrics/online (CTR, add-to-cart rate and CVR per variant, market and
position, with intervals and the variants compared: see mmrec/serving/online_report.py). Both need the
read key when the service has keys."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mmrec.serving.api.dependencies import ServicesDep, TelemetryDep
from mmrec.serving.online_report import from_log

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
def metrics(telemetry: TelemetryDep) -> Response:
    """This process's counters (each replica is scraped on its own)."""
    return Response(generate_latest(telemetry.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/metrics/online")
def online(
    services: ServicesDep,
    since: Annotated[float | None, Query(ge=0, le=2**53, description="only impressions from this unix time on")] = None,
    control: Annotated[str | None, Query(min_length=1, max_length=64,
                                         description="the variant compared with (default: the first declared)")] = None,
    level: Annotated[float, Query(ge=0.5, le=0.999, description="confidence level of the intervals")] = 0.95,
    min_lift: Annotated[float, Query(gt=0, le=10, description="relative lift the power is computed for")] = 0.1,
) -> dict[str, Any]:
    """The online report over every replica's impressions (the log is shared with the Redis backend).
    Rates without data are null."""
    names = [v.name for v in services.variants]
    report = from_log(services.events, since=since, control=control, variants=names, level=level, min_lift=min_lift)
    if control is not None and control not in report.by_variant:
        raise HTTPException(400, f"unknown variant; this service serves {', '.join(names)}")
    return report.to_dict()

