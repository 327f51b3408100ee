"""The records store's schema migrations, on SQLite and PostgreSQL.

Every test gets an empty database of its own: a SQLite file, or a PostgreSQL
schema made for the test and dropped after it. The commands run as an operator
runs them (``arbup db ...``, ``arbup api``, ``arbup-worker`` as processes).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from arbup.records import RecordsStore, metadata, migrate
from arbup.records.store import SchemaNotCurrent

PG_URL = os.environ.get(
    "ARBUP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BIN = Path(sys.executable).parent
TABLES = set(metadata.tables)
IAM_TABLES = {"iam_users", "iam_grants", "iam_access_keys"}
HEAD = migrate.head()


@dataclass
class Database:
    """An empty database: ``store`` in-process (PostgreSQL: with ``schema=``), and
    the environment the arbup processes reach the same database with."""

    backend: str
    store: RecordsStore
    env: dict[str, str]
    schema: str | None = None

    def url(self) -> str:
        """ARBUP_DB_URL of the processes; for SQLite the default file in
        ARBUP_STATE_DIR."""
        return self.env.get("ARBUP_DB_URL") or str(self.store.engine.url)

    def tables(self) -> set[str]:
        with self.store.engine.connect() as conn:
            return set(inspect(conn).get_table_names())

    def differences(self) -> list:
        with self.store.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, metadata)

    def make_legacy(self, tables: set[str] = TABLES) -> None:
        """What RecordsStore.create_schema did before migrations: create_all."""
        with self.store.engine.begin() as conn:
            metadata.create_all(conn, tables=[metadata.tables[t] for t in tables])


def _base_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ARBUP_", "TEMPORAL_"))
    }
    env["ARBUP_STATE_DIR"] = str(tmp_path / "state")
    return env


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request, tmp_path):
    env = _base_env(tmp_path)
    if request.param == "sqlite":
        # The default SQLite file of ARBUP_STATE_DIR: the processes find it unasked.
        (tmp_path / "state").mkdir()
        store = RecordsStore(f"sqlite:///{tmp_path / 'state' / 'arbup.db'}")
        yield Database("sqlite", store, env)
        store.dispose()
        return

    schema = f"arbup_mig_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable: {exc.orig}")
    # The processes take no schema= option: the schema goes in the URL instead, as
    # the connections' search_path.
    env["ARBUP_DB_URL"] = (
        make_url(PG_URL)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    store = RecordsStore(PG_URL, schema=schema)
    try:
        yield Database("postgres", store, env, schema)
    finally:
        store.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def arbup(db: Database, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "arbup"), *args],
        env={**db.env, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- upgrading ------------------------------------------------------------------------


def test_upgrading_an_empty_database_gives_exactly_the_schema(db):
    before = db.store.schema_state()
    assert (before.current, before.legacy, before.at_head) == (None, False, False)

    result = db.store.create_schema()

    assert result.changed
    assert result.before.current is None
    assert result.after.current == HEAD and result.after.at_head
    assert db.tables() == TABLES | {"alembic_version"}
    assert db.differences() == []
    assert db.store.schema_state().at_head


@pytest.mark.postgres
def test_postgresql_schema_is_created_and_holds_the_version_table(tmp_path):
    schema = f"arbup_mig_{uuid.uuid4().hex[:12]}"
    store = RecordsStore(PG_URL, schema=schema)
    admin = create_engine(PG_URL)
    try:
        try:
            store.create_schema()  # the schema does not exist yet
        except OperationalError as exc:
            pytest.skip(f"PostgreSQL at {PG_URL} is unreachable: {exc.orig}")
        with admin.connect() as conn:
            where = conn.execute(
                text(
                    "SELECT table_schema FROM information_schema.tables "
                    "WHERE table_name = 'alembic_version' AND table_schema = :s"
                ),
                {"s": schema},
            ).all()
            version = conn.execute(
                text(f'SELECT version_num FROM "{schema}".alembic_version')
            ).scalar_one()
            tables = set(inspect(conn).get_table_names(schema=schema))
        assert where == [(schema,)]
        assert version == HEAD
        assert tables == TABLES | {"alembic_version"}
    finally:
        store.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def test_upgrade_is_idempotent_and_keeps_the_rows(db, inventory_factory):
    db.store.create_schema()
    db.store.load_inventory(inventory_factory())
    groups = db.store.list_groups()

    again = db.store.create_schema()
    assert not again.changed and again.after.at_head

    done = arbup(db, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert f"already at revision {HEAD} (head); nothing to do" in done.stdout
    assert db.store.list_groups() == groups
    assert db.differences() == []


def test_arbup_db_upgrade_and_current(db):
    behind = arbup(db, "db", "current")
    assert behind.returncode == 0, behind.stderr
    assert "revision:      none (empty database)" in behind.stdout
    assert f"head:          {HEAD} (behind: run `arbup db upgrade`)" in behind.stdout
    assert arbup(db, "db", "current", "--check").returncode == 1
    assert db.tables() == set()  # looking changes nothing

    done = arbup(db, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert "upgraded from revision none (empty database)" in done.stdout
    assert f"now at revision {HEAD} (head)" in done.stdout
    assert db.differences() == []

    current = arbup(db, "db", "current")
    assert current.returncode == 0, current.stderr
    assert f"revision:      {HEAD}\n" in current.stdout
    assert f"head:          {HEAD} (at head)" in current.stdout
    assert arbup(db, "db", "current", "--check").returncode == 0
    as_json = json.loads(arbup(db, "db", "current", "--json").stdout)
    assert as_json["revision"] == as_json["head"] == HEAD
    assert as_json["atHead"] is True and as_json["legacy"] is False

    history = arbup(db, "db", "history")
    assert history.returncode == 0
    assert history.stdout.startswith(f"{HEAD} (head)")


def test_url_option_wins_over_the_environment(db, tmp_path):
    other = tmp_path / "other.db"
    done = arbup(db, "db", "upgrade", "--url", f"sqlite:///{other}")
    assert done.returncode == 0, done.stderr
    assert f"records store: sqlite:///{other}" in done.stdout
    other_store = RecordsStore(f"sqlite:///{other}")
    try:
        assert other_store.schema_state().at_head
    finally:
        other_store.dispose()
    assert db.tables() == set()  # the database of the environment is untouched


# -- databases made before migrations -------------------------------------------------


def test_a_create_all_database_is_stamped_and_upgraded(db, inventory_factory):
    db.make_legacy()
    db.store.load_inventory(inventory_factory())
    groups = db.store.list_groups()
    state = db.store.schema_state()
    assert (state.current, state.legacy, state.at_head) == (None, True, False)

    current = arbup(db, "db", "current")
    assert "revision:      none (tables made before migrations)" in current.stdout
    assert "`arbup db upgrade` stamps and upgrades it" in current.stdout

    done = arbup(db, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert "tables made before migrations found: stamped" in done.stdout
    assert f"now at revision {HEAD} (head)" in done.stdout
    assert db.store.schema_state().at_head
    assert db.store.list_groups() == groups
    assert db.differences() == []
    assert not arbup(db, "db", "upgrade").stdout.count("stamped")


def test_a_database_from_before_the_api_users_gets_their_tables(db, inventory_factory):
    db.make_legacy(TABLES - IAM_TABLES)
    db.store.load_inventory(inventory_factory())
    groups = db.store.list_groups()

    result = db.store.create_schema()

    assert result.before.legacy and result.after.at_head
    assert db.tables() == TABLES | {"alembic_version"}
    assert db.differences() == []
    assert db.store.list_groups() == groups


# -- refusals -------------------------------------------------------------------------


def test_a_database_of_a_newer_arbup_is_refused(db):
    db.store.create_schema()
    with db.store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))

    state = db.store.schema_state()
    assert (state.current, state.known, state.at_head) == ("9999", False, False)
    with pytest.raises(SchemaNotCurrent, match="9999, which this arbup does not know"):
        db.store.create_schema()
    with pytest.raises(SchemaNotCurrent, match="9999"):
        db.store.ensure_schema()

    refused = arbup(db, "db", "upgrade")
    assert refused.returncode == 2
    assert "does not know" in refused.stderr
    current = arbup(db, "db", "current")
    assert "revision:      9999 (unknown to this arbup)" in current.stdout
    with db.store.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [
            ("9999",)
        ]


def test_passwords_are_never_printed(db):
    secret = "Pw-" + uuid.uuid4().hex
    if db.backend == "postgres":
        # Trust authentication ignores the password, so the commands still work.
        url = make_url(db.env["ARBUP_DB_URL"]).set(password=secret)
        url = url.render_as_string(hide_password=False)
        shown = arbup(db, "db", "upgrade", ARBUP_DB_URL=url)
        assert shown.returncode == 0, shown.stderr
        assert secret not in shown.stdout + shown.stderr
        assert ":***@" in shown.stdout
        json_out = arbup(db, "db", "current", "--json", ARBUP_DB_URL=url).stdout
        assert secret not in json_out and ":***@" in json_out

    closed = f"postgresql+psycopg://arbup:{secret}@127.0.0.1:{free_port()}/arbup"
    unreachable = arbup(db, "db", "current", "--url", closed)
    assert unreachable.returncode == 3
    assert "cannot reach" in unreachable.stderr
    assert secret not in unreachable.stdout + unreachable.stderr
    in_query = f"postgresql+psycopg://arbup@127.0.0.1:{free_port()}/x?password={secret}"
    unreachable = arbup(db, "db", "current", "--url", in_query)
    assert unreachable.returncode == 3
    assert secret not in unreachable.stdout + unreachable.stderr


# -- concurrency and downgrade ---------------------------------------------------------


def test_concurrent_upgrades_apply_the_migrations_once(db):
    url = str(db.store.engine.url) if db.backend == "sqlite" else PG_URL
    stores = [RecordsStore(url, schema=db.schema) for _ in range(4)]
    results, errors = [], []
    barrier = threading.Barrier(len(stores))

    def upgrade(store: RecordsStore) -> None:
        try:
            barrier.wait(30)
            results.append(store.create_schema())
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for store in stores:
        store.dispose()

    assert errors == []
    assert sum(r.changed for r in results) == 1
    assert all(r.after.at_head for r in results)
    assert db.differences() == []


def test_the_initial_revision_downgrades_to_nothing(db):
    db.store.create_schema()
    with db.store.engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn, schema=db.schema), "base")
    assert db.tables() <= {"alembic_version"}
    assert db.store.schema_state().current is None

    db.store.create_schema()
    assert db.differences() == []


# -- the worker and the API at start ---------------------------------------------------


def test_ensure_schema_migrates_sqlite_and_refuses_postgresql_behind(db):
    db.make_legacy()
    if db.backend == "sqlite":
        assert db.store.ensure_schema().at_head
        assert db.differences() == []
        return
    with pytest.raises(SchemaNotCurrent, match="run `arbup db upgrade`"):
        db.store.ensure_schema()
    assert db.store.schema_state().legacy  # not stamped, not changed
    db.store.create_schema()
    assert db.store.ensure_schema().at_head


def _wait_for(path: Path, text_: str, process: subprocess.Popen, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text_ in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{text_!r} not seen; output:\n{path.read_text()}")


def _stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(60)


def test_api_refuses_a_postgresql_database_behind_and_sqlite_migrates(db, tmp_path):
    port = free_port()
    log = tmp_path / "api.log"
    argv = [str(BIN / "arbup"), "api", "--host", "127.0.0.1", "--port", str(port)]
    if db.backend == "postgres":
        refused = subprocess.run(
            argv, env=db.env, capture_output=True, text=True, timeout=120
        )
        assert refused.returncode == 2
        assert "run `arbup db upgrade`" in refused.stderr
        assert db.tables() == set()
        user = arbup(db, "user", "add", "ops", "--no-password")
        assert user.returncode == 2 and "arbup db upgrade" in user.stderr
        assert arbup(db, "db", "upgrade").returncode == 0
    else:
        db.make_legacy()

    with log.open("wb") as out:
        api = subprocess.Popen(argv, env=db.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(log, "Uvicorn running", api, 60)
        answer = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=10)
        assert answer.status_code == 200
        assert db.store.schema_state().at_head
    finally:
        # uvicorn finishes its shutdown, then ends by the signal it was sent.
        assert _stop(api) in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()


def test_worker_refuses_a_postgresql_database_behind_and_sqlite_migrates(
    db, tmp_path, temporal_env
):
    env = {
        **db.env,
        "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
    }
    argv = [
        str(BIN / "arbup-worker"),
        "--task-queue",
        f"arbup-migrations-{uuid.uuid4().hex[:8]}",
        "--graceful-seconds",
        "2",
    ]
    if db.backend == "postgres":
        refused = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=120
        )
        assert refused.returncode == 1
        assert "run `arbup db upgrade`" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert db.tables() == set()
        assert arbup(db, "db", "upgrade").returncode == 0
    else:
        db.make_legacy()

    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(log, "worker polling task queue", worker, 60)
        assert db.store.schema_state().at_head
        assert db.differences() == []
    finally:
        assert _stop(worker) == 0, log.read_text()
    assert "worker stopped" in log.read_text()
