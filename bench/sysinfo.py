"""The machine, the versions, and the load seen while the benchmark ran."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import threading
import time
from importlib import metadata

import psutil


def _cmd(*argv: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        return (out.stdout + out.stderr).strip()
    except OSError as exc:
        return f"unavailable ({exc})"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    os_name = "unknown"
    try:
        os_name = re.search(r'PRETTY_NAME="([^"]+)"', open("/etc/os-release").read()).group(1)
    except (OSError, AttributeError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "os": os_name,
    }


def versions() -> dict:
    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    temporal = _cmd(os.path.join(os.path.dirname(sys.executable), "temporal"), "--version")
    return {
        "python": platform.python_version(),
        "arbup": dist("arbup"),
        "temporalio": dist("temporalio"),
        "temporal_cli": temporal.splitlines()[0] if temporal else "unknown",
        "asyncssh": dist("asyncssh"),
        "ansible-core": dist("ansible-core"),
        "pyinfra": dist("pyinfra"),
        "paramiko": dist("paramiko"),
        "matplotlib": dist("matplotlib"),
        "psutil": dist("psutil"),
        "openssh": _cmd("ssh", "-V").splitlines()[0],
        "rpm": _cmd("rpm", "--version").splitlines()[0],
    }


def top_processes(limit: int = 8, interval: float = 1.0) -> list[dict]:
    """The busiest processes over ``interval`` seconds (who else loads the machine)."""
    procs = []
    for p in psutil.process_iter(["pid", "name", "username"]):
        try:
            p.cpu_percent(None)
            procs.append(p)
        except psutil.Error:
            pass
    time.sleep(interval)
    rows = []
    for p in procs:
        try:
            rows.append({"pid": p.pid, "name": p.info["name"], "cpu": p.cpu_percent(None)})
        except psutil.Error:
            pass
    rows.sort(key=lambda r: -r["cpu"])
    return [r for r in rows[:limit] if r["cpu"] > 0]


class LoadSampler:
    """Load average and machine CPU % every ``every`` seconds, in a thread."""

    def __init__(self, every: float = 2.0):
        self.every = every
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LoadSampler:
        psutil.cpu_percent(None)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append((time.time(), os.getloadavg()[0], psutil.cpu_percent(None)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, start: float, end: float) -> dict:
        rows = [s for s in self.samples if start <= s[0] <= end]
        if not rows:
            return {}
        loads = [r[1] for r in rows]
        cpus = [r[2] for r in rows]
        return {
            "load1_min": round(min(loads), 2),
            "load1_max": round(max(loads), 2),
            "cpu_pct_mean": round(sum(cpus) / len(cpus), 1),
            "cpu_pct_max": round(max(cpus), 1),
        }


class ProcSampler:
    """CPU seconds and peak RSS of some processes (with their children) while
    sampling runs."""

    def __init__(self, procs: dict[str, psutil.Process], every: float = 0.5):
        self.procs = procs
        self.every = every
        self.peak_rss: dict[str, int] = {k: 0 for k in procs}
        self.cpu_start = {k: self._cpu(p) for k, p in procs.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.time()

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    def _rss(self, p: psutil.Process) -> int:
        try:
            return p.memory_info().rss
        except psutil.Error:
            return 0

    def start(self) -> ProcSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            for k, p in self.procs.items():
                self.peak_rss[k] = max(self.peak_rss[k], self._rss(p))
            if self._stop.wait(self.every):
                return

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        wall = time.time() - self.started
        out = {}
        for k, p in self.procs.items():
            cpu = self._cpu(p) - self.cpu_start[k]
            out[k] = {
                "cpu_seconds": round(cpu, 2),
                "cpu_pct_of_one_core": round(100 * cpu / wall, 1) if wall else None,
                "peak_rss_mib": round(self.peak_rss[k] / 2**20, 1),
                "rss_end_mib": round(self._rss(p) / 2**20, 1),
            }
        out["wall_seconds"] = round(wall, 2)
        return out
