"""POST /events: interactions, durable once acknowledged; the next /recommend for the user reflects them
(from any replica, with the Redis log). An event may name the `request_id` (and position) of the answer
that showed the item, which attributes it to that impression for the online report."""
from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException

from mmrec.data.schema import Event
from mmrec.serving.api.dependencies import ServicesDep, TelemetryDep
from mmrec.serving.api.errors import clean
from mmrec.serving.api.schemas import ERRORS, EventsIn, EventsOut
from mmrec.serving.interaction_log import Attributed

router = APIRouter(tags=["events"])


@router.post("/events", response_model=EventsOut, responses=ERRORS)
def post_events(body: EventsIn, services: ServicesDep, telemetry: TelemetryDep) -> dict[str, Any]:
    """Append interactions (all or none: an unknown item id refuses the whole batch). A `request_id` is
    not checked against the impressions (it may come from another replica, or have been erased): one no
    impression has is counted as unattributed by the report."""
    ids = list(dict.fromkeys(e.item_id for e in body.events))
    known = {p.item_id for p in services.catalog.store.get(ids)}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise HTTPException(404, clean(f"unknown item ids: {', '.join(map(repr, unknown[:5]))}", 300))
    now = int(time.time())
    records: list[Event | Attributed] = []
    for e in body.events:
        event = Event(user_id=e.user_id, item_id=e.item_id, timestamp=e.timestamp if e.timestamp is not None else now,
                      kind=e.kind, value=e.value, market=e.market, session_id=e.session_id)
        records.append(event if e.request_id is None else Attributed(event, e.request_id, e.position))
    appended = services.events.append(records)
    for e in body.events:
        telemetry.events.labels(e.kind, "yes" if e.request_id is not None else "no").inc()
    return {"appended": appended}
