"""The product's metrics: their names, and the HTTP API's request metrics.

The worker records its own through Temporal's metric meters (see
``worker.observability``), so Prometheus finds them next to the SDK's on the
worker's ``--metrics-address``:

``arbup_upgrades_started_total``
    upgrade workflows started.
``arbup_upgrades_finished_total{outcome}``
    upgrade workflows ended: ``succeeded`` (every service runs the target),
    ``rolled_back`` (a rollback brought every service back) or ``failed`` (the task
    ended FAILED: cancelled, or the workflow failed).
``arbup_task_failures_total{operation}``
    times a task became FAILED and started waiting for an operator's decision
    (``operation``: EXECUTE, RETRY or ROLLBACK); a task waiting this way has not
    finished, so this is the counter to alert on.
``arbup_step_duration_seconds{step, outcome}``
    histogram of one attempt of a step (``step`` is the activity:
    ``prepare_service``, ``stop_service``, ``install_package``, ``start_service``,
    the record steps and compensations; ``outcome``: ``succeeded``, ``failed``,
    ``cancelled``).
``arbup_step_failures_total{step, kind}``
    failed attempts by step and error kind (``arbup.errors.ErrorKind``, or the
    exception's class for an unexpected error).
``arbup_ssh_errors_total{kind}``
    failed attempts whose kind is an SSH error (``SSH_ERROR_KINDS``).

The HTTP API keeps its own (``ApiMetrics``), served at its ``GET /metrics``:
``arbup_api_requests_total{method, route, status}`` and
``arbup_api_request_duration_seconds{method, route}``, where ``route`` is the
path template (``/api/v2/tasks/instances/{id}``), or ``unmatched`` for a path no
route has.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from arbup.errors import ErrorKind

UPGRADES_STARTED = "arbup_upgrades_started_total"
UPGRADES_FINISHED = "arbup_upgrades_finished_total"
TASK_FAILURES = "arbup_task_failures_total"
STEP_DURATION = "arbup_step_duration_seconds"
STEP_FAILURES = "arbup_step_failures_total"
SSH_ERRORS = "arbup_ssh_errors_total"

# Outcomes of arbup_upgrades_finished_total.
SUCCEEDED = "succeeded"
ROLLED_BACK = "rolled_back"
FAILED = "failed"

# Error kinds that are the SSH connection's or command's, not the step's logic.
SSH_ERROR_KINDS = frozenset(
    {
        ErrorKind.HOST_UNREACHABLE,
        ErrorKind.HOST_KEY_NOT_VERIFIED,
        ErrorKind.PERMISSION_DENIED,
        ErrorKind.CREDENTIAL_MISSING,
        ErrorKind.NO_EXIT_STATUS,
        ErrorKind.COMMAND_FAILED,
    }
)

# Steps take from milliseconds (a record) to many minutes (an upload, a start
# with its settle time).
STEP_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800]
WORKER_HISTOGRAM_BUCKETS = {STEP_DURATION: STEP_BUCKETS}

API_REQUESTS = "arbup_api_requests_total"
API_REQUEST_DURATION = "arbup_api_request_duration_seconds"
UNMATCHED_ROUTE = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ApiMetrics:
    """The request metrics of one API application, in a registry of its own (with
    the process's CPU, memory and file descriptors)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        # No ``*_created`` series beside each counter and histogram: Prometheus
        # does not need them.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._requests = Counter(
            API_REQUESTS.removesuffix("_total"),
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self._duration = Histogram(
            API_REQUEST_DURATION,
            "Time to answer an HTTP request, by method and route template",
            ["method", "route"],
            registry=self.registry,
        )

    def observe(
        self, method: str, route: str | None, status: int | None, seconds: float
    ) -> None:
        method = method.upper() if method.upper() in _METHODS else "OTHER"
        route = route or UNMATCHED_ROUTE
        self._requests.labels(method, route, str(status or 0)).inc()
        self._duration.labels(method, route).observe(seconds)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric of the registry."""
        return generate_latest(self.registry)
