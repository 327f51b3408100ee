"""The worker process: runs the upgrade workflow and its activities.

It connects to Temporal the way the ``temporal`` CLI does (``TEMPORAL_ADDRESS``,
``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, TLS settings, or a profile in the
client configuration file), reaches hosts with the keys and known_hosts named by
``ARBUP_SSH_KEY_DIR`` / ``ARBUP_KNOWN_HOSTS``, and the records store at
``ARBUP_DB_URL``. SIGTERM or SIGINT drains it: no new work is taken, running
activities get ``--graceful-seconds`` to finish, then it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import signal
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from activities.host_steps import Compensations, HostSteps
from activities.records import RecordSteps
from activities.ssh import SshSettings
from arbup.inputs import TASK_QUEUE
from arbup.records import RecordsStore
from arbup.temporal import connect
from starter.cli import exit_now
from workflows.upgrade import UpgradeArbitrationGroup

log = logging.getLogger("arbup.worker")


def build_worker(
    client: Client,
    store: RecordsStore,
    ssh: SshSettings,
    *,
    task_queue: str = TASK_QUEUE,
    executor: concurrent.futures.ThreadPoolExecutor | None = None,
    graceful_seconds: float = 30,
) -> Worker:
    host_steps = HostSteps(ssh)
    compensations = Compensations(host_steps)
    record_steps = RecordSteps(store)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[UpgradeArbitrationGroup],
        activities=[
            host_steps.prepare,
            host_steps.stop,
            host_steps.install,
            host_steps.start,
            compensations.unstage,
            compensations.restore,
            compensations.reinstall,
            *record_steps.all(),
        ],
        activity_executor=executor
        or concurrent.futures.ThreadPoolExecutor(max_workers=16),
        graceful_shutdown_timeout=timedelta(seconds=graceful_seconds),
        # An eagerly dispatched activity counts as started while it waits for a free
        # slot in this worker, and without running it cannot heartbeat: under load
        # (50 groups at once) such activities timed out unstarted. Left on the
        # server, they wait there until a worker has room.
        disable_eager_activity_execution=True,
    )


async def serve(args: argparse.Namespace) -> None:
    client = await connect(profile=args.profile)
    store = RecordsStore.from_env()
    store.create_schema()
    worker = build_worker(
        client,
        store,
        SshSettings.from_env(),
        task_queue=args.task_queue,
        graceful_seconds=args.graceful_seconds,
    )

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    log.info("worker polling task queue %s", args.task_queue)
    async with worker:
        await stopping.wait()
        log.info("stopping: draining running activities (up to %ss)", args.graceful_seconds)
    store.dispose()
    log.info("worker stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="arbup-worker", description=__doc__.split("\n")[0])
    parser.add_argument("--task-queue", default=TASK_QUEUE)
    parser.add_argument("--profile", default=None, help="Temporal client config profile")
    parser.add_argument("--graceful-seconds", type=float, default=30)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    asyncio.run(serve(args))
    exit_now(0)


if __name__ == "__main__":
    main()
