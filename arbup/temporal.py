"""Connecting to Temporal, the same way for the worker, the CLI and the API."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig

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


async def connect(profile: str | None = None) -> Client:
    """A client configured by Temporal's environment configuration
    (``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, TLS, or a
    profile of the config file), defaulting to a local dev server."""
    config = ClientConfig.load_client_connect_config(profile=profile)
    config.setdefault("target_host", DEFAULT_ADDRESS)
    return await Client.connect(**config, data_converter=pydantic_data_converter)
