"""Log lines of the worker and the HTTP API: one line per event, with the context
the event happened in.

``configure_logging()`` sets up the process: ``ARBUP_LOG_FORMAT=json`` (the
default) writes one JSON object per line with ``time`` (UTC, ISO 8601), ``level``,
``logger``, ``message`` and, where known, ``task_id``, ``subtask_id``, ``host``,
``trace_id``, ``workflow_id``, ``run_id``, ``activity`` and ``attempt``, plus the
fields a call passes in ``extra`` (the API's access line: ``method``, ``path``,
``status``, ``duration_ms``, ``user``); ``ARBUP_LOG_FORMAT=text`` writes the same as
one readable line. ``ARBUP_LOG_LEVEL`` sets the level (default ``info``).

Context comes from three places: ``log_context(...)`` (a context variable, so it
follows the code into the tasks and threads it starts: the worker's interceptors
set it for every activity and workflow, the API for every request), the
``temporal_workflow`` / ``temporal_activity`` details Temporal's loggers attach,
and ``extra=`` of the call itself.

Secrets are kept out by construction (nothing logs a password, a header, a key or
a secret); as a second line of defence the formatters mask what looks like one
anyway: a PEM private key, the credentials of an ``Authorization`` value, and
``password=`` / ``secret=`` style pairs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

FORMAT_ENV = "ARBUP_LOG_FORMAT"
LEVEL_ENV = "ARBUP_LOG_LEVEL"
DEFAULT_FORMAT = "json"
FORMATS = ("json", "text")

# The context fields, in the order they are written.
CONTEXT_FIELDS = (
    "task_id",
    "subtask_id",
    "host",
    "trace_id",
    "workflow_id",
    "run_id",
    "activity",
    "attempt",
)

_context: ContextVar[Mapping[str, Any]] = ContextVar("arbup_log_context", default={})

# Attributes every LogRecord has, and those other libraries add that are not
# fields of the event (Temporal's details are turned into context fields).
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None))
) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
    "temporal_workflow",
    "temporal_activity",
    "temporal_log",
    "temporal_update",
    "workflow_info",
    "activity_info",
}


def new_trace_id() -> str:
    """A trace id of the API's format: 16 lower-case hex digits."""
    return secrets.token_hex(8)


def bind(**fields: Any) -> Token:
    """Add fields (those not None) to the current log context; ``unbind`` the
    returned token to restore the context from before."""
    added = {k: v for k, v in fields.items() if v is not None}
    return _context.set({**_context.get(), **added})


def unbind(token: Token) -> None:
    _context.reset(token)


def set_context(**fields: Any) -> None:
    """Make these fields (those not None) the whole log context, for the rest of
    the current asyncio task (or thread)."""
    _context.set({k: v for k, v in fields.items() if v is not None})


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Every log line inside carries these fields (those not None)."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def current_context() -> dict[str, Any]:
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Puts the context fields on each record: from the call's ``extra`` first,
    then the log context, then Temporal's workflow or activity details."""

    def filter(self, record: logging.LogRecord) -> bool:
        found: dict[str, Any] = {}
        in_activity = getattr(record, "temporal_activity", None)
        in_workflow = getattr(record, "temporal_workflow", None)
        if isinstance(in_activity, Mapping):
            found["workflow_id"] = in_activity.get("workflow_id")
            found["run_id"] = in_activity.get("workflow_run_id")
            found["activity"] = in_activity.get("activity_type")
            found["attempt"] = in_activity.get("attempt")
        elif isinstance(in_workflow, Mapping):
            found["workflow_id"] = in_workflow.get("workflow_id")
            found["run_id"] = in_workflow.get("run_id")
        found.update(_context.get())
        for key in CONTEXT_FIELDS:
            if getattr(record, key, None) is None and found.get(key) is not None:
                setattr(record, key, found[key])
        return True


# -- keeping secrets out ------------------------------------------------------------

_REDACTIONS = (
    (
        re.compile(
            r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----"
            r".*?(-----END \1PRIVATE KEY-----|$)",
            re.S,
        ),
        r"-----BEGIN \1PRIVATE KEY----- [redacted]",
    ),
    (
        re.compile(
            r"\b(Basic|Bearer|OCP-ACCESS-KEY-HMACSHA1)(\s+)[A-Za-z0-9+/=:._~-]+",
            re.I,
        ),
        r"\1\2[redacted]",
    ),
    (
        re.compile(
            r"\b(\w*(?:password|passwd|secret|api_key|apikey|token)\w*)"
            r"([\"']?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&]+)",
            re.I,
        ),
        r"\1\2[redacted]",
    ),
    (
        # user:password@ in a URL
        re.compile(r"\b([a-z][a-z0-9+.-]*://[^/\s:@]+:)[^@\s/]+@", re.I),
        r"\1[redacted]@",
    ),
)


def _masked(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential masked."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


# -- formatters ---------------------------------------------------------------------


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _RECORD_ATTRIBUTES
        and key not in CONTEXT_FIELDS
        and not key.startswith("_")
    }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                data[key] = _masked(_jsonable(value))
        for key, value in _extras(record).items():
            data.setdefault(key, _masked(_jsonable(value)))
        if record.exc_info:
            data["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            data["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(data, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger message [key=value ...]``, on one line (an exception's
    traceback follows on its own lines)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        pairs = [
            f"{key}={getattr(record, key)}"
            for key in CONTEXT_FIELDS
            if getattr(record, key, None) is not None
        ]
        return redact(f"{line} [{' '.join(pairs)}]" if pairs else line)

    def formatException(self, ei) -> str:
        return redact(super().formatException(ei))


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f"{FORMAT_ENV} must be one of {', '.join(FORMATS)}, not {fmt!r}")


def make_handler(fmt: str, stream=None) -> logging.Handler:
    """A stream handler (stderr by default) writing ``fmt`` lines with context."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    handler.addFilter(ContextFilter())
    return handler


def configure_logging(fmt: str | None = None, level: str | int | None = None) -> str:
    """Set up the process's logging (root logger, one handler on stderr); returns
    the format chosen. ``fmt`` and ``level`` default to ``$ARBUP_LOG_FORMAT`` and
    ``$ARBUP_LOG_LEVEL``."""
    fmt = (fmt or os.environ.get(FORMAT_ENV) or DEFAULT_FORMAT).strip().lower()
    handler = make_handler(fmt)
    level = level or os.environ.get(LEVEL_ENV) or "info"
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            raise ValueError(f"{LEVEL_ENV}: unknown level")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if fmt == "json":
        # The workflow and activity details are fields of the line; Temporal's
        # loggers need not also append them to the message.
        from temporalio import activity, workflow

        activity.logger.activity_info_on_message = False
        workflow.logger.workflow_info_on_message = False
    return fmt
