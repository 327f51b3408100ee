"""/api/v2/arbitration: groups, their services, their upgrade; and the package
repository (/api/v2/software-packages).

Permissions: ``ARBITRATION:UPDATE`` on every service of a group to upgrade it;
``ARBITRATION:READ`` (implied by UPDATE) on every service of a group to read it;
listing groups shows those the user may read. Packages are readable by every
authenticated user (they describe RPMs, not hosts).

The upgrade checks, in order: the body (400), the group (404), the permission on
every service (403, 30014, naming the services it lacks), and then everything
``starter.service.start_upgrade`` validates (400/409) before it records the task
and starts the workflow. Nothing is written or started unless all of it passes.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from api.deps import (
    GroupId,
    Me,
    PageNumber,
    PageSize,
    Store,
    TemporalDep,
    not_permitted,
    storable,
)
from api.envelope import ok, page, trace_of
from api.errors import ApiError
from api.openapi import errors
from api.schemas import (
    ARCH_PATTERN,
    FULL_VERSION_PATTERN,
    OS_TAG_PATTERN,
    Group,
    GroupEnvelope,
    GroupPageEnvelope,
    PackagePageEnvelope,
    SoftwarePackage,
    TaskEnvelope,
    UpgradeRequest,
)
from arbup.models import ArbitrationGroup
from arbup.records.iam import ARBITRATION_READ, ARBITRATION_UPDATE, Principal
from starter.service import start_upgrade

router = APIRouter(tags=["arbitration"])


@router.get(
    "/api/v2/arbitration/services/groups",
    response_model=GroupPageEnvelope,
    responses=errors(),
    operation_id="listArbitrationServiceGroups",
    summary="Arbitration service groups the user may read, with their services",
)
async def list_groups(
    request: Request,
    store: Store,
    who: Me,
    page_number: Annotated[PageNumber, Query(alias="page")] = 1,
    size: PageSize = 10,
):
    groups = await run_in_threadpool(store.list_groups)
    readable = [
        g
        for g in groups
        if not who.missing(ARBITRATION_READ, [s.id for s in g.services])
    ]
    start = (page_number - 1) * size
    contents = [Group.of(g) for g in readable[start : start + size]]
    return ok(
        request, page(contents, total=len(readable), number=page_number, size=size)
    )


@router.get(
    "/api/v2/arbitration/services/groups/{id}",
    response_model=GroupEnvelope,
    responses=errors(403, 404),
    operation_id="getArbitrationServiceGroup",
    summary="A group with its services, their versions and statuses",
)
async def get_group(request: Request, id: GroupId, store: Store, who: Me):
    group = await _group_or_404(store, id)
    _check_on_services(who, ARBITRATION_READ, group)
    return ok(request, Group.of(group))


@router.post(
    "/api/v2/arbitration/services/groups/{id}/upgrade",
    response_model=TaskEnvelope,
    responses=errors(403, 404, 409),
    operation_id="upgradeArbitrationServiceGroup",
    summary="Upgrade an arbitration service group",
    description=(
        "Validates the request, checks ARBITRATION:UPDATE on every service of the "
        "group, records the task and starts its workflow; answers the task with its "
        "subtasks (roots READY, the rest PENDING)."
    ),
)
async def upgrade_group(
    request: Request,
    id: GroupId,
    body: UpgradeRequest,
    store: Store,
    temporal: TemporalDep,
    who: Me,
):
    group = await _group_or_404(store, id)
    _check_on_services(who, ARBITRATION_UPDATE, group)
    settings = request.app.state.settings
    client = await temporal.get()
    started = await start_upgrade(
        client,
        store,
        id,
        body.fullVersion,
        body.operatingSystem,
        creator=who.name,
        executor=settings.executor or settings.server_name,
        options=settings.options,
        task_queue=settings.task_queue,
        search_attributes=settings.search_attributes,
        trace_id=trace_of(request).trace_id,
    )
    return ok(request, started.task.to_ocp())


@router.get(
    "/api/v2/software-packages",
    response_model=PackagePageEnvelope,
    responses=errors(),
    operation_id="listSoftwarePackages",
    summary="Packages known to the repository, by full version, OS and architecture",
)
async def list_packages(
    request: Request,
    store: Store,
    who: Me,
    fullVersion: Annotated[
        str | None, Query(pattern=FULL_VERSION_PATTERN, max_length=64)
    ] = None,
    operatingSystem: Annotated[str | None, Query(pattern=OS_TAG_PATTERN)] = None,
    architecture: Annotated[str | None, Query(pattern=ARCH_PATTERN)] = None,
    page_number: Annotated[PageNumber, Query(alias="page")] = 1,
    size: PageSize = 10,
):
    packages = await run_in_threadpool(store.list_packages, fullVersion)
    matching = [
        p
        for p in packages
        if (operatingSystem is None or p.operating_system == operatingSystem)
        and (architecture is None or p.arch == architecture)
    ]
    start = (page_number - 1) * size
    contents = [SoftwarePackage.of(p) for p in matching[start : start + size]]
    return ok(
        request, page(contents, total=len(matching), number=page_number, size=size)
    )


async def _group_or_404(store, group_id: int) -> ArbitrationGroup:
    group = (
        await run_in_threadpool(store.get_group, group_id)
        if storable(group_id)
        else None
    )
    if group is None:
        raise ApiError(
            "ARBITRATION_GROUP_NOT_FOUND",
            f"arbitration service group {group_id} does not exist",
            target="id",
        )
    return group


def _check_on_services(
    who: Principal, permission: str, group: ArbitrationGroup
) -> None:
    missing = set(who.missing(permission, [s.id for s in group.services]))
    if not missing:
        return
    services = [s for s in group.services if s.id in missing]
    names = ", ".join(f"{s.id} ({s.address})" for s in services)
    raise not_permitted(
        who,
        permission,
        f"on arbitration service{'s' if len(services) > 1 else ''} {names} "
        f"of group {group.id}",
        sub_errors=[
            {
                "code": 30014,
                "message": f"missing {permission} on arbitration service {s.id}",
                "target": f"arbitrationService:{s.id}",
            }
            for s in services
        ],
    )
