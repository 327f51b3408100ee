"""The request and response bodies, for validation and for the OpenAPI document.

Responses are built as plain JSON (``TaskState.to_ocp()`` and friends); these models
describe them, field for field, so the served document matches what is sent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from arbup.models import (
    ArbitrationGroup,
    ArbitrationService,
    GroupStatus,
    Operation,
    Package,
    ServiceStatus,
    SubtaskStatus,
    TaskStatus,
)

# Stricter than the domain parsers (ASCII digits only); the service checks again.
FULL_VERSION_PATTERN = r"^[0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4}-[0-9]{1,30}$"
OS_TAG_PATTERN = r"^[a-z][a-z0-9]{1,15}$"
ARCH_PATTERN = r"^(x86_64|aarch64)$"
MAX_ID = 2**63 - 1

SAMPLE_REQUEST = {"fullVersion": "4.3.4.0-200000022024070119", "operatingSystem": "el7"}


class UpgradeRequest(BaseModel):
    """Body of POST /api/v2/arbitration/services/groups/{id}/upgrade."""

    model_config = ConfigDict(json_schema_extra={"examples": [SAMPLE_REQUEST]})

    fullVersion: Annotated[
        StrictStr,
        Field(
            pattern=FULL_VERSION_PATTERN,
            max_length=64,
            description="Target package's full version <a.b.c.d>-<build>, "
            "without the .rpm extension",
        ),
    ]
    operatingSystem: Annotated[
        StrictStr,
        Field(
            pattern=OS_TAG_PATTERN, description="Package OS tag: el7, el8, alios7, ..."
        ),
    ]


# -- the envelope ------------------------------------------------------------------


class Envelope(BaseModel):
    successful: bool
    timestamp: datetime = Field(description="When the server completed the request")
    duration: int = Field(description="Milliseconds the server spent on the request")
    status: int = Field(description="The HTTP status")
    traceId: str = Field(description="Trace id of the request, also in X-Trace-Id")
    server: str = Field(description="The server that answered")


class SubError(BaseModel):
    code: int
    message: str
    target: str | None = None


class ErrorBody(BaseModel):
    code: int = Field(description="OCP's error code, or arbup's (600xx)")
    message: str
    target: str | None = Field(
        default=None, description="The field or resource at fault"
    )
    debugMessage: str | None = None
    subErrors: list[SubError] | None = None


class ErrorEnvelope(Envelope):
    successful: bool = Field(description="Always false")
    error: ErrorBody


class PageInfo(BaseModel):
    totalElements: int
    totalPages: int
    number: int = Field(description="This page's number, from 1")
    size: int


# -- tasks -------------------------------------------------------------------------


class Subtask(BaseModel):
    description: str
    downstreams: list[int]
    id: int
    name: str
    nodeType: str
    operation: Operation
    parallelIdx: int = Field(description="Index of the service, -1 for single nodes")
    prohibitRollback: bool
    prohibitSkip: bool
    runTime: int = Field(description="How many times the subtask has run")
    seriesId: int = Field(description="Generation order, unique within the task")
    status: SubtaskStatus
    taskId: int
    timeout: int = Field(description="Seconds")
    upstreams: list[int]
    startTime: datetime | None = None
    endTime: datetime | None = None


class TaskSummary(BaseModel):
    creator: str
    executor: str
    id: int
    name: str
    operation: Operation
    prohibitRollback: bool
    startTime: datetime
    endTime: datetime | None = None
    status: TaskStatus
    taskDefinitionId: int
    type: str


class Task(TaskSummary):
    subtasks: list[Subtask]


class TaskPage(BaseModel):
    contents: list[TaskSummary]
    page: PageInfo


class SubtaskLog(BaseModel):
    log: str = Field(description="What the subtask did on its host, one line per step")


class TaskEnvelope(Envelope):
    data: Task


class TaskPageEnvelope(Envelope):
    data: TaskPage


class SubtaskLogEnvelope(Envelope):
    data: SubtaskLog


# -- arbitration groups, services, packages ----------------------------------------


class Service(BaseModel):
    id: int
    groupId: int
    host: str
    svrIp: str
    svrPort: int
    installPath: str
    runUser: str
    operatingSystem: str
    architecture: str
    version: str
    status: ServiceStatus
    priority: int
    zone: str

    @classmethod
    def of(cls, s: ArbitrationService) -> dict:
        return cls(
            id=s.id,
            groupId=s.group_id,
            host=s.host,
            svrIp=s.svr_ip,
            svrPort=s.svr_port,
            installPath=s.install_path,
            runUser=s.run_user,
            operatingSystem=s.operating_system,
            architecture=s.arch,
            version=s.version,
            status=s.status,
            priority=s.priority,
            zone=s.zone,
        ).model_dump(mode="json")


class Group(BaseModel):
    id: int
    name: str
    version: str
    status: GroupStatus
    activeTaskId: int | None = Field(description="The task upgrading the group, if any")
    services: list[Service]

    @classmethod
    def of(cls, g: ArbitrationGroup) -> dict:
        return {
            "id": g.id,
            "name": g.name,
            "version": g.version,
            "status": g.status.value,
            "activeTaskId": g.active_task_id,
            "services": [Service.of(s) for s in g.services],
        }


class GroupPage(BaseModel):
    contents: list[Group]
    page: PageInfo


class SoftwarePackage(BaseModel):
    id: int
    name: str
    fileName: str
    size: int
    checksum: str = Field(description="sha256, hex")
    fullVersion: str
    version: str
    buildNumber: str
    operatingSystem: str
    architecture: str

    @classmethod
    def of(cls, p: Package) -> dict:
        return cls(
            id=p.id or 0,
            name=p.name,
            fileName=p.file_name,
            size=p.size,
            checksum=p.sha256,
            fullVersion=p.full_version,
            version=p.version,
            buildNumber=p.build_number,
            operatingSystem=p.operating_system,
            architecture=p.arch,
        ).model_dump(mode="json")


class PackagePage(BaseModel):
    contents: list[SoftwarePackage]
    page: PageInfo


class GroupEnvelope(Envelope):
    data: Group


class GroupPageEnvelope(Envelope):
    data: GroupPage


class PackagePageEnvelope(Envelope):
    data: PackagePage


# -- the current user --------------------------------------------------------------


class Grant(BaseModel):
    permission: str
    scope: str = Field(description="'*' or an arbitration service id")


class CurrentUser(BaseModel):
    name: str
    authenticatedBy: str = Field(description="password or access-key")
    grants: list[Grant]


class CurrentUserEnvelope(Envelope):
    data: CurrentUser
