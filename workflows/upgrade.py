"""The upgrade of one arbitration service group, as one durable workflow.

The workflow walks the subtask graph of ``arbup.graph`` layer by layer: every
service's node of a layer runs in parallel, and the next layer starts only when
every node of this one has an outcome (the "Wait node" barriers of the graph).
A failed subtask makes the task FAILED; the workflow then keeps the services as
they are and waits, durably, for the operator.

Workflow code is deterministic and sandboxed: it never touches SSH or the
database (activities do), reads time with ``workflow.now()`` and fans out with
``asyncio.gather`` over coroutines that each catch their own failure, so every
branch's outcome is collected before the workflow decides anything.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from arbup.errors import NON_RETRYABLE
    from arbup.graph import (
        BEGIN,
        CLEAN_MONITOR_RECORDS,
        INSTALL,
        LAYERS,
        PREPARE,
        START,
        STOP,
        UPDATE_GROUP_VERSION,
        UPDATE_SERVICE_STATUS,
        UPDATE_SERVICE_VERSION,
        Step,
        build_subtasks,
        plan_nodes,
    )
    from arbup.inputs import (
        WORKFLOW_NAME,
        FinishTaskInput,
        GroupStepInput,
        HostStepInput,
        PrepareResult,
        SaveSubtasksInput,
        ServiceStatusInput,
        ServiceVersionInput,
        StepResult,
        UpgradeInput,
    )
    from arbup.temporal import TASK_STATUS
    from arbup.models import (
        ArbitrationService,
        ServiceStatus,
        SubtaskState,
        SubtaskStatus,
        TaskState,
        TaskStatus,
    )

HOST_ACTIVITIES = {
    PREPARE.key: "prepare_service",
    STOP.key: "stop_service",
    INSTALL.key: "install_package",
    START.key: "start_service",
}
# Columns of the progress table shown in the Web UI and by `arbup task watch`.
PROGRESS_STEPS = (PREPARE, STOP, INSTALL, START, UPDATE_SERVICE_VERSION, UPDATE_SERVICE_STATUS)
RECORD_TIMEOUT = timedelta(seconds=30)


@workflow.defn(name=WORKFLOW_NAME)
class UpgradeArbitrationGroup:
    @workflow.init
    def __init__(self, inp: UpgradeInput) -> None:
        self._inp = inp
        subtasks = build_subtasks(
            inp.task_id, [s.id for s in inp.services], inp.subtask_ids
        )
        self._task = TaskState(
            id=inp.task_id,
            group_id=inp.group_id,
            target_full_version=inp.target_full_version,
            target_os=inp.target_os,
            workflow_id=workflow.info().workflow_id,
            creator=inp.creator,
            executor=inp.executor,
            start_time=inp.start_time,
            subtasks=subtasks,
        )
        # Subtasks by layer, in parallelIdx order; nodes are listed by seriesId.
        self._layers: dict[str, list[SubtaskState]] = {step.key: [] for step in LAYERS}
        self._step_of: dict[int, Step] = {}
        for node, subtask in zip(plan_nodes(len(inp.services)), subtasks):
            self._layers[node.step.key].append(subtask)
            self._step_of[subtask.id] = node.step
        for layer in self._layers.values():
            layer.sort(key=lambda s: s.parallel_idx)
        self._services = {s.id: s for s in inp.services}
        self._prepared: dict[int, PrepareResult] = {}
        self._dirty: set[int] = set()

    @workflow.run
    async def run(self, inp: UpgradeInput) -> dict:
        self._show_progress()
        try:
            for index, step in enumerate(LAYERS):
                while await self._run_layer(step):
                    await self._wait_for_operator(step)
                if index + 1 < len(LAYERS):
                    self._mark_ready(LAYERS[index + 1])
        except (asyncio.CancelledError, CancelledError):
            await self._finish_cancelled()
            raise

        await self._finish(TaskStatus.SUCCESSFUL, "every service runs the target")
        return self._task.to_ocp()

    @workflow.query(name="task")
    def task(self) -> TaskState:
        """The task with its subtasks, their statuses, times and logs."""
        return self._task

    # The layers

    async def _run_layer(self, step: Step) -> list[SubtaskState]:
        """Run every unfinished node of a layer in parallel; return those that failed."""
        pending = [s for s in self._layers[step.key] if s.status != SubtaskStatus.SUCCESSFUL]
        await asyncio.gather(*(self._run_subtask(step, s) for s in pending))
        await self._save_subtasks()
        return [s for s in pending if s.status == SubtaskStatus.FAILED]

    async def _run_subtask(self, step: Step, subtask: SubtaskState) -> None:
        subtask.status = SubtaskStatus.RUNNING
        subtask.start_time = workflow.now()
        subtask.end_time = None
        self._touch(subtask)
        try:
            result = await self._execute(step, subtask)
        except ActivityError as err:
            cause = err.cause
            details = cause.details if isinstance(cause, ApplicationError) else ()
            message = str(cause.message if cause else err)
            subtask.log = [*details[0]] if details and isinstance(details[0], list) else []
            subtask.log.append(f"FAILED: {message}")
            subtask.status = SubtaskStatus.FAILED
            self._task.message = f"{subtask.name} failed: {message}"
            workflow.logger.warning(
                "subtask %d (%s) failed: %s", subtask.id, subtask.name, message
            )
        else:
            subtask.log = [*result.log] if result.log else [result.message]
            subtask.status = SubtaskStatus.SUCCESSFUL
        subtask.end_time = workflow.now()
        self._touch(subtask)

    async def _execute(self, step: Step, subtask: SubtaskState) -> StepResult | PrepareResult:
        inp = self._inp
        if step.is_barrier:
            return StepResult(log=[], message="every upstream subtask succeeded")

        if step.key in HOST_ACTIVITIES:
            service = self._services[subtask.service_id]
            prepared = self._prepared.get(service.id)
            if step != PREPARE and prepared and not prepared.needs_upgrade:
                return StepResult(log=[], message=f"skipped: {prepared.message}")
            result = await self._host_activity(step, subtask, service)
            if step == PREPARE:
                self._prepared[service.id] = result
            return result

        if step == BEGIN:
            return await self._record_activity(
                "begin_upgrade", step, GroupStepInput(
                    task_id=inp.task_id, subtask_id=subtask.id, group_id=inp.group_id
                )
            )
        if step == UPDATE_SERVICE_VERSION:
            return await self._record_activity(
                "update_service_version", step, ServiceVersionInput(
                    task_id=inp.task_id,
                    subtask_id=subtask.id,
                    service_id=subtask.service_id,
                    full_version=inp.target_full_version,
                )
            )
        if step == UPDATE_GROUP_VERSION:
            return await self._record_activity(
                "update_group_version", step, GroupStepInput(
                    task_id=inp.task_id,
                    subtask_id=subtask.id,
                    group_id=inp.group_id,
                    full_version=inp.target_full_version,
                )
            )
        if step == UPDATE_SERVICE_STATUS:
            return await self._record_activity(
                "update_service_status", step, ServiceStatusInput(
                    task_id=inp.task_id,
                    subtask_id=subtask.id,
                    service_id=subtask.service_id,
                    status=ServiceStatus.RUNNING,
                )
            )
        if step == CLEAN_MONITOR_RECORDS:
            return await self._record_activity(
                "clean_status_monitor_records", step, GroupStepInput(
                    task_id=inp.task_id, subtask_id=subtask.id, group_id=inp.group_id
                )
            )
        raise ValueError(f"no activity for step {step.key}")

    def _retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            initial_interval=timedelta(seconds=1),
            backoff_coefficient=2.0,
            maximum_interval=timedelta(seconds=30),
            maximum_attempts=self._inp.options.max_attempts,
            non_retryable_error_types=list(NON_RETRYABLE),
        )

    async def _host_activity(
        self, step: Step, subtask: SubtaskState, service: ArbitrationService
    ):
        options = self._inp.options
        return await workflow.execute_activity(
            HOST_ACTIVITIES[step.key],
            HostStepInput(
                task_id=self._inp.task_id,
                subtask_id=subtask.id,
                service=service,
                package=self._inp.packages[service.arch],
                options=options,
            ),
            result_type=PrepareResult if step == PREPARE else StepResult,
            task_queue=options.host_task_queue,
            start_to_close_timeout=timedelta(seconds=step.timeout),
            heartbeat_timeout=timedelta(seconds=options.heartbeat_timeout_seconds),
            retry_policy=self._retry_policy(),
            summary=f"{step.name} on {service.host} ({service.address})",
        )

    async def _record_activity(self, name: str, step: Step, arg) -> StepResult:
        return await workflow.execute_activity(
            name,
            arg,
            result_type=StepResult,
            start_to_close_timeout=timedelta(seconds=step.timeout),
            retry_policy=self._retry_policy(),
            summary=step.name,
        )

    # Task state

    def _mark_ready(self, step: Step) -> None:
        for subtask in self._layers[step.key]:
            if subtask.status == SubtaskStatus.PENDING:
                subtask.status = SubtaskStatus.READY
                self._touch(subtask)

    def _touch(self, subtask: SubtaskState) -> None:
        self._dirty.add(subtask.id)
        self._show_progress()

    async def _save_subtasks(self) -> None:
        if not self._dirty:
            return
        changed = [s for s in self._task.subtasks if s.id in self._dirty]
        self._dirty.clear()
        await workflow.execute_activity(
            "save_subtasks",
            SaveSubtasksInput(task_id=self._task.id, subtasks=changed),
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=self._retry_policy(),
            summary="Save subtask states",
        )

    async def _set_status(self, status: TaskStatus, message: str | None, *, done: bool) -> None:
        self._task.status = status
        self._task.message = message
        self._task.end_time = workflow.now() if done or status == TaskStatus.FAILED else None
        if TASK_STATUS in workflow.info().typed_search_attributes:
            workflow.upsert_search_attributes([TASK_STATUS.value_set(status.value)])
        self._show_progress()
        await self._save_subtasks()
        await workflow.execute_activity(
            "finish_task",
            FinishTaskInput(
                task_id=self._task.id,
                group_id=self._task.group_id,
                status=status,
                end_time=self._task.end_time,
                message=message,
                release_group=done,
            ),
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=self._retry_policy(),
            summary=f"Record task {status.value}",
        )

    async def _wait_for_operator(self, step: Step) -> None:
        """A subtask failed: the task is FAILED and waits for the operator.

        Limitation: the operator's decisions (retry, skip, roll back) are not yet
        offered; until they are, the wait ends only when the workflow is cancelled
        (`arbup task cancel`), which leaves the services as they are.
        """
        self._task.waiting_for = "an operator decision"
        await self._set_status(TaskStatus.FAILED, self._task.message, done=False)
        await workflow.wait_condition(lambda: False)

    async def _finish(self, status: TaskStatus, message: str) -> None:
        self._task.waiting_for = None
        await self._set_status(status, message, done=True)

    async def _finish_cancelled(self) -> None:
        for subtask in self._task.subtasks:
            if subtask.status == SubtaskStatus.RUNNING:
                subtask.status = SubtaskStatus.FAILED
                subtask.end_time = workflow.now()
                subtask.log.append("FAILED: the task was cancelled")
                self._touch(subtask)
        message = "cancelled; services left as they are: " + self._where_services_are()
        await self._finish(TaskStatus.FAILED, message)

    def _where_services_are(self) -> str:
        done = {
            key: {s.service_id for s in self._layers[key] if s.status == SubtaskStatus.SUCCESSFUL}
            for key in (STOP.key, INSTALL.key, START.key)
        }
        parts = []
        for service in self._inp.services:
            if service.id in done[START.key]:
                state = "running the target"
            elif service.id in done[INSTALL.key]:
                state = "target installed, stopped"
            elif service.id in done[STOP.key]:
                state = "stopped on its old version"
            else:
                state = "untouched"
            parts.append(f"{service.address} {state}")
        return ", ".join(parts)

    def _show_progress(self) -> None:
        """A services x phases table as the workflow's current details."""
        marks = {
            SubtaskStatus.PENDING: "·",
            SubtaskStatus.READY: "·",
            SubtaskStatus.RUNNING: "running",
            SubtaskStatus.CANCELING: "canceling",
            SubtaskStatus.FAILED: "**FAILED**",
            SubtaskStatus.SUCCESSFUL: "ok",
        }
        header = "| service | " + " | ".join(s.name for s in PROGRESS_STEPS) + " |"
        rows = [header, "|" + "---|" * (len(PROGRESS_STEPS) + 1)]
        for idx, service in enumerate(self._inp.services):
            cells = [marks[self._layers[step.key][idx].status] for step in PROGRESS_STEPS]
            rows.append(f"| {service.address} | " + " | ".join(cells) + " |")
        lines = [f"Task {self._task.id}: **{self._task.status.value}**"]
        if self._task.waiting_for:
            lines.append(f"Waiting for {self._task.waiting_for}.")
        if self._task.message:
            lines.append(self._task.message)
        workflow.set_current_details("\n\n".join(lines) + "\n\n" + "\n".join(rows))
