"""The records store's first tables: groups, services, packages, status monitor
records, tasks, subtasks, task actions, and the HTTP API's users, grants and keys.

A database made before migrations (with ``metadata.create_all``) is stamped at this
revision by ``arbup.records.migrate``; if it lacks some of these tables, this
revision runs on it and creates only those, leaving the others and their rows as
they are.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Times are stored as in arbup.records.schema.UTCDateTime: timestamptz on
# PostgreSQL, naive UTC on SQLite.
UTC_TIME = sa.DateTime(timezone=True)


def _groups() -> None:
    op.create_table(
        "groups",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("active_task_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def _services() -> None:
    op.create_table(
        "services",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=253), nullable=False),
        sa.Column("ssh_port", sa.Integer(), nullable=False),
        sa.Column("ssh_user", sa.String(length=32), nullable=False),
        sa.Column("ssh_credential", sa.String(length=64), nullable=False),
        sa.Column("svr_ip", sa.String(length=64), nullable=False),
        sa.Column("svr_port", sa.Integer(), nullable=False),
        sa.Column("install_path", sa.String(length=1024), nullable=False),
        sa.Column("run_user", sa.String(length=32), nullable=False),
        sa.Column("operating_system", sa.String(length=16), nullable=False),
        sa.Column("arch", sa.String(length=16), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("zone", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_services_group_id", "services", ["group_id"])


def _packages() -> None:
    op.create_table(
        "packages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("file_name", sa.String(length=255), nullable=False),
        sa.Column("path", sa.String(length=4096), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("full_version", sa.String(length=64), nullable=False),
        sa.Column("operating_system", sa.String(length=16), nullable=False),
        sa.Column("arch", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "full_version", "operating_system", "arch", name="uq_packages_target"
        ),
    )


def _status_monitor_records() -> None:
    op.create_table(
        "status_monitor_records",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_status_monitor_records_service_id", "status_monitor_records", ["service_id"]
    )


def _tasks() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("operation", sa.String(length=16), nullable=False),
        sa.Column("creator", sa.String(length=128), nullable=False),
        sa.Column("executor", sa.String(length=255), nullable=False),
        sa.Column("target_full_version", sa.String(length=64), nullable=False),
        sa.Column("target_os", sa.String(length=16), nullable=False),
        sa.Column("prohibit_rollback", sa.Boolean(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("task_definition_id", sa.Integer(), nullable=False),
        sa.Column("start_time", UTC_TIME, nullable=False),
        sa.Column("end_time", UTC_TIME, nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_tasks_group_id", "tasks", ["group_id"])
    op.create_index("ix_tasks_status", "tasks", ["status"])


def _subtasks() -> None:
    op.create_table(
        "subtasks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.String(length=1024), nullable=False),
        sa.Column("parallel_idx", sa.Integer(), nullable=False),
        sa.Column("upstreams", sa.JSON(), nullable=False),
        sa.Column("downstreams", sa.JSON(), nullable=False),
        sa.Column("timeout", sa.Integer(), nullable=False),
        sa.Column("prohibit_rollback", sa.Boolean(), nullable=False),
        sa.Column("prohibit_skip", sa.Boolean(), nullable=False),
        sa.Column("node_type", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("operation", sa.String(length=16), nullable=False),
        sa.Column("run_time", sa.Integer(), nullable=False),
        sa.Column("start_time", UTC_TIME, nullable=True),
        sa.Column("end_time", UTC_TIME, nullable=True),
        sa.Column("service_id", sa.Integer(), nullable=True),
        sa.Column("log", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"]),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id", "series_id", name="uq_subtasks_series"),
    )
    op.create_index("ix_subtasks_task_id", "subtasks", ["task_id"])


def _task_actions() -> None:
    op.create_table(
        "task_actions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("time", UTC_TIME, nullable=False),
        sa.Column("subtask_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.String(length=2048), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id", "seq", name="uq_task_actions_seq"),
    )


def _iam_users() -> None:
    op.create_table(
        "iam_users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )


def _iam_grants() -> None:
    op.create_table(
        "iam_grants",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("permission", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["iam_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "permission", "scope", name="uq_iam_grants"),
    )
    op.create_index("ix_iam_grants_user_id", "iam_grants", ["user_id"])


def _iam_access_keys() -> None:
    op.create_table(
        "iam_access_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("access_key", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("secret_check", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["iam_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("access_key"),
    )
    op.create_index("ix_iam_access_keys_user_id", "iam_access_keys", ["user_id"])


# In dependency order: a table comes after those its foreign keys refer to.
_CREATE = {
    "groups": _groups,
    "services": _services,
    "packages": _packages,
    "status_monitor_records": _status_monitor_records,
    "tasks": _tasks,
    "subtasks": _subtasks,
    "task_actions": _task_actions,
    "iam_users": _iam_users,
    "iam_grants": _iam_grants,
    "iam_access_keys": _iam_access_keys,
}
TABLES = tuple(_CREATE)


def upgrade() -> None:
    present = set(sa.inspect(op.get_bind()).get_table_names())
    for name, create in _CREATE.items():
        if name not in present:
            create()


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)
