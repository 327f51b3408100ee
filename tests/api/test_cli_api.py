"""``arbup api`` as an operator runs it: users and keys made with the arbup
commands, the server started as a process, the sample request sent with curl, and
the task read again after the process restarts."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from api.auth import sign_request
from tests.api.conftest import SAMPLE_PATH, free_port
from tests.api.test_upgrade_api import graph, same_shape

pytestmark = pytest.mark.integration

PASSWORD = "operator-password-1"


def arbup() -> str:
    return str(Path(sys.executable).parent / "arbup")


class ApiProcess:
    def __init__(self, env: dict[str, str], port: int, task_queue: str, log: Path):
        self.env, self.port, self.task_queue, self.log = env, port, task_queue, log
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            arbup(),
            "api",
            "--port",
            str(self.port),
            "--task-queue",
            self.task_queue,
            "--server-name",
            "api-under-test",
            "--log-level",
            "warning",
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=asyncio.subprocess.STDOUT,
        )
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                if self.process.returncode is not None:
                    raise AssertionError(f"arbup api exited: {self.log.read_text()}")
                try:
                    if (await http.get(f"{self.url}/openapi.json")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"arbup api never answered: {self.log.read_text()}")

    async def stop(self) -> int:
        if self.process and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        return self.process.returncode


async def run(env, *args: str, stdin: str | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        arbup(),
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(stdin.encode() if stdin else None)
    assert process.returncode == 0, (args, out, err)
    return out.decode()


async def curl(*args: str) -> dict:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    process = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--max-time",
        "30",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err
    return json.loads(out)


async def test_arbup_api_answers_the_sample_sent_with_curl(stack, client, tmp_path):
    store_url = stack.store.engine.url.render_as_string(hide_password=False)
    env = {
        **os.environ,
        "ARBUP_DB_URL": store_url,
        "ARBUP_STATE_DIR": str(tmp_path / "state"),
        "TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": client.namespace,
    }
    await run(env, "user", "add", "operator", "--password-stdin", stdin=PASSWORD + "\n")
    await run(env, "user", "grant", "operator", "ARBITRATION:UPDATE", "--all")
    await run(env, "user", "grant", "operator", "TASK_VIEWER")
    listed = json.loads(await run(env, "user", "list", "--json"))
    assert listed[0]["name"] == "operator" and len(listed[0]["grants"]) == 2
    key = json.loads(await run(env, "key", "create", "operator", "--json"))
    assert (tmp_path / "state" / "api-master.key").stat().st_mode & 0o777 == 0o600
    assert key["secret"] not in await run(env, "key", "list")

    sample = json.loads(Path(SAMPLE_PATH).read_text())
    body_file = tmp_path / "body.json"
    body_file.write_text(json.dumps(sample["request"]["body"]))

    api = ApiProcess(env, free_port(), stack.task_queue, tmp_path / "api.log")
    await api.start()
    try:
        answer = await curl(
            "-u",
            f"operator:{PASSWORD}",
            "-H",
            "Content-Type: application/json",
            "-X",
            "POST",
            "--data-binary",
            f"@{body_file}",
            api.url + sample["request"]["path"],
        )
        same_shape(sample["response"], answer)
        task = answer["data"]
        assert task["creator"] == "operator" and task["status"] == "RUNNING"
        assert answer["server"] == "api-under-test"
        assert graph(task["subtasks"]) == graph(sample["response"]["data"]["subtasks"])

        # The process restarts; the task is still there, and runs to its end.
        # (uvicorn shuts down gracefully, then ends by the signal it received)
        assert await api.stop() in (0, -signal.SIGTERM)
        await api.start()
        path = f"/api/v2/tasks/instances/{task['id']}"
        for _ in range(400):
            again = await curl("-u", f"operator:{PASSWORD}", api.url + path)
            if again["data"]["status"] != "RUNNING":
                break
            await asyncio.sleep(0.3)
        assert again["data"]["status"] == "SUCCESSFUL", again

        # The access key made by `arbup key create` signs requests.
        host = urlsplit(api.url).netloc
        headers = sign_request(
            key["accessKey"], key["secret"], method="GET", host=host, path=path
        )
        signed = await curl(
            *[a for k, v in headers.items() for a in ("-H", f"{k}: {v}")],
            api.url + path,
        )
        assert signed["successful"] is True and signed["data"]["id"] == task["id"]
    finally:
        await api.stop()
    log = (tmp_path / "api.log").read_text()
    assert PASSWORD not in log and key["secret"] not in log
