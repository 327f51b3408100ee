"""The product under test, run as it runs in production: a Temporal dev server
(started by the SDK on free ports), the product's own worker process
(``python -m worker.main``) and upgrades started through the product's starter
(bench/product_run.py, a separate process). Both product processes import the
product from ``product_dir`` (the working tree, or an exported git ref)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

BENCH_ROOT = Path(__file__).resolve().parent.parent

STEP_OF_SUBTASK = {
    "Prepare upgrade arbitration service": "prepare",
    "Stop arbitration service": "stop",
    "Install arbitration rpm": "install",
    "Start arbitration service": "start",
}


def product_dir_for(ref: str | None, scratch: Path) -> Path:
    """The product tree: the working tree, or ``git archive`` of ``ref``."""
    if not ref:
        return BENCH_ROOT
    out = scratch / f"product-{ref.replace('/', '_')}"
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(BENCH_ROOT), "archive", ref],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


async def start_temporal() -> WorkflowEnvironment:
    from temporalio.common import SearchAttributeKey

    keys = [
        SearchAttributeKey.for_int("ArbupGroupId"),
        SearchAttributeKey.for_int("ArbupTaskId"),
        SearchAttributeKey.for_keyword("ArbupTargetVersion"),
        SearchAttributeKey.for_keyword("ArbupTaskStatus"),
    ]
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        data_converter=pydantic_data_converter,
        search_attributes=keys,
        dev_server_log_level="error",
    )


def temporal_address(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


def temporal_server_process() -> psutil.Process | None:
    """The dev server the SDK started (a child of this process)."""
    for child in psutil.Process().children(recursive=True):
        try:
            if "temporal" in child.name() and "server" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


class Product:
    """One product worker process and the settings product runs share."""

    def __init__(self, product_dir: Path, address: str, work_dir: Path, *, db_url: str,
                 key_dir: Path, known_hosts: Path, credential: str):
        self.product_dir = product_dir
        self.address = address
        self.work_dir = work_dir
        self.db_url = db_url
        self.key_dir = key_dir
        self.known_hosts = known_hosts
        self.credential = credential
        self.task_queue = f"arbup-bench-{uuid.uuid4().hex[:8]}"
        self.worker: subprocess.Popen | None = None
        self.next_group = 1
        work_dir.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict:
        path = [str(self.product_dir)]
        if self.product_dir != BENCH_ROOT:
            path.append(str(BENCH_ROOT))
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(path),
            "TEMPORAL_ADDRESS": self.address,
            "TEMPORAL_NAMESPACE": "default",
            "ARBUP_DB_URL": self.db_url,
            "ARBUP_SSH_KEY_DIR": str(self.key_dir),
            "ARBUP_KNOWN_HOSTS": str(self.known_hosts),
            "ARBUP_STATE_DIR": str(self.work_dir),
        }

    def start_worker(self) -> psutil.Process:
        log = open(self.work_dir / f"worker-{self.task_queue}.log", "w")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "worker.main", "--task-queue", self.task_queue,
             "--graceful-seconds", "1"],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=self.product_dir,
        )
        deadline = time.monotonic() + 60
        path = Path(log.name)
        while "polling task queue" not in path.read_text():
            if self.worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"product worker did not start:\n{path.read_text()[-3000:]}")
            time.sleep(0.2)
        return psutil.Process(self.worker.pid)

    def stop_worker(self) -> None:
        if self.worker and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        self.worker = None

    def terminate_running(self) -> None:
        """Terminate this task queue's open workflows (after a run that timed out)."""
        subprocess.run(
            [str(Path(sys.executable).parent / "temporal"), "workflow", "terminate",
             "--address", self.address, "--namespace", "default", "--yes",
             "--reason", "benchmark run timed out",
             "--query", f'TaskQueue="{self.task_queue}" AND ExecutionStatus="Running"'],
            capture_output=True, timeout=60, check=False)

    def upgrade(self, groups: list[list[dict]], *, packages: list[str], settle: float,
                history: bool = True, timeout: float = 1800,
                deadline: float | None = None) -> dict:
        """Upgrade each group (a list of {ip, port}) at once; the product's record."""
        spec_groups = []
        for hosts in groups:
            spec_groups.append({"group_id": self.next_group, "hosts": hosts})
            self.next_group += 1
        spec = {
            "db_url": self.db_url,
            "temporal_address": self.address,
            "task_queue": self.task_queue,
            "groups": spec_groups,
            "packages": packages,
            "settle_seconds": settle,
            "credential": self.credential,
            "svr_port": 2882,
            "install_path": "/home/admin/oceanbase",
            "os_tag": "el7",
            "target": "4.3.4.0-200000022024070119",
            "history": history,
            "deadline_seconds": deadline,
        }
        tag = spec_groups[0]["group_id"]
        spec_path = self.work_dir / f"run-{tag}.json"
        out_path = self.work_dir / f"run-{tag}.out.json"
        spec_path.write_text(json.dumps(spec))
        proc = subprocess.run(
            [sys.executable, "-m", "bench.product_run", str(spec_path), str(out_path)],
            env=self.env(), capture_output=True, text=True, timeout=timeout,
            cwd=self.product_dir,
        )
        if proc.returncode != 0:
            if out_path.is_file() and out_path.stat().st_mtime >= spec_path.stat().st_mtime:
                out = json.loads(out_path.read_text())
                out["error"] = proc.stderr[-3000:]
                return out
            raise RuntimeError(f"product run failed ({proc.returncode}): "
                               f"{proc.stderr[-3000:]}")
        return json.loads(out_path.read_text())


def host_spans(group: dict) -> dict[str, dict[str, list[float]]]:
    """Per host, per step, [start, end] from the product's subtask records."""
    hosts: dict[str, dict[str, list[float]]] = {}
    for s in group["subtasks"]:
        step = STEP_OF_SUBTASK.get(s["name"])
        if step is None or s["service_id"] is None:
            continue
        ip = group["hosts"][str(s["service_id"])]
        hosts.setdefault(ip, {})[step] = [s["start"], s["end"]]
    return hosts


def logs_by_step(group: dict, service_index: int = 0) -> dict[str, list[str]]:
    service_id = sorted(int(k) for k in group["hosts"])[service_index]
    return {
        STEP_OF_SUBTASK[s["name"]]: s["log"]
        for s in group["subtasks"]
        if s["name"] in STEP_OF_SUBTASK and s["service_id"] == service_id
    }
