"""The worker process: runs the upgrade workflow and its activities.

It connects to Temporal the way the ``temporal`` CLI does (``TEMPORAL_ADDRESS``,
``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, TLS settings, or a profile in the
client configuration file), reaches hosts with the keys and known_hosts named by
``ARBUP_SSH_KEY_DIR`` / ``ARBUP_KNOWN_HOSTS``, and the records store at
``ARBUP_DB_URL``. SIGTERM or SIGINT drains it: no new work is taken, running
activities get ``--graceful-seconds`` to finish, then it exits.

With ``--zone NAME`` it is a zone worker: it runs only the host steps of the
services in that network zone, from the zone's own task queue
(``zone_task_queue``), and needs no records store.

``--metrics-address`` and ``--health-address`` serve its Prometheus metrics and
``/healthz`` / ``/readyz`` (``worker.observability``); it logs one line per event,
JSON by default (``arbup.logs``).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import os
import signal
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from activities.host_steps import Compensations, HostSteps
from activities.records import RecordSteps
from activities.ssh import ConnectionPool, SshSettings
from arbup.inputs import DEFAULT_ZONE, TASK_QUEUE, zone_task_queue
from arbup.logs import configure_logging
from arbup.models import check_name
from arbup.records import RecordsStore
from arbup.records.store import SchemaNotCurrent
from sqlalchemy.exc import DBAPIError
from arbup.temporal import connect
from starter.cli import _db_reason, exit_now
from worker.observability import Observability, health_server, parse_address, worker_runtime
from workflows.upgrade import UpgradeArbitrationGroup

log = logging.getLogger("arbup.worker")


def build_worker(
    client: Client,
    store: RecordsStore | None,
    ssh: SshSettings,
    *,
    task_queue: str = TASK_QUEUE,
    zone: str | None = None,
    executor: concurrent.futures.ThreadPoolExecutor | None = None,
    graceful_seconds: float = 30,
    pool: ConnectionPool | None = None,
) -> Worker:
    """The worker of ``task_queue``: the workflow, the host steps and the record
    steps; or, with ``zone``, only the host steps of that zone (``store`` unused)."""
    host_steps = HostSteps(ssh, pool)
    compensations = Compensations(host_steps)
    activities = [
        host_steps.prepare,
        host_steps.stop,
        host_steps.install,
        host_steps.start,
        compensations.unstage,
        compensations.restore,
        compensations.reinstall,
    ]
    workflows = []
    if zone is None:
        workflows = [UpgradeArbitrationGroup]
        activities += RecordSteps(store).all()
    else:
        task_queue = zone_task_queue(check_zone(zone), task_queue)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=workflows,
        activities=activities,
        interceptors=[Observability()],
        activity_executor=executor
        or concurrent.futures.ThreadPoolExecutor(max_workers=16),
        graceful_shutdown_timeout=timedelta(seconds=graceful_seconds),
        # An eagerly dispatched activity counts as started while it waits for a free
        # slot in this worker, and without running it cannot heartbeat: under load
        # (50 groups at once) such activities timed out unstarted. Left on the
        # server, they wait there until a worker has room.
        disable_eager_activity_execution=True,
    )


def check_zone(zone: str) -> str:
    """A zone a zone worker can serve: a valid name, and not the default zone
    (its host steps run on the main task queue, next to the record steps)."""
    check_name(zone)
    if zone == DEFAULT_ZONE:
        raise ValueError(
            f"zone {DEFAULT_ZONE!r} has no queue of its own: its host steps run on the "
            "workflow's task queue (or the upgrade's host_task_queue); run a worker "
            "without --zone there"
        )
    return zone


async def serve(args: argparse.Namespace) -> None:
    client = await connect(
        profile=args.profile, runtime=worker_runtime(args.metrics_address)
    )
    store = None
    if args.zone is None:  # a zone worker writes no records
        store = RecordsStore.from_env()
        store.ensure_schema()  # PostgreSQL: refused unless `arbup db upgrade` ran
    pool = ConnectionPool()
    worker = build_worker(
        client,
        store,
        SshSettings.from_env(),
        task_queue=args.task_queue,
        zone=args.zone,
        graceful_seconds=args.graceful_seconds,
        pool=pool,
    )

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    log.info(
        "worker polling task queue %s%s",
        worker.task_queue,
        f" (host steps of zone {args.zone})" if args.zone else "",
    )
    async with worker, health_server(args.health_address, worker, client, store):
        await stopping.wait()
        log.info("stopping: draining running activities (up to %ss)", args.graceful_seconds)
    await pool.close()
    if store is not None:
        store.dispose()
    log.info("worker stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="arbup-worker", description=__doc__.split("\n")[0])
    parser.add_argument("--task-queue", default=TASK_QUEUE)
    parser.add_argument("--profile", default=None, help="Temporal client config profile")
    parser.add_argument("--graceful-seconds", type=float, default=30)
    parser.add_argument(
        "--zone",
        metavar="NAME",
        help="run only the host steps of this network zone, from its own task queue "
        "(derived from --task-queue); no records store needed",
    )
    parser.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        default=os.environ.get("ARBUP_WORKER_METRICS_ADDRESS"),
        help="serve Prometheus metrics (the SDK's and arbup's) at "
        "http://HOST:PORT/metrics (default: $ARBUP_WORKER_METRICS_ADDRESS, else off)",
    )
    parser.add_argument(
        "--health-address",
        metavar="HOST:PORT",
        default=os.environ.get("ARBUP_WORKER_HEALTH_ADDRESS"),
        help="serve /healthz and /readyz on HOST:PORT "
        "(default: $ARBUP_WORKER_HEALTH_ADDRESS, else off)",
    )
    args = parser.parse_args(argv)
    if args.zone is not None:
        try:
            check_zone(args.zone)
        except ValueError as exc:
            parser.error(f"--zone: {exc}")
    if args.health_address:
        try:
            parse_address(args.health_address)
        except ValueError as exc:
            parser.error(f"--health-address: {exc}")
    try:
        configure_logging()
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(serve(args))
    except SchemaNotCurrent as exc:
        log.error("not starting: %s", exc)
        exit_now(1)
    except DBAPIError as exc:
        log.error("not starting: cannot reach the records store: %s", _db_reason(exc))
        exit_now(1)
    except RuntimeError as exc:
        if "client connect" not in str(exc):
            raise
        log.error("not starting: cannot reach Temporal: %s", exc)
        exit_now(1)
    exit_now(0)


if __name__ == "__main__":
    main()
