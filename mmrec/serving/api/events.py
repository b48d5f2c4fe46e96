"""POST /events: interactions, durable once acknowledged; the next /recommend for the user reflects them."""
from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException

from mmrec.data.schema import Event
from mmrec.serving.api.dependencies import ServicesDep
from mmrec.serving.api.errors import clean
from mmrec.serving.api.schemas import ERRORS, EventsIn, EventsOut

router = APIRouter(tags=["events"])


@router.post("/events", response_model=EventsOut, responses=ERRORS)
def post_events(body: EventsIn, services: ServicesDep) -> dict[str, Any]:
    """Append interactions (all or none: an unknown item id refuses the whole batch)."""
    ids = list(dict.fromkeys(e.item_id for e in body.events))
    known = {p.item_id for p in services.catalog.store.get(ids)}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise HTTPException(404, clean(f"unknown item ids: {', '.join(map(repr, unknown[:5]))}", 300))
    now = int(time.time())
    appended = services.events.append(
        Event(user_id=e.user_id, item_id=e.item_id, timestamp=e.timestamp if e.timestamp is not None else now,
              kind=e.kind, value=e.value, market=e.market, session_id=e.session_id)
        for e in body.events
    )
    return {"appended": appended}
