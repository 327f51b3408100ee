"""The FastAPI application.

``create_app(store, iam, client=... | connect=..., settings=...)`` builds it around a
records store, the users' store and a Temporal client (or a coroutine function that
connects one when first needed). Paths, bodies and envelopes follow OCP's API v2;
the OpenAPI document is at ``/openapi.json`` and rendered at ``/docs``. Health,
readiness and request metrics are at ``/healthz``, ``/readyz`` and ``/metrics``
(``api.routes.ops``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import FastAPI
from temporalio.client import Client

from api import errors, openapi
from api.deps import Temporal
from api.envelope import default_server_name
from api.middleware import Gate
from api.routes import ROUTERS, ops
from arbup.inputs import TASK_QUEUE, UpgradeOptions
from arbup.metrics import ApiMetrics
from arbup.records import RecordsStore
from arbup.records.iam import IamStore

DEFAULT_MAX_BODY_BYTES = 64 * 1024


@dataclass
class ApiSettings:
    # Where upgrade workflows are started, and with which options.
    task_queue: str = TASK_QUEUE
    options: UpgradeOptions | None = None
    search_attributes: bool = True
    # ``server`` of every envelope.
    server_name: str = field(default_factory=default_server_name)
    # ``executor`` of the tasks this server starts (default: server_name).
    executor: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


def create_app(
    store: RecordsStore,
    iam: IamStore,
    *,
    client: Client | None = None,
    connect: Callable[[], Awaitable[Client]] | None = None,
    settings: ApiSettings | None = None,
) -> FastAPI:
    settings = settings or ApiSettings()
    app = FastAPI(
        title="arbup",
        version="0.1.0",
        description=(
            "Upgrades of OceanBase arbitration service groups, with OceanBase Cloud "
            "Platform's API v2 paths, envelopes, error codes and task model."
        ),
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.store = store
    app.state.iam = iam
    app.state.temporal = Temporal(client, connect)
    app.state.settings = settings
    app.state.metrics = ApiMetrics()
    errors.install(app)
    for router in (*ROUTERS, ops.router):
        app.include_router(router)
    app.add_middleware(
        Gate,
        iam=iam,
        server_name=settings.server_name,
        max_body_bytes=settings.max_body_bytes,
        metrics=app.state.metrics,
        routes=[route for router in (*ROUTERS, ops.router) for route in router.routes],
    )
    openapi.install(app)
    return app
