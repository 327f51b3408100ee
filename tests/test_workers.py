"""Several workers on one upgrade, and host steps routed to the workers of a zone.

Workers run as separate processes (``python -m worker.main``), each with its own
identity (pid@host), against the real dev server, real sshd hosts and real rpm.
Who ran which step is read from the workflow's history.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import (
    EventType,
    PendingActivityState,
    RetryState,
    TaskQueueType,
    TimeoutType,
)
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.service import RPCError

from arbup.inputs import TASK_QUEUE, zone_task_queue
from arbup.inventory import InventoryError, load_inventory_file
from arbup.models import Operation, SubtaskStatus, TaskState
from starter.service import decide
from tests.conftest import OLD, OS_TAG, TARGET, inventory_for
from tests.test_faults import assert_hosts_run, assert_records, start
from tests.test_upgrade import by_name, save_history, wait_for, waiting_for_operator

HOST_ACTIVITIES = {
    "prepare_service",
    "stop_service",
    "install_package",
    "start_service",
    "unstage_package",
    "restore_service",
    "reinstall_package",
}


# -- without a server ---------------------------------------------------------------


def test_zone_queue_is_named_after_the_upgrade_queue():
    assert TASK_QUEUE == "arbup-upgrades"
    assert zone_task_queue("z1") == "arbup-upgrades-zone-z1"
    assert zone_task_queue("b", "arbup-test-1") == "arbup-test-1-zone-b"


@pytest.mark.parametrize("zone", ["default", "a b", "-x", ""])
def test_worker_refuses_a_zone_it_cannot_serve(zone, capsys):
    from worker.main import main

    with pytest.raises(SystemExit) as exited:
        main(["--zone", zone])
    assert exited.value.code == 2
    assert "--zone" in capsys.readouterr().err


def test_inventory_takes_a_zone_per_service_and_checks_it(tmp_path):
    service = textwrap.dedent(
        """
        [[groups.services]]
        id = {id}
        host = "127.0.1.{id}"
        svr_ip = "127.0.1.{id}"
        operating_system = "el7"
        arch = "x86_64"
        {zone}
        """
    )
    body = (
        f'[[groups]]\nid = 1\nname = "g"\nversion = "{OLD}"\n'
        + service.format(id=1, zone='zone = "dc-2"')
        + service.format(id=2, zone="")
    )
    path = tmp_path / "inventory.toml"
    path.write_text(body)
    services = load_inventory_file(path).groups[0].services
    assert [s.zone for s in services] == ["dc-2", "default"]

    path.write_text(body.replace('zone = "dc-2"', 'zone = "dc 2"'))
    with pytest.raises(InventoryError) as refused:
        load_inventory_file(path)
    assert any(
        p.startswith("groups[0].services[0].zone:") and "dc 2" in p
        for p in refused.value.problems
    ), refused.value.problems


async def test_group_view_shows_each_service_zone(store, capsys, monkeypatch, tmp_path):
    from starter.cli import cmd_group_show

    hosts = [argparse.Namespace(ip=f"127.0.1.{i}", ssh_port=2222) for i in (1, 2)]
    package = tmp_path / f"oceanbase-{TARGET}.{OS_TAG}.{os.uname().machine}.rpm"
    package.write_bytes(b"rpm")
    store.load_inventory(in_zones(inventory_for(hosts, {TARGET: package}), ["a", "default"]))
    monkeypatch.setenv("ARBUP_DB_URL", str(store.engine.url))
    await cmd_group_show(argparse.Namespace(group=1, json=False))
    lines = [line for line in capsys.readouterr().out.splitlines() if "service" in line]
    assert lines[0].endswith("zone a") and lines[1].endswith("zone default")


# -- helpers -------------------------------------------------------------------------


def in_zones(inventory, zones: list[str]):
    """The inventory with service i in zones[i]."""
    group = inventory.groups[0]
    services = [s.model_copy(update={"zone": z}) for s, z in zip(group.services, zones)]
    return inventory.model_copy(
        update={"groups": [group.model_copy(update={"services": services})]}
    )


class Workers:
    """Worker processes started by a test, stopped at its end."""

    def __init__(self, client, stack, logs: Path):
        self.client = client
        self.stack = stack
        self.logs = logs
        self.processes: list[subprocess.Popen] = []

    def start(self, *args: str, database: bool = True) -> subprocess.Popen:
        env = dict(
            os.environ,
            TEMPORAL_ADDRESS=self.client.service_client.config.target_host,
            ARBUP_KNOWN_HOSTS=str(self.stack.ssh.known_hosts),
            ARBUP_SSH_KEY_DIR=str(self.stack.ssh.key_dir),
            # A zone worker gets a records store it could not open: it must not need one.
            ARBUP_DB_URL=(
                str(self.stack.store.engine.url)
                if database
                else f"sqlite:///{self.logs}/no-such-folder/arbup.db"
            ),
        )
        command = [
            sys.executable, "-m", "worker.main",
            "--task-queue", self.stack.task_queue, "--graceful-seconds", "1", *args,
        ]
        log = open(self.logs / f"worker-{len(self.processes)}.log", "wb")
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.processes.append(process)
        return process

    async def polling(self, process: subprocess.Popen, queue: str, seconds: float = 60) -> str:
        """Wait until ``process`` polls ``queue`` for activities; return its identity.

        Its log says when it started polling; the server's list of pollers then
        confirms it, when the server answers (a busy dev server cancels that query
        now and then, so the log line alone is enough after a while)."""
        identity = f"{process.pid}@{socket.gethostname()}"
        announced = f"worker polling task queue {queue}"
        deadline = time.monotonic() + seconds
        seen_at = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(
                    f"worker exited with {process.returncode}: {self.output(process)}"
                )
            if seen_at is None and announced in self.full_log(process):
                seen_at = time.monotonic()
            if seen_at is not None:
                if identity in await activity_pollers(self.client, queue):
                    return identity
                if time.monotonic() - seen_at > 10:
                    return identity
            await asyncio.sleep(0.3)
        raise AssertionError(
            f"worker {process.pid} never polled {queue}: {self.output(process)}"
        )

    def full_log(self, process: subprocess.Popen) -> str:
        index = self.processes.index(process)
        path = self.logs / f"worker-{index}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def output(self, process: subprocess.Popen) -> str:
        return self.full_log(process)[-3000:]

    def kill(self, process: subprocess.Popen) -> None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def workers(client, records_and_hosts, tmp_path):
    started = Workers(client, records_and_hosts, tmp_path)
    yield started
    started.stop_all()


async def activity_pollers(client, queue: str) -> list[str]:
    """Who polls ``queue`` for activities; none when the server could not say this
    time (a busy dev server cancels a call now and then: the callers ask again)."""
    try:
        answer = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            ),
            timeout=timedelta(seconds=10),
        )
    except RPCError:
        return []
    return [p.identity for p in answer.pollers]


async def activity_runs(handle) -> list[dict]:
    """Every activity of the workflow that started, from its history: type, task
    queue, service id (host steps), the identity that started its last attempt, and
    that attempt."""
    history = await handle.fetch_history()
    scheduled = {}
    runs = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            service_id = None
            if attrs.activity_type.name in HOST_ACTIVITIES:
                service_id = json.loads(attrs.input.payloads[0].data)["service"]["id"]
            scheduled[event.event_id] = (
                attrs.activity_type.name, attrs.task_queue.name, service_id
            )
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = event.activity_task_started_event_attributes
            name, queue, service_id = scheduled[attrs.scheduled_event_id]
            runs.append(
                dict(
                    name=name,
                    queue=queue,
                    service_id=service_id,
                    identity=attrs.identity,
                    attempt=attrs.attempt,
                )
            )
    return runs


def pre_runs(host) -> int:
    """How many rpm transactions of the target ran on ``host`` (%pre logs each)."""
    pre_log = host.knob_dir / "pre.log"
    return pre_log.read_text().split().count(f"{TARGET}.{OS_TAG}")


# -- two workers on one task queue ------------------------------------------------


@pytest.mark.integration
async def test_two_workers_share_an_upgrade_and_one_is_killed_mid_install(
    client, records_and_hosts, workers
):
    stack = records_and_hosts
    for host in stack.hosts:
        host.set_knob("install_delay", "4")
    first, second = workers.start(), workers.start()
    identity = {
        first: await workers.polling(first, stack.task_queue),
        second: await workers.polling(second, stack.task_queue),
    }
    task_id, handle = await start(client, stack, heartbeat_timeout_seconds=5.0)

    await wait_for(
        handle,
        lambda t: all(
            s.status == SubtaskStatus.RUNNING for s in by_name(t, "Install arbitration rpm")
        ),
    )
    await asyncio.sleep(1.5)  # both rpm transactions are in their slow %pre
    description = await handle.describe()
    installing = [
        a.last_worker_identity
        for a in description.raw_description.pending_activities
        if a.activity_type.name == "install_package"
        and a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
    ]
    assert len(installing) == 2, installing
    done_before = {run["identity"] for run in await activity_runs(handle)}
    # The worker to kill runs an install; prefer one whose earlier steps the history
    # already shows, so both workers' share of the upgrade stays visible.
    victim = next(
        (p for p in (first, second) if identity[p] in installing and identity[p] in done_before),
        next(p for p in (first, second) if identity[p] in installing),
    )
    survivor = second if victim is first else first
    workers.kill(victim)
    killed_at = time.monotonic()

    result = await asyncio.wait_for(handle.result(), 120)
    assert result["status"] == "SUCCESSFUL", result.get("message")
    assert time.monotonic() - killed_at < 60

    runs = await activity_runs(handle)
    # Both took part: the history names who finished each step, and the victim was
    # seen running an install (an attempt cut short leaves no event of its own).
    assert {run["identity"] for run in runs} | set(installing) == {
        identity[first],
        identity[second],
    }
    assert identity[victim] in installing
    # Every step after the kill ran on the survivor, the interrupted install on a
    # later attempt.
    installs = [run for run in runs if run["name"] == "install_package"]
    retried = [run for run in installs if run["attempt"] > 1]
    assert retried and all(run["identity"] == identity[survivor] for run in retried)
    assert all(
        run["identity"] == identity[survivor]
        for run in runs
        if run["name"] in ("start_service", "update_service_version")
    )
    task = await handle.query("task", result_type=TaskState)
    for install in by_name(task, "Install arbitration rpm"):
        assert install.status == SubtaskStatus.SUCCESSFUL
    interrupted = [
        s for s in by_name(task, "Install arbitration rpm")
        if any("earlier attempt" in line or "already installed" in line for line in s.log)
    ]
    assert interrupted, [s.log for s in by_name(task, "Install arbitration rpm")]

    # Nothing ran twice: one rpm transaction of the target per host.
    assert [pre_runs(host) for host in stack.hosts] == [1, 1]
    assert_hosts_run(stack, [TARGET, TARGET])
    assert_records(stack, [TARGET, TARGET], TARGET)
    assert stack.store.get_task(task_id).status.value == "SUCCESSFUL"


# -- network zones ---------------------------------------------------------------


@pytest.mark.integration
async def test_each_zone_host_steps_run_on_that_zone_worker(client, stack, workers):
    stack.store.load_inventory(in_zones(inventory_for(stack.hosts, stack.packages), ["a", "b"]))
    zone_a = workers.start("--zone", "a", database=False)
    zone_b = workers.start("--zone", "b", database=False)
    identity_a = await workers.polling(zone_a, zone_task_queue("a", stack.task_queue))
    identity_b = await workers.polling(zone_b, zone_task_queue("b", stack.task_queue))
    # A zone worker polls only its zone's queue.
    for _ in range(20):  # until the main queue's pollers are known
        main_pollers = set(await activity_pollers(client, stack.task_queue))
        if client.identity in main_pollers:
            break
        await asyncio.sleep(0.3)
    assert client.identity in main_pollers
    assert not {identity_a, identity_b} & main_pollers

    task_id, handle = await start(client, stack)
    result = await asyncio.wait_for(handle.result(), 120)
    assert result["status"] == "SUCCESSFUL", result.get("message")

    runs = await activity_runs(handle)
    host_runs = [run for run in runs if run["name"] in HOST_ACTIVITIES]
    assert {run["name"] for run in host_runs} == {
        "prepare_service", "stop_service", "install_package", "start_service"
    }
    expected = {
        1: (zone_task_queue("a", stack.task_queue), identity_a),
        2: (zone_task_queue("b", stack.task_queue), identity_b),
    }
    for run in host_runs:
        assert (run["queue"], run["identity"]) == expected[run["service_id"]], run
    assert sorted(run["service_id"] for run in host_runs) == [1] * 4 + [2] * 4
    # The main worker ran the record steps and nothing on a host.
    record_runs = [run for run in runs if run["name"] not in HOST_ACTIVITIES]
    assert record_runs
    assert all(
        run["queue"] == stack.task_queue and run["identity"] == client.identity
        for run in record_runs
    )

    assert_hosts_run(stack, [TARGET, TARGET])
    assert_records(stack, [TARGET, TARGET], TARGET)
    assert [s.zone for s in stack.group().services] == ["a", "b"]


@pytest.mark.integration
async def test_a_zone_nobody_polls_fails_its_subtask_then_retry_runs_there(
    client, stack, workers
):
    stack.store.load_inventory(
        in_zones(inventory_for(stack.hosts, stack.packages), ["default", "c"])
    )
    pids = [host.observer_pid() for host in stack.hosts]
    queue = zone_task_queue("c", stack.task_queue)
    started_at = time.monotonic()
    task_id, handle = await start(client, stack, host_schedule_to_start_seconds=3.0)

    task = await wait_for(handle, waiting_for_operator, seconds=60)
    waited = time.monotonic() - started_at
    assert waited >= 3.0
    prepare = by_name(task, "Prepare upgrade arbitration service")
    assert prepare[0].status == SubtaskStatus.SUCCESSFUL
    assert prepare[1].status == SubtaskStatus.FAILED
    assert prepare[1].run_time == 1
    for text in (prepare[1].log[-1], task.message):
        assert "zone c" in text and queue in text, text
        assert f"arbup-worker --zone c --task-queue {stack.task_queue}" in text, text
    assert task.message.startswith("Prepare upgrade arbitration service failed: ")
    # Nothing was stopped on any host.
    assert all(
        s.status in (SubtaskStatus.PENDING, SubtaskStatus.READY)
        for s in by_name(task, "Stop arbitration service")
    )
    assert [host.observer_pid() for host in stack.hosts] == pids
    assert_hosts_run(stack, [OLD, OLD])
    # It waited once for the timeout, and was not retried into the same empty queue.
    timeouts = [
        e.activity_task_timed_out_event_attributes
        for e in (await handle.fetch_history()).events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT
    ]
    assert len(timeouts) == 1
    assert timeouts[0].failure.timeout_failure_info.timeout_type == (
        TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_START
    )
    assert timeouts[0].retry_state == RetryState.RETRY_STATE_TIMEOUT
    assert waited < 12  # three attempts would take 3 + 1 + 3 + 2 + 3 s
    assert [r for r in await activity_runs(handle) if r["service_id"] == 2] == []

    zone_c = workers.start("--zone", "c", database=False)
    identity_c = await workers.polling(zone_c, queue)
    await decide(client, stack.store, task_id, "retry", actor="operator-1")
    result = await asyncio.wait_for(handle.result(), 120)
    assert result["status"] == "SUCCESSFUL", result.get("message")
    await save_history(handle, "zone_not_polled_then_retry")

    runs = await activity_runs(handle)
    service_2 = [run for run in runs if run["service_id"] == 2]
    assert {run["name"] for run in service_2} == {
        "prepare_service", "stop_service", "install_package", "start_service"
    }
    assert all(run["queue"] == queue and run["identity"] == identity_c for run in service_2)
    assert all(
        run["queue"] == stack.task_queue and run["identity"] == client.identity
        for run in runs
        if run["service_id"] == 1
    )
    stored = stack.store.get_task(task_id)
    retried = next(s for s in stored.subtasks if s.id == prepare[1].id)
    assert retried.run_time == 2 and retried.status == SubtaskStatus.SUCCESSFUL
    assert_hosts_run(stack, [TARGET, TARGET])
    assert_records(stack, [TARGET, TARGET], TARGET)


@pytest.mark.integration
async def test_a_step_no_worker_took_needs_no_undo_in_a_rollback(client, stack, workers):
    stack.store.load_inventory(
        in_zones(inventory_for(stack.hosts, stack.packages), ["default", "c"])
    )
    task_id, handle = await start(client, stack, host_schedule_to_start_seconds=2.0)
    task = await wait_for(handle, waiting_for_operator, seconds=60)
    prepare = by_name(task, "Prepare upgrade arbitration service")
    assert [p.status for p in prepare] == [SubtaskStatus.SUCCESSFUL, SubtaskStatus.FAILED]

    # No zone-c worker exists, and none is needed: service 2's prepare never ran.
    await decide(client, stack.store, task_id, "rollback", actor="operator-1")
    result = await asyncio.wait_for(handle.result(), 120)
    assert result["status"] == "SUCCESSFUL", result.get("message")
    await save_history(handle, "zone_not_polled_then_rollback")
    assert result["message"].startswith("rolled back")
    runs = await activity_runs(handle)
    assert [r["name"] for r in runs if r["service_id"] == 2] == []
    assert [r["name"] for r in runs if r["name"] == "unstage_package"] == ["unstage_package"]
    never_ran = next(s for s in stack.store.get_task(task_id).subtasks if s.id == prepare[1].id)
    assert never_ran.operation == Operation.ROLLBACK
    assert never_ran.log[-1] == "rollback: nothing ran on the host; nothing to undo"
    assert_hosts_run(stack, [OLD, OLD])
