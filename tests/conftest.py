"""Shared fixtures: a real Temporal dev server, real local hosts (sshd in mount
namespaces, real rpm), a real records database, and an in-process worker."""

from __future__ import annotations

import concurrent.futures
import os
import random
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.ssh import SshSettings
from arbup.inputs import UpgradeOptions
from arbup.models import ArbitrationGroup, ArbitrationService, Package
from arbup.records import RecordsStore
from arbup.temporal import SEARCH_ATTRIBUTE_TYPES

OLD = "4.2.1.8-108000022024072217"
TARGET = "4.3.4.0-200000022024070119"
OS_TAG = "el7"
CREDENTIAL = "local"

def _test_network() -> str:
    """A loopback /24 of this test session's own (127.20-250.x.0), apart from the
    demo stack's 127.0.1.x and from other test sessions running at the same time."""
    chosen = os.environ.get("ARBUP_TEST_NET")
    if not chosen:
        rng = random.SystemRandom()
        chosen = f"127.{rng.randint(20, 250)}.{rng.randint(0, 255)}"
    return chosen


TEST_NET = _test_network()
FIRST_IP = f"{TEST_NET}.1"
SSH_PORT = 2222
SVR_PORT = 2882
PG_URL = os.environ.get(
    "ARBUP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def temporal_cli() -> str:
    return str(Path(sys.executable).parent / "temporal")


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("arbup-state")


@pytest.fixture(scope="session")
def packages(state_dir) -> dict[str, Path]:
    from arbup.localhosts import build_package

    out = state_dir / "packages"
    return {
        OLD: build_package(out, OLD, OS_TAG),
        TARGET: build_package(out, TARGET, OS_TAG),
    }


@pytest_asyncio.fixture(scope="session")
async def temporal_env():
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=pydantic_data_converter,
        search_attributes=list(SEARCH_ATTRIBUTE_TYPES),
        dev_server_log_level="error",
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def client(temporal_env) -> Client:
    return temporal_env.client


@dataclass
class Stack:
    """Everything one integration test needs, fresh for that test."""

    hosts: list
    store: RecordsStore
    ssh: SshSettings
    task_queue: str
    packages: dict[str, Path]
    options: UpgradeOptions

    def group(self) -> ArbitrationGroup:
        return self.store.get_group(1)

    def service(self, index: int) -> ArbitrationService:
        return self.group().services[index]


def inventory_for(hosts, packages: dict[str, Path], *, ssh_ports=None):
    from arbup.inventory import Inventory

    arch = os.uname().machine
    services = [
        ArbitrationService(
            id=index + 1,
            group_id=1,
            host=host.ip,
            ssh_port=(ssh_ports or {}).get(index, host.ssh_port),
            ssh_user="root",
            ssh_credential=CREDENTIAL,
            svr_ip=host.ip,
            svr_port=SVR_PORT,
            install_path="/home/admin/oceanbase",
            run_user="admin",
            operating_system=OS_TAG,
            arch=arch,
            version=OLD,
            priority=index,
        )
        for index, host in enumerate(hosts)
    ]
    group = ArbitrationGroup(id=1, name="arb-group-1", version=OLD, services=services)
    rpms = [package_record(path) for path in packages.values()]
    return Inventory(groups=[group], packages=rpms)


def package_record(path: Path) -> Package:
    import hashlib

    from arbup.versions import parse_package_file_name

    name, full_version, os_tag, arch = parse_package_file_name(path.name)
    return Package(
        name=name,
        file_name=path.name,
        path=str(path),
        size=path.stat().st_size,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        full_version=full_version,
        operating_system=os_tag,
        arch=arch,
    )


@pytest.fixture
def hosts(state_dir, packages):
    """Two fresh hosts running the old version, with no knobs set."""
    from arbup.localhosts import create_hosts, stop_hosts

    created = create_hosts(
        state_dir, 2, first_ip=FIRST_IP, ssh_port=SSH_PORT, os_tag=OS_TAG,
        credential=CREDENTIAL,
    )
    try:
        for host in created:
            host.install_and_start(packages[OLD], svr_port=SVR_PORT)
        yield created
    finally:
        stop_hosts(state_dir)


@pytest.fixture
def store(request, tmp_path) -> RecordsStore:
    """A fresh records store: SQLite, or PostgreSQL in a schema of its own when a
    test asks for ``store`` with the parameter "postgresql"."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        store = RecordsStore(f"sqlite:///{tmp_path}/arbup.db")
        store.create_schema()
        yield store
        store.dispose()
        return

    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    schema = f"arbup_it_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable: {exc.orig}")
    store = RecordsStore(PG_URL, schema=schema)
    store.create_schema()
    yield store
    store.dispose()
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest_asyncio.fixture
async def records_and_hosts(client, hosts, store, state_dir, packages):
    """Hosts and the records of group 1 on them, with no worker yet."""
    store.load_inventory(inventory_for(hosts, packages))
    ssh = SshSettings(
        known_hosts=state_dir / "ssh" / "known_hosts",
        key_dir=state_dir / "ssh" / "keys",
        connect_timeout=3,
    )
    task_queue = f"arbup-test-{uuid.uuid4().hex[:8]}"
    options = UpgradeOptions(settle_seconds=1.0, stop_grace_seconds=5.0)
    yield Stack(list(hosts), store, ssh, task_queue, packages, options)
    await terminate_open_workflows(client, task_queue)


@pytest_asyncio.fixture
async def stack(client, records_and_hosts):
    """Hosts, records loaded for them, and a worker on its own task queue."""
    from worker.main import build_worker

    stack = records_and_hosts
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=8)
    worker = build_worker(
        client,
        stack.store,
        stack.ssh,
        task_queue=stack.task_queue,
        executor=executor,
        graceful_seconds=1,
    )
    async with worker:
        yield stack
        await terminate_open_workflows(client, stack.task_queue)
    executor.shutdown(wait=False)


async def terminate_open_workflows(client: Client, task_queue: str) -> None:
    """Workflow ids repeat across tests (each test's records start at task 1), so
    none may outlive its test."""
    from temporalio.service import RPCError, RPCStatusCode

    query = f'TaskQueue="{task_queue}" AND ExecutionStatus="Running"'
    async for execution in client.list_workflows(query):
        try:
            await client.get_workflow_handle(execution.id).terminate("test finished")
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:  # it completed meanwhile
                raise
