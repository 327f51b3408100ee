"""Facts read from a host before anything is changed on it.

Each function runs one short, read-only command and interprets its output.
"""

from __future__ import annotations

from dataclasses import dataclass

from activities.ssh import HostSession, q, step_error
from arbup.errors import ErrorKind
from arbup.versions import (
    parse_observer_version,
    rpm_version_release_to_full,
    os_tag_from_os_release,
)

PACKAGE = "oceanbase"
PID_FILE = "run/observer.pid"
SAVED_PARAMETERS = "etc/observer.config.bin"


async def arch(s: HostSession) -> str:
    return (await s.run("uname -m")).stdout.strip()


async def os_tag(s: HostSession) -> str | None:
    result = await s.run("cat /etc/os-release", check=False)
    return os_tag_from_os_release(result.stdout) if result.ok else None


async def installed_version(s: HostSession) -> str | None:
    """The full version of the installed oceanbase package, or None."""
    result = await s.run(
        f"rpm -q --qf '%{{VERSION}}-%{{RELEASE}}\\n' {PACKAGE}", check=False
    )
    if not result.ok:
        if "not installed" in result.stdout + result.stderr:
            return None
        raise step_error(
            ErrorKind.COMMAND_FAILED,
            f"{s.label}: cannot read the installed package: {result.stderr.strip()}",
            s.log,
        )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return rpm_version_release_to_full(lines[-1])[0]


async def binary_version(s: HostSession) -> str | None:
    """What ``bin/observer -V`` reports under the install path, or None."""
    observer = f"{s.service.install_path}/bin/observer"
    result = await s.run(f"test -x {q(observer)} && {q(observer)} -V 2>&1", check=False)
    return parse_observer_version(result.stdout) if result.ok else None


async def observer_pid(s: HostSession) -> int | None:
    """The pid of the service's observer if its pid file names a live observer."""
    pid_file = f"{s.service.install_path}/{PID_FILE}"
    result = await s.run(
        f"pid=$(cat {q(pid_file)} 2>/dev/null) && [ -n \"$pid\" ] "
        "&& tr '\\0' ' ' < /proc/$pid/cmdline 2>/dev/null | grep -q observer "
        '&& echo "$pid"',
        check=False,
    )
    text = result.stdout.strip()
    return int(text) if result.ok and text.isdigit() else None


def port_probe(ip: str, port: int) -> str:
    """A shell test that succeeds when ``ip:port`` accepts a TCP connection."""
    return f"timeout 2 bash -c {q(f'exec 3<>/dev/tcp/{ip}/{port}')} 2>/dev/null"


async def port_open(s: HostSession) -> bool:
    svc = s.service
    return (await s.run(port_probe(svc.svr_ip, svc.svr_port), check=False)).ok


async def free_kib(s: HostSession, path: str) -> int:
    """Free space, in KiB, of the file system holding ``path`` (or its nearest
    existing parent)."""
    result = await s.run(
        f"p={q(path)}; while [ ! -e \"$p\" ]; do p=$(dirname \"$p\"); done; "
        'df -Pk "$p" | tail -n 1'
    )
    fields = result.stdout.split()
    return int(fields[3])


async def sha256(s: HostSession, path: str) -> str | None:
    result = await s.run(f"sha256sum {q(path)} 2>/dev/null", check=False)
    return result.stdout.split()[0] if result.ok and result.stdout else None


@dataclass
class ServiceState:
    installed: str | None
    running: str | None
    pid: int | None
    port_open: bool


async def service_state(s: HostSession) -> ServiceState:
    """Installed package, running version, pid and port, read together."""
    installed = await installed_version(s)
    pid = await observer_pid(s)
    listening = await port_open(s)
    running = None
    if pid and listening and await started_after_install(s, pid):
        running = await binary_version(s)
    return ServiceState(installed, running, pid, listening)


async def started_after_install(s: HostSession, pid: int) -> bool:
    """Whether process ``pid`` started after its binary was last installed.

    ``observer -V`` tells the version of the file on disk; a process started
    before an ``rpm -Uvh`` still runs the old code, so its version is unknown.
    """
    observer = f"{s.service.install_path}/bin/observer"
    result = await s.run(
        f"now=$(date +%s); age=$(ps -o etimes= -p {pid}) && "
        f"changed=$(stat -c %Z {q(observer)}) && "
        '[ $((now - age)) -ge "$changed" ]',
        check=False,
    )
    return result.ok
