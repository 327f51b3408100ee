"""How the worker talks to a host: verified, kept-alive SSH connections, reused by
the activities that follow on the same host, commands whose outcome is never
guessed, and a log of what ran.

Credentials never travel through workflow inputs: a service names its credential
(``ssh_credential``) and the worker finds the private key under its own key
directory. Host keys are checked against a known_hosts file; an unknown or changed
host key is an error, never accepted silently.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from temporalio.exceptions import ApplicationError

from arbup.errors import NON_RETRYABLE, ErrorKind
from arbup.models import ArbitrationService, check_name

LOG_LINE_LIMIT = 400
SFTP_REQUESTS_IN_FLIGHT = 32
ENCRYPTION_ALGS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
]


def step_error(kind: str, message: str, log: list[str]) -> ApplicationError:
    """An activity failure carrying the subtask's log as details."""
    return ApplicationError(
        message, list(log), type=kind, non_retryable=kind in NON_RETRYABLE
    )


@dataclass(frozen=True)
class SshSettings:
    known_hosts: Path
    key_dir: Path
    connect_timeout: float = 10.0
    keepalive_interval: float = 5.0
    keepalive_count_max: int = 3

    @classmethod
    def from_env(cls) -> SshSettings:
        state = Path(os.environ.get("ARBUP_STATE_DIR", ".arbup"))
        return cls(
            known_hosts=Path(
                os.environ.get("ARBUP_KNOWN_HOSTS", state / "ssh" / "known_hosts")
            ),
            key_dir=Path(os.environ.get("ARBUP_SSH_KEY_DIR", state / "ssh" / "keys")),
            connect_timeout=float(os.environ.get("ARBUP_SSH_CONNECT_TIMEOUT", "10")),
            keepalive_interval=float(os.environ.get("ARBUP_SSH_KEEPALIVE", "5")),
        )

    def key_for(self, credential: str) -> Path:
        path = self.key_dir / check_name(credential)
        if not path.is_file():
            raise FileNotFoundError(path)
        return path


@dataclass
class CommandResult:
    command: str
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= LOG_LINE_LIMIT else text[: LOG_LINE_LIMIT - 3] + "..."


class HostSession:
    """An open SSH connection to one service's host, with the activity's log."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        service: ArbitrationService,
        log: list[str],
        opened: float | None = None,
    ):
        self._conn = conn
        self.service = service
        self.log = log
        self.opened = time.monotonic() if opened is None else opened
        # Set for a connection taken from the pool, until its first channel opens:
        # how to connect afresh if the server closed it while it was idle.
        self.reconnect: Callable[[], Awaitable[asyncssh.SSHClientConnection]] | None = None

    async def _fresh_if_stale(self, exc: Exception) -> bool:
        """After a pooled connection refused to open its first channel (nothing ran
        on the host), replace it with a new one; False when that does not apply."""
        if self.reconnect is None or not isinstance(exc, asyncssh.ChannelOpenError):
            return False
        reconnect, self.reconnect = self.reconnect, None
        self.note(f"pooled connection to {self.label} was closed ({exc}); reconnecting")
        self._conn.close()
        self._conn = await reconnect()
        self.opened = time.monotonic()
        return True

    async def _run_once(self, command: str, timeout: float):
        try:
            return await self._conn.run(command, check=False, timeout=timeout)
        except asyncssh.ChannelOpenError as exc:
            if not await self._fresh_if_stale(exc):
                raise
            return await self._conn.run(command, check=False, timeout=timeout)
        finally:
            self.reconnect = None

    @property
    def label(self) -> str:
        return f"{self.service.host}:{self.service.ssh_port}"

    def note(self, message: str) -> None:
        self.log.append(_clip(message))

    async def run(
        self, command: str, *, timeout: float = 60, check: bool = True
    ) -> CommandResult:
        """Run ``command`` (built with shlex.quote from validated values only).

        A command that ends without an exit status (the connection dropped or the
        process was killed by a signal) is an error, never read as success.
        """
        started = time.monotonic()
        try:
            done = await self._run_once(command, timeout)
        except asyncssh.TimeoutError as exc:
            self.note(f"$ {command} -> timed out after {timeout:.0f}s")
            raise step_error(
                ErrorKind.COMMAND_FAILED,
                f"{self.label}: command timed out after {timeout:.0f}s: {command}",
                self.log,
            ) from exc
        except (asyncssh.Error, OSError) as exc:
            self.note(f"$ {command} -> connection lost: {exc}")
            raise step_error(
                ErrorKind.HOST_UNREACHABLE,
                f"{self.label}: connection lost while running {command!r}: {exc}",
                self.log,
            ) from exc

        elapsed = time.monotonic() - started
        stdout = str(done.stdout or "")
        stderr = str(done.stderr or "")
        if done.exit_status is None:
            signal = done.exit_signal[0] if done.exit_signal else "unknown"
            self.note(f"$ {command} -> no exit status (signal {signal})")
            raise step_error(
                ErrorKind.NO_EXIT_STATUS,
                f"{self.label}: {command!r} ended without an exit status "
                f"(signal {signal}); its outcome is unknown",
                self.log,
            )

        result = CommandResult(command, done.exit_status, stdout, stderr)
        summary = f"$ {command} -> exit {result.exit_status} in {elapsed:.2f}s"
        output = (stdout.strip() + " " + stderr.strip()).strip()
        self.note(f"{summary}: {output}" if output else summary)
        if check and not result.ok:
            raise step_error(
                ErrorKind.COMMAND_FAILED,
                f"{self.label}: {command!r} failed with exit {result.exit_status}: "
                f"{_clip(stderr or stdout)}",
                self.log,
            )
        return result

    async def upload(
        self,
        local_path: Path,
        remote_path: str,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        def on_progress(_src: bytes, _dst: bytes, copied: int, total: int) -> None:
            if progress:
                progress(copied, total)

        self.reconnect = None
        started = time.monotonic()
        try:
            async with self._conn.start_sftp_client() as sftp:
                # The block size is left to asyncssh, which follows the server's
                # advertised limits (OpenSSH closes the connection on writes larger
                # than its 256 KiB message limit). 32 requests in flight (8 MiB)
                # keep a host's link busy; 128 made 50 uploads at once buffer
                # 1.6 GiB in the worker and run at 0.75x scp instead of 1x.
                await sftp.put(
                    str(local_path),
                    remote_path,
                    max_requests=SFTP_REQUESTS_IN_FLIGHT,
                    progress_handler=on_progress,
                )
        except (asyncssh.Error, OSError) as exc:
            self.note(f"sftp put {local_path.name} -> {remote_path} failed: {exc}")
            raise step_error(
                ErrorKind.HOST_UNREACHABLE,
                f"{self.label}: upload of {local_path.name} failed: {exc}",
                self.log,
            ) from exc
        size = local_path.stat().st_size
        elapsed = time.monotonic() - started
        self.note(
            f"sftp put {local_path.name} -> {remote_path}: {size} bytes in {elapsed:.2f}s"
        )


async def _connect(
    service: ArbitrationService, settings: SshSettings, key: Path, log: list[str]
) -> asyncssh.SSHClientConnection:
    label = f"{service.host}:{service.ssh_port}"
    if not settings.known_hosts.is_file():
        log.append(f"connect {label}: no known_hosts file at {settings.known_hosts}")
        raise step_error(
            ErrorKind.HOST_KEY_NOT_VERIFIED,
            f"{label}: the worker's known_hosts file {settings.known_hosts} does not "
            "exist, so no host key can be verified (set ARBUP_KNOWN_HOSTS)",
            log,
        )
    try:
        return await asyncssh.connect(
            service.host,
            port=service.ssh_port,
            username=service.ssh_user,
            client_keys=[str(key)],
            known_hosts=str(settings.known_hosts),
            connect_timeout=settings.connect_timeout,
            login_timeout=settings.connect_timeout,
            keepalive_interval=settings.keepalive_interval,
            keepalive_count_max=settings.keepalive_count_max,
            agent_path=None,
            config=[],
            # AES-GCM runs on the CPU's AES instructions: about twice the upload
            # throughput of ChaCha20-Poly1305 in asyncssh. All are OpenSSH defaults.
            encryption_algs=ENCRYPTION_ALGS,
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        log.append(f"connect {label} as {service.ssh_user}: host key not verified")
        raise step_error(
            ErrorKind.HOST_KEY_NOT_VERIFIED,
            f"{label}: host key not verified against {settings.known_hosts}: {exc}",
            log,
        ) from exc
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
        log.append(f"connect {label}: the key of credential {service.ssh_credential!r} "
                   "cannot be read")
        raise step_error(
            ErrorKind.CREDENTIAL_MISSING,
            f"{label}: the worker's key for credential {service.ssh_credential!r} "
            f"({key}) cannot be read: {exc} (it must be an unencrypted private key)",
            log,
        ) from exc
    except asyncssh.PermissionDenied as exc:
        log.append(f"connect {label} as {service.ssh_user}: permission denied")
        raise step_error(
            ErrorKind.PERMISSION_DENIED,
            f"{label}: permission denied for user {service.ssh_user}",
            log,
        ) from exc
    except (asyncssh.Error, OSError, asyncio.TimeoutError) as exc:
        log.append(f"connect {label} as {service.ssh_user}: {exc or type(exc).__name__}")
        raise step_error(
            ErrorKind.HOST_UNREACHABLE,
            f"{label}: cannot connect over SSH: {exc or type(exc).__name__}",
            log,
        ) from exc


def _fingerprint(path: Path) -> tuple[str, int, int]:
    """What identifies a file's content for the pool: a rotated key or an edited
    known_hosts makes the connections opened with the old one unusable."""
    try:
        stat = path.stat()
    except OSError:
        return (str(path), -1, -1)
    return (str(path), stat.st_mtime_ns, stat.st_size)


@dataclass
class _Idle:
    conn: asyncssh.SSHClientConnection
    opened: float
    returned: float


class ConnectionPool:
    """Verified connections kept open between the activities of one worker.

    The steps of an upgrade reach the same host one after another (prepare, stop,
    install, start, seconds apart); connecting and authenticating anew each time
    costs more than most of the commands. A connection goes back to the pool only
    when the activity that used it ended without error; it is dropped when it has
    been idle ``idle_seconds``, is older than ``max_age_seconds``, has closed, or
    when the key or known_hosts file changed. Host keys are verified at connect time
    exactly as without the pool.
    """

    def __init__(self, idle_seconds: float = 60.0, max_age_seconds: float = 600.0):
        self.idle_seconds = idle_seconds
        self.max_age_seconds = max_age_seconds
        self._idle: dict[tuple, list[_Idle]] = {}
        self._reaper: asyncio.Task | None = None
        self.opened = 0
        self.reused = 0

    @staticmethod
    def key(service: ArbitrationService, settings: SshSettings, key: Path) -> tuple:
        return (
            service.host,
            service.ssh_port,
            service.ssh_user,
            _fingerprint(key),
            _fingerprint(settings.known_hosts),
        )

    def _usable(self, idle: _Idle, now: float) -> bool:
        return (
            not idle.conn.is_closed()
            and now - idle.returned < self.idle_seconds
            and now - idle.opened < self.max_age_seconds
        )

    def take(self, key: tuple) -> _Idle | None:
        """An idle, still usable connection for ``key``, if there is one."""
        now = time.monotonic()
        idle = self._idle.get(key, [])
        while idle:
            candidate = idle.pop()
            if self._usable(candidate, now):
                self.reused += 1
                return candidate
            candidate.conn.close()
        return None

    def give_back(self, key: tuple, conn: asyncssh.SSHClientConnection, opened: float) -> None:
        now = time.monotonic()
        entry = _Idle(conn, opened, now)
        if not self._usable(entry, now):
            conn.close()
            return
        self._idle.setdefault(key, []).append(entry)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap())

    async def _reap(self) -> None:
        while any(self._idle.values()):
            await asyncio.sleep(min(self.idle_seconds, 5.0))
            now = time.monotonic()
            for key, idle in list(self._idle.items()):
                keep = [i for i in idle if self._usable(i, now)]
                for gone in idle:
                    if gone not in keep:
                        gone.conn.close()
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]

    @property
    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    async def close(self) -> None:
        """Close every idle connection (at worker shutdown)."""
        if self._reaper is not None:
            self._reaper.cancel()
        idle = [i for v in self._idle.values() for i in v]
        self._idle.clear()
        for entry in idle:
            entry.conn.close()
        for entry in idle:
            await entry.conn.wait_closed()


@asynccontextmanager
async def open_session(
    service: ArbitrationService,
    settings: SshSettings,
    log: list[str],
    pool: ConnectionPool | None = None,
) -> AsyncIterator[HostSession]:
    """Connect to ``service``'s host, or take a verified connection to it from
    ``pool``; the connection serves every command of the activity. It goes back to
    the pool when the activity ends without error, and is closed otherwise."""
    label = f"{service.host}:{service.ssh_port}"
    try:
        key = settings.key_for(service.ssh_credential)
    except FileNotFoundError:
        log.append(f"no private key for credential {service.ssh_credential!r}")
        raise step_error(
            ErrorKind.CREDENTIAL_MISSING,
            f"{label}: the worker has no key for credential "
            f"{service.ssh_credential!r} in {settings.key_dir}",
            log,
        ) from None

    pool_key = ConnectionPool.key(service, settings, key) if pool else None
    idle = pool.take(pool_key) if pool else None
    if idle is not None:
        conn, opened = idle.conn, idle.opened
        log.append(
            f"reusing the connection to {label} as {service.ssh_user} "
            f"(verified {time.monotonic() - opened:.0f}s ago)"
        )
    else:
        conn, opened = await _connect(service, settings, key, log), time.monotonic()
        if pool:
            pool.opened += 1
        log.append(f"connected to {label} as {service.ssh_user}")

    session = HostSession(conn, service, log, opened=opened)
    if idle is not None:

        async def reconnect() -> asyncssh.SSHClientConnection:
            pool.opened += 1
            return await _connect(service, settings, key, log)

        session.reconnect = reconnect
    clean = False
    try:
        yield session
        clean = True
    finally:
        conn = session._conn
        if clean and pool is not None and not conn.is_closed():
            pool.give_back(pool_key, conn, session.opened)
        else:
            conn.close()
            await conn.wait_closed()


def q(value: object) -> str:
    """Shell-quote a value for a remote command."""
    return shlex.quote(str(value))
