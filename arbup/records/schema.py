"""The records store's tables (SQLAlchemy Core), for SQLite and PostgreSQL.

Enumerations are stored as plain strings (their values), lists (subtask upstreams,
downstreams and logs) as JSON, and every time as a UTC instant: ``UTCDateTime``
accepts aware datetimes only and always gives back aware UTC datetimes, on both
backends.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator):
    """A timezone-aware datetime, stored in UTC.

    PostgreSQL keeps it as ``timestamptz``. SQLite has no time zones, so the value
    is stored as naive UTC text and the UTC zone is attached again when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} cannot be stored; "
                "pass a timezone-aware datetime (for example datetime.now(UTC))"
            )
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = MetaData()

groups = Table(
    "groups",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(128), nullable=False),
    Column("version", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    # The upgrade lock: the id of the task upgrading the group, NULL when idle. It is
    # taken with a conditional UPDATE (see RecordsStore.create_task). No foreign key,
    # so that groups and tasks do not reference each other in a cycle.
    Column("active_task_id", Integer, nullable=True),
)

services = Table(
    "services",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("group_id", Integer, ForeignKey("groups.id"), nullable=False, index=True),
    Column("host", String(253), nullable=False),
    Column("ssh_port", Integer, nullable=False),
    Column("ssh_user", String(32), nullable=False),
    Column("ssh_credential", String(64), nullable=False),
    Column("svr_ip", String(64), nullable=False),
    Column("svr_port", Integer, nullable=False),
    Column("install_path", String(1024), nullable=False),
    Column("run_user", String(32), nullable=False),
    Column("operating_system", String(16), nullable=False),
    Column("arch", String(16), nullable=False),
    Column("version", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("zone", String(64), nullable=False),
)

packages = Table(
    "packages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("file_name", String(255), nullable=False),
    # Where the worker finds the file (absolute path on the worker's machine).
    Column("path", String(4096), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("full_version", String(64), nullable=False),
    Column("operating_system", String(16), nullable=False),
    Column("arch", String(16), nullable=False),
    UniqueConstraint(
        "full_version", "operating_system", "arch", name="uq_packages_target"
    ),
)

status_monitor_records = Table(
    "status_monitor_records",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "service_id", Integer, ForeignKey("services.id"), nullable=False, index=True
    ),
    Column("status", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False),
    Column("group_id", Integer, ForeignKey("groups.id"), nullable=False, index=True),
    Column("workflow_id", String(255), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("operation", String(16), nullable=False),
    Column("creator", String(128), nullable=False),
    Column("executor", String(255), nullable=False),
    Column("target_full_version", String(64), nullable=False),
    Column("target_os", String(16), nullable=False),
    Column("prohibit_rollback", Boolean, nullable=False),
    Column("type", String(32), nullable=False),
    Column("task_definition_id", Integer, nullable=False),
    Column("start_time", UTCDateTime, nullable=False),
    Column("end_time", UTCDateTime, nullable=True),
    Column("message", Text, nullable=True),
)

subtasks = Table(
    "subtasks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "task_id",
        Integer,
        ForeignKey("tasks.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("series_id", Integer, nullable=False),
    Column("name", String(255), nullable=False),
    Column("description", String(1024), nullable=False),
    Column("parallel_idx", Integer, nullable=False),
    Column("upstreams", JSON, nullable=False),
    Column("downstreams", JSON, nullable=False),
    Column("timeout", Integer, nullable=False),
    Column("prohibit_rollback", Boolean, nullable=False),
    Column("prohibit_skip", Boolean, nullable=False),
    Column("node_type", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("operation", String(16), nullable=False),
    Column("run_time", Integer, nullable=False),
    Column("start_time", UTCDateTime, nullable=True),
    Column("end_time", UTCDateTime, nullable=True),
    Column("service_id", Integer, ForeignKey("services.id"), nullable=True),
    Column("log", JSON, nullable=False),
    # seriesId is the generation order of the subtasks, unique within a task.
    UniqueConstraint("task_id", "series_id", name="uq_subtasks_series"),
)

# Who did what to a task, and when: operator decisions and policy actions.
task_actions = Table(
    "task_actions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "task_id",
        Integer,
        ForeignKey("tasks.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("seq", Integer, nullable=False),
    Column("action", String(32), nullable=False),
    Column("actor", String(255), nullable=False),
    Column("time", UTCDateTime, nullable=False),
    Column("subtask_id", Integer, nullable=True),
    Column("detail", String(2048), nullable=False),
    UniqueConstraint("task_id", "seq", name="uq_task_actions_seq"),
)

Index("ix_subtasks_task_id", subtasks.c.task_id)

# -- users, their grants and access keys of the HTTP API (see arbup/records/iam.py) --

iam_users = Table(
    "iam_users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    # "scrypt$n$r$p$<salt b64>$<hash b64>"; NULL for a user who signs with keys only.
    Column("password_hash", String(255), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)

iam_grants = Table(
    "iam_grants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "user_id",
        Integer,
        ForeignKey("iam_users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("permission", String(64), nullable=False),
    # "*" (every resource, or a global permission) or an arbitration service id.
    Column("scope", String(32), nullable=False),
    UniqueConstraint("user_id", "permission", "scope", name="uq_iam_grants"),
)

iam_access_keys = Table(
    "iam_access_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("access_key", String(64), nullable=False, unique=True),
    Column(
        "user_id",
        Integer,
        ForeignKey("iam_users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    # sha256 of the key's secret: tells a secret derived with another master key
    # apart from a wrong signature. The secret itself is not stored (see iam.py).
    Column("secret_check", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
