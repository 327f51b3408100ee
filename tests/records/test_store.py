"""RecordsStore on SQLite and PostgreSQL (see conftest.store)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect

from arbup.inventory import Inventory
from arbup.models import (
    GroupStatus,
    Operation,
    Package,
    ServiceStatus,
    SubtaskStatus,
    TaskStatus,
)
from arbup.records import GroupBusy, NotFound, RecordsError, RecordsStore
from arbup.versions import VersionError

OLD = "4.2.1.8-108000022024072217"
NEW = "4.3.4.0-200000022024070119"
CST = timezone(timedelta(hours=8))


@pytest.fixture
def loaded(store, inventory_factory):
    store.load_inventory(inventory_factory())
    return store


# -- schema and inventory --------------------------------------------------------------


def test_create_schema_is_idempotent(store):
    store.create_schema()
    store.create_schema()
    names = set(inspect(store.engine).get_table_names())
    assert {
        "groups",
        "services",
        "packages",
        "status_monitor_records",
        "tasks",
        "subtasks",
    } <= names


def test_load_inventory_and_read_back(store, inventory_factory):
    counts = store.load_inventory(inventory_factory())
    assert counts == {"groups": 2, "services": 4, "packages": 1}

    group = store.get_group(1)
    assert group.name == "arb-group-1"
    assert group.version == OLD
    assert group.status is GroupStatus.RUNNING
    assert group.active_task_id is None
    # ordered by (priority, id): 2 and 3 have priority 0, 1 has priority 1
    assert [s.id for s in group.services] == [2, 3, 1]
    assert all(s.group_id == 1 for s in group.services)

    assert [g.id for g in store.list_groups()] == [1, 2]
    assert [s.id for s in store.list_groups()[1].services] == [4]

    service = store.get_service(3)
    expected = inventory_factory().groups[0].services[1]
    assert service == expected  # every field round-trips
    assert service.zone == "z3"
    assert store.get_service(99) is None
    assert store.get_group(99) is None

    package = store.find_package(NEW, "el7", "x86_64")
    assert package.id is not None
    assert package.model_dump(exclude={"id"}) == inventory_factory().packages[
        0
    ].model_dump(exclude={"id"})
    assert store.find_package(NEW, "el8", "x86_64") is None
    assert store.list_packages() == [package]
    assert store.list_packages(NEW) == [package]
    assert store.list_packages(OLD) == []


def test_load_inventory_upserts(store, inventory_factory, service_factory):
    inventory = inventory_factory()
    store.load_inventory(inventory)
    first_package = store.find_package(NEW, "el7", "x86_64")

    group1 = inventory.groups[0].model_copy(
        update={
            "name": "renamed",
            "services": [
                service_factory(1, 1, priority=1, host="10.0.0.1"),
                service_factory(5, 1),
            ],
        }
    )
    moved_package = inventory.packages[0].model_copy(
        update={"path": "/elsewhere/p.rpm", "size": 456}
    )
    other_package = Package(
        file_name=f"oceanbase-{NEW}.el7.aarch64.rpm",
        path="/srv/p-arm.rpm",
        size=1,
        sha256="b" * 64,
        full_version=NEW,
        operating_system="el7",
        arch="aarch64",
    )
    counts = store.load_inventory(
        Inventory(groups=[group1], packages=[moved_package, other_package])
    )
    assert counts == {"groups": 1, "services": 2, "packages": 2}

    group = store.get_group(1)
    assert group.name == "renamed"
    # 2 and 3 are not in the new inventory and stay; 5 is new; 1 is updated
    assert [s.id for s in group.services] == [2, 3, 5, 1]
    assert store.get_service(1).host == "10.0.0.1"
    assert store.get_group(2).name == "arb-group-2"

    packages = store.list_packages(NEW)
    assert [(p.arch, p.path, p.size) for p in packages] == [
        ("aarch64", "/srv/p-arm.rpm", 1),
        ("x86_64", "/elsewhere/p.rpm", 456),
    ]
    # the same target keeps its row
    assert store.find_package(NEW, "el7", "x86_64").id == first_package.id


def test_load_inventory_keeps_the_lock_and_refuses_to_change_a_busy_group(
    loaded, inventory_factory, draft_factory
):
    task = loaded.create_task(draft_factory())

    # loading the same data again is fine and keeps the lock
    loaded.load_inventory(inventory_factory())
    assert loaded.get_group(1).active_task_id == task.id

    inventory = inventory_factory()
    new_package = Package(
        file_name=f"oceanbase-{NEW}.el8.x86_64.rpm",
        path="/srv/el8.rpm",
        size=1,
        sha256="c" * 64,
        full_version=NEW,
        operating_system="el8",
        arch="x86_64",
    )
    changed_group2 = inventory.groups[1].model_copy(update={"name": "changed"})
    changed_group1 = inventory.groups[0].model_copy(update={"version": NEW})
    with pytest.raises(GroupBusy) as caught:
        loaded.load_inventory(
            Inventory(groups=[changed_group2, changed_group1], packages=[new_package])
        )
    assert caught.value.group_id == 1
    assert caught.value.task_id == task.id
    # one transaction: the change to group 2 and the new package were rolled back
    assert loaded.get_group(2).name == "arb-group-2"
    assert loaded.get_group(1).version == OLD
    assert loaded.find_package(NEW, "el8", "x86_64") is None


# -- create_task ----------------------------------------------------------------------


def test_create_task_assigns_ids_and_remaps_the_graph(loaded, draft_factory):
    draft = draft_factory()
    task = loaded.create_task(draft)

    assert task.id > 0
    assert task.workflow_id == f"arbup-upgrade-{task.id}"
    assert task.status is TaskStatus.RUNNING
    assert task.start_time == draft.start_time
    assert task.start_time.tzinfo is not None
    assert task.start_time.utcoffset() == timedelta(0)
    assert task.end_time is None

    real = [s.id for s in task.subtasks]
    assert real == sorted(real) and len(set(real)) == 4
    # inserted in draft order, so draft position i has real id real[i]
    mapping = {d.id: r for d, r in zip(draft.subtasks, real)}
    assert set(mapping) == {100, 7, 42, 5}
    for original, stored in zip(draft.subtasks, task.subtasks):
        assert stored.task_id == task.id
        assert stored.name == original.name
        assert stored.series_id == original.series_id
        assert stored.service_id == original.service_id
        assert stored.upstreams == [mapping[i] for i in original.upstreams]
        assert stored.downstreams == [mapping[i] for i in original.downstreams]
    begin, install1, install2, end = task.subtasks
    assert begin.downstreams == [install1.id, install2.id]
    assert end.upstreams == [install1.id, install2.id]
    assert begin.prohibit_rollback is True

    assert loaded.get_task(task.id) == task
    assert loaded.get_group(1).active_task_id == task.id


def test_create_task_on_a_busy_group_raises_and_writes_nothing(loaded, draft_factory):
    first = loaded.create_task(draft_factory())
    with pytest.raises(GroupBusy) as caught:
        loaded.create_task(draft_factory(name="second"))
    assert caught.value.group_id == 1
    assert caught.value.task_id == first.id
    assert str(first.id) in str(caught.value)
    tasks, total = loaded.list_tasks()
    assert total == 1 and [t.id for t in tasks] == [first.id]
    assert loaded.get_group(1).active_task_id == first.id

    # another group is independent
    other = loaded.create_task(draft_factory(2, service_ids=(4,)))
    assert loaded.get_group(2).active_task_id == other.id


def race(call, arguments: list) -> list:
    """Run call(argument) in one thread per argument, all released at once; return
    each call's result or exception, in argument order."""
    barrier = threading.Barrier(len(arguments))
    results: list = [None] * len(arguments)

    def attempt(slot: int) -> None:
        barrier.wait()
        try:
            results[slot] = call(arguments[slot])
        except Exception as exc:  # noqa: BLE001 - recorded and asserted by the caller
            results[slot] = exc

    threads = [
        threading.Thread(target=attempt, args=(i,)) for i in range(len(arguments))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_concurrent_create_task_exactly_one_wins(loaded, draft_factory):
    rounds, threads_per_round = 3, 8
    winners_seen = []
    for round_no in range(rounds):
        drafts = [
            draft_factory(name=f"round {round_no} thread {slot}")
            for slot in range(threads_per_round)
        ]
        results = race(loaded.create_task, drafts)

        won = [r for r in results if not isinstance(r, Exception)]
        lost = [r for r in results if isinstance(r, Exception)]
        assert len(won) == 1, results
        assert len(lost) == threads_per_round - 1
        assert all(isinstance(e, GroupBusy) and e.task_id == won[0].id for e in lost), (
            lost
        )
        assert loaded.get_group(1).active_task_id == won[0].id
        winners_seen.append(won[0].id)
        loaded.release_group(1, won[0].id)

    tasks, total = loaded.list_tasks(group_id=1, size=100)
    assert total == rounds  # the losers left no task rows behind
    assert sorted(t.id for t in tasks) == sorted(winners_seen)


def test_create_task_validates_before_writing(loaded, draft_factory):
    with pytest.raises(NotFound, match="group 99"):
        loaded.create_task(draft_factory(99))

    dangling = draft_factory()
    dangling.subtasks[1].upstreams = [12345]
    with pytest.raises(RecordsError, match="12345"):
        loaded.create_task(dangling)

    duplicated = draft_factory()
    duplicated.subtasks[2].id = duplicated.subtasks[1].id
    with pytest.raises(RecordsError, match="distinct"):
        loaded.create_task(duplicated)

    foreign_service = draft_factory(service_ids=(1, 4))  # 4 is in group 2
    with pytest.raises(RecordsError, match="service 4"):
        loaded.create_task(foreign_service)

    naive = draft_factory()
    naive.start_time = datetime(2025, 1, 1, 12, 0)
    with pytest.raises(ValueError, match="time zone"):
        loaded.create_task(naive)

    assert loaded.list_tasks() == ([], 0)
    assert loaded.get_group(1).active_task_id is None


def test_release_group(loaded, draft_factory):
    task = loaded.create_task(draft_factory())
    loaded.release_group(1, task.id + 1000)  # not the holder: no effect
    assert loaded.get_group(1).active_task_id == task.id
    loaded.release_group(1, task.id)
    assert loaded.get_group(1).active_task_id is None
    loaded.release_group(1, task.id)  # idempotent
    assert loaded.get_group(1).active_task_id is None

    again = loaded.create_task(draft_factory())
    assert loaded.get_group(1).active_task_id == again.id
    with pytest.raises(NotFound, match="99"):
        loaded.release_group(99, task.id)


# -- subtasks and task status ---------------------------------------------------------


def test_save_subtasks_round_trip(loaded, draft_factory):
    task = loaded.create_task(draft_factory())
    begin, install1, install2, end = task.subtasks
    started = datetime(2025, 1, 21, 11, 9, 0, 123456, tzinfo=CST)
    begin.status = SubtaskStatus.SUCCESSFUL
    begin.start_time = started
    begin.end_time = started + timedelta(seconds=2)
    begin.log = ["begin: group 1 marked UPGRADING", "ünïcode ✓ and\nnewline"]
    install1.status = SubtaskStatus.FAILED
    install1.operation = Operation.RETRY
    install1.run_time = 2
    install1.start_time = started.astimezone(UTC) + timedelta(seconds=3)
    install1.log = ["rpm -Uvh ...", "error: dependency missing"]

    loaded.save_subtasks(task.id, [begin, install1])
    loaded.save_subtasks(task.id, [begin, install1])  # idempotent

    stored = loaded.get_task(task.id)
    s_begin, s_install1, s_install2, s_end = stored.subtasks
    assert s_begin.status is SubtaskStatus.SUCCESSFUL
    assert s_begin.start_time == started
    assert s_begin.start_time.utcoffset() == timedelta(0)
    assert s_begin.end_time == started + timedelta(seconds=2)
    assert s_begin.log == begin.log
    assert s_install1.status is SubtaskStatus.FAILED
    assert s_install1.operation is Operation.RETRY
    assert s_install1.run_time == 2
    assert s_install1.start_time == install1.start_time
    assert s_install1.end_time is None
    assert s_install1.log == install1.log
    # untouched subtasks and the graph stay as they were
    assert s_install2 == install2 and s_end == end
    assert s_install1.upstreams == [begin.id]
    assert stored.subtasks == [begin, install1, install2, end]


def test_save_subtasks_is_all_or_nothing(loaded, draft_factory):
    task = loaded.create_task(draft_factory())
    other = loaded.create_task(draft_factory(2, service_ids=(4,)))
    begin = task.subtasks[0].model_copy(update={"status": SubtaskStatus.RUNNING})
    stranger = other.subtasks[0].model_copy(update={"status": SubtaskStatus.RUNNING})

    with pytest.raises(NotFound, match=f"subtask {stranger.id} of task {task.id}"):
        loaded.save_subtasks(task.id, [begin, stranger])
    assert loaded.get_task(task.id).subtasks[0].status is SubtaskStatus.PENDING
    assert loaded.get_task(other.id).subtasks[0].status is SubtaskStatus.PENDING

    with pytest.raises(NotFound, match="task 4242"):
        loaded.save_subtasks(4242, [begin])
    naive = begin.model_copy(update={"start_time": datetime(2025, 1, 1)})
    with pytest.raises(ValueError, match="time zone"):
        loaded.save_subtasks(task.id, [naive])


def test_set_task_status(loaded, draft_factory):
    task = loaded.create_task(draft_factory())
    failed_at = datetime(2025, 1, 21, 3, 30, tzinfo=UTC)
    loaded.set_task_status(
        task.id,
        TaskStatus.FAILED,
        end_time=failed_at,
        message="Install arbitration rpm failed on 127.0.1.1",
    )
    stored = loaded.get_task(task.id)
    assert stored.status is TaskStatus.FAILED
    assert stored.end_time == failed_at
    assert stored.message == "Install arbitration rpm failed on 127.0.1.1"
    assert stored.operation is Operation.EXECUTE

    loaded.set_task_status(task.id, TaskStatus.RUNNING, operation=Operation.ROLLBACK)
    stored = loaded.get_task(task.id)
    assert (stored.status, stored.end_time, stored.message, stored.operation) == (
        TaskStatus.RUNNING,
        None,
        None,
        Operation.ROLLBACK,
    )

    with pytest.raises(NotFound, match="task 777"):
        loaded.set_task_status(777, TaskStatus.SUCCESSFUL)


def test_list_tasks_filters_and_paging(loaded, draft_factory):
    created = []
    specs = [
        (1, "Upgrade arbitration service group", TaskStatus.SUCCESSFUL),
        (2, "Upgrade arbitration service group", TaskStatus.FAILED),
        (1, "Upgrade 100% carefully", TaskStatus.FAILED),
        (2, "Something else", TaskStatus.SUCCESSFUL),
        (1, "Upgrade arbitration service group", TaskStatus.RUNNING),
    ]
    for group_id, name, status in specs:
        services = (1, 2) if group_id == 1 else (4,)
        task = loaded.create_task(
            draft_factory(group_id, name=name, service_ids=services)
        )
        if status is not TaskStatus.RUNNING:
            loaded.set_task_status(task.id, status, end_time=datetime.now(UTC))
            loaded.release_group(group_id, task.id)
        created.append(task.id)
    newest_first = created[::-1]

    tasks, total = loaded.list_tasks()
    assert total == 5
    assert [t.id for t in tasks] == newest_first
    assert all(t.subtasks == [] for t in tasks)
    assert tasks[0].start_time.tzinfo is not None

    page1, total = loaded.list_tasks(page=1, size=2)
    page3, _ = loaded.list_tasks(page=3, size=2)
    page4, total4 = loaded.list_tasks(page=4, size=2)
    assert total == total4 == 5
    assert [t.id for t in page1] == newest_first[:2]
    assert [t.id for t in page3] == newest_first[4:]
    assert page4 == []

    ids = lambda result: [t.id for t in result[0]]
    assert ids(loaded.list_tasks(status=TaskStatus.FAILED)) == [created[2], created[1]]
    assert loaded.list_tasks(status=TaskStatus.FAILED)[1] == 2
    assert ids(loaded.list_tasks(group_id=2)) == [created[3], created[1]]
    assert ids(loaded.list_tasks(name="ARBITRATION")) == [
        created[4],
        created[1],
        created[0],
    ]
    assert ids(loaded.list_tasks(name="100%")) == [created[2]]
    assert ids(loaded.list_tasks(name="0%c")) == []  # % is not a wildcard
    assert ids(
        loaded.list_tasks(type="MANUAL", group_id=1, status=TaskStatus.RUNNING)
    ) == [created[4]]
    assert loaded.list_tasks(type="AUTO") == ([], 0)
    with pytest.raises(ValueError):
        loaded.list_tasks(page=0)


# -- upgrade changes ------------------------------------------------------------------


def test_setters_return_previous_values_and_are_idempotent(loaded):
    assert loaded.set_service_version(1, NEW) == OLD
    assert loaded.set_service_version(1, NEW) == NEW
    assert loaded.get_service(1).version == NEW
    assert loaded.get_service(2).version == OLD

    assert loaded.set_group_version(1, NEW) == OLD
    assert loaded.set_group_version(1, NEW) == NEW
    assert loaded.get_group(1).version == NEW

    assert loaded.set_service_status(2, ServiceStatus.STOPPED) is ServiceStatus.RUNNING
    assert loaded.set_service_status(2, ServiceStatus.STOPPED) is ServiceStatus.STOPPED
    assert loaded.get_service(2).status is ServiceStatus.STOPPED

    assert loaded.set_group_status(1, GroupStatus.UPGRADING) is GroupStatus.RUNNING
    assert loaded.set_group_status(1, GroupStatus.UPGRADING) is GroupStatus.UPGRADING
    assert loaded.get_group(1).status is GroupStatus.UPGRADING
    assert loaded.get_group(2).status is GroupStatus.RUNNING

    with pytest.raises(NotFound, match="service 41"):
        loaded.set_service_version(41, NEW)
    with pytest.raises(NotFound, match="group 42"):
        loaded.set_group_version(42, NEW)
    with pytest.raises(NotFound, match="service 43"):
        loaded.set_service_status(43, ServiceStatus.RUNNING)
    with pytest.raises(NotFound, match="group 44"):
        loaded.set_group_status(44, GroupStatus.RUNNING)
    with pytest.raises(VersionError):
        loaded.set_service_version(1, "4.3.4")
    assert loaded.get_service(1).version == NEW


def test_status_monitor_records(loaded):
    ids = [
        loaded.add_status_monitor_record(1, "RUNNING", "port 2882 open"),
        loaded.add_status_monitor_record(2, "UNAVAILABLE"),
        loaded.add_status_monitor_record(2, "RUNNING"),
        loaded.add_status_monitor_record(4, "RUNNING"),
    ]
    assert len(set(ids)) == 4
    assert loaded.count_status_monitor_records(1) == 3
    assert loaded.count_status_monitor_records(2) == 1

    assert loaded.clean_status_monitor_records(1) == 3
    assert loaded.count_status_monitor_records(1) == 0
    assert loaded.count_status_monitor_records(2) == 1
    assert loaded.clean_status_monitor_records(1) == 0

    with pytest.raises(NotFound, match="service 9"):
        loaded.add_status_monitor_record(9, "RUNNING")
    with pytest.raises(NotFound, match="group 9"):
        loaded.clean_status_monitor_records(9)


def test_concurrent_writers_all_succeed(loaded):
    """Many threads writing at once: SQLite writers queue, nothing is lost."""
    errors = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                loaded.add_status_monitor_record(1 + (n + i) % 3, "RUNNING", f"{n}/{i}")
                loaded.set_group_status(2, GroupStatus.RUNNING)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert loaded.count_status_monitor_records(1) == 80


# -- construction ---------------------------------------------------------------------


def test_from_env(tmp_path, monkeypatch):
    monkeypatch.delenv("ARBUP_DB_URL", raising=False)
    monkeypatch.setenv("ARBUP_STATE_DIR", str(tmp_path / "state"))
    store = RecordsStore.from_env()
    try:
        store.create_schema()
        assert (tmp_path / "state" / "arbup.db").is_file()
        assert store.list_groups() == []
    finally:
        store.dispose()

    url = f"sqlite:///{tmp_path / 'explicit.db'}"
    monkeypatch.setenv("ARBUP_DB_URL", url)
    store = RecordsStore.from_env()
    try:
        store.create_schema()
        assert (tmp_path / "explicit.db").is_file()
    finally:
        store.dispose()


def test_sqlite_pragmas(tmp_path):
    store = RecordsStore(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    finally:
        store.dispose()


def test_rejects_unsupported_urls_and_schema_on_sqlite(tmp_path):
    with pytest.raises(ValueError, match="unsupported"):
        RecordsStore("mysql://u@h/db")
    with pytest.raises(ValueError, match="PostgreSQL"):
        RecordsStore(f"sqlite:///{tmp_path / 'x.db'}", schema="s")
