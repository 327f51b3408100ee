"""Local arbitration hosts: two real sshd hosts in their own mount namespaces, with the
stand-in observer installed from real RPMs, checked over real SSH (asyncssh)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from arbup.localhosts import (
    DEFAULT_INSTALL_PATH,
    LocalHost,
    build_package,
    client_key_path,
    create_hosts,
    known_hosts_path,
    stop_hosts,
)
from arbup.localhosts.hosts import pids_in_namespace
from arbup.versions import os_tag_from_os_release, parse_observer_version
from tests.conftest import TEST_NET

asyncssh = pytest.importorskip("asyncssh")

pytestmark = pytest.mark.integration

OLD = "4.2.1.8-108000022024072217"
TARGET = "4.3.4.0-200000022024070119"
FIRST_IP = f"{TEST_NET}.201"  # the demo stack lives on 127.0.1.x
P = DEFAULT_INSTALL_PATH

_missing = [
    t
    for t in ("sshd", "rpm", "rpmbuild", "unshare", "nsenter", "runuser")
    if not shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin")
]
if os.geteuid() != 0 or _missing:
    pytest.skip(
        f"local hosts need root and {_missing or 'root'}", allow_module_level=True
    )


@dataclass
class Stack:
    state: Path
    hosts: list[LocalHost]
    old_rpm: Path
    target_rpm: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("localhosts")  # under /tmp: the hosts remount /tmp
    old_rpm = build_package(base / "packages", OLD, "el7")
    target_rpm = build_package(base / "packages", TARGET, "el7")
    state = base / "stack"
    try:
        hosts = create_hosts(state, 2, first_ip=FIRST_IP, os_tag="el7")
        for host in hosts:
            host.install_and_start(old_rpm)
        yield Stack(state, hosts, old_rpm, target_rpm)
    finally:
        stop_hosts(state)


def connect(stack: Stack, host: LocalHost, known_hosts=None):
    return asyncssh.connect(
        host.ip,
        port=host.ssh_port,
        username="root",
        known_hosts=str(known_hosts or known_hosts_path(stack.state)),
        client_keys=[str(client_key_path(stack.state))],
        agent_path=None,
        connect_timeout=10,
    )


async def run(conn, command: str, timeout: float = 20.0):
    return await asyncio.wait_for(conn.run(command, check=False), timeout)


def _port_open(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=1):
            return True
    except OSError:
        return False


def test_hosts_present_themselves_as_el7_with_old_version(stack):
    assert [h.ip for h in stack.hosts] == [f"{TEST_NET}.201", f"{TEST_NET}.202"]
    for host in stack.hosts:
        assert host.is_running()
        os_release = host.exec("cat /etc/os-release").stdout
        assert os_tag_from_os_release(os_release) == "el7"
        assert host.installed_version() == OLD
        assert host.running_version() == OLD
        assert host.exec("id -un admin && stat -c %U /home/admin").stdout.split() == [
            "admin",
            "admin",
        ]


async def test_host_keys_are_verified(stack):
    host1, host2 = stack.hosts
    for host in stack.hosts:
        async with connect(stack, host) as conn:
            result = await run(conn, "id -un; cat /etc/os-release")
            assert result.exit_status == 0
            assert result.stdout.splitlines()[0] == "root"
    # host2's real key listed for host1's address: host1's key must be rejected.
    lines = known_hosts_path(stack.state).read_text().splitlines()
    host2_key = next(line for line in lines if line.startswith(f"[{host2.ip}]"))
    wrong = stack.state / "wrong_known_hosts"
    wrong.write_text(host2_key.replace(f"[{host2.ip}]", f"[{host1.ip}]", 1) + "\n")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with connect(stack, host1, known_hosts=wrong):
            pass


async def test_upgrade_over_ssh_is_isolated_per_host(stack):
    host1, host2 = stack.hosts
    name = stack.target_rpm.name
    async with connect(stack, host1) as c1, connect(stack, host2) as c2:
        async with c1.start_sftp_client() as sftp:
            await sftp.put(str(stack.target_rpm), f"/tmp/{name}")
        upgrade = await run(c1, f"rpm -Uvh --prefix={P} /tmp/{name}")
        assert upgrade.exit_status == 0, upgrade.stderr
        assert "Alien" not in upgrade.stderr  # Debian's rpm complaint is hidden
        q1 = await run(c1, "rpm -q oceanbase")
        q2 = await run(c2, "rpm -q oceanbase")
        assert q1.stdout.strip() == f"oceanbase-{TARGET}.el7.x86_64".replace(
            "x86_64", os.uname().machine
        )
        assert q2.stdout.strip().startswith(f"oceanbase-{OLD}.el7.")
        # /tmp is per host too
        assert (await run(c2, f"test -e /tmp/{name}")).exit_status == 1
        v1 = await run(c1, f"cd {P} && bin/observer -V")
        v2 = await run(c2, f"cd {P} && bin/observer -V")
        assert v1.exit_status == 0 and v2.exit_status == 0
        assert parse_observer_version(v1.stderr) == TARGET
        assert parse_observer_version(v2.stderr) == OLD
    assert host1.installed_version() == TARGET
    assert host2.installed_version() == OLD
    # Installed but not restarted: the live daemon still runs the old build.
    assert host1.running_version() == OLD


async def test_restart_over_ssh_returns_promptly(stack):
    host1 = stack.hosts[0]
    pid = host1.observer_pid()
    assert pid is not None
    async with connect(stack, host1) as conn:
        again = await run(conn, f"cd {P} && runuser -u admin -- bin/observer")
        assert again.exit_status != 0 and "already running" in again.stderr
        stop = await run(
            conn,
            f"kill -TERM $(cat {P}/run/observer.pid) && "
            f"while kill -0 {pid} 2>/dev/null; do sleep 0.05; done; "
            f"test ! -e {P}/run/observer.pid",
        )
        assert stop.exit_status == 0, stop.stderr
        as_root = await run(conn, f"cd {P} && bin/observer")
        assert as_root.exit_status != 0 and "owner of etc/" in as_root.stderr
        started = time.monotonic()
        start = await run(
            conn, f"cd {P} && runuser -u admin -- bin/observer", timeout=10
        )
        assert start.exit_status == 0, start.stderr
        assert time.monotonic() - started < 5
    new_pid = host1.observer_pid()
    assert new_pid and new_pid != pid
    assert host1.exec(f"readlink /proc/{new_pid}/cwd").stdout.strip() == P
    assert "bin/observer" in Path(f"/proc/{new_pid}/cmdline").read_text()
    deadline = time.monotonic() + 10
    while host1.running_version() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert host1.running_version() == host1.installed_version()


async def test_fail_install_knob_makes_rpm_fail(stack):
    host2 = stack.hosts[1]
    name = stack.target_rpm.name
    host2.set_knob("fail_install")
    try:
        async with connect(stack, host2) as conn:
            async with conn.start_sftp_client() as sftp:
                await sftp.put(str(stack.target_rpm), f"/tmp/{name}")
            result = await run(conn, f"rpm -Uvh --prefix={P} /tmp/{name}")
        assert result.exit_status != 0
        assert "fail_install" in result.stdout + result.stderr
    finally:
        host2.clear_knob("fail_install")
    assert host2.installed_version() == OLD


def test_die_after_knob_makes_the_daemon_die(stack):
    host2 = stack.hosts[1]
    host2.set_knob("die_after", "1")
    try:
        host2.stop_observer()
        host2.start_observer(svr_port=None)  # plain restart with the saved parameters
        assert host2.running_version() == OLD
        deadline = time.monotonic() + 10
        while host2.observer_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert host2.observer_pid() is None
        assert host2.running_version() is None
        assert not _port_open(host2.ip, 2882)
        log = (host2.root / "home_admin/oceanbase/log/observer.log").read_text()
        assert "die_after" in log
    finally:
        host2.clear_knob("die_after")
    host2.start_observer(svr_port=None)  # the stale pid file does not block a start
    assert host2.running_version() == OLD


async def test_downgrade_needs_oldpackage(stack):
    host1 = stack.hosts[0]
    name = stack.old_rpm.name
    assert host1.installed_version() == TARGET
    async with connect(stack, host1) as conn:
        async with conn.start_sftp_client() as sftp:
            await sftp.put(str(stack.old_rpm), f"/tmp/{name}")
        plain = await run(conn, f"rpm -Uvh --prefix={P} /tmp/{name}")
        assert plain.exit_status != 0
        assert host1.installed_version() == TARGET
        down = await run(conn, f"rpm -Uvh --oldpackage --prefix={P} /tmp/{name}")
        assert down.exit_status == 0, down.stderr
    assert host1.installed_version() == OLD


def test_stale_namespace_record_hits_no_other_host(stack, tmp_path):
    # Namespace inode numbers are reused: a host killed behind our back leaves a
    # record that may name a newer host's namespace; stopping it must spare that one.
    gone = create_hosts(tmp_path / "gone", 1, first_ip=f"{TEST_NET}.211")[0]
    for pid in gone.processes():
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while gone.processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        other = create_hosts(tmp_path / "other", 1, first_ip=f"{TEST_NET}.212")[0]
        stop_hosts(tmp_path / "gone")
        assert other.is_running()
        assert all(h.is_running() for h in stack.hosts)
    finally:
        stop_hosts(tmp_path / "other")
        stop_hosts(tmp_path / "gone")


def test_stop_hosts_leaves_no_process(stack):
    namespaces = [h.namespace for h in stack.hosts]
    assert all(namespaces)
    observers = [h.observer_pid() for h in stack.hosts]
    assert all(observers)
    stop_hosts(stack.state)
    for host, ns, observer in zip(stack.hosts, namespaces, observers):
        assert pids_in_namespace(ns) == []
        assert not host.is_running()
        assert not os.path.exists(f"/proc/{observer}/cmdline") or (
            "bin/observer" not in Path(f"/proc/{observer}/cmdline").read_text()
        )
        assert not _port_open(host.ip, host.ssh_port)
        assert not _port_open(host.ip, 2882)
