"""The benchmark's hosts: arbup's local hosts (real sshd in mount namespaces, real
rpm) on a loopback /24 of the harness's own, put back to the old version between
runs."""

from __future__ import annotations

import concurrent.futures
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from arbup.localhosts import (
    LocalHost,
    build_package,
    client_key_path,
    create_hosts,
    known_hosts_path,
    stop_hosts,
)

OLD = "4.2.1.8-108000022024072217"
TARGET = "4.3.4.0-200000022024070119"
OS_TAG = "el7"
CREDENTIAL = "bench"
SSH_PORT = 2222
SVR_PORT = 2882
INSTALL_PATH = "/home/admin/oceanbase"
STAGING_DIR = "/tmp/arbup-staging"

# Stand-in observer delays: (stop_delay, start_delay) in seconds.
DELAYS = {"realistic": (3.0, 5.0), "zero": (0.0, 0.0)}


@dataclass
class Pool:
    state_dir: Path
    hosts: list[LocalHost]
    packages: dict[str, Path]

    @property
    def key(self) -> Path:
        return client_key_path(self.state_dir, CREDENTIAL)

    @property
    def known_hosts(self) -> Path:
        return known_hosts_path(self.state_dir)

    @property
    def key_dir(self) -> Path:
        return self.key.parent


def packages(out_dir: Path) -> dict[str, Path]:
    return {v: build_package(out_dir, v, OS_TAG) for v in (OLD, TARGET)}


def _parallel(fn, items, workers: int = 8) -> list:
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def start_pool(state_dir: Path, count: int, first_ip: str, pkgs: dict[str, Path]) -> Pool:
    """``count`` fresh hosts from ``first_ip`` on, each running the old version."""
    started = time.monotonic()
    hosts = create_hosts(
        state_dir, count, first_ip=first_ip, ssh_port=SSH_PORT, os_tag=OS_TAG,
        credential=CREDENTIAL,
    )
    pool = Pool(Path(state_dir).resolve(), hosts, pkgs)
    _parallel(lambda h: h.install_and_start(pkgs[OLD], svr_port=SVR_PORT), hosts)
    print(f"  {count} hosts up from {first_ip} in {time.monotonic() - started:.0f}s",
          flush=True)
    return pool


def stop_pool(pool: Pool) -> None:
    stop_hosts(pool.state_dir)


def reset(pool: Pool, hosts: list[LocalHost], delays: str) -> None:
    """Old version installed and running, nothing staged, the delays set."""
    stop_delay, start_delay = DELAYS[delays]

    def one(host: LocalHost) -> None:
        for knob in ("stop_delay", "start_delay"):
            host.clear_knob(knob)
        host.install_and_start(pool.packages[OLD], svr_port=SVR_PORT)
        shutil.rmtree(host.root / "tmp" / STAGING_DIR.removeprefix("/tmp/"),
                      ignore_errors=True)
        if stop_delay:
            host.set_knob("stop_delay", f"{stop_delay:g}")
        if start_delay:
            host.set_knob("start_delay", f"{start_delay:g}")

    _parallel(one, hosts)


def verify(hosts: list[LocalHost]) -> list[str]:
    """Hosts not running the target, checked apart from any tool's own code."""
    def bad(host: LocalHost) -> str | None:
        installed = host.installed_version()
        running = host.running_version()
        if installed == TARGET and running == TARGET:
            return None
        return f"{host.ip}: installed {installed}, running {running}"

    return [b for b in _parallel(bad, hosts) if b]


def clear_delays(hosts: list[LocalHost]) -> None:
    for host in hosts:
        for knob in ("stop_delay", "start_delay"):
            host.clear_knob(knob)
