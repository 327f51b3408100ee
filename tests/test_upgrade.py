"""The upgrade end to end: real Temporal dev server, real sshd hosts, real rpm."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from temporalio.client import WorkflowHandle

from arbup.models import ServiceStatus, SubtaskStatus, TaskState, TaskStatus
from starter.service import UpgradeRefused, start_upgrade
from tests.conftest import OLD, OS_TAG, TARGET, inventory_for

pytestmark = pytest.mark.integration

HISTORIES = Path(__file__).parent / "histories"


async def save_history(handle: WorkflowHandle, name: str) -> None:
    """With ARBUP_RECORD_HISTORIES=1, keep this run's history for the replay tests."""
    if os.environ.get("ARBUP_RECORD_HISTORIES") != "1":
        return
    history = await handle.fetch_history()
    HISTORIES.mkdir(exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(history.to_json())


async def start(client, stack):
    started = await start_upgrade(
        client,
        stack.store,
        1,
        TARGET,
        OS_TAG,
        creator="tester",
        options=stack.options,
        task_queue=stack.task_queue,
    )
    return started, client.get_workflow_handle(started.workflow_id)


async def wait_for(handle: WorkflowHandle, predicate, seconds: float = 120) -> TaskState:
    """Query the task until ``predicate`` holds."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        task = await handle.query("task", result_type=TaskState)
        if predicate(task):
            return task
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"task never reached the expected state: {task.message}")
        await asyncio.sleep(0.3)


def waiting_for_operator(task: TaskState) -> bool:
    return task.waiting_for == "an operator decision"


def by_name(task: TaskState, name: str) -> list:
    return sorted((s for s in task.subtasks if s.name == name), key=lambda s: s.parallel_idx)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)
async def test_two_service_upgrade_succeeds(client, stack, store):
    pids_before = [h.exec("cat /home/admin/oceanbase/run/observer.pid").stdout.strip()
                   for h in stack.hosts]
    stack.store.add_status_monitor_record(1, "UNAVAILABLE", "probe failed during test")
    started, handle = await start(client, stack)
    assert started.workflow_id == f"arbup-group-1-task-{started.task.id}"

    result = await handle.result()
    if store.engine.dialect.name == "sqlite":
        await save_history(handle, "upgrade_succeeds")

    # The hosts really run the target, checked apart from the product's SSH code.
    for host, old_pid in zip(stack.hosts, pids_before):
        assert host.installed_version() == TARGET
        assert host.running_version() == TARGET
        new_pid = host.exec("cat /home/admin/oceanbase/run/observer.pid").stdout.strip()
        assert new_pid != old_pid
        staged = host.exec(f"ls {stack.options.staging_dir}").stdout
        assert f"oceanbase-{TARGET}.{OS_TAG}" in staged

    # The records follow.
    group = stack.group()
    assert group.version == TARGET
    assert group.active_task_id is None
    assert [s.version for s in group.services] == [TARGET, TARGET]
    assert all(s.status == ServiceStatus.RUNNING for s in group.services)
    assert stack.store.count_status_monitor_records(1) == 0

    # The task, from the workflow's answer and from the store.
    assert result["status"] == "SUCCESSFUL"
    assert result["subtaskCount"] == 18
    assert result["subtaskStatuses"] == {"SUCCESSFUL": 18}
    stored = stack.store.get_task(started.task.id)
    assert stored.status == TaskStatus.SUCCESSFUL
    # Past Begin, the task may no longer be rolled back; the list says so too.
    assert stored.prohibit_rollback
    listed, _ = stack.store.list_tasks()
    assert [t.prohibit_rollback for t in listed] == [True]
    assert stored.end_time is not None
    assert all(s.status == SubtaskStatus.SUCCESSFUL for s in stored.subtasks)
    install_logs = [s.log for s in stored.subtasks if s.name == "Install arbitration rpm"]
    assert all(any("rpm -Uvh" in line for line in log) for log in install_logs)
    assert all(s.start_time and s.end_time for s in stored.subtasks)
    # Each host was connected to once, in prepare; the later steps reused it.
    for name in ("Stop arbitration service", "Install arbitration rpm", "Start arbitration service"):
        for subtask in (s for s in stored.subtasks if s.name == name):
            assert subtask.log[0].startswith("reusing the connection to"), subtask.log


async def test_unreachable_host_at_prepare_stops_nothing(client, stack):
    # Service 2's SSH port has nothing listening: a real connection refused.
    stack.store.load_inventory(inventory_for(stack.hosts, stack.packages, ssh_ports={1: 2299}))
    pids_before = [h.exec("cat /home/admin/oceanbase/run/observer.pid").stdout.strip()
                   for h in stack.hosts]
    started, handle = await start(client, stack)

    task = await wait_for(handle, waiting_for_operator)
    await save_history(handle, "prepare_unreachable")
    prepare = by_name(task, "Prepare upgrade arbitration service")
    assert prepare[0].status == SubtaskStatus.SUCCESSFUL
    assert prepare[1].status == SubtaskStatus.FAILED
    unreachable = f"{stack.hosts[1].ip}:2299"
    assert unreachable in prepare[1].log[-1]
    assert unreachable in task.message
    assert all(s.status in (SubtaskStatus.PENDING, SubtaskStatus.READY)
               for s in by_name(task, "Stop arbitration service"))
    assert task.waiting_for == "an operator decision"

    # Nothing was stopped or installed, and no record changed.
    for host, pid in zip(stack.hosts, pids_before):
        assert host.running_version() == OLD
        assert host.installed_version() == OLD
        assert host.exec("cat /home/admin/oceanbase/run/observer.pid").stdout.strip() == pid
    group = stack.group()
    assert group.version == OLD
    assert [s.version for s in group.services] == [OLD, OLD]
    stored = await stored_when(stack, started.task.id, lambda t: t.status == TaskStatus.FAILED)
    assert group.active_task_id == started.task.id

    await handle.cancel()
    await wait_for_release(stack, started.task.id)


async def test_failed_install_leaves_task_failed_and_records_unchanged(client, stack):
    stack.hosts[1].set_knob("fail_install")
    started, handle = await start(client, stack)

    task = await wait_for(handle, waiting_for_operator)
    await save_history(handle, "install_fails")
    install = by_name(task, "Install arbitration rpm")
    assert install[0].status == SubtaskStatus.SUCCESSFUL
    assert install[1].status == SubtaskStatus.FAILED
    assert "rpm -Uvh" in install[1].log[-1]
    assert install[1].run_time == 1
    for subtask in by_name(task, "Update arbitration service version"):
        assert subtask.status == SubtaskStatus.PENDING

    # Host 2 keeps its old package; host 1 is left as it is (target installed).
    assert stack.hosts[1].installed_version() == OLD
    assert stack.hosts[0].installed_version() == TARGET
    group = stack.group()
    assert group.version == OLD
    assert [s.version for s in group.services] == [OLD, OLD]
    stored = await stored_when(stack, started.task.id, lambda t: t.status == TaskStatus.FAILED)
    stored_install = [s for s in stored.subtasks if s.id == install[1].id][0]
    assert stored_install.status == SubtaskStatus.FAILED

    await handle.cancel()
    await wait_for_release(stack, started.task.id)


async def test_second_upgrade_of_a_busy_group_is_refused(client, stack):
    stack.hosts[0].set_knob("stop_delay", "3")
    started, handle = await start(client, stack)
    with pytest.raises(UpgradeRefused) as refused:
        await start(client, stack)
    assert refused.value.code == "ARBITRATION_GROUP_UPGRADE_IN_PROGRESS"
    assert f"task {started.task.id}" in refused.value.message
    tasks, total = stack.store.list_tasks(group_id=1)
    assert total == 1

    result = await handle.result()
    assert result["status"] == "SUCCESSFUL"


class SlowToStart:
    """The client, with start_workflow delayed: the moment between recording a task
    and starting its workflow, made long enough to race into."""

    def __init__(self, client, seconds: float):
        self._client, self._seconds = client, seconds

    def __getattr__(self, name):
        return getattr(self._client, name)

    async def start_workflow(self, *args, **kwargs):
        await asyncio.sleep(self._seconds)
        return await self._client.start_workflow(*args, **kwargs)


async def test_an_upgrade_recorded_but_not_yet_started_still_holds_its_group(
    client, stack
):
    first = asyncio.create_task(start(SlowToStart(client, 1.5), stack))
    await asyncio.sleep(0.5)  # the first task is recorded, its workflow not started
    with pytest.raises(UpgradeRefused) as refused:
        await start(client, stack)
    assert refused.value.code == "ARBITRATION_GROUP_UPGRADE_IN_PROGRESS"
    started, handle = await first
    assert f"task {started.task.id}" in refused.value.message
    _, total = stack.store.list_tasks(group_id=1)
    assert total == 1
    assert (await handle.result())["status"] == "SUCCESSFUL"


async def test_a_lock_left_by_a_workflow_terminated_outside_arbup_is_released(
    client, stack
):
    stack.hosts[0].set_knob("stop_delay", "3")
    first, handle = await start(client, stack)
    await handle.terminate("stopped from the Temporal UI")
    stack.hosts[0].clear_knob("stop_delay")

    second, handle = await start(client, stack)
    left = stack.store.get_task(first.task.id)
    assert left.status == TaskStatus.FAILED
    assert left.message == "its workflow ended outside arbup, or never started"
    assert stack.group().active_task_id == second.task.id
    assert (await handle.result())["status"] == "SUCCESSFUL"


async def stored_when(stack, task_id: int, predicate, seconds: float = 30) -> TaskState:
    """The task as the records store has it, once ``predicate`` holds."""
    for _ in range(int(seconds / 0.2)):
        stored = stack.store.get_task(task_id)
        if predicate(stored):
            return stored
        await asyncio.sleep(0.2)
    raise AssertionError(f"the store never showed the expected state of task {task_id}")


async def wait_for_release(stack, task_id: int, seconds: float = 30) -> None:
    for _ in range(int(seconds / 0.2)):
        if stack.group().active_task_id is None:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"task {task_id} never released group 1")
