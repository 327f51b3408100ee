"""The Web UI tests' own dev server (the shared one runs headless), and where their
screenshots go."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from arbup.localstack import wait_for_port
from arbup.temporal import SEARCH_ATTRIBUTE_TYPES
from tests.conftest import temporal_cli

WRITTEN: list[Path] = []


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ui_port() -> int:
    return free_loopback_port()


@pytest_asyncio.fixture(scope="session")
async def web_ui_env(ui_port):
    """A dev server like the shared ``temporal_env``, with its Web UI on a free
    loopback port and without the UI's news feed."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=pydantic_data_converter,
        search_attributes=list(SEARCH_ATTRIBUTE_TYPES),
        dev_server_log_level="error",
        ui=True,
        ui_port=ui_port,
        dev_server_extra_args=["--ui-disable-news-fetch"],
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def client(web_ui_env) -> Client:
    """Overrides the shared ``client`` below this folder, so that the fixtures built
    on it (``stack`` and the rest) run their workflows where the Web UI looks."""
    return web_ui_env.client


@pytest.fixture(scope="session")
def web_ui(web_ui_env, ui_port) -> str:
    wait_for_port("127.0.0.1", ui_port, 60, "the Temporal Web UI")
    return f"http://127.0.0.1:{ui_port}"


@pytest.fixture
def artifacts(tmp_path_factory) -> Path:
    """Where screenshots go: ``$ARBUP_ARTIFACTS``, or a directory of this run's."""
    chosen = os.environ.get("ARBUP_ARTIFACTS")
    path = Path(chosen).absolute() if chosen else tmp_path_factory.mktemp("web-ui")
    path.mkdir(parents=True, exist_ok=True)
    return path


def pytest_terminal_summary(terminalreporter) -> None:
    if WRITTEN:
        terminalreporter.write_sep("-", "Web UI screenshots")
        for path in WRITTEN:
            terminalreporter.write_line(str(path))
