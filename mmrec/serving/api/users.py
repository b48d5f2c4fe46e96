"""DELETE /users/{user_id}: the right to erasure. Every event and impression of the user leaves the
interaction log: on disk (the files are rewritten atomically and fsynced; Redis deletes its keys in one
script and rewrites its append-only file) and in memory; afterwards the user is indistinguishable from one
never seen. The fusion model has no per-user parameters, so a checkpoint holds nothing of them."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from mmrec.serving.api.dependencies import ServicesDep
from mmrec.serving.api.schemas import ERRORS, MAX_ID_CHARS, UserDeleteOut

router = APIRouter(tags=["users"])


@router.delete("/users/{user_id:path}", response_model=UserDeleteOut, responses=ERRORS)
def delete_user(user_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, description="may contain '/'")],
                services: ServicesDep) -> dict[str, Any]:
    """Erase a user's events and impressions (write key); 0 deleted for a user without any."""
    erased = services.events.erase_user(user_id)
    return {"user_id": user_id, "events_deleted": erased.events, "impressions_deleted": erased.impressions}
