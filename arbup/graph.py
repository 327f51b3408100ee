"""The subtask graph of "Upgrade arbitration service group", as OCP builds it.

The graph alternates between steps fanned out over every service (``parallelIdx``
0..N-1) and single nodes (``parallelIdx`` -1); every node of one layer feeds every
node of the next. For two services it is the 18-subtask graph of the spec's sample.

``seriesId`` is the order in which OCP generates the subtasks, which is not the
order in which they run; ``SERIES_ORDER`` reproduces it for any N.

Pure code: imported by the workflow, so no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from arbup.models import SubtaskState, SubtaskStatus


@dataclass(frozen=True)
class Step:
    key: str
    name: str
    timeout: int
    per_service: bool
    prohibit_rollback: bool = False
    prohibit_skip: bool = False

    @property
    def is_barrier(self) -> bool:
        return self.name == WAIT_NODE


WAIT_NODE = "Wait node"

PREPARE = Step("prepare", "Prepare upgrade arbitration service", 60, True)
WAIT_PREPARED = Step("wait_prepared", WAIT_NODE, 30, False)
STOP = Step("stop", "Stop arbitration service", 1800, True)
BEGIN = Step("begin", "Begin upgrade arbitration", 60, False, prohibit_rollback=True)
INSTALL = Step("install", "Install arbitration rpm", 1800, True)
WAIT_INSTALLED = Step("wait_installed", WAIT_NODE, 30, False)
START = Step("start", "Start arbitration service", 1800, True)
WAIT_STARTED = Step("wait_started", WAIT_NODE, 30, False)
UPDATE_SERVICE_VERSION = Step(
    "update_service_version",
    "Update arbitration service version",
    120,
    True,
    prohibit_rollback=True,
)
UPDATE_GROUP_VERSION = Step(
    "update_group_version", "Update arbitration group version", 60, False
)
UPDATE_SERVICE_STATUS = Step(
    "update_service_status", "Update arbitration service status", 60, True
)
CLEAN_MONITOR_RECORDS = Step(
    "clean_monitor_records", "Clean arbitration status monitor records", 120, False
)

# The order in which the steps run; each is a layer of the graph.
LAYERS: tuple[Step, ...] = (
    PREPARE,
    WAIT_PREPARED,
    STOP,
    BEGIN,
    INSTALL,
    WAIT_INSTALLED,
    START,
    WAIT_STARTED,
    UPDATE_SERVICE_VERSION,
    UPDATE_GROUP_VERSION,
    UPDATE_SERVICE_STATUS,
    CLEAN_MONITOR_RECORDS,
)

# The order in which OCP numbers them (seriesId).
SERIES_ORDER: tuple[Step, ...] = (
    WAIT_STARTED,
    UPDATE_SERVICE_VERSION,
    UPDATE_SERVICE_STATUS,
    UPDATE_GROUP_VERSION,
    PREPARE,
    CLEAN_MONITOR_RECORDS,
    START,
    STOP,
    INSTALL,
    WAIT_INSTALLED,
    WAIT_PREPARED,
    BEGIN,
)

STEPS_BY_KEY = {step.key: step for step in LAYERS}


def subtask_count(service_count: int) -> int:
    per_service = sum(1 for step in LAYERS if step.per_service)
    return per_service * service_count + (len(LAYERS) - per_service)


@dataclass(frozen=True)
class Node:
    """One subtask of the plan: which step, for which service index."""

    step: Step
    parallel_idx: int
    series_id: int


def plan_nodes(service_count: int) -> list[Node]:
    """Every node of the graph, ordered by ``seriesId``."""
    if service_count < 1:
        raise ValueError("an arbitration service group needs at least one service")
    nodes: list[Node] = []
    for step in SERIES_ORDER:
        indexes = range(service_count) if step.per_service else (-1,)
        for idx in indexes:
            nodes.append(Node(step, idx, len(nodes)))
    return nodes


def layer_of(step: Step) -> int:
    return LAYERS.index(step)


def build_subtasks(
    task_id: int,
    service_ids: list[int],
    subtask_ids: list[int] | None = None,
    *,
    ready_time: datetime | None = None,
) -> list[SubtaskState]:
    """The subtasks of an upgrade of the services ``service_ids`` (in group order).

    ``subtask_ids[seriesId]`` is the id of each subtask; without it, ids are the
    ``seriesId`` (provisional ids, as handed to the records store). Roots are READY,
    the rest PENDING.
    """
    nodes = plan_nodes(len(service_ids))
    ids = subtask_ids if subtask_ids is not None else list(range(len(nodes)))
    if len(ids) != len(nodes):
        raise ValueError(f"expected {len(nodes)} subtask ids, got {len(ids)}")

    by_layer: dict[int, list[int]] = {}
    for node in nodes:
        by_layer.setdefault(layer_of(node.step), []).append(ids[node.series_id])

    subtasks = []
    for node in nodes:
        layer = layer_of(node.step)
        upstreams = sorted(by_layer.get(layer - 1, []))
        downstreams = sorted(by_layer.get(layer + 1, []))
        service_id = service_ids[node.parallel_idx] if node.parallel_idx >= 0 else None
        subtasks.append(
            SubtaskState(
                id=ids[node.series_id],
                task_id=task_id,
                series_id=node.series_id,
                name=node.step.name,
                description=node.step.name,
                parallel_idx=node.parallel_idx,
                upstreams=upstreams,
                downstreams=downstreams,
                timeout=node.step.timeout,
                prohibit_rollback=node.step.prohibit_rollback,
                prohibit_skip=node.step.prohibit_skip,
                status=SubtaskStatus.READY if not upstreams else SubtaskStatus.PENDING,
                service_id=service_id,
            )
        )
    return subtasks

