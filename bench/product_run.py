"""Upgrades with the product itself: load groups into its records store, start each
upgrade with ``starter.service.start_upgrade`` (what ``arbup upgrade`` calls), wait
for the workflows' results, and read back what the product recorded: subtask
times and logs from the records store, events and size from the history.

Run by the harness as ``python -m bench.product_run SPEC.json OUT.json``, with
PYTHONPATH naming the product tree under test; the worker is a separate process
(``python -m worker.main``) on the same task queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from arbup.inputs import UpgradeOptions
from arbup.inventory import Inventory
from arbup.models import ArbitrationGroup, ArbitrationService, Package
from arbup.records import RecordsStore
from arbup.versions import parse_package_file_name
from starter.service import start_upgrade

OLD = "4.2.1.8-108000022024072217"


def package_record(path: Path) -> Package:
    name, full_version, os_tag, arch = parse_package_file_name(path.name)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return Package(
        name=name, file_name=path.name, path=str(path), size=path.stat().st_size,
        sha256=digest.hexdigest(), full_version=full_version, operating_system=os_tag,
        arch=arch,
    )


def inventory(spec: dict) -> Inventory:
    arch = os.uname().machine
    groups = []
    for g in spec["groups"]:
        gid = g["group_id"]
        services = [
            ArbitrationService(
                id=gid * 1000 + i + 1, group_id=gid, host=h["ip"], ssh_port=h["port"],
                ssh_user="root", ssh_credential=spec["credential"], svr_ip=h["ip"],
                svr_port=spec["svr_port"], install_path=spec["install_path"],
                run_user="admin", operating_system=spec["os_tag"], arch=arch,
                version=OLD, priority=i,
            )
            for i, h in enumerate(g["hosts"])
        ]
        groups.append(ArbitrationGroup(id=gid, name=f"bench-group-{gid}", version=OLD,
                                       services=services))
    return Inventory(groups=groups, packages=[package_record(Path(p)) for p in spec["packages"]])


def _payload_json(payloads) -> object:
    try:
        return json.loads(payloads.payloads[0].data)
    except Exception:
        return None


async def history_facts(handle) -> dict:
    """Events, size, the largest event, and per activity its schedule, start and
    completion times."""
    history = await handle.fetch_history()
    description = await handle.describe()
    info = description.raw_description.workflow_execution_info
    events = list(history.events)
    sizes = [e.ByteSize() for e in events]
    largest = max(range(len(events)), key=lambda i: sizes[i]) if events else None
    activities: dict[int, dict] = {}
    workflow_tasks = 0
    by_kind: dict[str, int] = {}
    for e, size in zip(events, sizes):
        kind = e.WhichOneof("attributes").removesuffix("_event_attributes")
        if kind == "activity_task_scheduled":
            kind += ":" + e.activity_task_scheduled_event_attributes.activity_type.name
        by_kind[kind] = by_kind.get(kind, 0) + size
    for e in events:
        t = e.event_time.ToDatetime().timestamp()
        if e.HasField("activity_task_scheduled_event_attributes"):
            a = e.activity_task_scheduled_event_attributes
            inp = _payload_json(a.input)
            activities[e.event_id] = {
                "type": a.activity_type.name,
                "subtask_id": inp.get("subtask_id") if isinstance(inp, dict) else None,
                "scheduled": t,
            }
        elif e.HasField("activity_task_started_event_attributes"):
            a = e.activity_task_started_event_attributes
            activities[a.scheduled_event_id]["started"] = t
            activities[a.scheduled_event_id]["attempt"] = a.attempt
        elif e.HasField("activity_task_completed_event_attributes"):
            a = e.activity_task_completed_event_attributes
            activities[a.scheduled_event_id]["closed"] = t
        elif e.HasField("activity_task_failed_event_attributes"):
            a = e.activity_task_failed_event_attributes
            activities[a.scheduled_event_id]["closed"] = t
            activities[a.scheduled_event_id]["failed"] = True
        elif e.HasField("activity_task_timed_out_event_attributes"):
            a = e.activity_task_timed_out_event_attributes
            activities[a.scheduled_event_id]["closed"] = t
            activities[a.scheduled_event_id]["timed_out"] = True
        elif e.HasField("workflow_task_completed_event_attributes"):
            workflow_tasks += 1
    return {
        "events": len(events),
        "history_length": info.history_length,
        "history_size_bytes": info.history_size_bytes,
        "sum_event_bytes": sum(sizes),
        "largest_event_bytes": sizes[largest] if largest is not None else 0,
        "largest_event_type": events[largest].WhichOneof("attributes") if events else None,
        "workflow_tasks": workflow_tasks,
        "activities_retried": sum(1 for a in activities.values() if a.get("attempt", 1) > 1),
        "activities_timed_out": sum(1 for a in activities.values() if a.get("timed_out")),
        "bytes_by_event_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "activities": list(activities.values()),
    }


async def run_group(client, store, spec: dict, g: dict, options: UpgradeOptions) -> dict:
    started = time.time()
    up = await start_upgrade(
        client, store, g["group_id"], spec["target"], spec["os_tag"],
        creator="bench", executor="bench", options=options, task_queue=spec["task_queue"],
    )
    handle = client.get_workflow_handle(up.workflow_id)
    deadline = spec.get("deadline_seconds")
    try:
        result = await asyncio.wait_for(handle.result(), deadline)
    except asyncio.TimeoutError:
        # Not finished in time (e.g. a failed subtask waits for an operator): record
        # where it stands, then terminate it so nothing outlives the benchmark run.
        task = store.get_task(up.task.id)
        result = {"status": f"NOT FINISHED ({task.status.value})", "message": task.message}
        await handle.terminate("benchmark deadline")
    ended = time.time()
    task = store.get_task(up.task.id)
    subtasks = [
        {
            "id": s.id,
            "name": s.name,
            "service_id": s.service_id,
            "start": s.start_time.timestamp() if s.start_time else None,
            "end": s.end_time.timestamp() if s.end_time else None,
            "log": s.log,
        }
        for s in task.subtasks
    ]
    out = {
        "group_id": g["group_id"],
        "task_id": up.task.id,
        "workflow_id": up.workflow_id,
        "status": result.get("status") if isinstance(result, dict) else str(result),
        "started": started,
        "ended": ended,
        "subtasks": subtasks,
        "hosts": {str(g["group_id"] * 1000 + i + 1): h["ip"] for i, h in enumerate(g["hosts"])},
        "result_bytes": len(json.dumps(result, default=str)),
        "message": result.get("message") if isinstance(result, dict) else None,
    }
    if spec.get("history", True):
        out["history"] = await history_facts(handle)
    return out


async def main_async(spec: dict) -> dict:
    store = RecordsStore(spec["db_url"])
    store.create_schema()
    store.load_inventory(inventory(spec))
    client = await Client.connect(
        spec["temporal_address"], data_converter=pydantic_data_converter
    )
    options = UpgradeOptions(settle_seconds=spec["settle_seconds"])
    started = time.time()
    groups = await asyncio.gather(
        *(run_group(client, store, spec, g, options) for g in spec["groups"])
    )
    ended = time.time()
    store.dispose()
    return {"started": started, "ended": ended, "groups": groups}


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    result = asyncio.run(main_async(spec))
    Path(out_path).write_text(json.dumps(result))
    bad = [g for g in result["groups"] if g["status"] != "SUCCESSFUL"]
    if bad:
        print(f"product: {len(bad)} of {len(result['groups'])} groups did not succeed: "
              f"{[(g['group_id'], g['status'], (g.get('message') or '')[:200]) for g in bad][:5]}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from starter.cli import exit_now

    # Past this point nothing is left to clean up; leaving without interpreter
    # finalization avoids the Temporal client's native threads aborting it.
    exit_now(main(sys.argv[1:]))
