"""The upgrade over HTTP against the real stack: the sample request answers the
sample's shape and graph, and the task can be followed to its end, after a
failure, and across restarts of the API server."""

from __future__ import annotations

import json
import re

import pytest

from arbup.models import TaskStatus
from tests.api.conftest import SAMPLE_PATH, wait_until
from tests.conftest import OLD, TARGET, terminate_open_workflows

pytestmark = pytest.mark.integration

UPGRADE = "/api/v2/arbitration/services/groups/1/upgrade"
OFFSET_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")


def sample() -> dict:
    with open(SAMPLE_PATH) as f:
        return json.load(f)


def same_shape(expected, actual, where: str = "$") -> None:
    """Every field of ``expected`` is in ``actual`` with the same JSON type,
    recursively (lists: each item against the sample's first item)."""
    assert type(actual) is type(expected), (
        f"{where}: {type(actual)} != {type(expected)}"
    )
    if isinstance(expected, dict):
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} is missing"
            same_shape(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list) and expected:
        for i, item in enumerate(actual):
            same_shape(expected[0], item, f"{where}[{i}]")


def graph(subtasks: list[dict]) -> set[tuple]:
    """The subtask graph with ids relabelled by seriesId, with every attribute."""
    series = {s["id"]: s["seriesId"] for s in subtasks}
    return {
        (
            s["seriesId"],
            s["name"],
            s["description"],
            s["parallelIdx"],
            s["timeout"],
            s["prohibitRollback"],
            s["prohibitSkip"],
            s["nodeType"],
            s["operation"],
            s["runTime"],
            s["status"],
            frozenset(series[u] for u in s["upstreams"]),
            frozenset(series[d] for d in s["downstreams"]),
        )
        for s in subtasks
    }


async def get_task(http, task_id: int) -> dict:
    response = await http.get(f"/api/v2/tasks/instances/{task_id}")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def by_name(task: dict, name: str) -> list[dict]:
    return sorted(
        (s for s in task["subtasks"] if s["name"] == name),
        key=lambda s: s["parallelIdx"],
    )


@pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)
async def test_sample_request_answers_the_sample(stack_api, stack, store):
    expected = sample()
    stack.hosts[0].set_knob("stop_delay", "3")  # keeps the task running a while
    async with stack_api.http() as http:
        response = await http.post(UPGRADE, json=expected["request"]["body"])
        assert response.status_code == 200, response.text
        body = response.json()

        # The envelope and the Task: every field of the sample, same JSON types.
        same_shape(expected["response"], body)
        assert body["successful"] is True and body["status"] == 200
        assert re.fullmatch(r"[0-9a-f]{16}", body["traceId"])
        assert response.headers["X-Trace-Id"] == body["traceId"]
        assert body["server"] == "arbup-test"
        assert OFFSET_TIME.match(body["timestamp"])
        task = body["data"]
        assert task["name"] == "Upgrade arbitration service group"
        assert task["status"] == "RUNNING" and task["operation"] == "EXECUTE"
        assert task["creator"] == "admin"
        assert task["executor"] == "127.0.0.1"
        assert task["type"] == "MANUAL" and task["taskDefinitionId"] == -1
        assert task["prohibitRollback"] is False
        assert OFFSET_TIME.match(task["startTime"])
        assert all(s["taskId"] == task["id"] for s in task["subtasks"])
        assert len({s["id"] for s in task["subtasks"]}) == 18

        # The graph is the sample's, up to the ids.
        assert graph(task["subtasks"]) == graph(
            expected["response"]["data"]["subtasks"]
        )

        # While it runs.
        running = await get_task(http, task["id"])
        assert running["status"] == "RUNNING"
        assert {s["id"] for s in running["subtasks"]} == {
            s["id"] for s in task["subtasks"]
        }

        # A second upgrade of the group is refused, naming the running task.
        again = await http.post(UPGRADE, json=expected["request"]["body"])
        assert again.status_code == 409, again.text
        error = again.json()
        assert error["successful"] is False and error["status"] == 409
        assert error["error"]["code"] == 60008
        assert f"task {task['id']}" in error["error"]["message"]
        listed = await http.get("/api/v2/tasks/instances", params={"groupId": 1})
        assert listed.json()["data"]["page"]["totalElements"] == 1

        # To the end.
        done = await wait_until(
            lambda: get_task(http, task["id"]), lambda t: t["status"] != "RUNNING"
        )
        assert done["status"] == "SUCCESSFUL", done
        assert all(s["status"] == "SUCCESSFUL" for s in done["subtasks"])
        assert OFFSET_TIME.match(done["endTime"])
        same_shape(expected["response"]["data"], done)

        # What a subtask did on its host.
        install = by_name(done, "Install arbitration rpm")[0]
        log = await http.get(
            f"/api/v2/tasks/instances/{task['id']}/subtasks/{install['id']}/log"
        )
        assert log.status_code == 200, log.text
        text = log.json()["data"]["log"]
        assert "rpm -Uvh" in text and TARGET in text
        assert "PRIVATE KEY" not in text and "password" not in text.lower()

        group = await http.get("/api/v2/arbitration/services/groups/1")
        assert group.json()["data"]["version"] == TARGET
        assert [s["version"] for s in group.json()["data"]["services"]] == [TARGET] * 2
        assert group.json()["data"]["activeTaskId"] is None

    # After the API server restarts: the same task, as it ended.
    stack_api.restart()
    async with stack_api.http() as http:
        again = await get_task(http, task["id"])
        assert again["status"] == "SUCCESSFUL"
        assert graph(again["subtasks"]) == graph(done["subtasks"])


async def test_failed_upgrade_is_readable_after_a_restart(stack_api, stack, client):
    stack.hosts[1].set_knob("fail_install")
    async with stack_api.http() as http:
        response = await http.post(
            UPGRADE, json={"fullVersion": TARGET, "operatingSystem": "el7"}
        )
        assert response.status_code == 200, response.text
        task_id = response.json()["data"]["id"]
        failed = await wait_until(
            lambda: get_task(http, task_id), lambda t: t["status"] == "FAILED"
        )
    install = by_name(failed, "Install arbitration rpm")
    assert [s["status"] for s in install] == ["SUCCESSFUL", "FAILED"]
    assert all(
        s["status"] == "PENDING"
        for s in by_name(failed, "Update arbitration service version")
    )

    stack_api.restart()
    async with stack_api.http() as http:
        after = await get_task(http, task_id)
        assert after["status"] == "FAILED"
        assert [s["status"] for s in by_name(after, "Install arbitration rpm")] == [
            "SUCCESSFUL",
            "FAILED",
        ]
        log = await http.get(
            f"/api/v2/tasks/instances/{task_id}/subtasks/{install[1]['id']}/log"
        )
        assert "rpm -Uvh" in log.json()["data"]["log"]
        listed = await http.get(
            "/api/v2/tasks/instances", params={"status": "FAILED", "groupId": 1}
        )
        assert [t["id"] for t in listed.json()["data"]["contents"]] == [task_id]
        group = (await http.get("/api/v2/arbitration/services/groups/1")).json()["data"]
        assert group["version"] == OLD and group["activeTaskId"] == task_id

    # Release the group (the operator's cancel) so the test leaves nothing running.
    stored = stack.store.get_task(task_id)
    await client.get_workflow_handle(stored.workflow_id).cancel()
    await wait_until(lambda: _active(stack), lambda active: active is None, seconds=30)


async def _active(stack):
    return stack.group().active_task_id


async def test_reads_fall_back_to_the_records_when_temporal_is_down(stack_api, stack):
    async with stack_api.http() as http:
        response = await http.post(
            UPGRADE, json={"fullVersion": TARGET, "operatingSystem": "el7"}
        )
        task_id = response.json()["data"]["id"]
        await wait_until(
            lambda: get_task(http, task_id), lambda t: t["status"] == "SUCCESSFUL"
        )

    # A new API server whose Temporal is unreachable still answers from the records.
    stack_api.restart(target="127.0.0.1:1")
    async with stack_api.http() as http:
        task = await get_task(http, task_id)
        assert task["status"] == "SUCCESSFUL"
        assert len(task["subtasks"]) == 18
        assert all(s["status"] == "SUCCESSFUL" for s in task["subtasks"])
        # Starting needs Temporal: 503 in the error envelope, nothing written.
        refused = await http.post(
            UPGRADE, json={"fullVersion": "4.3.5.0-1", "operatingSystem": "el7"}
        )
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == 60503
    assert stack.store.list_tasks()[1] == 1
    assert TaskStatus(stack.store.get_task(task_id).status) == TaskStatus.SUCCESSFUL


async def test_task_is_readable_while_the_worker_is_down_and_after_it_restarts(
    client, records_and_hosts, api_factory
):
    """A worker of this test's own, stopped mid-upgrade and started again."""
    import asyncio
    import concurrent.futures

    from worker.main import build_worker

    stack = records_and_hosts
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=8)

    def new_worker():
        return build_worker(
            client,
            stack.store,
            stack.ssh,
            task_queue=stack.task_queue,
            executor=executor,
            graceful_seconds=1,
        )

    api = api_factory(stack.task_queue, stack.options).start()
    stack.hosts[0].set_knob("stop_delay", "4")
    worker = new_worker()
    running = asyncio.create_task(worker.run())
    try:
        async with api.http() as http:
            response = await http.post(
                UPGRADE, json={"fullVersion": TARGET, "operatingSystem": "el7"}
            )
            assert response.status_code == 200, response.text
            task_id = response.json()["data"]["id"]
            await wait_until(
                lambda: get_task(http, task_id),
                lambda t: any(
                    s["name"] == "Stop arbitration service" and s["status"] == "RUNNING"
                    for s in t["subtasks"]
                ),
            )
            await worker.shutdown()
            await running

            # No worker: the task as the records have it.
            down = await get_task(http, task_id)
            assert down["status"] == "RUNNING"
            assert len(down["subtasks"]) == 18

            worker = new_worker()
            running = asyncio.create_task(worker.run())
            done = await wait_until(
                lambda: get_task(http, task_id),
                lambda t: t["status"] != "RUNNING",
                seconds=180,
            )
            assert done["status"] == "SUCCESSFUL", done
    finally:
        if not running.done():
            await terminate_open_workflows(client, stack.task_queue)
            await worker.shutdown()
            await running
        executor.shutdown(wait=False)
