"""OCP's response envelope and the request's trace.

Every response, success or error, is a JSON object with ``successful``,
``timestamp`` (when the server completed the request, with its UTC offset),
``duration`` (milliseconds spent on the request), ``status`` (the HTTP status),
``traceId`` and ``server``; successes carry ``data``, errors ``error``.

The trace id is 16 lower-case hex digits, made per request (or taken from the
request's ``X-Trace-Id`` header when that is 16 to 32 hex digits), and is sent back
in the ``X-Trace-Id`` response header as well.
"""

from __future__ import annotations

import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

TRACE_HEADER = "X-Trace-Id"
_TRACE_RE = re.compile(r"^[0-9a-f]{16,32}$")


@dataclass
class Trace:
    """Per request: its id, when it started, and who made it (once known)."""

    trace_id: str
    started: float = field(default_factory=time.monotonic)
    user: str | None = None

    @classmethod
    def for_headers(cls, headers: dict[str, str]) -> Trace:
        given = headers.get(TRACE_HEADER.lower(), "").strip().lower()
        return cls(given if _TRACE_RE.match(given) else secrets.token_hex(8))

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)


def default_server_name() -> str:
    return socket.gethostname()


def trace_of(scope_or_request: Any) -> Trace:
    scope = getattr(scope_or_request, "scope", scope_or_request)
    trace = scope.setdefault("state", {}).get("trace")
    if trace is None:
        trace = Trace(secrets.token_hex(8))
        scope["state"]["trace"] = trace
    return trace


def envelope(trace: Trace, server: str, status: int, **body: Any) -> dict[str, Any]:
    return {
        **body,
        "duration": trace.elapsed_ms(),
        "server": server,
        "status": status,
        "successful": 200 <= status < 300,
        "timestamp": datetime.now().astimezone().isoformat(timespec="milliseconds"),
        "traceId": trace.trace_id,
    }


def ok(request: Request, data: Any, status: int = 200) -> JSONResponse:
    """A successful response carrying ``data``."""
    trace = trace_of(request)
    server = request.app.state.settings.server_name
    return JSONResponse(
        envelope(trace, server, status, data=data),
        status_code=status,
        headers={TRACE_HEADER: trace.trace_id},
    )


def page(contents: list[Any], *, total: int, number: int, size: int) -> dict[str, Any]:
    """OCP's paged list: ``contents`` and ``page`` (1-based ``number``)."""
    return {
        "contents": contents,
        "page": {
            "totalElements": total,
            "totalPages": (total + size - 1) // size,
            "number": number,
            "size": size,
        },
    }
