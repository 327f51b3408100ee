"""What route handlers share: the records store, Temporal, the principal, and
permission checks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Query
from starlette.requests import Request
from temporalio.client import Client

from api.errors import ApiError
from api.schemas import MAX_ID
from arbup.records import RecordsStore
from arbup.records.iam import IamStore, Principal

log = logging.getLogger("arbup.api")

CONNECT_TIMEOUT_SECONDS = 10.0
RETRY_AFTER_SECONDS = 5.0


class Temporal:
    """The Temporal client, connected on first use (and again after a failure), so
    the API starts, and serves what the records store knows, while Temporal is
    down."""

    def __init__(
        self,
        client: Client | None = None,
        connect: Callable[[], Awaitable[Client]] | None = None,
    ) -> None:
        if client is None and connect is None:
            raise ValueError("give a Temporal client or a way to connect one")
        self._client = client
        self._connect = connect
        self._lock: asyncio.Lock | None = None
        # After a failed connection, requests do not try again before this time.
        self._retry_at = 0.0

    async def get(self) -> Client:
        """The client, or ApiError 503 if Temporal cannot be reached."""
        if self._client is not None:
            return self._client
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._client is None:
                now = time.monotonic()
                if now < self._retry_at:
                    raise ApiError("BACKEND_UNAVAILABLE", "Temporal cannot be reached")
                try:
                    self._client = await asyncio.wait_for(
                        self._connect(), CONNECT_TIMEOUT_SECONDS
                    )
                except Exception as exc:
                    self._retry_at = time.monotonic() + RETRY_AFTER_SECONDS
                    log.warning("cannot connect to Temporal: %s", exc)
                    raise ApiError(
                        "BACKEND_UNAVAILABLE", "Temporal cannot be reached"
                    ) from exc
        return self._client

    async def maybe(self) -> Client | None:
        try:
            return await self.get()
        except ApiError:
            return None


def store(request: Request) -> RecordsStore:
    return request.app.state.store


def iam(request: Request) -> IamStore:
    return request.app.state.iam


def temporal(request: Request) -> Temporal:
    return request.app.state.temporal


def principal(request: Request) -> Principal:
    found = request.scope.get("state", {}).get("principal")
    if found is None:  # the gate authenticates every /api/ path
        raise ApiError("AUTHENTICATION_FAILED", "authentication required")
    return found


def require(permission: str) -> Callable[..., Principal]:
    """A dependency: the principal, if it holds a global permission; else 403."""

    def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if not who.has(permission):
            raise not_permitted(who, permission)
        return who

    return check


def not_permitted(
    who: Principal,
    permission: str,
    detail: str | None = None,
    sub_errors: list[dict] | None = None,
) -> ApiError:
    what = f"{permission} {detail}" if detail else permission
    return ApiError(
        "IAM_OPERATION_NOT_PERMITTED",
        f"user {who.name} is not permitted to do this: missing {what}",
        target=permission,
        sub_errors=sub_errors,
    )


Store = Annotated[RecordsStore, Depends(store)]
Iam = Annotated[IamStore, Depends(iam)]
TemporalDep = Annotated[Temporal, Depends(temporal)]
Me = Annotated[Principal, Depends(principal)]

# The records store's ids are 32-bit (PostgreSQL ``integer``): a larger id names
# nothing, and is answered as such without asking the database (which would refuse
# the value instead of finding no row).
STORED_ID_MAX = 2**31 - 1


def storable(identifier: int | None) -> bool:
    return identifier is None or 1 <= identifier <= STORED_ID_MAX


# Path ids: OCP's ids are Longs; anything else is a 400, never a 5xx.
# (handlers name them ``id``, as OCP's paths do)
GroupId = Annotated[int, Path(ge=1, le=MAX_ID, description="Group id")]
TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="Task id")]
SubtaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="Subtask id")]
PageNumber = Annotated[int, Query(ge=1, le=1_000_000, description="Page, from 1")]
PageSize = Annotated[int, Query(ge=1, le=1000, description="Items per page")]
