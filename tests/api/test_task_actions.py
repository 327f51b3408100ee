"""OCP's task actions over HTTP on the real stack: permissions, refusals with OCP's
codes, and an accepted retry that finishes the upgrade."""

from __future__ import annotations

import pytest

from tests.api.conftest import basic, wait_until
from tests.conftest import OLD, TARGET

pytestmark = pytest.mark.integration

UPGRADE = "/api/v2/arbitration/services/groups/1/upgrade"
BODY = {"fullVersion": TARGET, "operatingSystem": "el7"}


async def get_task(http, task_id: int) -> dict:
    response = await http.get(f"/api/v2/tasks/instances/{task_id}")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def install_of(task: dict, index: int) -> dict:
    return next(
        s for s in task["subtasks"]
        if s["name"] == "Install arbitration rpm" and s["parallelIdx"] == index
    )


async def test_failed_task_is_steered_over_http(stack_api, stack):
    stack.hosts[1].set_knob("fail_install")
    async with stack_api.http() as http:
        response = await http.post(UPGRADE, json=BODY)
        assert response.status_code == 200, response.text
        task_id = response.json()["data"]["id"]
        await wait_until(lambda: get_task(http, task_id), lambda t: t["status"] == "FAILED")
        base = f"/api/v2/tasks/instances/{task_id}"

        # Acting needs TASK_MANAGER; the viewer may only read.
        denied = await http.post(f"{base}/retry", headers=basic("viewer"))
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == 30014

        # Past the point of no return a plain rollback is refused, naming the subtask.
        refused = await http.post(f"{base}/rollback")
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == 20004
        assert "Begin upgrade arbitration" in refused.json()["error"]["message"]

        # A subtask in the wrong state: 20003.
        done = install_of(await get_task(http, task_id), 0)["id"]
        wrong = await http.post(f"{base}/subtasks/{done}/skip")
        assert wrong.status_code == 400
        assert wrong.json()["error"]["code"] == 20003

        unknown = await http.post("/api/v2/tasks/instances/999999/retry")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == 20000

        # Nothing of that changed the task; now the cause goes and a retry finishes it.
        stack.hosts[1].clear_knob("fail_install")
        accepted = await http.post(f"{base}/retry")
        assert accepted.status_code == 200, accepted.text
        final = await wait_until(
            lambda: get_task(http, task_id), lambda t: t["status"] == "SUCCESSFUL"
        )

    assert install_of(final, 1)["runTime"] == 2
    assert [h.installed_version() for h in stack.hosts] == [TARGET, TARGET]
    assert [h.running_version() for h in stack.hosts] == [TARGET, TARGET]
    assert stack.group().version == TARGET
    actions = stack.store.get_task(task_id).actions
    assert [(a.action, a.actor) for a in actions] == [("retry", "admin")]
    assert OLD not in [s.version for s in stack.group().services]
