"""Fixtures of the operations tests: a real worker process (``arbup-worker`` with
its metrics and health endpoints on free loopback ports, JSON logs to a file),
API servers (those of tests/api), and helpers to read Prometheus's text format and
captured log lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from arbup.inputs import workflow_id_for
from arbup.logs import make_handler
from tests.api.conftest import (  # noqa: F401 (api_factory, fake_api, iam: fixtures)
    api_factory,
    fake_api,
    free_port,
    iam,
    wait_until,
)
from tests.conftest import OS_TAG, TARGET, Stack

REPO = Path(__file__).resolve().parents[2]


@dataclass
class WorkerProcess:
    """An ``arbup-worker`` running as its own process."""

    process: subprocess.Popen
    metrics_url: str
    health_url: str
    log_path: Path

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


@pytest_asyncio.fixture
async def worker_process(client, tmp_path):
    """Starts an ``arbup-worker`` process for a stack (its records store, keys, task
    queue), with metrics and health on free loopback ports; stops it at the end."""
    started: list[WorkerProcess] = []

    async def start(stack: Stack, *, known_hosts: Path | None = None) -> WorkerProcess:
        metrics_port, health_port = free_port(), free_port()
        log_path = tmp_path / f"worker-{len(started)}.log"
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": client.service_client.config.target_host,
            "TEMPORAL_NAMESPACE": client.namespace,
            "ARBUP_DB_URL": stack.store.engine.url.render_as_string(
                hide_password=False
            ),
            "ARBUP_SSH_KEY_DIR": str(stack.ssh.key_dir),
            "ARBUP_KNOWN_HOSTS": str(known_hosts or stack.ssh.known_hosts),
            "ARBUP_SSH_CONNECT_TIMEOUT": str(stack.ssh.connect_timeout),
            "ARBUP_STATE_DIR": str(tmp_path / "worker-state"),
            "ARBUP_LOG_FORMAT": "json",
        }
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "worker.main",
                    "--task-queue",
                    stack.task_queue,
                    "--graceful-seconds",
                    "2",
                    "--metrics-address",
                    f"127.0.0.1:{metrics_port}",
                    "--health-address",
                    f"127.0.0.1:{health_port}",
                ],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(
            process,
            f"http://127.0.0.1:{metrics_port}/metrics",
            f"http://127.0.0.1:{health_port}",
            log_path,
        )
        started.append(worker)
        await wait_for_health(worker)
        return worker

    yield start
    for worker in started:
        await asyncio.to_thread(worker.stop)


async def wait_for_health(worker: WorkerProcess, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            if worker.process.poll() is not None:
                raise AssertionError(
                    f"the worker exited with {worker.process.returncode}:\n"
                    + "\n".join(worker.log_lines()[-30:])
                )
            try:
                if (await http.get(f"{worker.health_url}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    "the worker's /healthz never answered 200:\n"
                    + "\n".join(worker.log_lines()[-30:])
                )
            await asyncio.sleep(0.2)


# -- an upgrade to observe ----------------------------------------------------------


@dataclass
class ObservedUpgrade:
    """An upgrade run through the API by a worker process, and what it left."""

    stack: Stack
    worker: WorkerProcess
    api: object
    task_id: int
    # X-Trace-Id of the request that started the upgrade, and of the retry.
    trace_id: str
    retry_trace_id: str
    # The API's log lines (this process's) while it ran.
    api_lines: list[str]


async def task_status(http, task_id: int) -> str:
    response = await http.get(f"/api/v2/tasks/instances/{task_id}")
    assert response.status_code == 200, response.text
    return response.json()["data"]["status"]


def known_hosts_without(stack: Stack, host, path: Path) -> Path:
    """A copy of the stack's known_hosts without ``host``'s key: connecting to it
    fails with HostKeyNotVerified."""
    all_keys = stack.ssh.known_hosts.read_text()
    path.write_text(
        "".join(
            line
            for line in all_keys.splitlines(keepends=True)
            if not line.startswith(f"[{host.ip}]:")
        )
    )
    assert path.read_text() != all_keys
    return path


@pytest_asyncio.fixture
async def observed_upgrade(
    client, records_and_hosts, worker_process, api_factory, tmp_path
) -> ObservedUpgrade:
    """Group 1 upgraded through the API (as admin, HTTP Basic) by a worker process.
    Host 2's key is missing from the worker's known_hosts at first, so its Prepare
    fails with a real SSH error (HostKeyNotVerified) and the task waits FAILED;
    with the key back, a retry through the API takes it to the end. Then a request
    without credentials (401) and one for no route (404)."""
    stack = records_and_hosts
    all_keys = stack.ssh.known_hosts.read_text()
    known_hosts = known_hosts_without(stack, stack.hosts[1], tmp_path / "known_hosts")
    worker = await worker_process(stack, known_hosts=known_hosts)
    api = api_factory(stack.task_queue, stack.options).start()

    with captured_logs() as api_log:
        async with api.http() as http:
            response = await http.post(
                "/api/v2/arbitration/services/groups/1/upgrade",
                json={"fullVersion": TARGET, "operatingSystem": OS_TAG},
            )
            assert response.status_code == 200, response.text
            task_id = response.json()["data"]["id"]
            trace_id = response.headers["X-Trace-Id"]

            await wait_until(
                lambda: task_status(http, task_id), lambda status: status == "FAILED"
            )
            known_hosts.write_text(all_keys)
            response = await http.post(f"/api/v2/tasks/instances/{task_id}/retry")
            assert response.status_code == 200, response.text
            retry_trace_id = response.headers["X-Trace-Id"]
            await wait_until(
                lambda: task_status(http, task_id),
                lambda status: status == "SUCCESSFUL",
                seconds=180,
            )
            # The task is SUCCESSFUL just before its workflow completes.
            await client.get_workflow_handle(workflow_id_for(1, task_id)).result()

            anonymous = await http.get(
                f"/api/v2/tasks/instances/{task_id}", headers={"Authorization": ""}
            )
            assert anonymous.status_code == 401
            assert (await http.get("/api/v2/no-such-thing")).status_code == 404

    for host in stack.hosts:
        assert host.running_version() == TARGET
    return ObservedUpgrade(
        stack,
        worker,
        api,
        task_id,
        trace_id,
        retry_trace_id,
        api_log.getvalue().splitlines(),
    )


# -- Prometheus's text format -------------------------------------------------------


@dataclass
class Scrape:
    """One scrape of a /metrics endpoint."""

    text: str

    def samples(self, name: str, **labels: str) -> list:
        """The samples of ``name`` as exposed (the parser reads a counter without
        the ``_total`` suffix, as the SDK's are, as if it had one)."""
        names = {name, f"{name}_total"}
        found = []
        for family in text_string_to_metric_families(self.text):
            for sample in family.samples:
                if sample.name in names and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    if sample.name == name or family.type == "counter":
                        found.append(sample)
        return found

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` with these labels (0 if none)."""
        return sum(sample.value for sample in self.samples(name, **labels))


async def scrape(url: str) -> Scrape:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


async def scrape_until(url: str, predicate, seconds: float = 15) -> Scrape:
    """Scrape until ``predicate(scrape)`` holds: a worker records some of the SDK's
    metrics only once the server has acknowledged what they count."""
    deadline = time.monotonic() + seconds
    while True:
        seen = await scrape(url)
        if predicate(seen) or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.2)


# -- captured log lines -------------------------------------------------------------


@contextmanager
def captured_logs(fmt: str = "json") -> Iterator[io.StringIO]:
    """Every log line of this process while inside, as the API writes them."""
    stream = io.StringIO()
    handler = make_handler(fmt, stream)
    root = logging.getLogger()
    arbup = logging.getLogger("arbup")
    old_level = arbup.level
    root.addHandler(handler)
    arbup.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        arbup.setLevel(old_level)


def json_lines(lines: list[str]) -> list[dict]:
    """Each line as the JSON object it must be."""
    parsed = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"not a JSON line: {line!r}") from exc
        assert isinstance(record, dict), line
        for key in ("time", "level", "logger", "message"):
            assert key in record, f"{key} missing in {line}"
        parsed.append(record)
    return parsed
