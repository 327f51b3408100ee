"""Histories recorded from real runs replay against the current workflow code.

A change that would break running upgrades (a different sequence of commands for
the same history) fails here before it reaches a worker. Re-record the histories
with ``make record-histories`` after an intended, versioned change.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from arbup.inputs import WORKFLOW_NAME, UpgradeInput
from workflows.upgrade import UpgradeArbitrationGroup

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"replay-{path.stem}", path.read_text())


def test_histories_are_recorded():
    names = {p.stem for p in HISTORIES}
    assert {
        "upgrade_succeeds",
        "install_fails",
        "prepare_unreachable",
        "decision_retry",
        "decision_skip",
        "decision_rollback",
        "decision_forced_rollback",
        "decision_cancel",
        "zone_not_polled_then_retry",
        "zone_not_polled_then_rollback",
    } <= names
    for path in HISTORIES:
        events = json.loads(path.read_text())["events"]
        assert events[0]["eventType"] in ("EVENT_TYPE_WORKFLOW_EXECUTION_STARTED", 1)


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_history_replays(path: Path):
    replayer = Replayer(
        workflows=[UpgradeArbitrationGroup], data_converter=pydantic_data_converter
    )
    await replayer.replay_workflow(load(path))


@workflow.defn(name=WORKFLOW_NAME, sandboxed=False)
class PausingBeforeEachLayer(UpgradeArbitrationGroup):
    """An incompatible edit: a timer before every layer changes the command sequence."""

    @workflow.run
    async def run(self, inp: UpgradeInput) -> dict:
        return await super().run(inp)

    async def _run_layer(self, step):
        await workflow.sleep(timedelta(milliseconds=1))
        return await super()._run_layer(step)


async def test_an_incompatible_change_is_caught():
    path = next(p for p in HISTORIES if p.stem == "upgrade_succeeds")
    replayer = Replayer(
        workflows=[PausingBeforeEachLayer], data_converter=pydantic_data_converter
    )
    with pytest.raises(workflow.NondeterminismError):
        await replayer.replay_workflow(load(path))
