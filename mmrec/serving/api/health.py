"""GET /healthz: open without a key (for load balancers); the counts only for a caller with a key."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from mmrec.serving.api.dependencies import ServicesDep, SettingsDep
from mmrec.serving.api.guard import key_access, presented_key
from mmrec.serving.api.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut, response_model_exclude_none=True)
def healthz(request: Request, services: ServicesDep, settings: SettingsDep) -> dict[str, Any]:
    if key_access(settings, presented_key(request.headers)) is None:
        return {"status": "ok"}
    return {"status": "ok", "items": services.catalog.count(), "events": len(services.events),
            "users": services.events.users, "encoder": services.catalog.encoder.name,
            "event_log": services.events.kind, "variants": [v.name for v in services.variants]}
