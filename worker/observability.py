"""What the worker tells about itself: metrics, log context and health.

``Observability`` is a worker interceptor. For every activity attempt it sets the
log context from the activity's input (task, subtask, host, trace id) and
Temporal's (workflow id, activity), times the attempt and counts its failure by
error kind; for every upgrade workflow it sets the log context (task, trace id)
of the workflow's code and handlers, and counts the upgrade started, each time its
task becomes FAILED and waits for an operator, and how it finished. Metrics go
through Temporal's metric meters (the workflow's is replay-safe: a replayed
history records nothing), so they are served with the SDK's own from the
worker's runtime (``arbup.temporal.make_runtime``); see ``arbup.metrics`` for the
names.

``health_server`` serves ``GET /healthz`` (the worker is running) and
``GET /readyz`` (Temporal and, unless it is a zone worker, the records store can
be reached) as JSON, from a small HTTP server on its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.converter import PayloadConverter
from temporalio.exceptions import ApplicationError, CancelledError, FailureError
from temporalio.runtime import Runtime
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    HandleSignalInput,
    HandleUpdateInput,
    Interceptor,
    StartActivityInput,
    Worker,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from arbup import metrics
from arbup.health import check_store, check_temporal, readiness, readiness_body
from arbup.inputs import WORKFLOW_NAME
from arbup.logs import bind, log_context, set_context, unbind
from arbup.records import RecordsStore
from arbup.temporal import make_runtime

log = logging.getLogger("arbup.worker")

# The record step that sets the task's status (see the workflow's _set_status).
FINISH_TASK_ACTIVITY = "finish_task"
# The header that carries the upgrade's trace id from the workflow to each of its
# activities, those whose input has no trace id too.
TRACE_HEADER = "arbup-trace-id"


def _field(value: Any, name: str) -> Any:
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def activity_fields(args) -> dict[str, Any]:
    """Task, subtask, host and trace id from an activity's input, where it has
    them (host steps have all four, record steps the task and subtask)."""
    if not args:
        return {}
    inp = args[0]
    service = _field(inp, "service")
    return {
        "task_id": _field(inp, "task_id"),
        "subtask_id": _field(inp, "subtask_id"),
        "host": _field(service, "host") if service is not None else None,
        "trace_id": _field(inp, "trace_id"),
    }


class Observability(Interceptor):
    def intercept_activity(
        self, next: ActivityInboundInterceptor
    ) -> ActivityInboundInterceptor:
        return _ActivityObserver(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _WorkflowObserver


# -- activities ---------------------------------------------------------------------


class _ActivityObserver(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        step = info.activity_type
        meter = activity.metric_meter()
        started = time.monotonic()
        outcome = "failed"
        fields = activity_fields(input.args)
        if fields.get("trace_id") is None and TRACE_HEADER in input.headers:
            fields["trace_id"] = PayloadConverter.default.from_payload(
                input.headers[TRACE_HEADER], str
            )
        # Each activity runs in an asyncio task of its own: the context stays set
        # to its end, so the SDK's own lines about the attempt's outcome, logged
        # after this returns, carry it too.
        set_context(
            **fields,
            workflow_id=info.workflow_id,
            run_id=info.workflow_run_id,
            activity=step,
            attempt=info.attempt,
        )
        try:
            result = await self.next.execute_activity(input)
        except (CancelledError, asyncio.CancelledError):
            outcome = "cancelled"
            raise
        except BaseException as exc:
            kind = _error_kind(exc)
            meter.create_counter(
                metrics.STEP_FAILURES, "Failed attempts of a step, by error kind"
            ).add(1, {"step": step, "kind": kind})
            if kind in metrics.SSH_ERROR_KINDS:
                meter.create_counter(
                    metrics.SSH_ERRORS, "SSH errors of host steps, by kind"
                ).add(1, {"kind": kind})
            raise
        else:
            outcome = "succeeded"
            return result
        finally:
            meter.create_histogram_float(
                metrics.STEP_DURATION,
                "Duration of one attempt of a step",
                "s",
            ).record(time.monotonic() - started, {"step": step, "outcome": outcome})


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, ApplicationError) and exc.type:
        return exc.type
    return type(exc).__name__


# -- workflows ----------------------------------------------------------------------


class _WorkflowObserver(WorkflowInboundInterceptor):
    """Per workflow run. Only upgrade workflows are counted; every workflow's code
    logs with its context."""

    _fields: dict[str, Any] = {}

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_WorkflowOutboundObserver(outbound, self))

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        info = workflow.info()
        upgrade = info.workflow_type == WORKFLOW_NAME
        inp = input.args[0] if input.args else None
        self._fields = {
            "task_id": _field(inp, "task_id"),
            "trace_id": _field(inp, "trace_id"),
            "workflow_id": info.workflow_id,
            "run_id": info.run_id,
        }
        meter = workflow.metric_meter()
        with log_context(**self._fields):
            if upgrade:
                meter.create_counter(
                    metrics.UPGRADES_STARTED, "Upgrade workflows started"
                ).add(1)
            try:
                result = await self.next.execute_workflow(input)
            except (CancelledError, asyncio.CancelledError, FailureError):
                if upgrade:
                    _count_finished(meter, metrics.FAILED)
                raise
            if upgrade:
                _count_finished(meter, _outcome_of(result))
            return result

    async def handle_signal(self, input: HandleSignalInput) -> None:
        with log_context(**self._fields):
            return await self.next.handle_signal(input)

    def handle_update_validator(self, input: HandleUpdateInput) -> None:
        token = bind(**self._fields)
        try:
            return self.next.handle_update_validator(input)
        finally:
            unbind(token)

    async def handle_update_handler(self, input: HandleUpdateInput) -> Any:
        with log_context(**self._fields):
            return await self.next.handle_update_handler(input)


class _WorkflowOutboundObserver(WorkflowOutboundInterceptor):
    def __init__(
        self, next: WorkflowOutboundInterceptor, inbound: _WorkflowObserver
    ) -> None:
        super().__init__(next)
        self._inbound = inbound

    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle:
        trace_id = self._inbound._fields.get("trace_id")
        if trace_id:
            input.headers = {
                **input.headers,
                TRACE_HEADER: PayloadConverter.default.to_payload(trace_id),
            }
        if input.activity == FINISH_TASK_ACTIVITY and input.args:
            finish = input.args[0]
            failed = str(_field(finish, "status")) == "FAILED"
            if failed and not _field(finish, "release_group"):
                workflow.metric_meter().create_counter(
                    metrics.TASK_FAILURES,
                    "Times a task became FAILED and waited for an operator's decision",
                ).add(1, {"operation": str(_field(finish, "operation"))})
        return super().start_activity(input)


def _outcome_of(result: Any) -> str:
    """From the workflow's result (the task in OCP's JSON)."""
    status = _field(result, "status")
    if status != "SUCCESSFUL":
        return metrics.FAILED
    if _field(result, "operation") == "ROLLBACK":
        return metrics.ROLLED_BACK
    return metrics.SUCCEEDED


def _count_finished(meter, outcome: str) -> None:
    meter.create_counter(
        metrics.UPGRADES_FINISHED, "Upgrade workflows ended, by outcome"
    ).add(1, {"outcome": outcome})


# -- the runtime ---------------------------------------------------------------------


def worker_runtime(metrics_address: str | None) -> Runtime:
    """The worker's Temporal runtime: Core's logs through Python logging and, with
    ``metrics_address``, the SDK's and the product's metrics served there."""
    try:
        runtime = make_runtime(metrics_address, metrics.WORKER_HISTOGRAM_BUCKETS)
    except ValueError as exc:
        raise SystemExit(
            f"arbup-worker: --metrics-address {metrics_address}: {exc}"
        ) from None
    if metrics_address:
        log.info("metrics on http://%s/metrics", metrics_address)
    return runtime


# -- health -------------------------------------------------------------------------


HEALTH_PATHS = ["/healthz", "/readyz"]


class _HealthHandler(BaseHTTPRequestHandler):
    server: _HealthHttpServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            status, body = self.server.health()
        elif path == "/readyz":
            status, body = self.server.ready()
        else:
            status, body = 404, {"status": "not found", "paths": HEALTH_PATHS}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes come every few seconds: no line for each."""


class _HealthHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        worker: Worker,
        client: Client,
        store: RecordsStore | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(address, _HealthHandler)
        self.worker = worker
        self.client = client
        self.store = store
        self.loop = loop

    def handle_error(self, request, client_address) -> None:
        """A probe that hung up before its answer: one log line, not a traceback
        on standard error."""
        log.debug("health probe from %s:%s dropped", *client_address[:2])

    def health(self) -> tuple[int, dict]:
        running = self.worker.is_running
        return (200 if running else 503), {
            "status": "ok" if running else "failing",
            "worker": "running" if running else "not running",
            "taskQueue": self.worker.config().get("task_queue"),
        }

    def ready(self) -> tuple[int, dict]:
        probes = {"temporal": lambda: check_temporal(self.client)}
        if self.store is not None:  # a zone worker keeps no records
            probes["recordsStore"] = lambda: check_store(self.store)
        try:
            ok, checks = asyncio.run_coroutine_threadsafe(
                readiness(probes), self.loop
            ).result(timeout=10)
        except Exception:
            ok, checks = False, {"worker": "not answering"}
        ok = ok and self.worker.is_running
        checks["worker"] = "running" if self.worker.is_running else "not running"
        return (200 if ok else 503), readiness_body(ok, checks)


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a (host, port) pair."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{address!r} is not HOST:PORT (a port up to 65535; 0 picks a free one)")
    return host.strip("[]") or "127.0.0.1", int(port)


@contextlib.asynccontextmanager
async def health_server(
    address: str | None, worker: Worker, client: Client, store: RecordsStore | None
) -> AsyncIterator[tuple[str, int] | None]:
    """Serve /healthz and /readyz on ``address`` (``HOST:PORT``) while inside;
    nothing if ``address`` is empty. Yields the address bound."""
    if not address:
        yield None
        return
    try:
        server = _HealthHttpServer(
            parse_address(address), worker, client, store, asyncio.get_running_loop()
        )
    except (ValueError, OSError) as exc:
        raise SystemExit(f"arbup-worker: --health-address {address}: {exc}") from None
    thread = threading.Thread(
        target=server.serve_forever, name="arbup-health", daemon=True
    )
    thread.start()
    bound = server.server_address[:2]
    log.info("health endpoints on http://%s:%d/healthz and /readyz", *bound)
    try:
        yield bound
    finally:
        server.shutdown()
        server.server_close()
