"""Domain models shared by the records store, the workflow, the activities and the CLI.

Every value that ends up in a shell command on a host (host names, paths, users,
versions, OS tags) is validated here, so activities only ever quote values that are
already known to be well formed.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from arbup.versions import check_arch, check_full_version, check_os_tag

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_PATH_RE = re.compile(r"^/[A-Za-z0-9._/+-]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_host(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not isinstance(value, str) or not _HOSTNAME_RE.match(value):
        raise ValueError(f"{value!r} is neither an IP address nor a host name")
    return value


def check_user(value: str) -> str:
    if not _USER_RE.match(value):
        raise ValueError(f"{value!r} is not a valid Unix user name")
    return value


def check_abs_path(value: str) -> str:
    if not _PATH_RE.match(value) or "/../" in f"{value}/" or "//" in value:
        raise ValueError(
            f"{value!r} is not a plain absolute path (letters, digits, . _ - + /)"
        )
    return value.rstrip("/") or "/"


def check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a valid name (letters, digits, . _ -)")
    return value


class ServiceStatus(StrEnum):
    RUNNING = "RUNNING"
    UNAVAILABLE = "UNAVAILABLE"
    STOPPED = "STOPPED"


class GroupStatus(StrEnum):
    RUNNING = "RUNNING"
    UPGRADING = "UPGRADING"
    UNAVAILABLE = "UNAVAILABLE"


class ArbitrationService(BaseModel):
    """One arbitration service (an observer in arbitration mode) and how to reach it."""

    model_config = ConfigDict(frozen=True)

    id: int = Field(gt=0)
    group_id: int = Field(gt=0)
    host: str
    ssh_port: int = Field(default=22, ge=1, le=65535)
    ssh_user: str = "root"
    ssh_credential: str = "default"
    svr_ip: str
    svr_port: int = Field(default=2882, ge=1, le=65535)
    install_path: str = "/home/admin/oceanbase"
    run_user: str = "admin"
    operating_system: str
    arch: str
    version: str
    status: ServiceStatus = ServiceStatus.RUNNING
    priority: int = 0
    zone: str = "default"

    _host = field_validator("host", "svr_ip")(check_host)
    _users = field_validator("ssh_user", "run_user")(check_user)
    _path = field_validator("install_path")(check_abs_path)
    _names = field_validator("ssh_credential", "zone")(check_name)
    _os = field_validator("operating_system")(check_os_tag)
    _arch = field_validator("arch")(check_arch)
    _version = field_validator("version")(check_full_version)

    @property
    def address(self) -> str:
        return f"{self.svr_ip}:{self.svr_port}"


class ArbitrationGroup(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int = Field(gt=0)
    name: str
    version: str
    status: GroupStatus = GroupStatus.RUNNING
    active_task_id: int | None = None
    services: list[ArbitrationService] = []

    _version = field_validator("version")(check_full_version)


class Package(BaseModel):
    """An RPM the worker can upload, as listed in the package repository."""

    model_config = ConfigDict(frozen=True)

    id: int | None = None
    name: str = "oceanbase"
    file_name: str
    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    full_version: str
    operating_system: str
    arch: str

    _version = field_validator("full_version")(check_full_version)
    _os = field_validator("operating_system")(check_os_tag)
    _arch = field_validator("arch")(check_arch)

    @property
    def version(self) -> str:
        return self.full_version.split("-")[0]

    @property
    def build_number(self) -> str:
        return self.full_version.split("-")[1]


class TaskStatus(StrEnum):
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    SUCCESSFUL = "SUCCESSFUL"


class SubtaskStatus(StrEnum):
    PENDING = "PENDING"
    READY = "READY"
    RUNNING = "RUNNING"
    CANCELING = "CANCELING"
    FAILED = "FAILED"
    SUCCESSFUL = "SUCCESSFUL"


class Operation(StrEnum):
    EXECUTE = "EXECUTE"
    RETRY = "RETRY"
    ROLLBACK = "ROLLBACK"
    SKIP = "SKIP"
    ROLLBACK_SKIP = "ROLLBACK_SKIP"
    CANCEL = "CANCEL"


class SubtaskState(BaseModel):
    """A subtask as OCP shows it, plus the start/end times and its log."""

    id: int
    task_id: int
    series_id: int
    name: str
    description: str
    parallel_idx: int
    upstreams: list[int]
    downstreams: list[int]
    timeout: int
    prohibit_rollback: bool
    prohibit_skip: bool
    node_type: str = "JAVA_TASK"
    status: SubtaskStatus = SubtaskStatus.PENDING
    operation: Operation = Operation.EXECUTE
    run_time: int = 1
    start_time: datetime | None = None
    end_time: datetime | None = None
    service_id: int | None = None
    log: list[str] = []

    def to_ocp(self) -> dict:
        """The subtask in the JSON shape of OCP's Task return structure."""
        data = {
            "description": self.description,
            "downstreams": self.downstreams,
            "id": self.id,
            "name": self.name,
            "nodeType": self.node_type,
            "operation": self.operation.value,
            "parallelIdx": self.parallel_idx,
            "prohibitRollback": self.prohibit_rollback,
            "prohibitSkip": self.prohibit_skip,
            "runTime": self.run_time,
            "seriesId": self.series_id,
            "status": self.status.value,
            "taskId": self.task_id,
            "timeout": self.timeout,
            "upstreams": self.upstreams,
        }
        if self.start_time:
            data["startTime"] = ocp_time(self.start_time)
        if self.end_time:
            data["endTime"] = ocp_time(self.end_time)
        return data


class TaskAction(BaseModel):
    """An operator's (or a policy's) action on a task: who did what, and when."""

    action: str
    actor: str
    time: datetime
    subtask_id: int | None = None
    detail: str = ""


class TaskState(BaseModel):
    """An upgrade task: what the workflow's query returns and what the store keeps."""

    id: int
    name: str = "Upgrade arbitration service group"
    group_id: int
    target_full_version: str
    target_os: str
    workflow_id: str
    status: TaskStatus = TaskStatus.RUNNING
    operation: Operation = Operation.EXECUTE
    creator: str
    executor: str
    prohibit_rollback: bool = False
    start_time: datetime
    end_time: datetime | None = None
    task_definition_id: int = -1
    type: str = "MANUAL"
    waiting_for: str | None = None
    message: str | None = None
    subtasks: list[SubtaskState] = []
    actions: list[TaskAction] = []

    def to_ocp(self) -> dict:
        data = {
            "creator": self.creator,
            "executor": self.executor,
            "id": self.id,
            "name": self.name,
            "operation": self.operation.value,
            "prohibitRollback": self.prohibit_rollback,
            "startTime": ocp_time(self.start_time),
            "status": self.status.value,
            "subtasks": [s.to_ocp() for s in self.subtasks],
            "taskDefinitionId": self.task_definition_id,
            "type": self.type,
        }
        if self.end_time:
            data["endTime"] = ocp_time(self.end_time)
        return data


def ocp_time(value: datetime) -> str:
    """OCP's timestamps: ISO 8601 with milliseconds and the UTC offset."""
    return value.isoformat(timespec="milliseconds")
