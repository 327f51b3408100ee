"""/api/v2/tasks: OCP's asynchronous tasks (here, group upgrades).

Reading needs ``TASK_VIEWER``; the actions (retry and rollback of a task; retry,
skip and cancel of a subtask) need ``TASK_MANAGER``. An action is checked by the
task's workflow against the task's state first: a refused one changes nothing and
answers ``TASK_STATE_INVALID`` (20003), ``TASK_PROHIBIT_ROLLBACK`` (20004) or the
project code of its reason. Every accepted action is recorded with who and when.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from api.deps import (
    PageNumber,
    PageSize,
    Store,
    SubtaskId,
    TaskId,
    TemporalDep,
    require,
    storable,
)
from api.envelope import ok, page
from api.errors import ApiError
from api.openapi import errors
from api.schemas import MAX_ID, SubtaskLogEnvelope, TaskEnvelope, TaskPageEnvelope
from arbup.models import TaskState, TaskStatus
from arbup.records.iam import TASK_MANAGER, TASK_VIEWER, Principal
from starter.service import cancel_task, decide, read_task

router = APIRouter(prefix="/api/v2/tasks", tags=["tasks"])

Viewer = Annotated[Principal, Depends(require(TASK_VIEWER))]
Manager = Annotated[Principal, Depends(require(TASK_MANAGER))]
_TEXT = r"^[^\x00-\x1f\x7f]*$"


@router.get(
    "/instances",
    response_model=TaskPageEnvelope,
    responses=errors(403),
    operation_id="listTaskInstances",
    summary="List tasks, newest first",
)
async def list_tasks(
    request: Request,
    store: Store,
    who: Viewer,
    name: Annotated[
        str | None,
        Query(max_length=255, pattern=_TEXT, description="Part of the task name"),
    ] = None,
    status: Annotated[TaskStatus | None, Query(description="Task status")] = None,
    type: Annotated[
        str | None,
        Query(pattern=r"^[A-Z_]{1,32}$", description="Task type, e.g. MANUAL"),
    ] = None,
    groupId: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Only upgrades of this group")
    ] = None,
    page_number: Annotated[PageNumber, Query(alias="page")] = 1,
    size: PageSize = 10,
):
    if not storable(groupId):
        return ok(request, page([], total=0, number=page_number, size=size))
    tasks, total = await run_in_threadpool(
        store.list_tasks,
        name=name,
        status=status,
        type=type,
        group_id=groupId,
        page=page_number,
        size=size,
    )
    contents = []
    for task in tasks:
        item = task.to_ocp()
        item.pop("subtasks", None)
        contents.append(item)
    return ok(request, page(contents, total=total, number=page_number, size=size))


@router.get(
    "/instances/{id}",
    response_model=TaskEnvelope,
    responses=errors(403, 404),
    operation_id="getTaskInstance",
    summary="A task and its subtasks, live",
)
async def get_task(
    request: Request, id: TaskId, store: Store, temporal: TemporalDep, who: Viewer
):
    task = await _live_task(store, temporal, id)
    return ok(request, task.to_ocp())


@router.get(
    "/instances/{id}/subtasks/{subtaskId}/log",
    response_model=SubtaskLogEnvelope,
    responses=errors(403, 404),
    operation_id="getSubtaskLog",
    summary="What a subtask did on its host",
)
async def get_subtask_log(
    request: Request,
    id: TaskId,
    subtaskId: SubtaskId,
    store: Store,
    temporal: TemporalDep,
    who: Viewer,
):
    task = await _live_task(store, temporal, id)
    subtask = next((s for s in task.subtasks if s.id == subtaskId), None)
    if subtask is None:
        raise ApiError(
            "SUBTASK_NOT_FOUND",
            f"task {id} has no subtask {subtaskId}",
            target="subtaskId",
        )
    return ok(request, {"log": "\n".join(subtask.log)})


async def _act(request, store, temporal, who: Principal, task_id: int, action: str, **kw):
    if not storable(task_id) or not storable(kw.get("subtask_id")):
        raise ApiError("TASK_NOT_FOUND", f"task {task_id} does not exist", target="id")
    client = await temporal.get()
    task = await decide(client, store, task_id, action, actor=who.name, **kw)
    return ok(request, task.to_ocp())


@router.post(
    "/instances/{id}/retry",
    response_model=TaskEnvelope,
    responses=errors(400, 403, 404),
    operation_id="retryTaskInstance",
    summary="Run a failed task's failed subtasks again",
)
async def retry_task(
    request: Request, id: TaskId, store: Store, temporal: TemporalDep, who: Manager
):
    return await _act(request, store, temporal, who, id, "retry")


@router.post(
    "/instances/{id}/rollback",
    response_model=TaskEnvelope,
    responses=errors(400, 403, 404),
    operation_id="rollbackTaskInstance",
    summary="Undo what a failed task did",
)
async def rollback_task(
    request: Request,
    id: TaskId,
    store: Store,
    temporal: TemporalDep,
    who: Manager,
    force: Annotated[
        bool,
        Query(description="Also past the point of no return: downgrade the packages"),
    ] = False,
):
    return await _act(request, store, temporal, who, id, "rollback", force=force)


# The actions on one subtask differ only in what they ask the workflow.
SUBTASK_ACTIONS = (
    ("retry", "retry_subtask", "retrySubtask", "Run one failed subtask again"),
    ("skip", "skip_subtask", "skipSubtask", "Treat a failed subtask as done and go on"),
    (
        "cancel",
        "cancel_subtask",
        "cancelSubtask",
        "Stop a running subtask (RUNNING, CANCELING, then FAILED)",
    ),
)


def _subtask_action(action: str):
    async def act_on_subtask(
        request: Request,
        id: TaskId,
        subtaskId: SubtaskId,
        store: Store,
        temporal: TemporalDep,
        who: Manager,
    ):
        return await _act(request, store, temporal, who, id, action, subtask_id=subtaskId)

    return act_on_subtask


for path, action, operation_id, summary in SUBTASK_ACTIONS:
    router.add_api_route(
        f"/instances/{{id}}/subtasks/{{subtaskId}}/{path}",
        _subtask_action(action),
        methods=["POST"],
        response_model=TaskEnvelope,
        responses=errors(400, 403, 404),
        operation_id=operation_id,
        summary=summary,
    )


@router.post(
    "/instances/{id}/cancel",
    response_model=TaskEnvelope,
    responses=errors(400, 403, 404),
    operation_id="cancelTaskInstance",
    summary="Stop the task and bring every service back up",
)
async def cancel_whole_task(
    request: Request, id: TaskId, store: Store, temporal: TemporalDep, who: Manager
):
    if not storable(id):
        raise ApiError("TASK_NOT_FOUND", f"task {id} does not exist", target="id")
    client = await temporal.get()
    await cancel_task(client, store, id, actor=who.name)
    task = await _live_task(store, temporal, id)
    return ok(request, task.to_ocp())


async def _live_task(store, temporal, task_id: int) -> TaskState:
    """The task from its workflow, else from the records (Temporal down, no
    worker, history gone); 404 if there is no such task."""
    if not storable(task_id):
        raise ApiError("TASK_NOT_FOUND", f"task {task_id} does not exist", target="id")
    client = await temporal.maybe()
    if client is not None:
        task = await read_task(client, store, task_id)
    else:
        task = await run_in_threadpool(store.get_task, task_id)
    if task is None:
        raise ApiError("TASK_NOT_FOUND", f"task {task_id} does not exist", target="id")
    return task
