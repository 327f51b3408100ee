"""Log lines: one JSON object per event, with the context it happened in, and no
secret, from the formatter up to a real upgrade (a worker process) started and
retried through the API with HTTP Basic."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from urllib.parse import urlsplit

import pytest

from api.auth import sign_request
from arbup.inputs import workflow_id_for
from arbup.logs import log_context, make_handler, new_trace_id
from tests.api.conftest import PASSWORDS, basic, wait_until
from tests.ops.conftest import captured_logs, json_lines

ADMIN_PASSWORD = PASSWORDS["admin"]
# Record steps of the whole task, with no subtask of their own.
TASK_LEVEL_STEPS = {"save_subtasks", "finish_task"}
ADMIN_TOKEN = basic("admin")["Authorization"].split()[1]


def emit(fmt: str, message: str, *args, **kwargs) -> str:
    stream = io.StringIO()
    logger = logging.getLogger("arbup.test.logs")
    handler = make_handler(fmt, stream)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.info(message, *args, **kwargs)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    return stream.getvalue()


def test_a_json_line_has_the_event_and_its_context():
    trace = new_trace_id()
    with log_context(task_id=7, subtask_id=41, host="127.0.1.2", trace_id=trace):
        with log_context(activity="stop_service"):
            text = emit(
                "json", "stopped %s\nafter %ds", "observer", 3, extra={"pid": 9}
            )
    assert text.endswith("\n") and text.count("\n") == 1
    line = json.loads(text)
    assert line["message"] == "stopped observer\nafter 3s"
    assert line["level"] == "INFO"
    assert line["logger"] == "arbup.test.logs"
    assert line["time"].endswith("+00:00")
    assert (line["task_id"], line["subtask_id"], line["host"]) == (7, 41, "127.0.1.2")
    assert line["trace_id"] == trace and len(trace) == 16
    assert line["activity"] == "stop_service"
    assert line["pid"] == 9
    # Outside the context, no context.
    assert "task_id" not in json.loads(emit("json", "later"))


def test_temporal_details_become_fields():
    details = {
        "activity_type": "install_package",
        "attempt": 2,
        "workflow_id": "arbup-group-1-task-3",
        "workflow_run_id": "r1",
    }
    line = json.loads(emit("json", "installing", extra={"temporal_activity": details}))
    assert line["workflow_id"] == "arbup-group-1-task-3"
    assert line["activity"] == "install_package" and line["attempt"] == 2
    assert "temporal_activity" not in line
    details = {"workflow_id": "w", "run_id": "r"}
    line = json.loads(emit("json", "waiting", extra={"temporal_workflow": details}))
    assert (line["workflow_id"], line["run_id"]) == ("w", "r")


def test_what_looks_like_a_secret_is_masked(tmp_path):
    key = (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU\n"
        "-----END OPENSSH PRIVATE KEY-----"
    )
    for fmt in ("json", "text"):
        text = emit(
            fmt,
            "sent Authorization: Basic %s with password=%s and key %s",
            ADMIN_TOKEN,
            ADMIN_PASSWORD,
            key,
        )
        assert ADMIN_TOKEN not in text
        assert ADMIN_PASSWORD not in text
        assert "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU" not in text
        assert "Basic [redacted]" in text and "password=[redacted]" in text
    try:
        raise RuntimeError(f"signature OCP-ACCESS-KEY-HMACSHA1 AK:{ADMIN_TOKEN}")
    except RuntimeError:
        text = emit("json", "failed", exc_info=True)
    line = json.loads(text)
    assert "RuntimeError" in line["exception"] and ADMIN_TOKEN not in text


def test_a_text_line_is_one_line_with_the_context():
    with log_context(task_id=3, host="127.0.1.1"):
        text = emit("text", "connected")
    assert text.count("\n") == 1
    assert " INFO arbup.test.logs connected [task_id=3 host=127.0.1.1]" in text


@pytest.mark.integration
async def test_api_lines_carry_the_trace_id_and_no_credentials(fake_api, iam):
    access_key, secret = iam.create_access_key("robot")
    groups = "/api/v2/arbitration/services/groups"
    wrong = "not-the-password-9"
    with captured_logs() as captured:
        async with fake_api.http(user=None) as http:
            good = await http.get(groups, headers=basic("admin"))
            bad = await http.get(groups, headers=basic("admin", wrong))
            signed = await http.get(
                groups,
                headers=sign_request(
                    access_key,
                    secret,
                    method="GET",
                    host=urlsplit(fake_api.url).netloc,
                    path=groups,
                ),
            )
            health = await http.get("/healthz")
        # A request's line is written just after its answer is sent.
        await wait_until(
            lambda: asyncio.sleep(0, captured.getvalue()),
            lambda text: text.count('"logger": "arbup.api.access"') >= 4,
            seconds=10,
        )
    assert (good.status_code, bad.status_code, signed.status_code) == (200, 401, 200)
    assert health.status_code == 200

    text = captured.getvalue()
    lines = json_lines(text.splitlines())
    access = [line for line in lines if line["logger"] == "arbup.api.access"]
    assert len(access) == 4, text
    expected = [
        (good, "admin", 200),
        (bad, None, 401),
        (signed, "robot", 200),
        (health, None, 200),
    ]
    for line, (response, user, status) in zip(access, expected):
        assert line["trace_id"] == response.headers["X-Trace-Id"]
        assert line["method"] == "GET"
        assert line["status"] == status
        assert line.get("user") == user
        assert isinstance(line["duration_ms"], int)
    for secret_text in (
        ADMIN_PASSWORD,
        ADMIN_TOKEN,
        wrong,
        base64.b64encode(f"admin:{wrong}".encode()).decode(),
        secret,
        signed.request.headers["Authorization"].split(":", 1)[1],
    ):
        assert secret_text not in text


@pytest.mark.integration
async def test_an_upgrade_logs_json_lines_with_its_task_subtask_host_and_trace(
    observed_upgrade,
):
    upgrade = observed_upgrade
    stack = upgrade.stack
    workflow_id = workflow_id_for(1, upgrade.task_id)
    hosts = {host.ip for host in stack.hosts}
    private_key = stack.ssh.key_dir / "local"
    key_body = "".join(private_key.read_text().splitlines()[1:-1])

    # The API: the request that started the upgrade, and the task it started.
    api = json_lines(upgrade.api_lines)
    started = [line for line in api if line["logger"] == "arbup.service"]
    assert len(started) == 1, upgrade.api_lines
    assert started[0]["task_id"] == upgrade.task_id
    assert started[0]["trace_id"] == upgrade.trace_id
    assert started[0]["workflow_id"] == workflow_id
    posts = [
        line
        for line in api
        if line["logger"] == "arbup.api.access" and line["method"] == "POST"
    ]
    assert [(p["trace_id"], p["user"], p["status"]) for p in posts] == [
        (upgrade.trace_id, "admin", 200),
        (upgrade.retry_trace_id, "admin", 200),
    ]

    # The worker: every line JSON; the upgrade's carry its context.
    worker = json_lines(upgrade.worker.log_lines())
    assert any("worker polling" in line["message"] for line in worker)
    in_activities = [line for line in worker if line.get("activity")]
    steps = {line["activity"] for line in in_activities}
    assert {"prepare_service", "stop_service", "install_package", "start_service"} <= (
        steps
    )
    assert {"begin_upgrade", "finish_task"} <= steps
    for line in in_activities:
        assert line["workflow_id"] == workflow_id, line
        assert line["task_id"] == upgrade.task_id, line
        assert isinstance(line["attempt"], int), line
        assert line["trace_id"] == upgrade.trace_id, line
        if line["activity"] not in TASK_LEVEL_STEPS:
            assert isinstance(line["subtask_id"], int), line
        if line["activity"].endswith(("_service", "_package")):
            assert line["host"] in hosts, line
    # Every host step of both hosts logged from inside, with its host.
    for step in ("prepare_service", "stop_service", "install_package", "start_service"):
        assert {
            line["host"] for line in in_activities if line["activity"] == step
        } == hosts, step
    # The workflow's own lines (the failure, the retry), replay-safe, with context.
    in_workflow = [
        line
        for line in worker
        if line["logger"].startswith("temporalio.workflow") or (
            line.get("workflow_id") and not line.get("activity")
        )
    ]
    messages = " | ".join(line["message"] for line in in_workflow)
    assert "failed" in messages and "retry by admin" in messages, messages
    for line in in_workflow:
        assert line["workflow_id"] == workflow_id, line
        assert line["task_id"] == upgrade.task_id, line
        assert line["trace_id"] == upgrade.trace_id, line
    # Each workflow line once: a replay logs nothing again.
    assert len(messages.split(" | ")) == len(set(messages.split(" | ")))

    # No secret anywhere.
    everything = "\n".join(upgrade.api_lines + upgrade.worker.log_lines())
    for secret_text in (ADMIN_PASSWORD, ADMIN_TOKEN, key_body):
        assert secret_text not in everything
    assert "PRIVATE KEY" not in everything


@pytest.mark.parametrize(
    "line, secret",
    [
        ("PGPASSWORD=hunter2", "hunter2"),
        ("db_password=hunter2 next", "hunter2"),
        ("client_secret=hunter2", "hunter2"),
        ('{"password": "hunter2"}', "hunter2"),
        ("{'password': 'hunter2'}", "hunter2"),
        ("postgresql+psycopg://arbup:hunter2@db.example/arbup", "hunter2"),
        ("GET /password=hunter2 HTTP/1.1", "hunter2"),
        ("Authorization: Basic aHVudGVyMg==", "aHVudGVyMg=="),
    ],
)
def test_what_looks_like_a_credential_is_masked_in_every_field(line, secret):
    import json
    import logging

    from arbup.logs import JsonFormatter

    record = logging.LogRecord("arbup.test", logging.INFO, __file__, 1, line, None, None)
    record.path = line  # an extra field, as the API's access line has
    out = JsonFormatter().format(record)
    assert secret not in out
    assert json.loads(out)["message"] != line
