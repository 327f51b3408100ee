"""The records store: arbitration groups, services, packages, tasks and subtasks.

Synchronous and thread-safe: every public method opens its own connection and
transaction from the engine's pool and closes it before returning, so one
``RecordsStore`` can be shared by Temporal activity threads, the CLI and the HTTP API.

Backends: SQLite (a file; foreign keys on, WAL journal, 30 s busy timeout, and write
transactions start with ``BEGIN IMMEDIATE`` so writers queue up instead of failing)
and PostgreSQL through psycopg (``pool_pre_ping``; read committed; rows read before
an update are locked with ``SELECT ... FOR NO KEY UPDATE``).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from arbup.inventory import Inventory
from arbup.models import (
    ArbitrationGroup,
    ArbitrationService,
    GroupStatus,
    Operation,
    Package,
    ServiceStatus,
    SubtaskState,
    TaskAction,
    TaskState,
    TaskStatus,
)
from arbup.records.schema import (
    groups,
    packages,
    services,
    status_monitor_records,
    task_actions,
    tasks,
)
from arbup.records.schema import subtasks as subtask_table
from arbup.versions import check_full_version

if TYPE_CHECKING:
    from arbup.records.migrate import SchemaState, UpgradeResult

log = logging.getLogger("arbup.records")

_SCHEMA_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_SQLITE_BUSY_TIMEOUT_S = 30
# How often create_task retries taking the lock when it lost it to a task that has
# already released it again (only possible under concurrent create/release).
_LOCK_ATTEMPTS = 3
# The PostgreSQL advisory lock migrations hold (any fixed number, arbup's own).
_MIGRATION_LOCK_KEY = 0x61726275705F6462  # "arbup_db"


class RecordsError(Exception):
    """Base class of the records store's errors."""


class NotFound(RecordsError):
    """An id names no row."""


class SchemaNotCurrent(RecordsError):
    """The database's schema is not the one this arbup works with (see
    ``RecordsStore.ensure_schema``)."""


class GroupBusy(RecordsError):
    """The group is already being upgraded by another task."""

    def __init__(self, group_id: int, task_id: int) -> None:
        self.group_id = group_id
        self.task_id = task_id
        super().__init__(
            f"arbitration service group {group_id} is being upgraded by task "
            f"{task_id}; wait for that task to finish, or retry or roll it back"
        )

    def __reduce__(self):
        return (type(self), (self.group_id, self.task_id))


class RecordsStore:
    def __init__(self, url: str, *, schema: str | None = None) -> None:
        """Open the store at a SQLAlchemy URL.

        ``schema`` (PostgreSQL only) puts the tables in that schema by setting the
        connections' ``search_path``; ``create_schema`` creates it if needed.
        """
        parsed = make_url(url)
        self.backend = parsed.get_backend_name()
        self.schema = schema
        if schema is not None:
            if self.backend != "postgresql":
                raise ValueError("schema= is only supported with PostgreSQL")
            if not _SCHEMA_NAME_RE.match(schema):
                raise ValueError(
                    f"schema name {schema!r} must be lower-case letters, digits and _"
                )
        if self.backend == "sqlite":
            self._engine = _sqlite_engine(parsed)
        elif self.backend == "postgresql":
            connect_args = {}
            if schema is not None:
                connect_args["options"] = f"-csearch_path={schema}"
            self._engine = create_engine(
                parsed, pool_pre_ping=True, connect_args=connect_args
            )
        else:
            raise ValueError(
                f"unsupported database {self.backend!r}; use sqlite:///<file> or "
                "postgresql+psycopg://user@host:port/database"
            )

    @classmethod
    def from_env(cls) -> RecordsStore:
        """ARBUP_DB_URL, or a SQLite file in ARBUP_STATE_DIR (default ./.arbup)."""
        return cls(url_from_env())

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def display_url(self) -> str:
        """The store's URL without its password, for messages."""
        from arbup.records.migrate import mask_url

        return mask_url(self._engine.url)

    # -- schema ---------------------------------------------------------------------

    def create_schema(self) -> UpgradeResult:
        """Bring the tables to the newest revision of the migrations (idempotent).

        Applies what is missing of ``arbup/records/migrations`` and returns an
        ``arbup.records.migrate.UpgradeResult``. A database whose tables were made
        before migrations existed is stamped at the initial revision first. With
        ``schema=``, the PostgreSQL schema is created if needed and holds the
        version table too. Concurrent calls are serialized: on SQLite by the write
        lock, on PostgreSQL by a transaction-level advisory lock.
        """
        from arbup.records import migrate

        with self._migrating() as conn:
            if self.schema is not None:
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
            result = migrate.upgrade(conn, self.schema, name=self.display_url)
        if result.changed:
            log.info(
                "records store %s: was %s; now at revision %s (head)",
                self.display_url,
                result.before.describe(),
                result.after.current,
            )
        return result

    def schema_state(self) -> SchemaState:
        """Where the database stands against the migrations
        (``arbup.records.migrate.SchemaState``); changes nothing."""
        from arbup.records import migrate

        with self._read() as conn:
            return migrate.state(conn, self.schema)

    def ensure_schema(self) -> SchemaState:
        """What a long-running process (the worker, the HTTP API) does at start.

        A SQLite store is brought to the newest revision, as ``create_schema``
        does: it is the local, single-machine setup. A PostgreSQL store is never
        changed here: unless it is at the newest revision, SchemaNotCurrent says
        to run ``arbup db upgrade``, so that one deliberate step migrates the
        shared database and processes of different versions never race to do it.
        """
        if self.backend == "sqlite":
            result = self.create_schema()
            return result.after
        found = self.schema_state()
        if found.at_head:
            return found
        if not found.known:
            advice = "run the arbup that migrated it, or a newer one"
        else:
            advice = "run `arbup db upgrade` with the same ARBUP_DB_URL first"
        raise SchemaNotCurrent(
            f"the records store at {self.display_url} is {found.describe()}; {advice}"
        )

    def dispose(self) -> None:
        self._engine.dispose()

    # -- transactions ---------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _migrating(self) -> Iterator[Connection]:
        """One transaction for a migration, which only one process runs at a time."""
        with self._engine.connect() as conn:
            if self.backend == "sqlite":
                # Off while tables are copied by batch operations, or dropping the
                # old copy would cascade its deletes; checked again before commit.
                # (The pragma has no effect inside a transaction, so it is set on
                # the driver's connection, which autocommits, before BEGIN.)
                conn.connection.dbapi_connection.execute("PRAGMA foreign_keys = OFF")
            try:
                conn.execution_options(arbup_write=True)
                with conn.begin():
                    if self.backend == "postgresql":
                        conn.execute(
                            select(func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY))
                        )
                    yield conn
                    if self.backend == "sqlite":
                        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                        if broken:
                            raise RecordsError(
                                "the migration left rows whose foreign keys point "
                                f"nowhere: {broken[:5]}; nothing was changed"
                            )
            finally:
                if self.backend == "sqlite" and not conn.invalidated:
                    conn.connection.dbapi_connection.execute(
                        "PRAGMA foreign_keys = ON"
                    )

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(arbup_write=True)
            try:
                with conn.begin():
                    yield conn
            except IntegrityError as exc:
                raise RecordsError(
                    f"the database refused the change: {exc.orig}"
                ) from exc

    # -- inventory ------------------------------------------------------------------

    def load_inventory(self, inventory: Inventory) -> dict[str, int]:
        """Insert or update the inventory's groups, services and packages, all in one
        transaction.

        Groups and services are matched by id, packages by (full version, OS, arch).
        Rows not in the inventory are left alone, and so is a group's upgrade lock.
        A group that is being upgraded may only be "loaded" unchanged: changing it
        or its services raises GroupBusy and nothing is written.
        """
        counts = {"groups": 0, "services": 0, "packages": 0}
        with self._write() as conn:
            for group in inventory.groups:
                values = {
                    "name": group.name,
                    "version": group.version,
                    "status": group.status.value,
                }
                row = _locked_row(conn, groups, group.id)
                if row is None:
                    conn.execute(
                        insert(groups).values(
                            id=group.id, active_task_id=None, **values
                        )
                    )
                elif _differs(row, values):
                    _refuse_if_busy(row.id, row.active_task_id)
                    conn.execute(
                        update(groups).where(groups.c.id == group.id).values(**values)
                    )
                counts["groups"] += 1

                for service in group.services:
                    values = _service_values(service)
                    row = _locked_row(conn, services, service.id)
                    if row is None:
                        _refuse_if_busy(group.id, _active_task(conn, group.id))
                        conn.execute(insert(services).values(**values))
                    elif _differs(row, values):
                        _refuse_if_busy(row.group_id, _active_task(conn, row.group_id))
                        _refuse_if_busy(group.id, _active_task(conn, group.id))
                        conn.execute(
                            update(services)
                            .where(services.c.id == service.id)
                            .values(**values)
                        )
                    counts["services"] += 1

            for package in inventory.packages:
                values = package.model_dump(mode="json", exclude={"id"})
                existing = conn.execute(
                    select(packages.c.id).where(
                        packages.c.full_version == package.full_version,
                        packages.c.operating_system == package.operating_system,
                        packages.c.arch == package.arch,
                    )
                ).scalar()
                if existing is None:
                    conn.execute(insert(packages).values(**values))
                else:
                    conn.execute(
                        update(packages)
                        .where(packages.c.id == existing)
                        .values(**values)
                    )
                counts["packages"] += 1
        return counts

    def get_group(self, group_id: int) -> ArbitrationGroup | None:
        """The group with its services ordered by (priority, id), or None."""
        with self._read() as conn:
            row = conn.execute(select(groups).where(groups.c.id == group_id)).first()
            if row is None:
                return None
            members = conn.execute(
                select(services)
                .where(services.c.group_id == group_id)
                .order_by(services.c.priority, services.c.id)
            ).all()
        return _group(row, members)

    def list_groups(self) -> list[ArbitrationGroup]:
        """All groups by id, each with its services ordered by (priority, id)."""
        with self._read() as conn:
            group_rows = conn.execute(select(groups).order_by(groups.c.id)).all()
            service_rows = conn.execute(
                select(services).order_by(services.c.priority, services.c.id)
            ).all()
        by_group: dict[int, list] = {}
        for row in service_rows:
            by_group.setdefault(row.group_id, []).append(row)
        return [_group(row, by_group.get(row.id, [])) for row in group_rows]

    def get_service(self, service_id: int) -> ArbitrationService | None:
        with self._read() as conn:
            row = conn.execute(
                select(services).where(services.c.id == service_id)
            ).first()
        return None if row is None else _service(row)

    def find_package(
        self, full_version: str, operating_system: str, arch: str
    ) -> Package | None:
        with self._read() as conn:
            row = conn.execute(
                select(packages).where(
                    packages.c.full_version == full_version,
                    packages.c.operating_system == operating_system,
                    packages.c.arch == arch,
                )
            ).first()
        return None if row is None else Package.model_validate(dict(row._mapping))

    def list_packages(self, full_version: str | None = None) -> list[Package]:
        """Packages ordered by (full version, OS, arch), optionally of one version."""
        query = select(packages).order_by(
            packages.c.full_version, packages.c.operating_system, packages.c.arch
        )
        if full_version is not None:
            query = query.where(packages.c.full_version == full_version)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [Package.model_validate(dict(row._mapping)) for row in rows]

    # -- tasks ----------------------------------------------------------------------

    def create_task(self, draft: TaskState) -> TaskState:
        """Take the group's upgrade lock and store the task with its subtasks.

        In one transaction: the lock (``groups.active_task_id``) is set only if it is
        free, with a conditional UPDATE; if another task holds it, GroupBusy is raised
        and nothing is written. ``draft.id`` is ignored. The draft's subtask ids are
        provisional: the database assigns real ids and upstreams/downstreams are
        remapped to them. ``{task_id}`` in ``draft.workflow_id`` becomes the real id.
        """
        _check_draft(draft)
        _aware(draft.start_time, "start_time")
        _aware(draft.end_time, "end_time")
        with self._write() as conn:
            row = conn.execute(
                select(groups.c.active_task_id).where(groups.c.id == draft.group_id)
            ).first()
            if row is None:
                raise NotFound(f"arbitration service group {draft.group_id} not found")
            _refuse_if_busy(draft.group_id, row.active_task_id)
            group_services = set(
                conn.execute(
                    select(services.c.id).where(services.c.group_id == draft.group_id)
                ).scalars()
            )
            for sub in draft.subtasks:
                if sub.service_id is not None and sub.service_id not in group_services:
                    raise RecordsError(
                        f"draft subtask {sub.id} ({sub.name!r}) names service "
                        f"{sub.service_id}, which is not in group {draft.group_id}"
                    )

            task_values = draft.model_dump(
                mode="python", exclude={"id", "subtasks", "waiting_for", "actions"}
            )
            task_values.update(
                status=draft.status.value,
                operation=draft.operation.value,
            )
            task_id = conn.execute(
                insert(tasks).values(**task_values)
            ).inserted_primary_key[0]
            workflow_id = draft.workflow_id.replace("{task_id}", str(task_id))
            if workflow_id != draft.workflow_id:
                conn.execute(
                    update(tasks)
                    .where(tasks.c.id == task_id)
                    .values(workflow_id=workflow_id)
                )

            _take_lock(conn, draft.group_id, task_id)

            real_ids: dict[int, int] = {}
            for sub in draft.subtasks:
                values = _subtask_values(sub)
                values.update(
                    task_id=task_id,
                    series_id=sub.series_id,
                    name=sub.name,
                    description=sub.description,
                    parallel_idx=sub.parallel_idx,
                    upstreams=[],
                    downstreams=[],
                    timeout=sub.timeout,
                    prohibit_rollback=sub.prohibit_rollback,
                    prohibit_skip=sub.prohibit_skip,
                    node_type=sub.node_type,
                    service_id=sub.service_id,
                )
                result = conn.execute(insert(subtask_table).values(**values))
                real_ids[sub.id] = result.inserted_primary_key[0]
            for sub in draft.subtasks:
                conn.execute(
                    update(subtask_table)
                    .where(subtask_table.c.id == real_ids[sub.id])
                    .values(
                        upstreams=[real_ids[i] for i in sub.upstreams],
                        downstreams=[real_ids[i] for i in sub.downstreams],
                    )
                )
            return _load_task(conn, task_id, with_subtasks=True)

    def release_group(self, group_id: int, task_id: int) -> None:
        """Free the group's upgrade lock if ``task_id`` holds it, else do nothing."""
        with self._write() as conn:
            if _locked_row(conn, groups, group_id) is None:
                raise NotFound(f"arbitration service group {group_id} not found")
            conn.execute(
                update(groups)
                .where(groups.c.id == group_id, groups.c.active_task_id == task_id)
                .values(active_task_id=None)
            )

    def save_subtasks(
        self,
        task_id: int,
        subtasks: list[SubtaskState],
        actions: list[TaskAction] | None = None,
    ) -> None:
        """Store the subtasks' status, operation, run time, start/end times and log,
        matched by subtask id within the task, and the task's actions (the whole
        list, in order; those already stored are kept). All or nothing; idempotent."""
        for sub in subtasks:
            _aware(sub.start_time, f"subtask {sub.id} start_time")
            _aware(sub.end_time, f"subtask {sub.id} end_time")
        with self._write() as conn:
            if _locked_row(conn, tasks, task_id) is None:
                raise NotFound(f"task {task_id} not found")
            if actions:
                stored = conn.execute(
                    select(func.count())
                    .select_from(task_actions)
                    .where(task_actions.c.task_id == task_id)
                ).scalar_one()
                for seq, action in enumerate(actions[stored:], start=stored):
                    conn.execute(
                        insert(task_actions).values(
                            task_id=task_id, seq=seq, **action.model_dump()
                        )
                    )
            for sub in subtasks:
                result = conn.execute(
                    update(subtask_table)
                    .where(
                        subtask_table.c.id == sub.id, subtask_table.c.task_id == task_id
                    )
                    .values(**_subtask_values(sub))
                )
                if result.rowcount != 1:
                    raise NotFound(f"subtask {sub.id} of task {task_id} not found")

    def set_task_status(
        self,
        task_id: int,
        status: TaskStatus,
        *,
        end_time: datetime | None = None,
        message: str | None = None,
        operation: Operation | None = None,
        prohibit_rollback: bool | None = None,
    ) -> None:
        """Set the task's status, end time and message, exactly as given (None
        clears end time and message, e.g. when a failed task is retried). The
        operation and the prohibit-rollback flag are changed only when given."""
        _aware(end_time, "end_time")
        values: dict[str, Any] = {
            "status": TaskStatus(status).value,
            "end_time": end_time,
            "message": message,
        }
        if operation is not None:
            values["operation"] = Operation(operation).value
        if prohibit_rollback is not None:
            values["prohibit_rollback"] = prohibit_rollback
        with self._write() as conn:
            result = conn.execute(
                update(tasks).where(tasks.c.id == task_id).values(**values)
            )
            if result.rowcount != 1:
                raise NotFound(f"task {task_id} not found")

    def get_task(self, task_id: int) -> TaskState | None:
        """The task with its subtasks ordered by id, or None."""
        with self._read() as conn:
            try:
                return _load_task(conn, task_id, with_subtasks=True)
            except NotFound:
                return None

    def list_tasks(
        self,
        *,
        name: str | None = None,
        status: TaskStatus | None = None,
        type: str | None = None,
        group_id: int | None = None,
        page: int = 1,
        size: int = 20,
    ) -> tuple[list[TaskState], int]:
        """One page of tasks, newest first, and the total number matching.

        ``name`` matches case-insensitively anywhere in the task name; the other
        filters match exactly. Listed tasks carry no subtasks.
        """
        if page < 1 or size < 1:
            raise ValueError(f"page ({page}) and size ({size}) must be at least 1")
        conditions = []
        if name:
            conditions.append(
                func.lower(tasks.c.name).contains(name.lower(), autoescape=True)
            )
        if status is not None:
            conditions.append(tasks.c.status == TaskStatus(status).value)
        if type is not None:
            conditions.append(tasks.c.type == type)
        if group_id is not None:
            conditions.append(tasks.c.group_id == group_id)
        with self._read() as conn:
            total = conn.execute(
                select(func.count()).select_from(tasks).where(*conditions)
            ).scalar_one()
            rows = conn.execute(
                select(tasks)
                .where(*conditions)
                .order_by(tasks.c.id.desc())
                .limit(size)
                .offset((page - 1) * size)
            ).all()
        return [_task(row, []) for row in rows], total

    # -- upgrade changes ------------------------------------------------------------

    def set_service_version(self, service_id: int, full_version: str) -> str:
        full_version = check_full_version(full_version)
        return self._swap(services, service_id, "version", full_version, "service")

    def set_group_version(self, group_id: int, full_version: str) -> str:
        full_version = check_full_version(full_version)
        return self._swap(
            groups, group_id, "version", full_version, "arbitration service group"
        )

    def set_service_status(
        self, service_id: int, status: ServiceStatus
    ) -> ServiceStatus:
        value = ServiceStatus(status).value
        return ServiceStatus(
            self._swap(services, service_id, "status", value, "service")
        )

    def set_group_status(self, group_id: int, status: GroupStatus) -> GroupStatus:
        value = GroupStatus(status).value
        return GroupStatus(
            self._swap(groups, group_id, "status", value, "arbitration service group")
        )

    def _swap(self, table, row_id: int, column: str, value: str, what: str) -> str:
        """Set one column of one row and return its previous value."""
        with self._write() as conn:
            previous = conn.execute(
                select(table.c[column])
                .where(table.c.id == row_id)
                .with_for_update(key_share=True)
            ).first()
            if previous is None:
                raise NotFound(f"{what} {row_id} not found")
            if previous[0] != value:
                conn.execute(
                    update(table).where(table.c.id == row_id).values({column: value})
                )
            return previous[0]

    def add_status_monitor_record(
        self, service_id: int, status: str, detail: str = ""
    ) -> int:
        with self._write() as conn:
            if _locked_row(conn, services, service_id) is None:
                raise NotFound(f"service {service_id} not found")
            result = conn.execute(
                insert(status_monitor_records).values(
                    service_id=service_id,
                    status=status,
                    detail=detail,
                    created_at=datetime.now(UTC),
                )
            )
            return result.inserted_primary_key[0]

    def clean_status_monitor_records(self, group_id: int) -> int:
        """Delete the status monitor records of the group's services; how many."""
        with self._write() as conn:
            _require_group(conn, group_id)
            result = conn.execute(
                delete(status_monitor_records).where(
                    status_monitor_records.c.service_id.in_(_service_ids(group_id))
                )
            )
            return result.rowcount

    def count_status_monitor_records(self, group_id: int) -> int:
        with self._read() as conn:
            _require_group(conn, group_id)
            return conn.execute(
                select(func.count())
                .select_from(status_monitor_records)
                .where(status_monitor_records.c.service_id.in_(_service_ids(group_id)))
            ).scalar_one()


# -- engines --------------------------------------------------------------------------


def url_from_env() -> str:
    """ARBUP_DB_URL, or the SQLite file ``arbup.db`` in ARBUP_STATE_DIR (default
    ./.arbup; the folder is created)."""
    url = os.environ.get("ARBUP_DB_URL")
    if not url:
        state_dir = Path(os.environ.get("ARBUP_STATE_DIR") or ".arbup")
        state_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(state_dir / 'arbup.db').resolve()}"
    return url


def _sqlite_engine(url) -> Engine:
    engine = create_engine(url, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # SQLAlchemy emits BEGIN itself (see _on_begin), not the sqlite3 module.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_S * 1000}")
        _use_wal(cursor)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A write transaction takes SQLite's write lock up front, so concurrent
        # writers wait (busy timeout) rather than fail when upgrading a read lock.
        if conn.get_execution_options().get("arbup_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


# -- helpers --------------------------------------------------------------------------


def _use_wal(cursor) -> None:
    """Switch a SQLite file to WAL. Several processes opening a new file at once
    race for the switch, and SQLite answers the losers "database is locked" at
    once, without its busy timeout: they try again until the winner is done."""
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _aware(value: datetime | None, what: str) -> None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(
            f"{what} {value.isoformat()} has no time zone; pass an aware datetime "
            "(for example datetime.now(UTC))"
        )


def _check_draft(draft: TaskState) -> None:
    ids = [sub.id for sub in draft.subtasks]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise RecordsError(
            f"draft subtasks must have distinct provisional ids; repeated: {duplicates}"
        )
    known = set(ids)
    for sub in draft.subtasks:
        for ref in [*sub.upstreams, *sub.downstreams]:
            if ref not in known:
                raise RecordsError(
                    f"draft subtask {sub.id} ({sub.name!r}) refers to subtask {ref}, "
                    "which is not in the draft"
                )


def _take_lock(conn: Connection, group_id: int, task_id: int) -> None:
    """Set groups.active_task_id = task_id if it is NULL, else raise GroupBusy.

    The WHERE clause makes this safe under concurrency: on PostgreSQL a second
    UPDATE waits for the first transaction's row lock and then re-checks the
    condition against the committed row; on SQLite writers are serialized.
    """
    for _ in range(_LOCK_ATTEMPTS):
        result = conn.execute(
            update(groups)
            .where(groups.c.id == group_id, groups.c.active_task_id.is_(None))
            .values(active_task_id=task_id)
        )
        if result.rowcount == 1:
            return
        holder = _active_task(conn, group_id)
        if holder is not None:
            raise GroupBusy(group_id, holder)
    raise RecordsError(
        f"could not take the upgrade lock of group {group_id}: it changed hands "
        "repeatedly; try again"
    )


def _refuse_if_busy(group_id: int, active_task_id: int | None) -> None:
    if active_task_id is not None:
        raise GroupBusy(group_id, active_task_id)


def _active_task(conn: Connection, group_id: int) -> int | None:
    return conn.execute(
        select(groups.c.active_task_id).where(groups.c.id == group_id)
    ).scalar()


def _locked_row(conn: Connection, table, row_id: int):
    return conn.execute(
        select(table).where(table.c.id == row_id).with_for_update(key_share=True)
    ).first()


def _require_group(conn: Connection, group_id: int) -> None:
    if conn.execute(select(groups.c.id).where(groups.c.id == group_id)).first() is None:
        raise NotFound(f"arbitration service group {group_id} not found")


def _service_ids(group_id: int):
    return select(services.c.id).where(services.c.group_id == group_id)


def _differs(row, values: dict[str, Any]) -> bool:
    mapping = row._mapping
    return any(mapping[key] != value for key, value in values.items())


def _service_values(service: ArbitrationService) -> dict[str, Any]:
    return service.model_dump(mode="json")


def _subtask_values(sub: SubtaskState) -> dict[str, Any]:
    """The columns a subtask's progress changes."""
    return {
        "status": sub.status.value,
        "operation": sub.operation.value,
        "run_time": sub.run_time,
        "start_time": sub.start_time,
        "end_time": sub.end_time,
        "log": list(sub.log),
    }


def _service(row) -> ArbitrationService:
    return ArbitrationService.model_validate(dict(row._mapping))


def _group(row, service_rows) -> ArbitrationGroup:
    return ArbitrationGroup.model_validate(
        {**row._mapping, "services": [_service(s) for s in service_rows]}
    )


def _task(row, subtask_rows) -> TaskState:
    return TaskState.model_validate(
        {
            **row._mapping,
            "subtasks": [
                SubtaskState.model_validate(dict(s._mapping)) for s in subtask_rows
            ],
        }
    )


def _load_task(conn: Connection, task_id: int, *, with_subtasks: bool) -> TaskState:
    row = conn.execute(select(tasks).where(tasks.c.id == task_id)).first()
    if row is None:
        raise NotFound(f"task {task_id} not found")
    if not with_subtasks:
        return _task(row, [])
    subtask_rows = conn.execute(
        select(subtask_table)
        .where(subtask_table.c.task_id == task_id)
        .order_by(subtask_table.c.id)
    ).all()
    task = _task(row, subtask_rows)
    action_rows = conn.execute(
        select(task_actions)
        .where(task_actions.c.task_id == task_id)
        .order_by(task_actions.c.seq)
    ).all()
    task.actions = [
        TaskAction(
            action=a.action,
            actor=a.actor,
            time=a.time,
            subtask_id=a.subtask_id,
            detail=a.detail,
        )
        for a in action_rows
    ]
    return task
