"""Operating the API: ``GET /healthz``, ``GET /readyz`` and ``GET /metrics``.

They are outside ``/api/``, so they need no credentials (probes and Prometheus
have none), and they are not part of the OpenAPI document of OCP's API. None
reveals a secret: ``/healthz`` says the process serves requests, ``/readyz``
which backend cannot be reached (why is in the server's log), ``/metrics`` counts
requests by method, route template and status, and the process's resources.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from arbup.health import check_store, check_temporal, readiness, readiness_body

router = APIRouter(include_in_schema=False)

NO_STORE = {"Cache-Control": "no-store"}


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    """The process is up and answering."""
    return JSONResponse({"status": "ok"}, headers=NO_STORE)


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 when the records store and Temporal can be reached, 503 otherwise."""
    store = request.app.state.store
    temporal = request.app.state.temporal

    async def temporal_probe() -> None:
        await check_temporal(await temporal.get())

    ready, checks = await readiness(
        {"recordsStore": lambda: check_store(store), "temporal": temporal_probe}
    )
    return JSONResponse(
        readiness_body(ready, checks),
        status_code=200 if ready else 503,
        headers=NO_STORE,
    )


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """The request metrics, in Prometheus's text format."""
    exposition = request.app.state.metrics
    return Response(
        exposition.exposition(), media_type=exposition.content_type, headers=NO_STORE
    )
