"""The steps that change records: versions, statuses, monitor records, and the
task's own state. Each write is idempotent, so a retry changes nothing twice.

These are plain functions run in the worker's thread pool, since the records store
is synchronous.
"""

from __future__ import annotations

from temporalio import activity

from arbup.inputs import (
    FinishTaskInput,
    GroupStatusInput,
    GroupStepInput,
    SaveSubtasksInput,
    ServiceStatusInput,
    ServiceVersionInput,
    StepResult,
)
from arbup.models import GroupStatus
from arbup.records import RecordsStore


def _done(message: str) -> StepResult:
    """Log what a record step changed; it is also the subtask's log."""
    activity.logger.info(message)
    return StepResult(log=[message], message=message)


class RecordSteps:
    def __init__(self, store: RecordsStore):
        self.store = store

    @activity.defn(name="begin_upgrade")
    def begin_upgrade(self, inp: GroupStepInput) -> StepResult:
        previous = self.store.set_group_status(inp.group_id, GroupStatus.UPGRADING)
        message = f"group {inp.group_id} marked UPGRADING (was {previous})"
        return _done(message)

    @activity.defn(name="update_service_version")
    def update_service_version(self, inp: ServiceVersionInput) -> StepResult:
        previous = self.store.set_service_version(inp.service_id, inp.full_version)
        message = f"service {inp.service_id} version {previous} -> {inp.full_version}"
        return _done(message)

    @activity.defn(name="update_group_version")
    def update_group_version(self, inp: GroupStepInput) -> StepResult:
        assert inp.full_version, "update_group_version needs a full version"
        previous = self.store.set_group_version(inp.group_id, inp.full_version)
        status = self.store.set_group_status(inp.group_id, GroupStatus.RUNNING)
        message = (
            f"group {inp.group_id} version {previous} -> {inp.full_version}, "
            f"status {status} -> RUNNING"
        )
        return _done(message)

    @activity.defn(name="update_service_status")
    def update_service_status(self, inp: ServiceStatusInput) -> StepResult:
        previous = self.store.set_service_status(inp.service_id, inp.status)
        message = f"service {inp.service_id} status {previous} -> {inp.status}"
        return _done(message)

    @activity.defn(name="clean_status_monitor_records")
    def clean_status_monitor_records(self, inp: GroupStepInput) -> StepResult:
        removed = self.store.clean_status_monitor_records(inp.group_id)
        message = f"removed {removed} status monitor records of group {inp.group_id}"
        return _done(message)

    @activity.defn(name="set_group_status")
    def set_group_status(self, inp: GroupStatusInput) -> StepResult:
        previous = self.store.set_group_status(inp.group_id, inp.status)
        message = f"group {inp.group_id} status {previous} -> {inp.status}"
        return _done(message)

    @activity.defn(name="save_subtasks")
    def save_subtasks(self, inp: SaveSubtasksInput) -> None:
        self.store.save_subtasks(inp.task_id, inp.subtasks, inp.actions)

    @activity.defn(name="finish_task")
    def finish_task(self, inp: FinishTaskInput) -> None:
        self.store.set_task_status(
            inp.task_id,
            inp.status,
            end_time=inp.end_time,
            message=inp.message,
            operation=inp.operation,
            prohibit_rollback=inp.prohibit_rollback,
        )
        if inp.release_group:
            self.store.release_group(inp.group_id, inp.task_id)
        activity.logger.info("task %d is %s", inp.task_id, inp.status)

    def all(self) -> list:
        return [
            self.begin_upgrade,
            self.update_service_version,
            self.update_group_version,
            self.update_service_status,
            self.clean_status_monitor_records,
            self.set_group_status,
            self.save_subtasks,
            self.finish_task,
        ]
