"""Connecting to Temporal, the same way for the worker, the CLI and the API."""

from __future__ import annotations

import logging

from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

DEFAULT_ADDRESS = "localhost:7233"

# Search attributes the product sets on every upgrade workflow.
GROUP_ID = SearchAttributeKey.for_int("ArbupGroupId")
TASK_ID = SearchAttributeKey.for_int("ArbupTaskId")
TARGET_VERSION = SearchAttributeKey.for_keyword("ArbupTargetVersion")
TASK_STATUS = SearchAttributeKey.for_keyword("ArbupTaskStatus")
SEARCH_ATTRIBUTE_TYPES = {
    GROUP_ID: "Int",
    TASK_ID: "Int",
    TARGET_VERSION: "Keyword",
    TASK_STATUS: "Keyword",
}


def search_attribute_flags() -> list[str]:
    """``--search-attribute`` flags registering them on ``temporal server start-dev``."""
    flags = []
    for key, kind in SEARCH_ATTRIBUTE_TYPES.items():
        flags += ["--search-attribute", f"{key.name}={kind}"]
    return flags


def make_runtime(
    metrics_address: str | None = None,
    histogram_buckets: dict[str, list[float]] | None = None,
) -> Runtime:
    """A Temporal runtime whose Core logs (warnings and errors) go through Python
    logging, under ``temporalio.core``, so they are lines like every other; with
    ``metrics_address`` (``HOST:PORT``) it serves the SDK's metrics and those
    recorded through its meters at ``http://HOST:PORT/metrics`` for Prometheus.
    ``histogram_buckets`` overrides the buckets of histograms by metric name."""
    metrics = None
    if metrics_address:
        metrics = PrometheusConfig(
            bind_address=metrics_address,
            histogram_bucket_overrides=histogram_buckets,
        )
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(
                filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                forwarding=LogForwardingConfig(
                    logger=logging.getLogger("temporalio.core"),
                    append_target_to_name=False,
                ),
            ),
            metrics=metrics,
        )
    )


async def connect(
    profile: str | None = None, *, runtime: Runtime | None = None
) -> Client:
    """A client configured by Temporal's environment configuration
    (``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, TLS, or a
    profile of the config file), defaulting to a local dev server. A worker's
    client passes the ``runtime`` its metrics are served from (``make_runtime``)."""
    config = ClientConfig.load_client_connect_config(profile=profile)
    config.setdefault("target_host", DEFAULT_ADDRESS)
    return await Client.connect(
        **config, data_converter=pydantic_data_converter, runtime=runtime
    )
