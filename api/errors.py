"""Errors in OCP's error envelope, and the table of error codes.

An error response is the envelope (see ``api.envelope``) with ``successful: false``
and ``error: {code, message, target?, debugMessage?, subErrors?}``. Codes are OCP's
where OCP has one (20000-20004 tasks, 30014 permissions); arbup's own codes are in
the 60000s. ``ERRORS`` is the one table of them all; ``UpgradeRefused`` codes of
``starter.service`` map onto it by name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from api.envelope import TRACE_HEADER, envelope, trace_of
from starter.service import UpgradeRefused

log = logging.getLogger("arbup.api")


@dataclass(frozen=True)
class ErrorCode:
    code: int
    status: int
    description: str


ERRORS: dict[str, ErrorCode] = {
    # OCP's codes.
    "TASK_NOT_FOUND": ErrorCode(20000, 404, "the task does not exist"),
    "TASK_STATE_INVALID": ErrorCode(
        20003, 400, "the task or subtask is not in a state that allows the action"
    ),
    "TASK_PROHIBIT_ROLLBACK": ErrorCode(
        20004, 400, "a subtask that prohibits rollback has run"
    ),
    "IAM_OPERATION_NOT_PERMITTED": ErrorCode(
        30014, 403, "the user lacks a permission the operation needs"
    ),
    # arbup's codes.
    "ILLEGAL_ARGUMENT": ErrorCode(60001, 400, "a parameter or the body is invalid"),
    "AUTHENTICATION_FAILED": ErrorCode(
        60002, 401, "no credentials, or credentials that are not valid"
    ),
    "ARBITRATION_GROUP_NOT_FOUND": ErrorCode(
        60003, 404, "the arbitration service group does not exist"
    ),
    "ARBITRATION_GROUP_EMPTY": ErrorCode(
        60004, 400, "the group has no arbitration services"
    ),
    "ARBITRATION_GROUP_NOT_RUNNING": ErrorCode(60005, 400, "the group is not running"),
    "TARGET_VERSION_NOT_NEWER": ErrorCode(
        60006, 400, "the target version is not newer than the group's"
    ),
    "PACKAGE_NOT_FOUND": ErrorCode(
        60007, 400, "no package for the target version, OS and a host's architecture"
    ),
    "ARBITRATION_GROUP_UPGRADE_IN_PROGRESS": ErrorCode(
        60008, 409, "another task is upgrading the group"
    ),
    "SUBTASK_NOT_FOUND": ErrorCode(60009, 404, "the task has no such subtask"),
    "RESOURCE_NOT_FOUND": ErrorCode(60010, 404, "no such path"),
    "METHOD_NOT_ALLOWED": ErrorCode(60011, 405, "the path does not take this method"),
    "REQUEST_TOO_LARGE": ErrorCode(60012, 413, "the request body is too large"),
    "OPERATING_SYSTEM_MISMATCH": ErrorCode(
        60013, 400, "the package's OS is not the one the group's hosts run"
    ),
    "SUBTASK_PROHIBIT_SKIP": ErrorCode(60014, 400, "the subtask may not be skipped"),
    "ROLLBACK_PACKAGE_MISSING": ErrorCode(
        60015, 400, "no package of a service's previous version for a forced rollback"
    ),
    "INTERNAL_ERROR": ErrorCode(60500, 500, "an unexpected error; see the server log"),
    "BACKEND_UNAVAILABLE": ErrorCode(
        60503, 503, "Temporal or the records store cannot be reached"
    ),
}


class ApiError(Exception):
    """An error answered in OCP's error envelope."""

    def __init__(
        self,
        name: str,
        message: str,
        *,
        target: str | None = None,
        sub_errors: list[dict[str, Any]] | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        known = ERRORS[name]
        self.name = name
        self.code = known.code
        self.status = status or known.status
        self.message = message
        self.target = target
        self.sub_errors = sub_errors
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target is not None:
            error["target"] = self.target
        if self.sub_errors:
            error["subErrors"] = self.sub_errors
        return error


def from_refused(refused: UpgradeRefused) -> ApiError:
    """``starter.service``'s refusal, under the code of its name; an unknown name
    keeps its HTTP status under the generic code of that status."""
    if refused.code in ERRORS:
        return ApiError(refused.code, refused.message, status=refused.status)
    fallback = {404: "RESOURCE_NOT_FOUND", 409: "ARBITRATION_GROUP_UPGRADE_IN_PROGRESS"}
    return ApiError(
        fallback.get(refused.status, "ILLEGAL_ARGUMENT"),
        refused.message,
        status=refused.status,
    )


def error_response(scope_or_request: Any, server: str, error: ApiError) -> JSONResponse:
    trace = trace_of(scope_or_request)
    return JSONResponse(
        envelope(trace, server, error.status, error=error.body()),
        status_code=error.status,
        headers={TRACE_HEADER: trace.trace_id, **error.headers},
    )


def _server(request: Request) -> str:
    return request.app.state.settings.server_name


async def api_error_handler(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(request, _server(request), exc)


async def refused_handler(request: Request, exc: UpgradeRefused) -> JSONResponse:
    return error_response(request, _server(request), from_refused(exc))


async def validation_handler(
    request: Request, exc: RequestValidationError
) -> JSONResponse:
    """FastAPI's 422 becomes OCP's 400, one sub-error per offending field."""
    subs = []
    for problem in exc.errors():
        loc = list(problem.get("loc", ()))
        message = str(problem.get("msg", "invalid"))
        if problem.get("type") == "json_invalid":
            position = loc[1] if len(loc) > 1 else "?"
            reason = (problem.get("ctx") or {}).get("error", "")
            message = f"the body is not valid JSON: {reason} at position {position}"
            loc = ["body"]
        elif problem.get("type") == "missing" and loc == ["body"]:
            message = "a JSON body is required"
        where = ".".join(str(part) for part in loc)
        subs.append(
            {
                "code": ERRORS["ILLEGAL_ARGUMENT"].code,
                "message": message,
                "target": where,
            }
        )
    first = subs[0] if subs else {"message": "invalid request", "target": None}
    message = (
        f"{first['target']}: {first['message']}"
        if first.get("target")
        else first["message"]
    )
    if len(subs) > 1:
        message += f" (and {len(subs) - 1} more)"
    return error_response(
        request,
        _server(request),
        ApiError(
            "ILLEGAL_ARGUMENT", message, target=first.get("target"), sub_errors=subs
        ),
    )


async def http_error_handler(
    request: Request, exc: StarletteHTTPException
) -> JSONResponse:
    """Starlette's own errors (unknown path, wrong method, unreadable body)."""
    names = {
        404: "RESOURCE_NOT_FOUND",
        405: "METHOD_NOT_ALLOWED",
        413: "REQUEST_TOO_LARGE",
    }
    name = names.get(exc.status_code, "ILLEGAL_ARGUMENT")
    status = exc.status_code if 400 <= exc.status_code < 500 else 400
    message = {
        404: f"no resource at {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    headers = dict(exc.headers or {})
    return error_response(
        request,
        _server(request),
        ApiError(name, message, status=status, headers=headers),
    )


async def unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    trace = trace_of(request)
    if _unreachable(exc):
        log.warning("trace %s: backend unreachable: %s", trace.trace_id, exc)
        error = ApiError(
            "BACKEND_UNAVAILABLE",
            "Temporal or the records store cannot be reached; try again later "
            f"(trace {trace.trace_id})",
        )
    else:
        log.exception("trace %s: unexpected error", trace.trace_id)
        error = ApiError(
            "INTERNAL_ERROR",
            f"unexpected error; the server log has it under trace {trace.trace_id}",
        )
    return error_response(request, _server(request), error)


def _unreachable(exc: BaseException) -> bool:
    from sqlalchemy.exc import OperationalError
    from temporalio.service import RPCError

    return isinstance(exc, (ConnectionError, OperationalError, RPCError, TimeoutError))


def install(app) -> None:
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(UpgradeRefused, refused_handler)
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, unexpected_handler)
