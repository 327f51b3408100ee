"""The gate every HTTP request passes first (a plain ASGI middleware).

In order: give the request its trace; read the body, refusing one larger than
``max_body_bytes`` (413; a body declared larger than ``DRAIN_LIMIT`` without
reading it); for paths
under ``/api/``, authenticate (401) and put the principal in the request's state;
then hand the request, its body replayed, to the application. Every response gets
the ``X-Trace-Id`` header, and one access-log line (method, path, status,
duration, trace id, user: never a header, a query value or a body), and is counted
in the request metrics by method, route template and status. Every line logged
while the request is handled carries its trace id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute, Match

from api.auth import authenticate
from api.envelope import TRACE_HEADER, Trace
from api.errors import ApiError, _unreachable, error_response
from arbup.logs import bind, unbind
from arbup.metrics import ApiMetrics
from arbup.records.iam import IamStore

access_log = logging.getLogger("arbup.api.access")

PROTECTED_PREFIX = "/api/"
# A too large body up to this size is read (and dropped) before the 413 is sent.
DRAIN_LIMIT = 16 * 1024 * 1024


class Gate:
    def __init__(
        self,
        app,
        *,
        iam: IamStore,
        server_name: str,
        max_body_bytes: int,
        metrics: ApiMetrics | None = None,
        routes: Sequence[BaseRoute] = (),
    ):
        self.app = app
        self.iam = iam
        self.server_name = server_name
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        # The application's routes, to name the route of a request refused here.
        self.routes = routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope.get("headers", [])
        ]
        lowered = {name.lower(): value for name, value in headers}
        trace = Trace.for_headers(lowered)
        scope.setdefault("state", {})["trace"] = trace
        context = bind(trace_id=trace.trace_id)
        sent: dict[str, Any] = {"status": None}

        async def send_traced(message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                response_headers = MutableHeaders(scope=message)
                if TRACE_HEADER not in response_headers:
                    response_headers.append(TRACE_HEADER, trace.trace_id)
            await send(message)

        try:
            try:
                body = await self._read_body(lowered, receive)
                if scope["path"].startswith(PROTECTED_PREFIX):
                    principal = await run_in_threadpool(
                        authenticate,
                        self.iam,
                        method=scope["method"],
                        path=_raw_path(scope),
                        query=scope.get("query_string", b"").decode("latin-1"),
                        headers=headers,
                        body=body,
                    )
                    scope["state"]["principal"] = principal
                    trace.user = principal.name
            except ApiError as refused:
                response = error_response(scope, self.server_name, refused)
                await response(scope, receive, send_traced)
                return

            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_traced)
        except Exception as unexpected:
            if sent["status"] is None:
                # What the application's outermost error handler answers for it.
                sent["status"] = 503 if _unreachable(unexpected) else 500
            raise
        finally:
            path = _printable(scope["path"])
            elapsed_ms = trace.elapsed_ms()
            access_log.info(
                "%s %s %s %dms trace=%s user=%s",
                scope["method"],
                path,
                sent["status"] if sent["status"] is not None else "-",
                elapsed_ms,
                trace.trace_id,
                trace.user or "-",
                extra={
                    "method": scope["method"],
                    "path": path,
                    "status": sent["status"],
                    "duration_ms": elapsed_ms,
                    "user": trace.user,
                },
            )
            if self.metrics is not None:
                self.metrics.observe(
                    scope["method"],
                    _route_template(scope, self.routes),
                    sent["status"],
                    time.monotonic() - trace.started,
                )
            unbind(context)

    async def _read_body(self, headers: dict[str, str], receive) -> bytes:
        declared = headers.get("content-length")
        if declared is not None:
            if not (declared.strip().isascii() and declared.strip().isdigit()):
                raise ApiError("ILLEGAL_ARGUMENT", "Content-Length is not a number")
            if int(declared) > DRAIN_LIMIT:
                # Not worth reading: answer at once, and the connection closes.
                raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                # Read the rest (up to DRAIN_LIMIT) so that the client, still
                # sending, gets the answer rather than a reset connection.
                more = message.get("more_body", False)
                while more and size <= DRAIN_LIMIT:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        break
                    size += len(message.get("body", b""))
                    more = message.get("more_body", False)
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _too_large(self) -> ApiError:
        return ApiError(
            "REQUEST_TOO_LARGE",
            f"the request body is larger than {self.max_body_bytes} bytes",
            headers={"Connection": "close"},
        )


def _raw_path(scope) -> str:
    raw = scope.get("raw_path")
    if raw:
        return raw.decode("latin-1").split("?", 1)[0]
    return scope["path"]


def _route_template(scope, routes: Sequence[BaseRoute]) -> str | None:
    """The path template of the route (``/api/v2/tasks/instances/{id}``), so that
    metrics have one series per route, not one per id: the route that answered,
    or, for a request refused here, the one its path is for; None if no route has
    the path."""
    route = scope.get("route")
    if route is None:
        matches = {Match.FULL: None, Match.PARTIAL: None}
        for candidate in routes:
            match = candidate.matches(scope)[0]
            if match in matches and matches[match] is None:
                matches[match] = candidate
        route = matches[Match.FULL] or matches[Match.PARTIAL]
    return getattr(route, "path", None)


def _printable(text: str) -> str:
    """The path for the log: control characters escaped, so one request is one line."""
    if text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")
