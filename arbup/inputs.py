"""Inputs and results of the upgrade workflow and its activities.

One model per workflow and activity, so fields can be added later without breaking
running workflows. Nothing secret goes in here: services name their SSH credential,
the worker holds the key.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, field_validator

from arbup.models import (
    check_abs_path,
    ArbitrationService,
    GroupStatus,
    Operation,
    Package,
    ServiceStatus,
    SubtaskState,
    TaskAction,
    TaskStatus,
)

TASK_QUEUE = "arbup-upgrades"
WORKFLOW_NAME = "UpgradeArbitrationGroup"
DEFAULT_STAGING_DIR = "/tmp/arbup-staging"


def workflow_id_for(group_id: int, task_id: int | str) -> str:
    return f"arbup-group-{group_id}-task-{task_id}"


# A service's network zone (ArbitrationService.zone) chooses the workers that run its
# host steps. Those of the default zone run where UpgradeOptions.host_task_queue
# says, else on the workflow's own task queue; every other zone has a task queue of
# its own, polled by ``arbup-worker --zone NAME`` near that zone's hosts.
DEFAULT_ZONE = "default"


def zone_task_queue(zone: str, base: str = TASK_QUEUE) -> str:
    """The task queue of the host steps of ``zone``, for upgrades that run on the task
    queue ``base``: ``zone_task_queue("z1") == "arbup-upgrades-zone-z1"``."""
    return f"{base}-zone-{zone}"


# Bounds of the upgrade's durations, in seconds: every one is a real timer or
# timeout in Temporal, which takes neither infinity nor centuries.
HOUR = 3600
WEEK = 7 * 24 * HOUR


class UpgradeOptions(BaseModel):
    """Knobs of one upgrade, fixed when it starts."""

    _staging = field_validator("staging_dir")(check_abs_path)

    staging_dir: str = DEFAULT_STAGING_DIR
    # A started observer must still be healthy this long after it first was.
    settle_seconds: float = Field(default=2.0, ge=0, le=HOUR, allow_inf_nan=False)
    # Between the graceful stop signal and the forced kill.
    stop_grace_seconds: float = Field(default=30.0, gt=0, le=HOUR, allow_inf_nan=False)
    # A stopped observer must still be down this long after it exited.
    stop_settle_seconds: float = Field(default=0.5, ge=0, le=HOUR, allow_inf_nan=False)
    # Attempts of one activity before its subtask fails.
    max_attempts: int = Field(default=3, ge=1, le=100)
    # How long an activity may go without a heartbeat before another worker takes it.
    heartbeat_timeout_seconds: float = Field(default=10.0, ge=1, le=HOUR, allow_inf_nan=False)
    # The task queue of the workers that can reach the hosts of the default zone
    # (services in another zone go to zone_task_queue(zone)).
    host_task_queue: str | None = None
    # How long a host step on a queue other than the workflow's own (a zone's, or
    # host_task_queue) may wait for a worker to take it before its subtask fails,
    # naming the zone and its task queue; None waits without limit.
    host_schedule_to_start_seconds: float | None = Field(
        default=300.0, ge=1, le=WEEK, allow_inf_nan=False
    )
    # Roll back by itself when a subtask fails (where a rollback is allowed).
    auto_rollback: bool = False
    # Roll back by itself when no decision came this long after a failure.
    decision_timeout_seconds: float | None = Field(
        default=None, ge=1, le=WEEK, allow_inf_nan=False
    )
    # Steps (graph step keys, e.g. "start") that may not be skipped, beyond the graph's
    # own prohibitSkip flags.
    prohibit_skip: list[str] = []


class UpgradeInput(BaseModel):
    task_id: int
    group_id: int
    group_name: str
    target_full_version: str
    target_os: str
    services: list[ArbitrationService]
    # The package for each CPU architecture found in the group.
    packages: dict[str, Package]
    # Subtask ids, indexed by seriesId.
    subtask_ids: list[int]
    creator: str
    executor: str
    start_time: datetime
    options: UpgradeOptions = UpgradeOptions()
    # What a rollback restores: the group's version and status before the upgrade,
    # and the packages of the versions installed before (for a forced rollback).
    group_version: str | None = None
    group_status: GroupStatus = GroupStatus.RUNNING
    rollback_packages: list[Package] = []
    # Ties the task's log lines together, from the request that started it (the
    # API's X-Trace-Id, or one the CLI made) to every activity on every host.
    trace_id: str | None = None


class HostStepInput(BaseModel):
    task_id: int
    subtask_id: int
    service: ArbitrationService
    package: Package
    options: UpgradeOptions
    trace_id: str | None = None


class PrepareResult(BaseModel):
    log: list[str]
    message: str
    installed_full_version: str | None
    running_full_version: str | None
    needs_upgrade: bool
    staged_path: str | None


class StepResult(BaseModel):
    log: list[str]
    message: str
    # What a host step found installed when it finished, where it looked.
    installed_full_version: str | None = None


class OperatorRequest(BaseModel):
    """A decision on a failed task, or a cancel of a running subtask."""

    actor: str
    subtask_id: int | None = None
    force: bool = False
    reason: str = ""


class GroupStepInput(BaseModel):
    task_id: int
    subtask_id: int
    group_id: int
    full_version: str | None = None


class ServiceVersionInput(BaseModel):
    task_id: int
    subtask_id: int
    service_id: int
    full_version: str


class ServiceStatusInput(BaseModel):
    task_id: int
    subtask_id: int
    service_id: int
    status: ServiceStatus


class SaveSubtasksInput(BaseModel):
    task_id: int
    subtasks: list[SubtaskState]
    actions: list[TaskAction] = []


class GroupStatusInput(BaseModel):
    task_id: int
    subtask_id: int
    group_id: int
    status: GroupStatus


class FinishTaskInput(BaseModel):
    task_id: int
    group_id: int
    status: TaskStatus
    end_time: datetime | None
    message: str | None
    release_group: bool
    operation: Operation | None = None
    prohibit_rollback: bool | None = None
