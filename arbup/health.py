"""Readiness probes shared by the worker and the HTTP API: can this process reach
the records store and Temporal right now?

Each probe answers within ``PROBE_TIMEOUT_SECONDS``. What a probe reports is
``ok`` or ``unreachable``; why (the error) goes to the log, so a probe's answer
tells nothing about addresses, users or settings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta

from sqlalchemy import text
from temporalio.client import Client

from arbup.records import RecordsStore

log = logging.getLogger("arbup.health")

PROBE_TIMEOUT_SECONDS = 3.0
OK = "ok"
UNREACHABLE = "unreachable"

Probe = Callable[[], Awaitable[None]]


def _select_one(store: RecordsStore) -> None:
    with store.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


async def check_store(store: RecordsStore) -> None:
    """Raises unless the records store answers a query."""
    await asyncio.wait_for(
        asyncio.to_thread(_select_one, store), PROBE_TIMEOUT_SECONDS
    )


async def check_temporal(client: Client) -> None:
    """Raises unless Temporal's frontend says it is serving."""
    serving = await client.service_client.check_health(
        timeout=timedelta(seconds=PROBE_TIMEOUT_SECONDS)
    )
    if not serving:
        raise ConnectionError("Temporal's frontend is not serving")


async def readiness(probes: Mapping[str, Probe]) -> tuple[bool, dict[str, str]]:
    """Run the probes at once; ``(all ok, {name: "ok" | "unreachable"})``."""

    async def run(name: str, probe: Probe) -> str:
        try:
            await asyncio.wait_for(probe(), PROBE_TIMEOUT_SECONDS + 1)
        except Exception as exc:
            log.warning(
                "readiness: %s unreachable: %s",
                name,
                str(exc) or type(exc).__name__,
                extra={"check": name},
            )
            return UNREACHABLE
        return OK

    names = list(probes)
    results = await asyncio.gather(*(run(name, probes[name]) for name in names))
    checks = dict(zip(names, results))
    return all(result == OK for result in results), checks


def readiness_body(ready: bool, checks: dict[str, str]) -> dict:
    return {"status": "ready" if ready else "not ready", "checks": checks}
