"""Fixtures for the records store tests.

``store`` runs each test twice: on a fresh SQLite file and on PostgreSQL
(ARBUP_TEST_PG_URL, default postgresql+psycopg://postgres@127.0.0.1:5432/test). The
PostgreSQL tests use one schema created for the test session and dropped at its end;
every test gets freshly created tables in it. PostgreSQL tests are skipped, with the
reason, only when the server cannot be reached.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from arbup.inventory import Inventory
from arbup.models import (
    ArbitrationGroup,
    ArbitrationService,
    Package,
    SubtaskState,
    TaskState,
)
from arbup.records import RecordsStore, metadata

PG_URL = os.environ.get(
    "ARBUP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
OLD = "4.2.1.8-108000022024072217"
NEW = "4.3.4.0-200000022024070119"
T0 = datetime(2025, 1, 21, 11, 8, 56, 59000, tzinfo=timezone(timedelta(hours=8)))


@pytest.fixture(scope="session")
def pg_schema():
    schema = f"arbup_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(
            f"PostgreSQL at {PG_URL} is unreachable ({exc.orig}); "
            "set ARBUP_TEST_PG_URL to run the PostgreSQL tests"
        )
    yield schema
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    if request.param == "sqlite":
        records = RecordsStore(f"sqlite:///{tmp_path / 'records.db'}")
    else:
        records = RecordsStore(PG_URL, schema=request.getfixturevalue("pg_schema"))
        with records.engine.begin() as conn:
            metadata.drop_all(conn)
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    records.create_schema()
    yield records
    records.dispose()


def make_service(service_id: int, group_id: int, **changes) -> ArbitrationService:
    values = {
        "id": service_id,
        "group_id": group_id,
        "host": f"127.0.{group_id}.{service_id}",
        "ssh_port": 2222,
        "ssh_user": "root",
        "ssh_credential": "local",
        "svr_ip": f"127.0.{group_id}.{service_id}",
        "svr_port": 2882,
        "install_path": "/home/admin/oceanbase",
        "run_user": "admin",
        "operating_system": "el7",
        "arch": "x86_64",
        "version": OLD,
    }
    values.update(changes)
    return ArbitrationService(**values)


def make_inventory() -> Inventory:
    """Group 1 with services 1, 2, 3 (priorities 1, 0, 0) and group 2 with service 4;
    one package for the new version."""
    group1 = ArbitrationGroup(
        id=1,
        name="arb-group-1",
        version=OLD,
        services=[
            make_service(1, 1, priority=1),
            make_service(3, 1, zone="z3"),
            make_service(2, 1),
        ],
    )
    group2 = ArbitrationGroup(
        id=2, name="arb-group-2", version=OLD, services=[make_service(4, 2)]
    )
    package = Package(
        file_name=f"oceanbase-{NEW}.el7.x86_64.rpm",
        path=f"/srv/packages/oceanbase-{NEW}.el7.x86_64.rpm",
        size=123,
        sha256="a" * 64,
        full_version=NEW,
        operating_system="el7",
        arch="x86_64",
    )
    return Inventory(groups=[group1, group2], packages=[package])


def make_draft(
    group_id: int = 1,
    *,
    name: str = "Upgrade arbitration service group",
    service_ids: tuple[int, ...] = (1, 2),
) -> TaskState:
    """A small upgrade DAG with deliberately odd provisional subtask ids:
    begin(100) -> install per service (7, 42, ...) -> end(5)."""
    begin, end = 100, 5
    installs = [7, 42, 77, 91][: len(service_ids)]

    def sub(pid, series, sub_name, idx, ups, downs, service_id=None):
        return SubtaskState(
            id=pid,
            task_id=0,
            series_id=series,
            name=sub_name,
            description=sub_name,
            parallel_idx=idx,
            upstreams=ups,
            downstreams=downs,
            timeout=60,
            prohibit_rollback=sub_name == "Begin upgrade arbitration",
            prohibit_skip=False,
            service_id=service_id,
        )

    subs = [sub(begin, 0, "Begin upgrade arbitration", -1, [], installs)]
    for idx, (pid, service_id) in enumerate(zip(installs, service_ids)):
        subs.append(
            sub(
                pid, idx + 1, "Install arbitration rpm", idx, [begin], [end], service_id
            )
        )
    subs.append(sub(end, len(subs), "End upgrade arbitration", -1, installs, []))
    return TaskState(
        id=0,
        name=name,
        group_id=group_id,
        target_full_version=NEW,
        target_os="el7",
        workflow_id="arbup-upgrade-{task_id}",
        creator="admin",
        executor="worker-1",
        start_time=T0,
        subtasks=subs,
    )


# The helpers as fixtures, so test modules need not import this conftest by name.


@pytest.fixture
def inventory_factory():
    return make_inventory


@pytest.fixture
def draft_factory():
    return make_draft


@pytest.fixture
def service_factory():
    return make_service
