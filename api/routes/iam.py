"""/api/v2/iam: who the caller is and what it may do."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request

from api.deps import Me
from api.envelope import ok
from api.openapi import errors
from api.schemas import CurrentUserEnvelope

router = APIRouter(prefix="/api/v2/iam", tags=["iam"])


@router.get(
    "/current/user",
    response_model=CurrentUserEnvelope,
    responses=errors(),
    operation_id="getCurrentUser",
    summary="The authenticated user and its grants",
)
async def current_user(request: Request, who: Me):
    return ok(
        request,
        {"name": who.name, "authenticatedBy": who.via, "grants": who.grant_list()},
    )
