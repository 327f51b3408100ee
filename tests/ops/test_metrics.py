"""Metrics of a real upgrade, scraped over HTTP: a worker process with its
Prometheus endpoint, the HTTP API with its own, the real local hosts.

The upgrade (``observed_upgrade``) fails once at host 2's Prepare with a real SSH
error (its host key is not in the worker's known_hosts) and is retried to the end
through the API. The worker's endpoint must then show the SDK's own metrics and
the product's with exactly these counts, and the API's the requests it answered.
"""

from __future__ import annotations

import asyncio

import pytest
from temporalio.client import WorkflowFailureError

from arbup import metrics
from arbup.errors import ErrorKind
from arbup.inputs import workflow_id_for
from tests.api.conftest import basic, wait_until
from tests.conftest import OLD, OS_TAG, TARGET
from tests.ops.conftest import known_hosts_without, scrape_until, task_status

pytestmark = pytest.mark.integration

UPGRADE_ROUTE = "/api/v2/arbitration/services/groups/{id}/upgrade"
TASK_ROUTE = "/api/v2/tasks/instances/{id}"
RETRY_ROUTE = "/api/v2/tasks/instances/{id}/retry"

HOST_STEPS = ("prepare_service", "stop_service", "install_package", "start_service")
# Record steps and how often each runs in an upgrade of two services.
RECORD_STEPS = {
    "begin_upgrade": 1,
    "update_service_version": 2,
    "update_group_version": 1,
    "update_service_status": 2,
    "clean_status_monitor_records": 1,
}


async def test_worker_and_api_metrics_count_a_real_upgrade(observed_upgrade):
    worker = observed_upgrade.worker
    api = observed_upgrade.api
    task_id = observed_upgrade.task_id

    # The worker: the product's metrics, with exact counts.
    upgrade = {"workflow_type": "UpgradeArbitrationGroup"}
    seen = await scrape_until(
        worker.metrics_url,
        lambda seen: seen.value("temporal_workflow_completed", **upgrade) > 0,
    )
    assert seen.value(metrics.UPGRADES_STARTED) == 1, seen.text
    assert seen.value(metrics.UPGRADES_FINISHED, outcome=metrics.SUCCEEDED) == 1
    assert seen.value(metrics.UPGRADES_FINISHED) == 1
    assert seen.value(metrics.TASK_FAILURES, operation="EXECUTE") == 1
    assert seen.value(metrics.TASK_FAILURES) == 1
    assert seen.value(metrics.SSH_ERRORS, kind=ErrorKind.HOST_KEY_NOT_VERIFIED) == 1
    assert seen.value(metrics.SSH_ERRORS) == 1
    assert (
        seen.value(
            metrics.STEP_FAILURES,
            step="prepare_service",
            kind=ErrorKind.HOST_KEY_NOT_VERIFIED,
        )
        == 1
    )
    duration_count = metrics.STEP_DURATION + "_count"
    assert (
        seen.value(duration_count, step="prepare_service", outcome="failed") == 1
    )
    for step in HOST_STEPS:
        # Once per service; Prepare of host 2 again after the retry.
        assert seen.value(duration_count, step=step, outcome="succeeded") == 2, step
        assert seen.value(metrics.STEP_DURATION + "_sum", step=step) > 0, step
    for step, runs in RECORD_STEPS.items():
        assert seen.value(duration_count, step=step, outcome="succeeded") == runs, step
    # Every attempt lands in a bucket: +Inf holds them all.
    assert seen.value(
        metrics.STEP_DURATION + "_bucket", step="start_service", le="+Inf"
    ) == seen.value(duration_count, step="start_service")

    # The worker: the SDK's own metrics on the same endpoint.
    assert seen.value("temporal_workflow_completed", **upgrade) == 1
    assert seen.value("temporal_workflow_failed", **upgrade) == 0
    assert (
        seen.value(
            "temporal_activity_execution_latency_count", activity_type="start_service"
        )
        == 2
    )
    assert (
        seen.value(
            "temporal_activity_execution_failed", activity_type="prepare_service"
        )
        == 1
    )
    assert seen.value("temporal_workflow_task_execution_latency_count", **upgrade) > 0
    assert seen.samples("temporal_worker_task_slots_available")

    # The API: its requests by method, route template and status.
    requests = metrics.API_REQUESTS
    # A request is counted just after its answer is sent.
    served = await scrape_until(
        f"{api.url}/metrics",
        lambda served: served.value(requests, route=metrics.UNMATCHED_ROUTE) > 0,
    )
    assert served.value(requests, method="POST", route=UPGRADE_ROUTE, status="200") == 1
    assert served.value(requests, method="POST", route=RETRY_ROUTE, status="200") == 1
    polls = served.value(requests, method="GET", route=TASK_ROUTE, status="200")
    assert polls >= 2
    assert served.value(requests, method="GET", route=TASK_ROUTE, status="401") == 1
    assert (
        served.value(
            requests, method="GET", route=metrics.UNMATCHED_ROUTE, status="404"
        )
        == 1
    )
    assert served.value(
        metrics.API_REQUEST_DURATION + "_count", method="GET", route=TASK_ROUTE
    ) == polls + 1
    assert served.value(
        metrics.API_REQUEST_DURATION + "_sum", method="POST", route=UPGRADE_ROUTE
    ) > 0
    # No series per id: the paths asked for are not labels.
    assert f"/api/v2/tasks/instances/{task_id}" not in served.text
    assert basic("admin")["Authorization"].split()[1] not in served.text

    assert worker.stop() == 0


async def test_rolled_back_and_cancelled_upgrades_are_counted_by_outcome(
    client, records_and_hosts, worker_process, api_factory, tmp_path
):
    """Two upgrades that fail at host 2's Prepare (its host key unknown); with the
    key back (undoing the Prepare needs the host too), the first is rolled back, the
    second cancelled."""
    stack = records_and_hosts
    all_keys = stack.ssh.known_hosts.read_text()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(all_keys)
    worker = await worker_process(stack, known_hosts=known_hosts)
    api = api_factory(stack.task_queue, stack.options).start()

    async with api.http() as http:
        for action in ("rollback", "cancel"):
            known_hosts_without(stack, stack.hosts[1], known_hosts)
            response = await http.post(
                "/api/v2/arbitration/services/groups/1/upgrade",
                json={"fullVersion": TARGET, "operatingSystem": OS_TAG},
            )
            assert response.status_code == 200, response.text
            task_id = response.json()["data"]["id"]
            await wait_until(
                lambda: task_status(http, task_id), lambda status: status == "FAILED"
            )
            known_hosts.write_text(all_keys)
            response = await http.post(f"/api/v2/tasks/instances/{task_id}/{action}")
            assert response.status_code == 200, response.text
            ended = client.get_workflow_handle(workflow_id_for(1, task_id)).result()
            if action == "rollback":
                task = await asyncio.wait_for(ended, 120)
                assert (task["status"], task["operation"]) == ("SUCCESSFUL", "ROLLBACK")
            else:
                with pytest.raises(WorkflowFailureError):
                    await asyncio.wait_for(ended, 120)

    for host in stack.hosts:
        assert host.running_version() == OLD
    upgrade = {"workflow_type": "UpgradeArbitrationGroup"}
    seen = await scrape_until(
        worker.metrics_url,
        lambda seen: seen.value("temporal_workflow_canceled", **upgrade) > 0,
    )
    assert seen.value(metrics.UPGRADES_STARTED) == 2, seen.text
    assert seen.value(metrics.UPGRADES_FINISHED, outcome=metrics.ROLLED_BACK) == 1
    assert seen.value(metrics.UPGRADES_FINISHED, outcome=metrics.FAILED) == 1
    assert seen.value(metrics.UPGRADES_FINISHED, outcome=metrics.SUCCEEDED) == 0
    assert seen.value(metrics.TASK_FAILURES, operation="EXECUTE") == 2
    assert seen.value(metrics.SSH_ERRORS, kind=ErrorKind.HOST_KEY_NOT_VERIFIED) == 2
    # The rollback and the cancel each undid both services' Prepare.
    assert seen.value(
        metrics.STEP_DURATION + "_count", step="unstage_package", outcome="succeeded"
    ) == 4
    assert seen.value("temporal_workflow_completed", **upgrade) == 1
    assert seen.value("temporal_workflow_canceled", **upgrade) == 1
