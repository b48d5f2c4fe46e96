"""DELETE /users/{user_id}: the right to erasure. Every event of the user leaves the event log, on disk
(the file is rewritten atomically and fsynced) and in memory; afterwards the user is indistinguishable
from one never seen. The fusion model has no per-user parameters, so a checkpoint holds nothing of them."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from mmrec.serving.api.dependencies import ServicesDep
from mmrec.serving.api.schemas import ERRORS, MAX_ID_CHARS, UserDeleteOut

router = APIRouter(tags=["users"])


@router.delete("/users/{user_id:path}", response_model=UserDeleteOut, responses=ERRORS)
def delete_user(user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, description="may contain '/'")],
                services: ServicesDep) -> dict[str, Any]:
    """Erase a user's events (write key); 0 deleted for a user without events."""
    return {"user_id": user_id, "events_deleted": services.events.forget_user(user_id)}
