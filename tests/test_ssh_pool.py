"""The worker's pool of verified SSH connections, on real local hosts."""

from __future__ import annotations

import os
import signal

import pytest

from activities.ssh import ConnectionPool, SshSettings, open_session
from tests.conftest import CREDENTIAL, OLD, OS_TAG, SVR_PORT

pytestmark = pytest.mark.integration


def service_on(host):
    from arbup.models import ArbitrationService

    return ArbitrationService(
        id=1, group_id=1, host=host.ip, ssh_port=host.ssh_port, ssh_credential=CREDENTIAL,
        svr_ip=host.ip, svr_port=SVR_PORT, operating_system=OS_TAG,
        arch=os.uname().machine, version=OLD,
    )


@pytest.fixture
def ssh(state_dir) -> SshSettings:
    return SshSettings(
        known_hosts=state_dir / "ssh" / "known_hosts",
        key_dir=state_dir / "ssh" / "keys",
        connect_timeout=3,
    )


def sshd_sessions(host) -> list[int]:
    return host._sshd_sessions()


async def run_on(service, ssh, pool, command="echo $$") -> tuple[str, list[str]]:
    log: list[str] = []
    async with open_session(service, ssh, log, pool) as session:
        result = await session.run(command)
    return result.stdout.strip(), log


async def test_a_connection_serves_the_next_activity_on_its_host(hosts, ssh):
    pool = ConnectionPool()
    service = service_on(hosts[0])
    try:
        _, first = await run_on(service, ssh, pool)
        assert first[0].startswith("connected to")
        assert pool.idle_count == 1
        sessions = sshd_sessions(hosts[0])
        _, second = await run_on(service, ssh, pool)
        assert second[0].startswith(f"reusing the connection to {hosts[0].ip}:")
        assert (pool.opened, pool.reused) == (1, 1)
        # Still the one connection on the host's side.
        assert sshd_sessions(hosts[0]) == sessions
    finally:
        await pool.close()
    assert pool.idle_count == 0


async def test_a_failed_activity_does_not_give_its_connection_back(hosts, ssh):
    pool = ConnectionPool()
    service = service_on(hosts[0])
    try:
        with pytest.raises(Exception, match="failed with exit 3"):
            await run_on(service, ssh, pool, "exit 3")
        assert pool.idle_count == 0
        _, log = await run_on(service, ssh, pool)
        assert log[0].startswith("connected to")
    finally:
        await pool.close()


async def test_a_pooled_connection_the_host_dropped_is_replaced(hosts, ssh):
    pool = ConnectionPool()
    service = service_on(hosts[0])
    try:
        await run_on(service, ssh, pool)
        for pid in sshd_sessions(hosts[0]):
            os.kill(pid, signal.SIGKILL)
        # The pool may notice the close before the next take, or only when the
        # first channel is refused; either way the command runs on a new connection.
        out, log = await run_on(service, ssh, pool)
        assert out.isdigit()
        assert pool.opened == 2
        assert any("reconnecting" in line for line in log) or log[0].startswith("connected")
    finally:
        await pool.close()


async def test_a_changed_known_hosts_file_is_verified_again(hosts, ssh):
    pool = ConnectionPool()
    service = service_on(hosts[0])
    try:
        await run_on(service, ssh, pool)
        ssh.known_hosts.write_text(ssh.known_hosts.read_text())
        os.utime(ssh.known_hosts, ns=(1, 1))
        _, log = await run_on(service, ssh, pool)
        assert log[0].startswith("connected to")
        assert pool.opened == 2
    finally:
        await pool.close()


async def test_idle_connections_are_closed(hosts, ssh):
    pool = ConnectionPool(idle_seconds=0.2)
    service = service_on(hosts[0])
    try:
        await run_on(service, ssh, pool)
        assert pool.idle_count == 1
        import asyncio

        for _ in range(50):
            await asyncio.sleep(0.1)
            if pool.idle_count == 0:
                break
        assert pool.idle_count == 0
        _, log = await run_on(service, ssh, pool)
        assert log[0].startswith("connected to")
    finally:
        await pool.close()


async def test_an_unreadable_key_is_a_credential_error_not_retried(hosts, ssh, tmp_path):
    from dataclasses import replace

    from temporalio.exceptions import ApplicationError

    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / CREDENTIAL).write_text("not a private key\n")
    settings = replace(ssh, key_dir=keys)
    with pytest.raises(ApplicationError) as failed:
        await run_on(service_on(hosts[0]), settings, None)
    assert failed.value.type == "CredentialMissing"
    assert failed.value.non_retryable
    assert f"credential {CREDENTIAL!r}" in failed.value.message


async def test_a_missing_known_hosts_file_is_a_host_key_error(hosts, ssh, tmp_path):
    from dataclasses import replace

    from temporalio.exceptions import ApplicationError

    settings = replace(ssh, known_hosts=tmp_path / "absent")
    with pytest.raises(ApplicationError) as failed:
        await run_on(service_on(hosts[0]), settings, None)
    assert failed.value.type == "HostKeyNotVerified"
    assert failed.value.non_retryable
    assert "ARBUP_KNOWN_HOSTS" in failed.value.message
