"""Starting and reading upgrades: the one place the CLI and the HTTP API share.

A request is validated completely before anything is written: the group exists
and is running, the target is newer than its version, a package exists for the
target's OS and every service's architecture. Only then is the task recorded
(taking the group's upgrade lock in the same transaction) and its workflow
started. A request that fails validation stops nothing, writes nothing and starts
nothing.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from arbup.graph import build_subtasks
from arbup.inputs import (
    TASK_QUEUE,
    WORKFLOW_NAME,
    OperatorRequest,
    UpgradeInput,
    UpgradeOptions,
    workflow_id_for,
)
from arbup.logs import new_trace_id
from arbup.models import ArbitrationGroup, GroupStatus, Package, TaskState, TaskStatus
from arbup.records import GroupBusy, RecordsStore
from arbup.temporal import GROUP_ID, TARGET_VERSION, TASK_ID, TASK_STATUS
from arbup.versions import FullVersion, VersionError, check_os_tag

QUERY_TIMEOUT = timedelta(seconds=5)

log = logging.getLogger("arbup.service")


class UpgradeRefused(Exception):
    """A request that cannot be carried out; nothing was changed.

    ``code`` is OCP's error code where one exists, ``status`` the HTTP status.
    """

    def __init__(self, message: str, *, code: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


@dataclass
class StartedUpgrade:
    task: TaskState
    workflow_id: str
    run_id: str | None
    trace_id: str | None = None


def default_creator() -> str:
    return os.environ.get("ARBUP_USER") or getpass.getuser()


def default_executor() -> str:
    return socket.gethostname()


def validate_request(
    store: RecordsStore, group_id: int, full_version: str, operating_system: str
) -> tuple[ArbitrationGroup, dict[str, Package]]:
    """Everything that can be checked before anything is written."""
    try:
        target = FullVersion.parse(full_version)
        check_os_tag(operating_system)
    except VersionError as exc:
        raise UpgradeRefused(str(exc), code="ILLEGAL_ARGUMENT") from exc

    group = store.get_group(group_id)
    if group is None:
        raise UpgradeRefused(
            f"arbitration service group {group_id} does not exist",
            code="ARBITRATION_GROUP_NOT_FOUND",
            status=404,
        )
    if not group.services:
        raise UpgradeRefused(
            f"group {group_id} has no arbitration services to upgrade",
            code="ARBITRATION_GROUP_EMPTY",
        )
    if group.status == GroupStatus.UNAVAILABLE:
        raise UpgradeRefused(
            f"group {group_id} is {group.status}; only a running group can be upgraded",
            code="ARBITRATION_GROUP_NOT_RUNNING",
        )
    current = FullVersion.parse(group.version)
    if target <= current:
        raise UpgradeRefused(
            f"target {full_version} is not newer than group {group_id}'s version "
            f"{group.version}",
            code="TARGET_VERSION_NOT_NEWER",
        )

    other_os = sorted({s.operating_system for s in group.services} - {operating_system})
    if other_os:
        hosts = ", ".join(s.host for s in group.services if s.operating_system != operating_system)
        raise UpgradeRefused(
            f"group {group_id}'s services run {', '.join(other_os)} ({hosts}), not "
            f"{operating_system}; ask for the package of their operating system",
            code="OPERATING_SYSTEM_MISMATCH",
        )

    packages: dict[str, Package] = {}
    for arch in sorted({s.arch for s in group.services}):
        package = store.find_package(full_version, operating_system, arch)
        if package is None:
            hosts = ", ".join(s.host for s in group.services if s.arch == arch)
            raise UpgradeRefused(
                f"no package oceanbase-{full_version}.{operating_system}.{arch}.rpm "
                f"is known (needed for {hosts}); load it with `arbup load`",
                code="PACKAGE_NOT_FOUND",
            )
        packages[arch] = package
    return group, packages


async def start_upgrade(
    client: Client,
    store: RecordsStore,
    group_id: int,
    full_version: str,
    operating_system: str,
    *,
    creator: str | None = None,
    executor: str | None = None,
    options: UpgradeOptions | None = None,
    task_queue: str = TASK_QUEUE,
    search_attributes: bool = True,
    trace_id: str | None = None,
) -> StartedUpgrade:
    """Validate, record the task and start its workflow. ``trace_id`` (the API
    request's; a new one when not given) goes with the upgrade into every log line
    of its workflow and activities."""
    group, packages = validate_request(store, group_id, full_version, operating_system)
    trace_id = trace_id or new_trace_id()
    creator = creator or default_creator()
    executor = executor or default_executor()
    now = datetime.now(UTC)

    draft = TaskState(
        id=0,
        group_id=group.id,
        target_full_version=full_version,
        target_os=operating_system,
        workflow_id=workflow_id_for(group.id, "{task_id}"),
        creator=creator,
        executor=executor,
        start_time=now,
        subtasks=build_subtasks(0, [s.id for s in group.services]),
    )
    task = await _create_task(client, store, draft)

    # Provisional ids were the seriesIds, so the stored subtasks map back by seriesId.
    by_series = sorted(task.subtasks, key=lambda s: s.series_id)
    inp = UpgradeInput(
        task_id=task.id,
        group_id=group.id,
        group_name=group.name,
        target_full_version=full_version,
        target_os=operating_system,
        services=group.services,
        packages=packages,
        subtask_ids=[s.id for s in by_series],
        creator=creator,
        executor=executor,
        start_time=now,
        options=options or UpgradeOptions(),
        group_version=group.version,
        group_status=group.status,
        rollback_packages=_rollback_packages(store, group, operating_system),
        trace_id=trace_id,
    )
    attributes = (
        TypedSearchAttributes(
            [
                SearchAttributePair(GROUP_ID, group.id),
                SearchAttributePair(TASK_ID, task.id),
                SearchAttributePair(TARGET_VERSION, full_version),
                SearchAttributePair(TASK_STATUS, TaskStatus.RUNNING.value),
            ]
        )
        if search_attributes
        else None
    )
    try:
        handle = await client.start_workflow(
            WORKFLOW_NAME,
            inp,
            id=task.workflow_id,
            task_queue=task_queue,
            search_attributes=attributes,
            static_summary=(
                f"Upgrade arbitration group {group.id} to {full_version} "
                f"({operating_system}), {len(group.services)} services"
            ),
            static_details=_details(group, packages),
        )
    except Exception as exc:
        store.set_task_status(
            task.id, TaskStatus.FAILED, end_time=datetime.now(UTC),
            message=f"the workflow could not be started: {exc}",
        )
        store.release_group(group.id, task.id)
        raise
    log.info(
        "task %d started: upgrade group %d to %s (%s), workflow %s",
        task.id,
        group.id,
        full_version,
        operating_system,
        handle.id,
        extra={"task_id": task.id, "trace_id": trace_id, "workflow_id": handle.id},
    )
    return StartedUpgrade(task, handle.id, handle.result_run_id, trace_id)


def _rollback_packages(
    store: RecordsStore, group: ArbitrationGroup, operating_system: str
) -> list[Package]:
    """The packages of the versions the services run now: what a forced rollback
    reinstalls."""
    found: dict[tuple[str, str], Package] = {}
    for service in group.services:
        for version in {service.version, group.version}:
            package = store.find_package(version, operating_system, service.arch)
            if package is not None:
                found[(package.full_version, package.arch)] = package
    return list(found.values())


async def _create_task(client: Client, store: RecordsStore, draft: TaskState) -> TaskState:
    """Record the task, taking the group's lock. A lock whose workflow has closed
    (terminated from outside), or whose workflow never started although its task
    was recorded STALE_START ago (its starter died in between), is released first;
    any other holder makes the request refused."""
    for _ in range(2):
        try:
            return store.create_task(draft)
        except GroupBusy as busy:
            holder = busy.task_id
            running = store.get_task(holder)
            if running is None or not await _lock_is_stale(client, running):
                break
            store.set_task_status(
                running.id, TaskStatus.FAILED, end_time=datetime.now(UTC),
                message="its workflow ended outside arbup, or never started",
            )
            store.release_group(draft.group_id, running.id)
    raise UpgradeRefused(
        f"group {draft.group_id} is already being upgraded by task "
        f"{holder}; wait for it, or cancel it (`arbup task cancel {holder}`, or "
        f"POST /api/v2/tasks/instances/{holder}/cancel)",
        code="ARBITRATION_GROUP_UPGRADE_IN_PROGRESS",
        status=409,
    )


# How long a recorded task's workflow may take to appear before its lock counts
# as left behind by a starter that died between recording and starting it.
STALE_START = timedelta(minutes=2)


async def _lock_is_stale(client: Client, task: TaskState) -> bool:
    old_enough = datetime.now(UTC) - task.start_time > STALE_START
    try:
        description = await client.get_workflow_handle(task.workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            # Not started yet (its starter is between recording and starting it),
            # or never will be.
            return old_enough
        return False
    if description.status == WorkflowExecutionStatus.RUNNING:
        return False
    # A closed run that started before the task was recorded is an older one with
    # the same id (a records store made anew against the same namespace): this
    # task's own run may still be on its way.
    started = description.start_time
    return old_enough or (started is not None and started >= task.start_time)


async def _workflow_open(client: Client, workflow_id: str) -> bool:
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError:
        return False
    return description.status == WorkflowExecutionStatus.RUNNING


def _details(group: ArbitrationGroup, packages: dict[str, Package]) -> str:
    """The workflow's static details: what is upgraded, where (a list: the Web UI
    draws markdown tables without space between their cells)."""
    lines = [f"Group **{group.name}** (id {group.id}), now on {group.version}.", ""]
    for s in group.services:
        lines.append(
            f"- service {s.id}: `{s.address}`, SSH {s.ssh_user}@{s.host}:{s.ssh_port}, "
            f"{s.install_path}, {s.arch}, zone {s.zone}"
        )
    lines.append("")
    for arch, package in packages.items():
        lines.append(f"Package for {arch}: `{package.file_name}` (sha256 {package.sha256[:12]}…)")
    return "\n".join(lines)


async def read_task(client: Client, store: RecordsStore, task_id: int) -> TaskState | None:
    """The task's live state from its workflow, or the stored state when the workflow
    cannot answer (no worker, history gone)."""
    stored = store.get_task(task_id)
    if stored is None:
        return None
    try:
        handle = client.get_workflow_handle(stored.workflow_id)
        return await handle.query("task", result_type=TaskState, rpc_timeout=QUERY_TIMEOUT)
    except Exception:
        return stored


# The operator's actions on a task, and the workflow updates that carry them.
DECISIONS = {
    "retry": "retry_task",
    "retry_subtask": "retry_subtask",
    "skip_subtask": "skip_subtask",
    "rollback": "rollback",
    "cancel_subtask": "cancel_subtask",
}


async def decide(
    client: Client,
    store: RecordsStore,
    task_id: int,
    action: str,
    *,
    actor: str,
    subtask_id: int | None = None,
    force: bool = False,
    reason: str = "",
) -> TaskState:
    """Send an operator decision to a task's workflow; return the task after it.

    The workflow validates the decision against the task's state first; a refused
    one changes nothing and raises UpgradeRefused with the workflow's reason."""
    stored = await _open_task(client, store, task_id)
    request = OperatorRequest(actor=actor, subtask_id=subtask_id, force=force, reason=reason)
    handle = client.get_workflow_handle(stored.workflow_id)
    try:
        return await handle.execute_update(
            DECISIONS[action], request, result_type=TaskState
        )
    except WorkflowUpdateFailedError as failed:
        cause = failed.cause
        if isinstance(cause, ApplicationError):
            raise UpgradeRefused(cause.message, code=cause.type or "TASK_STATE_INVALID") from None
        raise
    except RPCError:
        await _refuse_if_ended(client, stored)
        raise


async def cancel_task(
    client: Client, store: RecordsStore, task_id: int, *, actor: str | None = None
) -> TaskState:
    """Cancel the whole task: the workflow stops its running steps and brings every
    service back up (see the workflow)."""
    stored = await _open_task(client, store, task_id)
    handle = client.get_workflow_handle(stored.workflow_id)
    try:
        await handle.execute_update(
            "note_cancel", OperatorRequest(actor=actor or default_creator())
        )
        await handle.cancel()
    except (RPCError, WorkflowUpdateFailedError):
        await _refuse_if_ended(client, stored)
        raise
    return stored


async def _refuse_if_ended(client: Client, task: TaskState) -> None:
    """The workflow may end between the check and the action: that is the task's
    state, not an outage."""
    if not await _workflow_open(client, task.workflow_id):
        raise UpgradeRefused(
            f"task {task.id} has ended; its workflow is no longer running",
            code="TASK_STATE_INVALID",
        )


async def _open_task(client: Client, store: RecordsStore, task_id: int) -> TaskState:
    stored = store.get_task(task_id)
    if stored is None:
        raise UpgradeRefused(f"task {task_id} does not exist", code="TASK_NOT_FOUND", status=404)
    if not await _workflow_open(client, stored.workflow_id):
        raise UpgradeRefused(
            f"task {task_id} is {stored.status.value} and its workflow has ended",
            code="TASK_STATE_INVALID",
        )
    return stored

