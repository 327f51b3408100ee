"""The terminal view of a task: a services x phases table and a line per change."""

from __future__ import annotations

from datetime import datetime

from arbup.graph import LAYERS
from arbup.inputs import DEFAULT_ZONE
from arbup.models import ArbitrationService, SubtaskState, SubtaskStatus, TaskState

PHASES = (
    ("prepare", "Prepare upgrade arbitration service"),
    ("stop", "Stop arbitration service"),
    ("install", "Install arbitration rpm"),
    ("start", "Start arbitration service"),
    ("version", "Update arbitration service version"),
    ("status", "Update arbitration service status"),
)
MARKS = {
    SubtaskStatus.PENDING: "·",
    SubtaskStatus.READY: "·",
    SubtaskStatus.RUNNING: "running",
    SubtaskStatus.CANCELING: "canceling",
    SubtaskStatus.FAILED: "FAILED",
    SubtaskStatus.SUCCESSFUL: "ok",
}


def elapsed(task: TaskState, now: datetime) -> float:
    end = task.end_time or now
    return max(0.0, (end - task.start_time).total_seconds())


def table(task: TaskState, services: dict[int, ArbitrationService], now: datetime) -> list[str]:
    status = task.status.value
    if task.operation.value != "EXECUTE":
        status += f" ({task.operation.value})"
    lines = [
        f"Task {task.id}  group {task.group_id} -> {task.target_full_version} "
        f"({task.target_os})  {status}  {elapsed(task, now):.1f}s"
    ]
    width = max([len(s.address) for s in services.values()] + [7]) + 2
    lines.append("service".ljust(width) + "".join(p.ljust(10) for p, _ in PHASES))
    cells: dict[tuple[int, str], SubtaskState] = {}
    for subtask in task.subtasks:
        for phase, name in PHASES:
            if subtask.name == name and subtask.service_id is not None:
                cells[(subtask.service_id, phase)] = subtask
    for service_id, service in services.items():
        row = service.address.ljust(width)
        for phase, _ in PHASES:
            subtask = cells.get((service_id, phase))
            row += (MARKS[subtask.status] if subtask else "-").ljust(10)
        lines.append(row)
    current = current_stage(task)
    if current:
        lines.append(f"now: {current}")
    if task.waiting_for:
        lines.append(f"waiting for {task.waiting_for}")
    if task.message and task.status != "RUNNING":
        lines.append(task.message)
    return lines


def current_stage(task: TaskState) -> str | None:
    running = [s for s in task.subtasks if s.status == SubtaskStatus.RUNNING]
    if not running:
        return None
    names = sorted({s.name for s in running}, key=_layer_index)
    return ", ".join(names)


def _layer_index(name: str) -> int:
    for index, step in enumerate(LAYERS):
        if step.name == name:
            return index
    return len(LAYERS)


def changes(
    before: TaskState | None, after: TaskState, services: dict[int, ArbitrationService]
) -> list[str]:
    """One line per subtask whose status changed between two readings."""
    old = {s.id: s.status for s in before.subtasks} if before else {}
    lines = []
    for subtask in sorted(after.subtasks, key=lambda s: (s.start_time or after.start_time, s.id)):
        if subtask.status == old.get(subtask.id) or subtask.status in (
            SubtaskStatus.PENDING,
            SubtaskStatus.READY,
        ):
            continue
        where = (
            f" on {services[subtask.service_id].address}"
            if subtask.service_id in services
            else ""
        )
        line = f"  {subtask.status.value:<10} {subtask.name}{where}"
        if subtask.status == SubtaskStatus.FAILED and subtask.log:
            line += ": " + subtask.log[-1].removeprefix("FAILED: ")
        lines.append(line)
    return lines


def subtask_lines(task: TaskState, services: dict[int, ArbitrationService]) -> list[str]:
    """Every subtask with its id (for ``arbup task log|retry|skip``), in run order."""
    lines = [f"{'id':>6}  {'status':<10} {'op':<8} run  subtask"]
    depth = _depths(task)
    for subtask in sorted(task.subtasks, key=lambda s: (depth[s.id], s.parallel_idx)):
        where = ""
        if subtask.service_id in services:
            service = services[subtask.service_id]
            where = f" on {service.address}"
            if service.zone != DEFAULT_ZONE:
                where += f" (zone {service.zone})"
        lines.append(
            f"{subtask.id:>6}  {subtask.status.value:<10} {subtask.operation.value:<8} "
            f"{subtask.run_time:>3}  {subtask.name}{where}"
        )
    return lines


def _depths(task: TaskState) -> dict[int, int]:
    """How many edges separate each subtask from the graph's roots."""
    by_id = {s.id: s for s in task.subtasks}
    depth: dict[int, int] = {}

    def of(subtask_id: int) -> int:
        if subtask_id not in depth:
            ups = by_id[subtask_id].upstreams
            depth[subtask_id] = 1 + max((of(u) for u in ups), default=-1)
        return depth[subtask_id]

    for subtask in task.subtasks:
        of(subtask.id)
    return depth
