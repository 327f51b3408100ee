"""Fixtures of the HTTP API tests: real uvicorn servers on 127.0.0.1, users with
grants in the records store, and an inventory for tests that need no hosts."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
import pytest_asyncio
import uvicorn
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from api import ApiSettings, create_app
from arbup.inventory import Inventory
from arbup.models import ArbitrationGroup, ArbitrationService, Package
from arbup.records import IamStore, MasterKey, RecordsStore
from arbup.records.iam import ALL, ARBITRATION_UPDATE, TASK_MANAGER, TASK_VIEWER
from tests.conftest import OLD, OS_TAG, TARGET, terminate_open_workflows

SAMPLE_PATH = os.path.join(
    os.path.dirname(__file__), "..", "data", "upgrade-group-sample.json"
)
PASSWORDS = {
    "admin": "admin-password-1",
    "viewer": "viewer-password-1",
    "partial": "partial-password-1",
    "nobody": "nobody-password-1",
}


def basic(user: str, password: str | None = None) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password or PASSWORDS[user]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class ServerThread:
    """A real uvicorn server (HTTP over TCP on 127.0.0.1) running in a thread with
    its own event loop, so blocking and async clients in the test both work."""

    def __init__(self, app, port: int = 0) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.02)
        return self

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def temporal_connect(client: Client, target: str | None = None):
    """Connects a new client (in the server's own event loop) to the test's Temporal."""
    address = target or client.service_client.config.target_host

    async def connect() -> Client:
        return await Client.connect(
            address, namespace=client.namespace, data_converter=pydantic_data_converter
        )

    return connect


@dataclass
class Api:
    """An API server of one test and what it was built with."""

    store: RecordsStore
    iam: IamStore
    client: Client
    settings: ApiSettings
    server: ServerThread | None = None
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    _servers: list[ServerThread] = field(default_factory=list)

    def start(self, *, target: str | None = None, port: int = 0) -> Api:
        app = create_app(
            self.store,
            self.iam,
            connect=temporal_connect(self.client, target),
            settings=self.settings,
        )
        self.server = ServerThread(app, port).start()
        self._servers.append(self.server)
        return self

    def restart(self, **kwargs) -> Api:
        """Stop the server and start a new one (a new app, a new Temporal client)
        on the same port."""
        port = self.server.port
        self.server.stop()
        return self.start(port=port, **kwargs)

    def stop_all(self) -> None:
        for server in self._servers:
            server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    def http(self, user: str | None = "admin", **kwargs) -> httpx.AsyncClient:
        headers = basic(user) if user else {}
        return httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=30, **kwargs
        )


@pytest.fixture
def iam(store, tmp_path) -> IamStore:
    """Users: admin (may upgrade everything, read and manage tasks), viewer (reads
    tasks), partial (may upgrade service 1 only), nobody (no grants), and a
    key-only user 'robot' (may upgrade everything and read tasks)."""
    iam = IamStore(store, MasterKey.load_or_create(tmp_path / "api-master.key"))
    for name, password in PASSWORDS.items():
        iam.add_user(name, password)
    iam.grant("admin", ARBITRATION_UPDATE, ALL)
    iam.grant("admin", TASK_MANAGER)
    iam.grant("viewer", TASK_VIEWER)
    iam.grant("partial", ARBITRATION_UPDATE, "1")
    iam.grant("partial", TASK_VIEWER)
    iam.add_user("robot", None)
    iam.grant("robot", ARBITRATION_UPDATE, ALL)
    iam.grant("robot", TASK_VIEWER)
    return iam


def fake_inventory(services: int = 2) -> Inventory:
    """Group 1 on the old version with services on addresses nothing listens on,
    and the target's package for this machine's architecture: enough for every
    check before the workflow, which no worker ever runs."""
    arch = os.uname().machine
    group = ArbitrationGroup(
        id=1,
        name="arb-group-1",
        version=OLD,
        services=[
            ArbitrationService(
                id=i + 1,
                group_id=1,
                host=f"127.0.0.{i + 2}",
                ssh_port=1,
                svr_ip=f"127.0.0.{i + 2}",
                operating_system=OS_TAG,
                arch=arch,
                version=OLD,
                priority=i,
            )
            for i in range(services)
        ],
    )
    package = Package(
        file_name=f"oceanbase-{TARGET}.{OS_TAG}.{arch}.rpm",
        path=f"/nonexistent/oceanbase-{TARGET}.{OS_TAG}.{arch}.rpm",
        size=1,
        sha256="0" * 64,
        full_version=TARGET,
        operating_system=OS_TAG,
        arch=arch,
    )
    return Inventory(groups=[group], packages=[package])


@pytest_asyncio.fixture
async def api_factory(client, store, iam):
    """Makes API servers on the test's records store; every workflow they start on
    their task queue is terminated at the end."""
    made: list[Api] = []

    def make(task_queue: str | None = None, options=None) -> Api:
        settings = ApiSettings(
            task_queue=task_queue or f"arbup-api-test-{uuid.uuid4().hex[:8]}",
            options=options,
            server_name="arbup-test",
            executor="127.0.0.1",
        )
        api = Api(store, iam, client, settings)
        made.append(api)
        return api

    yield make
    for api in made:
        await asyncio.to_thread(api.stop_all)
        await terminate_open_workflows(client, api.settings.task_queue)


@pytest_asyncio.fixture
async def fake_api(api_factory, store, client, tmp_path) -> Api:
    """An API over the fake inventory, with a worker of its own whose SSH has no
    keys: an upgrade it starts fails at once in Prepare (missing key) and then
    waits for an operator, without connecting anywhere."""
    from activities.ssh import SshSettings
    from worker.main import build_worker

    store.load_inventory(fake_inventory())
    api = api_factory()
    (tmp_path / "no-keys").mkdir()
    ssh = SshSettings(
        known_hosts=tmp_path / "known_hosts",
        key_dir=tmp_path / "no-keys",
        connect_timeout=1,
    )
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    worker = build_worker(
        client,
        store,
        ssh,
        task_queue=api.settings.task_queue,
        executor=executor,
        graceful_seconds=1,
    )
    async with worker:
        yield api.start()
        await asyncio.to_thread(api.stop_all)
        await terminate_open_workflows(client, api.settings.task_queue)
    executor.shutdown(wait=False)


@pytest_asyncio.fixture
async def stack_api(api_factory, stack) -> Api:
    """An API over the real stack: its hosts, records and worker."""
    return api_factory(stack.task_queue, stack.options).start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_until(fetch: Callable, predicate: Callable, seconds: float = 120):
    """Call ``fetch`` (async) until ``predicate`` holds on its result."""
    deadline = time.monotonic() + seconds
    while True:
        value = await fetch()
        if predicate(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never reached the expected state: {value}")
        await asyncio.sleep(0.3)
