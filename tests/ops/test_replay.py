"""The worker's interceptors change no workflow's commands: histories recorded
without them replay with them, and a history recorded with them (its activities
carry the trace-id header) replays without them."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from arbup.inputs import workflow_id_for
from tests.api.conftest import wait_until
from tests.conftest import OS_TAG, TARGET
from tests.ops.conftest import task_status
from tests.test_replay import HISTORIES, load
from worker.observability import TRACE_HEADER, Observability
from workflows.upgrade import UpgradeArbitrationGroup


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_histories_replay_with_the_interceptors(path: Path):
    replayer = Replayer(
        workflows=[UpgradeArbitrationGroup],
        interceptors=[Observability()],
        data_converter=pydantic_data_converter,
    )
    await replayer.replay_workflow(load(path))


@pytest.mark.integration
async def test_a_history_made_with_the_interceptors_replays_without_them(
    fake_api, client
):
    async with fake_api.http() as http:
        response = await http.post(
            "/api/v2/arbitration/services/groups/1/upgrade",
            json={"fullVersion": TARGET, "operatingSystem": OS_TAG},
        )
        assert response.status_code == 200, response.text
        task_id = response.json()["data"]["id"]
        # Prepare fails (the worker has no key) and the task waits for a decision.
        await wait_until(
            lambda: task_status(http, task_id), lambda status: status == "FAILED"
        )
    handle = client.get_workflow_handle(workflow_id_for(1, task_id))
    history = await handle.fetch_history()
    scheduled = [
        event.activity_task_scheduled_event_attributes
        for event in history.events
        if event.HasField("activity_task_scheduled_event_attributes")
    ]
    assert scheduled
    assert all(TRACE_HEADER in s.header.fields for s in scheduled)

    for interceptors in ([], [Observability()]):
        replayer = Replayer(
            workflows=[UpgradeArbitrationGroup],
            interceptors=interceptors,
            data_converter=pydantic_data_converter,
        )
        await replayer.replay_workflow(history)
