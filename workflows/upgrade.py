"""The upgrade of one arbitration service group, as one durable workflow.

The workflow walks the subtask graph of ``arbup.graph`` layer by layer: every
service's node of a layer runs in parallel, and the next layer starts only when
every node of this one has an outcome (the "Wait node" barriers of the graph).

A failed subtask makes the task FAILED and the workflow waits, durably, for the
operator, whose decisions arrive as updates (validated first, so a refused one
leaves no trace in the history): retry the task or one subtask, skip a subtask,
roll the task back, cancel a running subtask. A rollback runs the compensations of
the steps that actually ran, in reverse order; each compensation is registered
before its step runs and runs at most once. Cancelling the workflow brings every
service back to a running, healthy state: by rolling back while that is allowed,
otherwise on whatever version each host has installed.

Workflow code is deterministic and sandboxed: it never touches SSH or the
database (activities do), reads time with ``workflow.now()`` and fans out with
``asyncio.gather`` over coroutines that each catch their own failure, so every
branch's outcome is collected before the workflow decides anything.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    TimeoutType,
    TimeoutError as TemporalTimeoutError,
)
from temporalio.workflow import ActivityCancellationType

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
        DEFAULT_ZONE,
        TASK_QUEUE,
        WORKFLOW_NAME,
        FinishTaskInput,
        GroupStatusInput,
        GroupStepInput,
        HostStepInput,
        OperatorRequest,
        PrepareResult,
        SaveSubtasksInput,
        ServiceStatusInput,
        ServiceVersionInput,
        StepResult,
        UpgradeInput,
        zone_task_queue,
    )
    from arbup.models import (
        ArbitrationService,
        Operation,
        Package,
        ServiceStatus,
        SubtaskState,
        SubtaskStatus,
        TaskAction,
        TaskState,
        TaskStatus,
    )
    from arbup.temporal import TASK_STATUS

HOST_ACTIVITIES = {
    PREPARE.key: "prepare_service",
    STOP.key: "stop_service",
    INSTALL.key: "install_package",
    START.key: "start_service",
}
# What undoes each step that changes a host or a record.
COMPENSATING_ACTIVITIES = {
    PREPARE.key: "unstage_package",
    STOP.key: "restore_service",
    BEGIN.key: "set_group_status",
    INSTALL.key: "reinstall_package",
    START.key: "stop_service",
    UPDATE_SERVICE_VERSION.key: "update_service_version",
    UPDATE_GROUP_VERSION.key: "update_group_version",
    UPDATE_SERVICE_STATUS.key: "update_service_status",
}
# Columns of the progress table shown in the Web UI.
PROGRESS_STEPS = (
    PREPARE,
    STOP,
    INSTALL,
    START,
    UPDATE_SERVICE_VERSION,
    UPDATE_SERVICE_STATUS,
)
PROGRESS_LABELS = {
    PREPARE.key: "prepare",
    STOP.key: "stop",
    INSTALL.key: "install",
    START.key: "start",
    UPDATE_SERVICE_VERSION.key: "version",
    UPDATE_SERVICE_STATUS.key: "status",
}
RECORD_TIMEOUT = timedelta(seconds=30)
# Estimated JSON bytes of a subtask without its log, and the most one save carries
# (Temporal warns above 512 KiB per payload and fails a workflow task at 2 MiB).
SUBTASK_BYTES = 600
SAVE_BATCH_BYTES = 256 * 1024
OPERATOR_DECISION = "an operator decision"

# Error types of refused decisions; the API maps them to OCP's codes.
TASK_STATE_INVALID = "TASK_STATE_INVALID"
TASK_PROHIBIT_ROLLBACK = "TASK_PROHIBIT_ROLLBACK"
SUBTASK_PROHIBIT_SKIP = "SUBTASK_PROHIBIT_SKIP"
ROLLBACK_PACKAGE_MISSING = "ROLLBACK_PACKAGE_MISSING"


@dataclass
class Compensation:
    """The undo of one subtask, registered before the subtask runs."""

    subtask_id: int
    layer: int
    done: bool = False


def _batches(subtasks: list[SubtaskState], limit: int) -> list[list[SubtaskState]]:
    """``subtasks`` in order, cut where a batch's estimated JSON size passes
    ``limit`` bytes."""
    batches: list[list[SubtaskState]] = []
    size = limit
    for subtask in subtasks:
        cost = SUBTASK_BYTES + sum(len(line) + 4 for line in subtask.log)
        if size + cost > limit and (size or not batches):
            batches.append([])
            size = 0
        batches[-1].append(subtask)
        size += cost
    return batches


def _never_started(err: ActivityError) -> bool:
    """The activity failed because no worker ever took it: its only attempt timed
    out waiting to be started, after no earlier attempt (whose failure would be the
    timeout's cause)."""
    cause = err.cause
    return (
        isinstance(cause, TemporalTimeoutError)
        and cause.type == TimeoutType.SCHEDULE_TO_START
        and cause.cause is None
    )


def _refuse(kind: str, message: str) -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=True)


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
        self._by_id = {s.id: s for s in subtasks}
        self._services = {s.id: s for s in inp.services}
        self._prepared: dict[int, PrepareResult] = {}
        self._running: dict[int, workflow.ActivityHandle] = {}
        self._compensations: list[Compensation] = []
        self._dirty: set[int] = set()
        self._saved_actions = 0
        self._waiting = False
        self._decision: str | None = None
        self._force_rollback = False
        self._rolling_back = False

    @workflow.run
    async def run(self, inp: UpgradeInput) -> dict:
        self._show_progress()
        try:
            rolled_back = await self._upgrade()
        except (asyncio.CancelledError, CancelledError):
            await self._after_cancel()
            raise
        if rolled_back:
            await self._finish(
                TaskStatus.SUCCESSFUL,
                "rolled back: every service touched runs its version from before",
            )
        elif self._prepared and not any(p.needs_upgrade for p in self._prepared.values()):
            await self._finish(
                TaskStatus.SUCCESSFUL,
                "every service already ran the target, so none was stopped; "
                "the records now say so",
            )
        else:
            await self._finish(TaskStatus.SUCCESSFUL, "every service runs the target")
        return self._outcome()

    def _outcome(self) -> dict:
        """The workflow's result: the task as OCP shows it, with a count of its
        subtasks by status in place of the subtasks (``arbup task show`` has them),
        so that the result stays small for any size of group."""
        outcome = self._task.to_ocp()
        counts: dict[str, int] = {}
        for subtask in outcome.pop("subtasks"):
            counts[subtask["status"]] = counts.get(subtask["status"], 0) + 1
        outcome["subtaskCount"] = len(self._task.subtasks)
        outcome["subtaskStatuses"] = counts
        outcome["message"] = self._task.message
        return outcome

    def _brief(self) -> TaskState:
        """What a decision answers: the task without the subtasks' logs, which can
        be long and would otherwise be written into the history with every update."""
        return self._task.model_copy(
            update={"subtasks": [s.model_copy(update={"log": []}) for s in self._task.subtasks]}
        )

    @workflow.query(name="task")
    def task(self) -> TaskState:
        """The task with its subtasks, their statuses, times, logs and actions."""
        return self._task

    # The operator's decisions

    @workflow.update(name="retry_task")
    def retry_task(self, req: OperatorRequest) -> TaskState:
        """Run the failed subtasks again (in a rollback: the failed compensations)."""
        for subtask in self._failed():
            self._rerun(subtask)
        self._act("retry", req)
        self._decide("rollback" if self._rolling_back else "continue")
        return self._brief()

    @retry_task.validator
    def _check_retry_task(self, req: OperatorRequest) -> None:
        self._require_waiting("retried")

    @workflow.update(name="retry_subtask")
    def retry_subtask(self, req: OperatorRequest) -> TaskState:
        self._rerun(self._by_id[req.subtask_id])
        self._act("retry_subtask", req)
        self._decide("rollback" if self._rolling_back else "continue")
        return self._brief()

    @retry_subtask.validator
    def _check_retry_subtask(self, req: OperatorRequest) -> None:
        self._require_failed_subtask(req, "retried")

    @workflow.update(name="skip_subtask")
    def skip_subtask(self, req: OperatorRequest) -> TaskState:
        subtask = self._by_id[req.subtask_id]
        subtask.status = SubtaskStatus.SUCCESSFUL
        subtask.end_time = workflow.now()
        if self._rolling_back:
            subtask.operation = Operation.ROLLBACK_SKIP
            for compensation in self._compensations:
                if compensation.subtask_id == subtask.id:
                    compensation.done = True
        else:
            subtask.operation = Operation.SKIP
        subtask.log.append(f"skipped by {req.actor}")
        self._touch(subtask)
        self._act("skip_subtask", req)
        self._decide("rollback" if self._rolling_back else "continue")
        return self._brief()

    @skip_subtask.validator
    def _check_skip_subtask(self, req: OperatorRequest) -> None:
        subtask = self._require_failed_subtask(req, "skipped")
        step = self._step_of[subtask.id]
        if subtask.prohibit_skip or step.key in self._inp.options.prohibit_skip:
            raise _refuse(
                SUBTASK_PROHIBIT_SKIP,
                f"subtask {subtask.id} ({subtask.name}) may not be skipped",
            )

    @workflow.update(name="rollback")
    def rollback(self, req: OperatorRequest) -> TaskState:
        self._force_rollback = self._force_rollback or req.force
        self._act("force_rollback" if req.force else "rollback", req)
        if self._rolling_back:
            for subtask in self._failed():
                self._rerun(subtask)
        self._decide("rollback")
        return self._brief()

    @rollback.validator
    def _check_rollback(self, req: OperatorRequest) -> None:
        self._require_waiting("rolled back")
        if self._rolling_back:
            return
        blocker = self._point_of_no_return()
        if blocker is not None and not req.force:
            raise _refuse(
                TASK_PROHIBIT_ROLLBACK,
                f"task {self._task.id} can no longer be rolled back: subtask "
                f"{blocker.id} ({blocker.name}) has run; a forced rollback also "
                "downgrades the packages",
            )
        if req.force:
            for service in self._installed_services():
                if self._previous_package(service) is None:
                    raise _refuse(
                        ROLLBACK_PACKAGE_MISSING,
                        f"no package of {self._previous_version(service)} for "
                        f"{service.arch} is known, so {service.address} cannot be "
                        "downgraded; load it and try again",
                    )

    @workflow.update(name="cancel_subtask")
    def cancel_subtask(self, req: OperatorRequest) -> TaskState:
        subtask = self._by_id[req.subtask_id]
        subtask.status = SubtaskStatus.CANCELING
        subtask.log.append(f"cancel requested by {req.actor}")
        self._touch(subtask)
        self._act("cancel_subtask", req)
        self._running[subtask.id].cancel()
        return self._brief()

    @cancel_subtask.validator
    def _check_cancel_subtask(self, req: OperatorRequest) -> None:
        subtask = self._by_id.get(req.subtask_id or 0)
        if subtask is None:
            raise _refuse(TASK_STATE_INVALID, f"task has no subtask {req.subtask_id}")
        if subtask.status != SubtaskStatus.RUNNING or subtask.id not in self._running:
            raise _refuse(
                TASK_STATE_INVALID,
                f"subtask {subtask.id} is {subtask.status.value}; only a RUNNING "
                "subtask can be cancelled",
            )

    @workflow.update(name="note_cancel")
    def note_cancel(self, req: OperatorRequest) -> None:
        """Record who cancels the task, just before the workflow is cancelled."""
        self._act("cancel", req)

    # The upgrade, forward

    async def _upgrade(self) -> bool:
        """Run every layer; return True if the task was rolled back instead."""
        for index, step in enumerate(LAYERS):
            while True:
                await self._run_layer(step)
                if not self._failed():
                    break
                if await self._decide_after_failure() == "rollback":
                    await self._rollback()
                    return True
            if index + 1 < len(LAYERS):
                self._mark_ready(LAYERS[index + 1])
        return False

    async def _run_layer(self, step: Step) -> None:
        """Run every node of a layer that is still to run, in parallel."""
        pending = [
            s
            for s in self._layers[step.key]
            if s.status in (SubtaskStatus.PENDING, SubtaskStatus.READY)
        ]
        await asyncio.gather(*(self._run_subtask(step, s) for s in pending))
        await self._save_subtasks()

    async def _run_subtask(self, step: Step, subtask: SubtaskState) -> None:
        subtask.status = SubtaskStatus.RUNNING
        subtask.start_time = workflow.now()
        subtask.end_time = None
        if subtask.prohibit_rollback:
            self._task.prohibit_rollback = True
        self._touch(subtask)
        try:
            result = await self._execute(step, subtask)
        except ActivityError as err:
            self._fail(subtask, err)
        except (asyncio.CancelledError, CancelledError):
            self._fail(subtask, None, "the task was cancelled")
            raise
        else:
            subtask.log = [*result.log] if result.log else [result.message]
            subtask.status = SubtaskStatus.SUCCESSFUL
        subtask.end_time = workflow.now()
        self._touch(subtask)

    async def _execute(self, step: Step, subtask: SubtaskState) -> StepResult | PrepareResult:
        inp = self._inp
        if step.is_barrier:
            return StepResult(log=[], message="every upstream subtask succeeded")

        service = self._services.get(subtask.service_id)
        if step.key in HOST_ACTIVITIES:
            prepared = self._prepared.get(service.id)
            if step != PREPARE and prepared and not prepared.needs_upgrade:
                return StepResult(log=[], message=f"skipped: {prepared.message}")
            self._register_compensation(step, subtask)
            try:
                result = await self._host_activity(
                    HOST_ACTIVITIES[step.key], step, subtask, service, self._package(service)
                )
            except ActivityError as err:
                if subtask.run_time == 1 and _never_started(err):
                    # Nothing ran on the host, so there is nothing to undo there.
                    self._compensations = [
                        c for c in self._compensations if c.subtask_id != subtask.id
                    ]
                raise
            if step == PREPARE:
                self._prepared[service.id] = result
            return result

        self._register_compensation(step, subtask)
        if step == BEGIN:
            return await self._record_activity(
                "begin_upgrade",
                step,
                subtask,
                GroupStepInput(
                    task_id=inp.task_id, subtask_id=subtask.id, group_id=inp.group_id
                ),
            )
        if step == UPDATE_SERVICE_VERSION:
            return await self._set_service_version(step, subtask, inp.target_full_version)
        if step == UPDATE_GROUP_VERSION:
            return await self._set_group_version(step, subtask, inp.target_full_version)
        if step == UPDATE_SERVICE_STATUS:
            return await self._set_service_status(step, subtask, ServiceStatus.RUNNING)
        if step == CLEAN_MONITOR_RECORDS:
            return await self._record_activity(
                "clean_status_monitor_records",
                step,
                subtask,
                GroupStepInput(
                    task_id=inp.task_id, subtask_id=subtask.id, group_id=inp.group_id
                ),
            )
        raise ValueError(f"no activity for step {step.key}")

    # Rollback and cancellation

    async def _rollback(self, *, stop_on_failure: bool = True) -> list[SubtaskState]:
        """Run the compensations not yet done, latest layer first, the services of
        a layer in parallel.

        A failed compensation stops the rollback where the operator can retry or
        skip it. A cancelled task cannot wait for that (``stop_on_failure=False``):
        it undoes all it can and returns the subtasks whose undo failed."""
        self._rolling_back = True
        self._task.operation = Operation.ROLLBACK
        for subtask in self._failed():
            if not any(c.subtask_id == subtask.id for c in self._compensations):
                # Failed before anything ran (no worker took it): nothing to undo.
                subtask.operation = Operation.ROLLBACK
                subtask.status = SubtaskStatus.SUCCESSFUL
                subtask.log.append("rollback: nothing ran on the host; nothing to undo")
                self._touch(subtask)
        await self._set_status(TaskStatus.RUNNING, "rolling back", done=False)
        while True:
            layers = sorted({c.layer for c in self._compensations if not c.done}, reverse=True)
            for layer in layers:
                batch = [c for c in self._compensations if c.layer == layer and not c.done]
                await asyncio.gather(*(self._compensate(c) for c in batch))
                await self._save_subtasks()
                if self._failed() and stop_on_failure:
                    break
            if not self._failed() or not stop_on_failure:
                return self._failed()
            await self._decide_after_failure()
            await self._set_status(TaskStatus.RUNNING, "rolling back", done=False)

    async def _compensate(self, compensation: Compensation) -> None:
        subtask = self._by_id[compensation.subtask_id]
        step = self._step_of[subtask.id]
        subtask.operation = Operation.ROLLBACK
        subtask.status = SubtaskStatus.RUNNING
        subtask.start_time = workflow.now()
        subtask.end_time = None
        self._touch(subtask)
        try:
            result = await self._undo(step, subtask)
        except ActivityError as err:
            self._fail(subtask, err, prefix="rollback")
        except (asyncio.CancelledError, CancelledError):
            self._fail(subtask, None, "the rollback was cancelled")
            raise
        else:
            compensation.done = True
            subtask.log.extend(f"rollback: {line}" for line in result.log or [result.message])
            subtask.status = SubtaskStatus.SUCCESSFUL
        subtask.end_time = workflow.now()
        self._touch(subtask)

    async def _undo(self, step: Step, subtask: SubtaskState) -> StepResult:
        inp = self._inp
        name = COMPENSATING_ACTIVITIES[step.key]
        service = self._services.get(subtask.service_id)
        if step == INSTALL:
            package = self._previous_package(service)
            if package is None:
                raise ValueError("a forced rollback was accepted without a package")
            return await self._host_activity(name, step, subtask, service, package)
        if step.key in HOST_ACTIVITIES:
            return await self._host_activity(
                name, step, subtask, service, self._package(service)
            )
        if step == BEGIN:
            return await self._record_activity(
                name,
                step,
                subtask,
                GroupStatusInput(
                    task_id=inp.task_id,
                    subtask_id=subtask.id,
                    group_id=inp.group_id,
                    status=inp.group_status,
                ),
            )
        if step == UPDATE_SERVICE_VERSION:
            return await self._set_service_version(step, subtask, service.version)
        if step == UPDATE_GROUP_VERSION:
            return await self._set_group_version(
                step, subtask, inp.group_version or service.version
            )
        if step == UPDATE_SERVICE_STATUS:
            return await self._set_service_status(step, subtask, service.status)
        raise ValueError(f"no compensation for step {step.key}")

    async def _after_cancel(self) -> None:
        """The workflow was cancelled; running steps have stopped by now (activities
        wait for their cancellation to complete). Bring every service back up."""
        self._waiting = False
        self._task.waiting_for = None
        if self._point_of_no_return() is None:
            failed = await self._rollback(stop_on_failure=False)
            message = "cancelled and rolled back: every service runs its old version"
            if failed:
                message = "cancelled; rolled back except: " + "; ".join(
                    s.log[-1] for s in failed
                )
        else:
            message = "cancelled: " + await self._recover()
        await self._finish(TaskStatus.FAILED, message)

    async def _recover(self) -> str:
        """Past the point of no return: start every touched service on the version
        its host has installed, and make the records say what the hosts run."""
        touched = self._touched_services()
        results = await asyncio.gather(*(self._restore(s) for s in touched))
        installed = dict(zip((s.id for s in touched), results))
        await self._save_subtasks()

        all_on_target = all(
            installed.get(s.id, s.version) == self._inp.target_full_version
            for s in self._inp.services
        )
        group_step = self._layers[UPDATE_GROUP_VERSION.key][0]
        if all_on_target:
            await self._set_group_version(
                UPDATE_GROUP_VERSION, group_step, self._inp.target_full_version
            )
        else:
            await self._record_activity(
                "set_group_status",
                UPDATE_GROUP_VERSION,
                group_step,
                GroupStatusInput(
                    task_id=self._inp.task_id,
                    subtask_id=group_step.id,
                    group_id=self._inp.group_id,
                    status=self._inp.group_status,
                ),
            )
        return ", ".join(
            f"{s.address} runs {installed[s.id]}" for s in touched
        ) or "no service had been touched"

    async def _restore(self, service: ArbitrationService) -> str:
        """Start one service on what is installed; record its real version. A host
        that cannot be brought back is reported, not waited for: the task must end."""
        subtask = self._layers[START.key][self._inp.services.index(service)]
        try:
            result = await self._host_activity(
                "restore_service", START, subtask, service, self._package(service)
            )
        except ActivityError as err:
            cause = err.cause.message if err.cause else str(err)
            subtask.log.append(f"recovery FAILED: {cause}")
            self._touch(subtask)
            return f"an unknown version, NOT restored ({cause})"
        subtask.log.append(f"recovery: {result.message}")
        self._touch(subtask)
        version = result.installed_full_version
        version_step = self._layers[UPDATE_SERVICE_VERSION.key][
            self._inp.services.index(service)
        ]
        await self._set_service_version(UPDATE_SERVICE_VERSION, version_step, version)
        status_step = self._layers[UPDATE_SERVICE_STATUS.key][
            self._inp.services.index(service)
        ]
        await self._set_service_status(
            UPDATE_SERVICE_STATUS, status_step, ServiceStatus.RUNNING
        )
        return version

    # Waiting for the operator

    async def _decide_after_failure(self) -> str:
        """The task is FAILED: wait for a decision (or apply the start policy)."""
        options = self._inp.options
        self._decision = None
        # Decisions are taken from the moment the task shows FAILED; one that comes
        # while the failure is being recorded is acted on right after.
        self._waiting = True
        self._task.waiting_for = OPERATOR_DECISION
        await self._set_status(TaskStatus.FAILED, self._task.message, done=False)

        if options.auto_rollback and self._policy_may_roll_back():
            self._act("rollback", OperatorRequest(actor="policy:auto_rollback"))
            self._decision = "rollback"
        elif options.decision_timeout_seconds:
            try:
                await workflow.wait_condition(
                    lambda: self._decision is not None,
                    timeout=timedelta(seconds=options.decision_timeout_seconds),
                )
            except asyncio.TimeoutError:
                if self._policy_may_roll_back():
                    self._act(
                        "rollback",
                        OperatorRequest(
                            actor="policy:decision_timeout",
                            reason=f"no decision in {options.decision_timeout_seconds:g}s",
                        ),
                    )
                    self._decision = "rollback"
        await workflow.wait_condition(lambda: self._decision is not None)

        self._waiting = False
        self._task.waiting_for = None
        if self._decision == "continue":
            self._task.operation = Operation.RETRY
            await self._set_status(TaskStatus.RUNNING, None, done=False)
        return self._decision

    def _policy_may_roll_back(self) -> bool:
        return self._rolling_back or self._point_of_no_return() is None

    def _decide(self, decision: str) -> None:
        self._decision = decision

    def _require_waiting(self, verb: str) -> None:
        if not self._waiting:
            raise _refuse(
                TASK_STATE_INVALID,
                f"task {self._task.id} is {self._task.status.value}; only a FAILED "
                f"task can be {verb}",
            )

    def _require_failed_subtask(self, req: OperatorRequest, verb: str) -> SubtaskState:
        self._require_waiting(verb)
        subtask = self._by_id.get(req.subtask_id or 0)
        if subtask is None:
            raise _refuse(TASK_STATE_INVALID, f"task has no subtask {req.subtask_id}")
        if subtask.status != SubtaskStatus.FAILED:
            raise _refuse(
                TASK_STATE_INVALID,
                f"subtask {subtask.id} is {subtask.status.value}; only a FAILED "
                f"subtask can be {verb}",
            )
        return subtask

    def _rerun(self, subtask: SubtaskState) -> None:
        subtask.status = SubtaskStatus.READY
        subtask.run_time += 1
        subtask.operation = Operation.ROLLBACK if self._rolling_back else Operation.RETRY
        self._touch(subtask)

    def _act(self, action: str, req: OperatorRequest) -> None:
        detail = req.reason
        self._task.actions.append(
            TaskAction(
                action=action,
                actor=req.actor,
                time=workflow.now(),
                subtask_id=req.subtask_id,
                detail=detail,
            )
        )
        workflow.logger.info(
            "task %d: %s by %s%s",
            self._task.id,
            action,
            req.actor,
            f" (subtask {req.subtask_id})" if req.subtask_id else "",
        )

    # Facts about the task

    def _failed(self) -> list[SubtaskState]:
        return [s for s in self._task.subtasks if s.status == SubtaskStatus.FAILED]

    def _point_of_no_return(self) -> SubtaskState | None:
        """The first prohibitRollback subtask that has run, if any."""
        started = [
            s for s in self._task.subtasks if s.prohibit_rollback and s.start_time
        ]
        return min(started, key=lambda s: (s.start_time, s.series_id), default=None)

    def _touched_services(self) -> list[ArbitrationService]:
        touched = []
        for index, service in enumerate(self._inp.services):
            steps = (STOP, INSTALL, START)
            if any(self._layers[s.key][index].start_time for s in steps):
                touched.append(service)
        return touched

    def _installed_services(self) -> list[ArbitrationService]:
        """Services whose install step has run (so a rollback must downgrade them)."""
        return [
            service
            for index, service in enumerate(self._inp.services)
            if any(
                c.subtask_id == self._layers[INSTALL.key][index].id
                for c in self._compensations
            )
        ]

    def _package(self, service: ArbitrationService) -> Package:
        return self._inp.packages[service.arch]

    def _previous_version(self, service: ArbitrationService) -> str:
        prepared = self._prepared.get(service.id)
        if prepared and prepared.installed_full_version:
            return prepared.installed_full_version
        return service.version

    def _previous_package(self, service: ArbitrationService) -> Package | None:
        version = self._previous_version(service)
        for package in self._inp.rollback_packages:
            if package.full_version == version and package.arch == service.arch:
                return package
        return None

    def _register_compensation(self, step: Step, subtask: SubtaskState) -> None:
        if step.key not in COMPENSATING_ACTIVITIES:
            return
        if any(c.subtask_id == subtask.id for c in self._compensations):
            return
        self._compensations.append(Compensation(subtask.id, LAYERS.index(step)))

    # Activities

    def _retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            initial_interval=timedelta(seconds=1),
            backoff_coefficient=2.0,
            maximum_interval=timedelta(seconds=30),
            maximum_attempts=self._inp.options.max_attempts,
            non_retryable_error_types=list(NON_RETRYABLE),
        )

    async def _host_activity(
        self,
        name: str,
        step: Step,
        subtask: SubtaskState,
        service: ArbitrationService,
        package: Package,
    ):
        options = self._inp.options
        queue = self._host_queue(service)
        # A queue other than the workflow's own may have no worker at all (a zone
        # whose worker is not running): such a step fails after a while, with what
        # to start, instead of waiting forever. The workflow's own queue is served
        # by the worker running this code, so a step there waits as long as needed.
        wait = options.host_schedule_to_start_seconds
        if queue in (None, workflow.info().task_queue):
            wait = None
        handle = workflow.start_activity(
            name,
            HostStepInput(
                task_id=self._inp.task_id,
                subtask_id=subtask.id,
                service=service,
                package=package,
                options=options,
                trace_id=self._inp.trace_id,
            ),
            result_type=PrepareResult if name == "prepare_service" else StepResult,
            task_queue=queue,
            schedule_to_start_timeout=timedelta(seconds=wait) if wait else None,
            start_to_close_timeout=timedelta(seconds=step.timeout),
            heartbeat_timeout=timedelta(seconds=options.heartbeat_timeout_seconds),
            retry_policy=self._retry_policy(),
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=self._summary(name, step, f"on {service.host} ({service.address})"),
        )
        self._running[subtask.id] = handle
        try:
            return await handle
        except ActivityError as err:
            cause = err.cause
            if (
                isinstance(cause, TemporalTimeoutError)
                and cause.type == TimeoutType.SCHEDULE_TO_START
            ):
                raise self._not_taken(err, service)
            raise
        finally:
            self._running.pop(subtask.id, None)

    def _host_queue(self, service: ArbitrationService) -> str | None:
        """The task queue of a service's host steps, from its zone (None: the
        workflow's own)."""
        if service.zone == DEFAULT_ZONE:
            return self._inp.options.host_task_queue
        return zone_task_queue(service.zone, workflow.info().task_queue)

    def _not_taken(self, err: ActivityError, service: ArbitrationService) -> ActivityError:
        """A host step no worker took in time: the same failure, told as what the
        operator can do about it."""
        queue = self._host_queue(service) or workflow.info().task_queue
        if service.zone == DEFAULT_ZONE:
            worker = f"arbup-worker --task-queue {queue}"
        else:
            worker = f"arbup-worker --zone {service.zone}"
            if workflow.info().task_queue != TASK_QUEUE:
                worker += f" --task-queue {workflow.info().task_queue}"
        message = (
            f"no worker took this step from task queue {queue} (zone {service.zone}) within "
            f"{self._inp.options.host_schedule_to_start_seconds:g}s; start "
            f"`{worker}` where it can reach {service.host}, then retry the task"
        )
        told = ActivityError(
            err.message,
            scheduled_event_id=err.scheduled_event_id,
            started_event_id=err.started_event_id,
            identity=err.identity,
            activity_type=err.activity_type,
            activity_id=err.activity_id,
            retry_state=err.retry_state,
        )
        told.__cause__ = TemporalTimeoutError(
            message, type=TimeoutType.SCHEDULE_TO_START, last_heartbeat_details=[]
        )
        # An earlier attempt's failure, if any, stays the timeout's cause.
        told.__cause__.__cause__ = err.cause.__cause__ if err.cause else None
        return told

    async def _record_activity(
        self, name: str, step: Step, subtask: SubtaskState, arg
    ) -> StepResult:
        handle = workflow.start_activity(
            name,
            arg,
            result_type=StepResult,
            start_to_close_timeout=timedelta(seconds=step.timeout),
            retry_policy=self._retry_policy(),
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=self._summary(name, step, f"(subtask {subtask.id})"),
        )
        self._running[subtask.id] = handle
        try:
            return await handle
        finally:
            self._running.pop(subtask.id, None)

    def _summary(self, activity_name: str, step: Step, where: str) -> str:
        """What the Web UI's timeline shows for an activity: the subtask's name, or
        what undoes it during a rollback or a recovery."""
        if activity_name == COMPENSATING_ACTIVITIES.get(step.key) and self._rolling_back:
            return f"Roll back: {step.name} {where}"
        if activity_name == "restore_service":
            return f"Bring back up {where}"
        return f"{step.name} {where}"

    async def _set_service_version(self, step, subtask, version: str) -> StepResult:
        return await self._record_activity(
            "update_service_version",
            step,
            subtask,
            ServiceVersionInput(
                task_id=self._inp.task_id,
                subtask_id=subtask.id,
                service_id=subtask.service_id,
                full_version=version,
            ),
        )

    async def _set_group_version(self, step, subtask, version: str) -> StepResult:
        return await self._record_activity(
            "update_group_version",
            step,
            subtask,
            GroupStepInput(
                task_id=self._inp.task_id,
                subtask_id=subtask.id,
                group_id=self._inp.group_id,
                full_version=version,
            ),
        )

    async def _set_service_status(self, step, subtask, status: ServiceStatus) -> StepResult:
        return await self._record_activity(
            "update_service_status",
            step,
            subtask,
            ServiceStatusInput(
                task_id=self._inp.task_id,
                subtask_id=subtask.id,
                service_id=subtask.service_id,
                status=status,
            ),
        )

    # Task state

    def _fail(
        self,
        subtask: SubtaskState,
        err: ActivityError | None,
        message: str | None = None,
        prefix: str = "",
    ) -> None:
        details: list[str] = []
        if err is not None:
            cause = err.cause
            if isinstance(cause, CancelledError):
                message = "cancelled"
            else:
                message = str(cause.message if cause else err)
            if isinstance(cause, ApplicationError) and cause.details:
                first = cause.details[0]
                details = [str(line) for line in first] if isinstance(first, list) else []
        label = f"{prefix} " if prefix else ""
        if prefix:
            subtask.log.extend(f"{prefix}: {line}" for line in details)
        else:
            subtask.log = details
        subtask.log.append(f"{label}FAILED: {message}")
        subtask.status = SubtaskStatus.FAILED
        self._task.message = f"{subtask.name} {label}failed: {message}"
        workflow.logger.warning(
            "subtask %d (%s) %sfailed: %s", subtask.id, subtask.name, label, message
        )

    def _mark_ready(self, step: Step) -> None:
        for subtask in self._layers[step.key]:
            if subtask.status == SubtaskStatus.PENDING:
                subtask.status = SubtaskStatus.READY
                self._touch(subtask)

    def _touch(self, subtask: SubtaskState) -> None:
        self._dirty.add(subtask.id)
        self._show_progress()

    async def _save_subtasks(self) -> None:
        if not self._dirty and len(self._task.actions) == self._saved_actions:
            return
        changed = [s for s in self._task.subtasks if s.id in self._dirty]
        self._dirty.clear()
        self._saved_actions = len(self._task.actions)
        # A large group's subtasks (with their logs) go in several saves, so that no
        # activity input comes near Temporal's per-payload limits.
        batches = _batches(changed, SAVE_BATCH_BYTES) or [[]]
        for number, batch in enumerate(batches, 1):
            summary = "Save subtask states"
            if len(batches) > 1:
                summary += f" ({number}/{len(batches)})"
            await workflow.execute_activity(
                "save_subtasks",
                SaveSubtasksInput(
                    task_id=self._task.id,
                    subtasks=batch,
                    actions=self._task.actions if number == 1 else [],
                ),
                start_to_close_timeout=RECORD_TIMEOUT,
                retry_policy=self._retry_policy(),
                summary=summary,
            )

    async def _set_status(self, status: TaskStatus, message: str | None, *, done: bool) -> None:
        self._task.status = status
        self._task.message = message
        ended = done or status == TaskStatus.FAILED
        self._task.end_time = workflow.now() if ended else None
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
                operation=self._task.operation,
                prohibit_rollback=self._task.prohibit_rollback,
            ),
            start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=self._retry_policy(),
            summary=f"Record task {status.value}",
        )

    async def _finish(self, status: TaskStatus, message: str) -> None:
        self._task.waiting_for = None
        await self._set_status(status, message, done=True)

    def _show_progress(self) -> None:
        """Each service's phases and their statuses, as the workflow's current
        details (a list: the Web UI draws markdown tables without space between
        their cells)."""
        marks = {
            SubtaskStatus.PENDING: "·",
            SubtaskStatus.READY: "·",
            SubtaskStatus.RUNNING: "running",
            SubtaskStatus.CANCELING: "canceling",
            SubtaskStatus.FAILED: "**FAILED**",
            SubtaskStatus.SUCCESSFUL: "ok",
        }
        rows = []
        for idx, service in enumerate(self._inp.services):
            cells = []
            for step in PROGRESS_STEPS:
                subtask = self._layers[step.key][idx]
                mark = marks[subtask.status]
                if subtask.operation == Operation.ROLLBACK:
                    mark = f"rolled back ({mark})" if mark == "ok" else f"rollback {mark}"
                elif subtask.operation == Operation.SKIP and mark == "ok":
                    mark = "skipped"
                cells.append(f"{PROGRESS_LABELS[step.key]} {mark}")
            rows.append(f"- `{service.address}`: " + " · ".join(cells))
        lines = [
            f"Task {self._task.id}: **{self._task.status.value}** "
            f"({self._task.operation.value})"
        ]
        if self._task.waiting_for:
            lines.append(f"Waiting for {self._task.waiting_for}.")
        if self._task.message:
            lines.append(self._task.message)
        workflow.set_current_details("\n\n".join(lines) + "\n\n" + "\n".join(rows))
