"""The served OpenAPI document, made to match what the server really does.

FastAPI documents a 422 for invalid input; arbup answers 400 in OCP's error
envelope instead, so the 422s are replaced. Every operation documents the errors
any request can get (400 bad input, 401 no or wrong credentials, 413 body too
large, 503 Temporal or the records store down) besides its own, the
``X-Trace-Id`` header of every response, and the two ways to authenticate.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.schemas import ErrorEnvelope

_DESCRIPTIONS = {
    400: "Invalid input (OCP error envelope)",
    401: "Missing or invalid credentials",
    403: "A permission is missing (code 30014)",
    404: "No such resource",
    409: "The group is already being upgraded; the message names the task",
    413: "The request body is too large",
    503: "Temporal or the records store cannot be reached",
}
COMMON = (400, 401, 413, 503)

TRACE_HEADER_DOC = {
    "X-Trace-Id": {
        "description": "The request's trace id, as in the envelope",
        "schema": {"type": "string"},
        "required": True,
    }
}

SECURITY_SCHEMES = {
    "basicAuth": {"type": "http", "scheme": "basic"},
    "ocpAccessKey": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": (
            "OCP-ACCESS-KEY-HMACSHA1 <AK>:<base64(HMAC-SHA1(secret, string to "
            "sign))>, with a Date header within 15 minutes of the server's clock. "
            "String to sign: METHOD, MD5(body) upper-case hex ('' without a body), "
            "Content-Type, Date, Host, the x-ocp-* headers (name:value, sorted, one "
            "a line), and path?sorted-query, joined by newlines."
        ),
    },
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route: its own error statuses, in the error envelope."""
    return {
        code: {"model": ErrorEnvelope, "description": _DESCRIPTIONS[code]}
        for code in codes
    }


def install(app: FastAPI) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        _rework(doc)
        app.openapi_schema = doc
        return doc

    app.openapi = build


def _rework(doc: dict[str, Any]) -> None:
    error_ref = {"$ref": "#/components/schemas/ErrorEnvelope"}
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for code in COMMON:
                responses.setdefault(
                    str(code),
                    {
                        "description": _DESCRIPTIONS[code],
                        "content": {"application/json": {"schema": error_ref}},
                    },
                )
            for response in responses.values():
                response.setdefault("headers", {}).update(TRACE_HEADER_DOC)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    components["securitySchemes"] = SECURITY_SCHEMES
    doc["security"] = [{"basicAuth": []}, {"ocpAccessKey": []}]
