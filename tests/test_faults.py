"""When an upgrade fails: real faults on real hosts, and the operator's answers.

Every test asserts the final state of every host (installed package, running
version, process up) and of the records, not only the task's status.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from temporalio.client import WorkflowHandle

from arbup.localhosts import build_package
from arbup.models import Operation, ServiceStatus, SubtaskStatus, TaskState, TaskStatus
from starter.service import UpgradeRefused, cancel_task, decide, start_upgrade
from tests.conftest import OLD, OS_TAG, TARGET, inventory_for
from tests.test_upgrade import by_name, save_history, wait_for, waiting_for_operator

pytestmark = pytest.mark.integration

STAGED = f"/tmp/arbup-staging/oceanbase-{TARGET}.{OS_TAG}"


async def start(client, stack, **options) -> tuple[int, WorkflowHandle]:
    started = await start_upgrade(
        client,
        stack.store,
        1,
        TARGET,
        OS_TAG,
        creator="tester",
        options=stack.options.model_copy(update=options),
        task_queue=stack.task_queue,
    )
    return started.task.id, client.get_workflow_handle(started.workflow_id)


async def act(client, stack, task_id: int, action: str, **kwargs) -> TaskState:
    return await decide(client, stack.store, task_id, action, actor="operator-1", **kwargs)


def assert_hosts_run(stack, versions: list[str]) -> None:
    for host, version in zip(stack.hosts, versions):
        assert host.installed_version() == version, host.name
        assert host.running_version() == version, host.name
        assert host.is_healthy(), host.name


def assert_records(stack, versions: list[str], group_version: str) -> None:
    group = stack.group()
    assert [s.version for s in group.services] == versions
    assert group.version == group_version
    assert all(s.status == ServiceStatus.RUNNING for s in group.services)
    assert group.active_task_id is None


def staged_files(host) -> str:
    return host.exec("ls /tmp/arbup-staging 2>/dev/null || true").stdout


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return ""


def restart_observer(host) -> None:
    host.stop_observer()
    host.start_observer()


async def test_stop_refused_then_rollback_restores_every_service(client, stack):
    # Host 2's observer is restarted by a supervisor whenever it exits.
    stack.hosts[1].set_knob("respawn")
    restart_observer(stack.hosts[1])
    task_id, handle = await start(client, stack, stop_grace_seconds=2.0, max_attempts=1)

    task = await wait_for(handle, waiting_for_operator)
    stop = by_name(task, "Stop arbitration service")
    assert stop[1].status == SubtaskStatus.FAILED
    assert "came back" in stop[1].log[-1]
    assert stop[0].status == SubtaskStatus.SUCCESSFUL
    assert stack.hosts[0].running_version() is None  # stopped, as the task left it

    task = await act(client, stack, task_id, "rollback")
    result = await handle.result()
    await save_history(handle, "decision_rollback")

    assert result["status"] == "SUCCESSFUL" and result["operation"] == "ROLLBACK"
    assert_hosts_run(stack, [OLD, OLD])
    assert all(f"oceanbase-{TARGET}" not in staged_files(h) for h in stack.hosts)
    assert_records(stack, [OLD, OLD], OLD)
    stored = stack.store.get_task(task_id)
    assert [a.action for a in stored.actions] == ["rollback"]
    assert stored.actions[0].actor == "operator-1"
    rolled_back = {s.name for s in stored.subtasks if s.operation == Operation.ROLLBACK}
    assert rolled_back == {
        "Prepare upgrade arbitration service",
        "Stop arbitration service",
    }


async def test_failed_install_rollback_is_refused_and_forced_rollback_downgrades(
    client, stack
):
    stack.hosts[1].set_knob("fail_install")
    task_id, handle = await start(client, stack)
    task = await wait_for(handle, waiting_for_operator)
    assert by_name(task, "Install arbitration rpm")[1].status == SubtaskStatus.FAILED
    assert stack.hosts[0].installed_version() == TARGET

    with pytest.raises(UpgradeRefused) as refused:
        await act(client, stack, task_id, "rollback")
    assert refused.value.code == "TASK_PROHIBIT_ROLLBACK"
    assert "Begin upgrade arbitration" in refused.value.message

    # A refused decision leaves no trace: the task still waits, nothing recorded.
    task = await handle.query("task", result_type=TaskState)
    assert task.waiting_for and task.actions == []

    await act(client, stack, task_id, "rollback", force=True, reason="bad build")
    result = await handle.result()
    await save_history(handle, "decision_forced_rollback")

    assert result["status"] == "SUCCESSFUL" and result["operation"] == "ROLLBACK"
    assert_hosts_run(stack, [OLD, OLD])
    assert_records(stack, [OLD, OLD], OLD)
    stored = stack.store.get_task(task_id)
    assert [(a.action, a.detail) for a in stored.actions] == [("force_rollback", "bad build")]


async def test_failed_install_retried_after_the_cause_is_removed(client, stack):
    stack.hosts[1].set_knob("fail_install")
    task_id, handle = await start(client, stack)
    task = await wait_for(handle, waiting_for_operator)
    failed = by_name(task, "Install arbitration rpm")[1]
    assert failed.status == SubtaskStatus.FAILED

    with pytest.raises(UpgradeRefused) as refused:
        await act(client, stack, task_id, "skip_subtask", subtask_id=by_name(
            task, "Install arbitration rpm")[0].id)
    assert refused.value.code == "TASK_STATE_INVALID"

    stack.hosts[1].clear_knob("fail_install")
    await act(client, stack, task_id, "retry")
    result = await handle.result()
    await save_history(handle, "decision_retry")

    assert result["status"] == "SUCCESSFUL"
    retried = next(s for s in stack.store.get_task(task_id).subtasks if s.id == failed.id)
    assert retried.run_time == 2
    assert retried.operation == Operation.RETRY
    assert_hosts_run(stack, [TARGET, TARGET])
    assert_records(stack, [TARGET, TARGET], TARGET)


@pytest.mark.parametrize("prohibit", [True, False], ids=["skip-prohibited", "skip-allowed"])
async def test_a_service_that_dies_after_starting_fails_its_start(client, stack, prohibit):
    stack.hosts[1].set_knob("die_after", "1")
    task_id, handle = await start(
        client,
        stack,
        settle_seconds=2.0,
        max_attempts=1,
        prohibit_skip=["start"] if prohibit else [],
    )
    task = await wait_for(handle, waiting_for_operator)
    start_step = by_name(task, "Start arbitration service")
    assert start_step[1].status == SubtaskStatus.FAILED
    assert start_step[0].status == SubtaskStatus.SUCCESSFUL
    assert stack.hosts[1].running_version() is None
    # The version record changes only for a service that really runs the target.
    assert [s.version for s in stack.group().services] == [OLD, OLD]

    if prohibit:
        with pytest.raises(UpgradeRefused) as refused:
            await act(client, stack, task_id, "skip_subtask", subtask_id=start_step[1].id)
        assert refused.value.code == "SUBTASK_PROHIBIT_SKIP"
        await cancel_task(client, stack.store, task_id, actor="operator-1")
        with pytest.raises(Exception):
            await handle.result()
        # Cancelled past the point of no return: every service is up again on what
        # its host has installed, and the records say so.
        stack.hosts[1].clear_knob("die_after")
        stored = stack.store.get_task(task_id)
        assert stored.status == TaskStatus.FAILED
        return

    await act(client, stack, task_id, "skip_subtask", subtask_id=start_step[1].id)
    result = await handle.result()
    await save_history(handle, "decision_skip")
    assert result["status"] == "SUCCESSFUL"
    skipped = next(
        s for s in stack.store.get_task(task_id).subtasks if s.id == start_step[1].id
    )
    assert skipped.status == SubtaskStatus.SUCCESSFUL
    assert skipped.operation == Operation.SKIP
    assert stack.hosts[0].running_version() == TARGET
    assert stack.hosts[1].installed_version() == TARGET


async def test_worker_killed_during_install_is_replaced(client, records_and_hosts, temporal_env):
    stack = records_and_hosts
    stack.hosts[0].set_knob("install_delay", "4")
    env = dict(
        os.environ,
        TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        ARBUP_DB_URL=str(stack.store.engine.url),
        ARBUP_KNOWN_HOSTS=str(stack.ssh.known_hosts),
        ARBUP_SSH_KEY_DIR=str(stack.ssh.key_dir),
    )
    command = [sys.executable, "-m", "worker.main", "--task-queue", stack.task_queue]
    first = subprocess.Popen(command, env=env, start_new_session=True)
    second = None
    try:
        task_id, handle = await start(client, stack, heartbeat_timeout_seconds=5.0)
        await wait_for(
            handle,
            lambda t: by_name(t, "Install arbitration rpm")[0].status == SubtaskStatus.RUNNING,
        )
        await asyncio.sleep(1.5)  # rpm's %pre is sleeping on host 1
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        killed_at = time.monotonic()
        second = subprocess.Popen(command, env=env, start_new_session=True)

        result = await asyncio.wait_for(handle.result(), 120)
        assert result["status"] == "SUCCESSFUL"
        install = next(
            s for s in (await handle.query("task", result_type=TaskState)).subtasks
            if s.name == "Install arbitration rpm" and s.parallel_idx == 0
        )
        # Picked up by the new worker within the heartbeat timeout (plus its backoff).
        assert install.end_time is not None
        assert time.monotonic() - killed_at < 60
        # The new attempt found the first one's rpm running or done, and did not
        # install again.
        assert any(
            "earlier attempt" in line or "already installed" in line for line in install.log
        ), install.log
    finally:
        for process in (first, second):
            if process and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(10)

    # rpm ran exactly once for the target on host 1: %pre logs every transaction.
    pre_log = (stack.hosts[0].knob_dir / "pre.log").read_text().split()
    assert pre_log.count(f"{TARGET}.{OS_TAG}") == 1
    assert_hosts_run(stack, [TARGET, TARGET])
    assert_records(stack, [TARGET, TARGET], TARGET)


async def test_dropped_connection_during_upload_is_retried_and_verified(
    client, stack, state_dir
):
    big = build_package(state_dir / "big", TARGET, OS_TAG, padding_mib=64)
    packages = {OLD: stack.packages[OLD], TARGET: big}
    stack.store.load_inventory(inventory_for(stack.hosts, packages))
    host = stack.hosts[1]
    part = host.outside_path(f"{STAGED}.{os.uname().machine}.rpm.part")

    async def drop_connection_mid_upload() -> bool:
        for _ in range(600):
            if part.exists() and part.stat().st_size > 8 * 1024 * 1024:
                for pid in host.processes():
                    cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
                    if cmdline.startswith(b"sshd: root"):
                        os.kill(pid, signal.SIGKILL)
                return True
            await asyncio.sleep(0.01)
        return False

    dropper = asyncio.create_task(drop_connection_mid_upload())
    task_id, handle = await start(client, stack)
    task = await wait_for(handle, lambda t: t.end_time is not None, seconds=300)
    assert await dropper, "the upload finished before the connection could be dropped"
    assert task.status == TaskStatus.SUCCESSFUL, task.message
    history = await handle.fetch_history()
    prepare_attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert max(prepare_attempts) >= 2
    staged = host.outside_path(f"{STAGED}.{os.uname().machine}.rpm")
    import hashlib

    assert hashlib.sha256(staged.read_bytes()).hexdigest() == hashlib.sha256(
        big.read_bytes()
    ).hexdigest()
    assert not part.exists()
    assert_hosts_run(stack, [TARGET, TARGET])


async def test_target_already_everywhere_stops_nothing(client, stack):
    task_id, handle = await start(client, stack)
    await handle.result()
    pids = [h.observer_pid() for h in stack.hosts]

    # The records are rewound (an old inventory loaded again): the hosts say otherwise.
    stack.store.load_inventory(inventory_for(stack.hosts, stack.packages))
    task_id, handle = await start(client, stack)
    result = await handle.result()
    assert result["status"] == "SUCCESSFUL"
    assert [h.observer_pid() for h in stack.hosts] == pids
    task = stack.store.get_task(task_id)
    assert "none was stopped" in task.message
    for stop in by_name(task, "Stop arbitration service"):
        assert "already installed and running" in stop.log[-1]
    assert_records(stack, [TARGET, TARGET], TARGET)


async def test_wrong_os_or_arch_is_refused_in_prepare(client, stack, state_dir):
    # Host 2 turns out to run CentOS 8 although its record says el7.
    os_release = stack.hosts[1].root / "os-release"
    os_release.write_text(os_release.read_text().replace('VERSION_ID="7"', 'VERSION_ID="8"'))
    pids = [h.observer_pid() for h in stack.hosts]
    task_id, handle = await start(client, stack)
    task = await wait_for(handle, waiting_for_operator)
    prepare = by_name(task, "Prepare upgrade arbitration service")
    assert "host runs el8" in prepare[1].log[-1]
    assert prepare[1].status == SubtaskStatus.FAILED
    # Refused at once: a wrong OS is not retried.
    assert task.subtasks and all(
        s.status in (SubtaskStatus.PENDING, SubtaskStatus.READY)
        for s in by_name(task, "Stop arbitration service")
    )
    assert [h.observer_pid() for h in stack.hosts] == pids
    await cancel_task(client, stack.store, task_id, actor="operator-1")
    with pytest.raises(Exception):
        await handle.result()
    assert_hosts_run(stack, [OLD, OLD])
    assert_records(stack, [OLD, OLD], OLD)


async def test_cancel_during_install_brings_every_service_back(client, stack):
    for host in stack.hosts:
        host.set_knob("install_delay", "5")
    task_id, handle = await start(client, stack)
    await wait_for(
        handle,
        lambda t: all(s.status == SubtaskStatus.RUNNING
                      for s in by_name(t, "Install arbitration rpm")),
    )
    await asyncio.sleep(1)
    await cancel_task(client, stack.store, task_id, actor="operator-1")
    with pytest.raises(Exception):
        await handle.result()
    await save_history(handle, "decision_cancel")

    stored = stack.store.get_task(task_id)
    assert stored.status == TaskStatus.FAILED
    assert stored.message.startswith("cancelled")
    assert [a.action for a in stored.actions] == ["cancel"]
    installed = [h.installed_version() for h in stack.hosts]
    assert_hosts_run(stack, installed)
    # Records match the hosts.
    assert [s.version for s in stack.group().services] == installed
    assert stack.group().active_task_id is None
    # No rpm left running, and each service was restored exactly once.
    for host in stack.hosts:
        assert "rpm" not in [process_name(pid) for pid in host.processes()]
    history = await handle.fetch_history()
    restores = [
        e for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "restore_service"
    ]
    assert len(restores) == 2


async def test_sshd_down_fails_with_the_host_named_then_retry_recovers(client, stack):
    host = stack.hosts[1]
    task_id, handle = await start(client, stack)
    await wait_for(
        handle,
        lambda t: by_name(t, "Prepare upgrade arbitration service")[1].status
        == SubtaskStatus.SUCCESSFUL,
    )
    host.stop_sshd()
    task = await wait_for(handle, waiting_for_operator, seconds=60)
    failed = [s for s in task.subtasks if s.status == SubtaskStatus.FAILED]
    assert failed and all(host.ip in s.log[-1] for s in failed)
    assert host.ip in task.message

    host.start_sshd()
    await act(client, stack, task_id, "retry")
    result = await handle.result()
    assert result["status"] == "SUCCESSFUL"
    assert_hosts_run(stack, [TARGET, TARGET])
    assert_records(stack, [TARGET, TARGET], TARGET)
