"""Health and readiness of the API and the worker, over HTTP: 200 while they and
what they need are up, 503 naming what cannot be reached (a PostgreSQL port or a
Temporal port nothing listens on), and never a secret."""

from __future__ import annotations

import asyncio

import concurrent.futures
import uuid

import httpx
import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.ssh import SshSettings
from api import ApiSettings, create_app
from arbup.records import IamStore, MasterKey, RecordsStore
from tests.api.conftest import ServerThread, free_port
from tests.conftest import Stack
from worker.main import build_worker
from worker.observability import health_server

pytestmark = pytest.mark.integration


def closed_port() -> int:
    """A loopback port nothing listens on (bound and released again)."""
    return free_port()


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as http:
        return await http.get(url)


# -- the API ------------------------------------------------------------------------


async def test_api_health_and_readiness_need_no_credentials(api_factory):
    api = api_factory().start()
    health = await get(f"{api.url}/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert len(health.headers["X-Trace-Id"]) == 16
    ready = await get(f"{api.url}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "status": "ready",
        "checks": {"recordsStore": "ok", "temporal": "ok"},
    }
    assert ready.headers["cache-control"] == "no-store"
    # Not part of OCP's API document.
    paths = (await get(f"{api.url}/openapi.json")).json()["paths"]
    assert not {"/healthz", "/readyz", "/metrics"} & set(paths)


async def test_api_is_not_ready_without_temporal(api_factory):
    api = api_factory().start(target=f"127.0.0.1:{closed_port()}")
    assert (await get(f"{api.url}/healthz")).status_code == 200
    ready = await get(f"{api.url}/readyz")
    assert ready.status_code == 503
    assert ready.json() == {
        "status": "not ready",
        "checks": {"recordsStore": "ok", "temporal": "unreachable"},
    }


async def test_api_is_not_ready_without_its_records_store(client, tmp_path):
    url = f"postgresql+psycopg://arbup:db-password-1@127.0.0.1:{closed_port()}/arbup"
    store = RecordsStore(url)
    iam = IamStore(store, MasterKey.load_or_create(tmp_path / "api-master.key"))
    app = create_app(store, iam, client=client, settings=ApiSettings(server_name="t"))
    server = ServerThread(app).start()
    try:
        assert (await get(f"{server.url}/healthz")).status_code == 200
        ready = await get(f"{server.url}/readyz")
    finally:
        server.stop()
        store.dispose()
    assert ready.status_code == 503
    assert ready.json() == {
        "status": "not ready",
        "checks": {"recordsStore": "unreachable", "temporal": "ok"},
    }
    assert "db-password-1" not in ready.text and "127.0.0.1" not in ready.text


# -- the worker ---------------------------------------------------------------------


@pytest.fixture
def ssh(tmp_path) -> SshSettings:
    (tmp_path / "keys").mkdir()
    return SshSettings(known_hosts=tmp_path / "known_hosts", key_dir=tmp_path / "keys")


async def test_worker_health_and_readiness(client, store, ssh, tmp_path):
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    worker = build_worker(
        client,
        store,
        ssh,
        task_queue=f"arbup-health-{uuid.uuid4().hex[:8]}",
        executor=executor,
        graceful_seconds=1,
    )
    # Not started yet: not healthy.
    async with health_server("127.0.0.1:0", worker, client, store) as (host, port):
        idle = await get(f"http://{host}:{port}/healthz")
        assert idle.status_code == 503
        assert idle.json()["worker"] == "not running"

    unreachable_store = RecordsStore(
        f"postgresql+psycopg://arbup:db-password-1@127.0.0.1:{closed_port()}/arbup"
    )
    no_temporal = await Client.connect(
        f"127.0.0.1:{closed_port()}",
        data_converter=pydantic_data_converter,
        lazy=True,
    )
    try:
        async with worker:
            async with health_server("127.0.0.1:0", worker, client, store) as (h, p):
                # The worker's pollers start in a task of their own, a moment
                # after `async with worker` is entered.
                for _ in range(50):
                    health = await get(f"http://{h}:{p}/healthz")
                    if health.status_code == 200:
                        break
                    await asyncio.sleep(0.2)
                assert health.status_code == 200
                assert health.json() == {
                    "status": "ok",
                    "worker": "running",
                    "taskQueue": worker.task_queue,
                }
                ready = await get(f"http://{h}:{p}/readyz")
                assert ready.status_code == 200, ready.text
                assert ready.json() == {
                    "status": "ready",
                    "checks": {
                        "temporal": "ok",
                        "recordsStore": "ok",
                        "worker": "running",
                    },
                }
                assert (await get(f"http://{h}:{p}/other")).status_code == 404
            async with health_server(
                "127.0.0.1:0", worker, client, unreachable_store
            ) as (h, p):
                ready = await get(f"http://{h}:{p}/readyz")
                assert ready.status_code == 503
                assert ready.json()["checks"]["recordsStore"] == "unreachable"
                assert ready.json()["checks"]["temporal"] == "ok"
                assert "db-password-1" not in ready.text
            async with health_server("127.0.0.1:0", worker, no_temporal, store) as (
                h,
                p,
            ):
                ready = await get(f"http://{h}:{p}/readyz")
                assert ready.status_code == 503
                assert ready.json()["checks"]["temporal"] == "unreachable"
                assert ready.json()["checks"]["recordsStore"] == "ok"
    finally:
        unreachable_store.dispose()
        executor.shutdown(wait=False)


async def test_worker_process_serves_health_and_drains_on_sigterm(
    store, ssh, worker_process
):
    stack = Stack(
        hosts=[],
        store=store,
        ssh=ssh,
        task_queue=f"arbup-health-{uuid.uuid4().hex[:8]}",
        packages={},
        options=None,
    )
    worker = await worker_process(stack)
    ready = await get(f"{worker.health_url}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"
    metrics = await get(worker.metrics_url)
    assert metrics.status_code == 200
    assert "temporal_worker_start" in metrics.text
    assert worker.stop() == 0
    assert any("worker stopped" in line for line in worker.log_lines())
