"""Bad input gets a 4xx in OCP's error envelope and changes nothing; the read
endpoints show the group, its services and the packages; tasks are listed with
OCP's filters and paging."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta

import pytest

from arbup.graph import build_subtasks
from arbup.models import GroupStatus, TaskState, TaskStatus
from tests.api.conftest import fake_inventory, wait_until
from tests.conftest import OLD, OS_TAG, TARGET

pytestmark = pytest.mark.integration

UPGRADE = "/api/v2/arbitration/services/groups/{}/upgrade"
BODY = {"fullVersion": TARGET, "operatingSystem": OS_TAG}
ARCH = os.uname().machine
OTHER_ARCH = "aarch64" if ARCH == "x86_64" else "x86_64"


def error_of(response, status: int, code: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["successful"] is False
    assert body["status"] == status
    assert body["error"]["code"] == code, body
    assert body["traceId"] == response.headers["X-Trace-Id"]
    assert isinstance(body["duration"], int) and body["server"] == "arbup-test"
    assert "data" not in body
    return body["error"]


async def assert_nothing_changed(store, client, api) -> None:
    assert store.list_tasks()[1] == 0
    group = store.get_group(1)
    assert group.active_task_id is None and group.version == OLD
    query = f'TaskQueue="{api.settings.task_queue}"'
    assert [w async for w in client.list_workflows(query)] == []


async def test_invalid_bodies_are_400(fake_api, store, client):
    bad = {
        "version without build": (
            {"fullVersion": "4.3.4.0", "operatingSystem": "el7"},
            "body.fullVersion",
        ),
        "three numbers": (
            {"fullVersion": "4.3.4-1", "operatingSystem": "el7"},
            "body.fullVersion",
        ),
        "text": (
            {"fullVersion": "latest", "operatingSystem": "el7"},
            "body.fullVersion",
        ),
        "non-ASCII digits": (
            {"fullVersion": "٤.3.4.0-1", "operatingSystem": "el7"},
            "body.fullVersion",
        ),
        "upper-case OS": (
            {"fullVersion": TARGET, "operatingSystem": "EL7"},
            "body.operatingSystem",
        ),
        "OS with a space": (
            {"fullVersion": TARGET, "operatingSystem": "el 7"},
            "body.operatingSystem",
        ),
        "empty OS": (
            {"fullVersion": TARGET, "operatingSystem": ""},
            "body.operatingSystem",
        ),
        "number": ({"fullVersion": 4340, "operatingSystem": "el7"}, "body.fullVersion"),
        "null": ({"fullVersion": None, "operatingSystem": "el7"}, "body.fullVersion"),
        "list": (
            {"fullVersion": [TARGET], "operatingSystem": "el7"},
            "body.fullVersion",
        ),
        "OS as object": (
            {"fullVersion": TARGET, "operatingSystem": {"a": 1}},
            "body.operatingSystem",
        ),
        "missing OS": ({"fullVersion": TARGET}, "body.operatingSystem"),
        "empty object": ({}, "body.fullVersion"),
        "array body": ([BODY], "body"),
        "string body": ("el7", "body"),
    }
    async with fake_api.http() as http:
        for why, (body, target) in bad.items():
            response = await http.post(UPGRADE.format(1), json=body)
            error = error_of(response, 400, 60001)
            assert error["target"] == target, (why, error)
    await assert_nothing_changed(store, client, fake_api)


async def test_unparseable_requests_are_4xx(fake_api, store, client):
    raw = {
        "malformed JSON": (b'{"fullVersion": "4.3.4.0-1",', "application/json"),
        "not JSON at all": (b"fullVersion=4.3.4.0-1", "application/json"),
        "invalid UTF-8": (b'{"fullVersion": "\xff\xfe"}', "application/json"),
        "form body": (
            b"fullVersion=4.3.4.0-1&operatingSystem=el7",
            "application/x-www-form-urlencoded",
        ),
        "text body": (json.dumps(BODY).encode(), "text/plain"),
        "empty body": (b"", "application/json"),
        "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "application/json"),
    }
    async with fake_api.http() as http:
        for why, (content, content_type) in raw.items():
            response = await http.post(
                UPGRADE.format(1),
                content=content,
                headers={"Content-Type": content_type},
            )
            assert 400 <= response.status_code < 500, (why, response.text)
            assert response.json()["successful"] is False, why
        malformed = await http.post(
            UPGRADE.format(1),
            content=b'{"fullVersion": ',
            headers={"Content-Type": "application/json"},
        )
        assert "not valid JSON" in error_of(malformed, 400, 60001)["message"]
    await assert_nothing_changed(store, client, fake_api)


async def test_huge_bodies_are_413(fake_api, store, client):
    huge = json.dumps({**BODY, "padding": "x" * (1024 * 1024)}).encode()

    async def chunks():
        for _ in range(64):
            yield b" " * 4096

    async with fake_api.http() as http:
        response = await http.post(
            UPGRADE.format(1),
            content=huge,
            headers={"Content-Type": "application/json"},
        )
        assert "65536 bytes" in error_of(response, 413, 60012)["message"]
        # Without Content-Length (chunked), counted while read.
        streamed = await http.post(
            UPGRADE.format(1),
            content=chunks(),
            headers={"Content-Type": "application/json"},
        )
        error_of(streamed, 413, 60012)

    # A declared length far too large is refused before a byte of body is sent.
    reader, writer = await asyncio.open_connection("127.0.0.1", fake_api.server.port)
    writer.write(
        f"POST {UPGRADE.format(1)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Authorization: Basic YWRtaW46YWRtaW4tcGFzc3dvcmQtMQ==\r\n"
        "Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n".encode()
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 413"), status_line
    await assert_nothing_changed(store, client, fake_api)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)
async def test_path_ids_that_are_not_ids_are_400(fake_api, store, client):
    async with fake_api.http() as http:
        for bad in (
            "abc",
            "1.5",
            "-1",
            "0",
            "1e3",
            "9223372036854775808",
            "%00",
            "%20",
        ):
            response = await http.post(UPGRADE.format(bad), json=BODY)
            error_of(response, 400, 60001)
            for path in (
                f"/api/v2/tasks/instances/{bad}",
                f"/api/v2/tasks/instances/{bad}/subtasks/1/log",
                f"/api/v2/tasks/instances/1/subtasks/{bad}/log",
                f"/api/v2/arbitration/services/groups/{bad}",
            ):
                error_of(await http.get(path), 400, 60001)
        # Ids that are ids but name nothing, up to the largest Long.
        for unknown in ("2147483648", "9223372036854775807"):
            error_of(await http.post(UPGRADE.format(unknown), json=BODY), 404, 60003)
            error_of(await http.get(f"/api/v2/tasks/instances/{unknown}"), 404, 20000)
        # Unknown paths and methods, in the envelope too.
        error_of(await http.get("/api/v2/nothing/here"), 404, 60010)
        error_of(await http.get("/nothing"), 404, 60010)
        not_allowed = await http.delete("/api/v2/tasks/instances/1")
        error_of(not_allowed, 405, 60011)
        assert not_allowed.headers["Allow"] == "GET"
        error_of(await http.get(UPGRADE.format(1)), 405, 60011)
    await assert_nothing_changed(store, client, fake_api)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)
async def test_refusals_of_the_request_itself(fake_api, store, client):
    async with fake_api.http() as http:
        unknown = error_of(await http.post(UPGRADE.format(42), json=BODY), 404, 60003)
        assert "group 42" in unknown["message"]

        same = error_of(
            await http.post(UPGRADE.format(1), json={**BODY, "fullVersion": OLD}),
            400,
            60006,
        )
        assert OLD in same["message"]
        older = {**BODY, "fullVersion": "4.2.1.8-1"}
        error_of(await http.post(UPGRADE.format(1), json=older), 400, 60006)

        version = {**BODY, "fullVersion": "4.3.5.0-1"}
        missing = error_of(await http.post(UPGRADE.format(1), json=version), 400, 60007)
        assert f"oceanbase-4.3.5.0-1.el7.{ARCH}.rpm" in missing["message"]
        os_tag = {**BODY, "operatingSystem": "el8"}
        wrong_os = error_of(await http.post(UPGRADE.format(1), json=os_tag), 400, 60013)
        assert "el8" in wrong_os["message"] and "el7" in wrong_os["message"]

        # One host of another architecture: the message names the package and host.
        inventory = fake_inventory()
        other = inventory.groups[0].services[1].model_copy(update={"arch": OTHER_ARCH})
        group = inventory.groups[0].model_copy(
            update={"services": [inventory.groups[0].services[0], other]}
        )
        store.load_inventory(inventory.model_copy(update={"groups": [group]}))
        arch = error_of(await http.post(UPGRADE.format(1), json=BODY), 400, 60007)
        assert f"{TARGET}.el7.{OTHER_ARCH}.rpm" in arch["message"]
        assert "127.0.0.3" in arch["message"]
        store.load_inventory(fake_inventory())

        store.set_group_status(1, GroupStatus.UNAVAILABLE)
        error_of(await http.post(UPGRADE.format(1), json=BODY), 400, 60005)
        store.set_group_status(1, GroupStatus.RUNNING)

        error_of(await http.get("/api/v2/tasks/instances/77"), 404, 20000)
        error_of(
            await http.get("/api/v2/tasks/instances/77/subtasks/1/log"), 404, 20000
        )
    await assert_nothing_changed(store, client, fake_api)


async def test_unknown_subtask_is_404(fake_api, store):
    async with fake_api.http() as http:
        started = await http.post(UPGRADE.format(1), json=BODY)
        assert started.status_code == 200, started.text
        task = started.json()["data"]
        # The fake hosts' worker has no SSH key: Prepare fails at once, and says why.
        failed = await wait_until(
            lambda: _task(http, task["id"]), lambda t: t["status"] == "FAILED"
        )
        prepare = [
            s
            for s in failed["subtasks"]
            if s["name"] == "Prepare upgrade arbitration service"
        ]
        assert "FAILED" in {s["status"] for s in prepare}
        for subtask in prepare:
            log = await http.get(
                f"/api/v2/tasks/instances/{task['id']}/subtasks/{subtask['id']}/log"
            )
            assert log.status_code == 200, log.text
            assert "no key for credential 'default'" in log.json()["data"]["log"]
        error_of(
            await http.get(f"/api/v2/tasks/instances/{task['id']}/subtasks/999999/log"),
            404,
            60009,
        )


async def test_the_group_its_services_and_packages(fake_api):
    async with fake_api.http() as http:
        response = await http.get("/api/v2/arbitration/services/groups/1")
        assert response.status_code == 200, response.text
        group = response.json()["data"]
        assert group["version"] == OLD and group["status"] == "RUNNING"
        assert group["activeTaskId"] is None
        assert [
            (
                s["id"],
                s["svrIp"],
                s["svrPort"],
                s["version"],
                s["status"],
                s["architecture"],
                s["operatingSystem"],
            )
            for s in group["services"]
        ] == [
            (1, "127.0.0.2", 2882, OLD, "RUNNING", ARCH, OS_TAG),
            (2, "127.0.0.3", 2882, OLD, "RUNNING", ARCH, OS_TAG),
        ]
        listed = await http.get("/api/v2/arbitration/services/groups")
        assert [g["id"] for g in listed.json()["data"]["contents"]] == [1]

        packages = await http.get(
            "/api/v2/software-packages", params={"fullVersion": TARGET}
        )
        [package] = packages.json()["data"]["contents"]
        assert package == {
            "id": package["id"],
            "name": "oceanbase",
            "fileName": f"oceanbase-{TARGET}.{OS_TAG}.{ARCH}.rpm",
            "size": 1,
            "checksum": "0" * 64,
            "fullVersion": TARGET,
            "version": "4.3.4.0",
            "buildNumber": "200000022024070119",
            "operatingSystem": OS_TAG,
            "architecture": ARCH,
        }
        none = await http.get(
            "/api/v2/software-packages",
            params={"fullVersion": TARGET, "architecture": OTHER_ARCH},
        )
        assert none.json()["data"]["contents"] == []
        bad = await http.get("/api/v2/software-packages", params={"fullVersion": "x"})
        error_of(bad, 400, 60001)


async def _task(http, task_id: int) -> dict:
    response = await http.get(f"/api/v2/tasks/instances/{task_id}")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def make_tasks(store, count: int) -> list[int]:
    """Finished tasks of group 1, alternately FAILED and SUCCESSFUL."""
    ids = []
    start = datetime(2025, 1, 21, 3, 8, 56, tzinfo=UTC)
    for n in range(count):
        draft = TaskState(
            id=0,
            group_id=1,
            target_full_version=TARGET,
            target_os=OS_TAG,
            workflow_id="arbup-group-1-task-{task_id}",
            creator="admin",
            executor="127.0.0.1",
            start_time=start + timedelta(minutes=n),
            subtasks=build_subtasks(0, [1, 2]),
        )
        task = store.create_task(draft)
        status = TaskStatus.FAILED if n % 2 == 0 else TaskStatus.SUCCESSFUL
        store.set_task_status(
            task.id, status, end_time=draft.start_time + timedelta(seconds=30)
        )
        store.release_group(1, task.id)
        ids.append(task.id)
    return ids


@pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)
async def test_tasks_are_listed_with_filters_and_pages(fake_api, store):
    ids = make_tasks(store, 5)
    newest_first = list(reversed(ids))

    async def listed(**params):
        response = await http.get("/api/v2/tasks/instances", params=params)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    async with fake_api.http(user="viewer") as http:
        data = await listed()
        assert [t["id"] for t in data["contents"]] == newest_first
        assert data["page"] == {
            "totalElements": 5,
            "totalPages": 1,
            "number": 1,
            "size": 10,
        }
        item = data["contents"][0]
        assert "subtasks" not in item
        assert {
            "creator",
            "executor",
            "id",
            "name",
            "operation",
            "prohibitRollback",
            "startTime",
            "endTime",
            "status",
            "taskDefinitionId",
            "type",
        } <= set(item)

        first = await listed(page=1, size=2)
        second = await listed(page=2, size=2)
        last = await listed(page=3, size=2)
        beyond = await listed(page=4, size=2)
        assert [
            t["id"] for t in first["contents"] + second["contents"] + last["contents"]
        ] == (newest_first)
        assert first["page"] == {
            "totalElements": 5,
            "totalPages": 3,
            "number": 1,
            "size": 2,
        }
        assert beyond["contents"] == [] and beyond["page"]["number"] == 4

        failed = await listed(status="FAILED")
        assert [t["id"] for t in failed["contents"]] == [ids[4], ids[2], ids[0]]
        assert all(t["status"] == "FAILED" for t in failed["contents"])
        assert (await listed(name="arbitration service"))["page"]["totalElements"] == 5
        assert (await listed(name="ARBITRATION SERVICE"))["page"]["totalElements"] == 5
        assert (await listed(name="backup"))["contents"] == []
        assert (await listed(type="MANUAL"))["page"]["totalElements"] == 5
        assert (await listed(type="SYS_SCHEDULED"))["contents"] == []
        assert (await listed(groupId=2))["contents"] == []
        assert (await listed(groupId=2**40))["contents"] == []
        assert (await listed(name="%_"))["contents"] == []  # no wildcards

        for params in (
            {"page": 0},
            {"size": 0},
            {"size": 100000},
            {"page": "x"},
            {"status": "DONE"},
            {"type": "manual"},
            {"name": "a\x00b"},
            {"groupId": "one"},
        ):
            response = await http.get("/api/v2/tasks/instances", params=params)
            error_of(response, 400, 60001)
