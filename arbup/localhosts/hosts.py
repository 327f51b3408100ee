"""Local arbitration hosts: real ``sshd`` daemons on loopback addresses, one per host,
each in its own mount namespace, for the demo and the integration tests.

Layout of a stack under ``state_dir``::

    hosts.json                      what create_hosts made (load_hosts reads it)
    ssh/keys/<credential>           client private key (ed25519, mode 600) and .pub
    ssh/known_hosts                 "[ip]:port ssh-ed25519 ..." of every host
    cache/                          the base rpm the hosts' databases start with
    hosts/<name>/                   one host's root:
        ssh/                        sshd_config, host key, authorized_keys, sshd pid/log
        home_admin/                 /home/admin inside the host (owned by admin)
        home_admin/.standin/        the stand-in observer's knobs (see assets/observer)
        home_root/                  /root inside the host (root's own dotfiles stay out)
        rpmdb/                      rpm's database inside the host
        tmp/                        /tmp inside the host
        os-release                  /etc/os-release inside the host (e.g. CentOS 7)
        sys/                        namespace bookkeeping and the rpm wrapper

How a host is made: a holder process (``sleep infinity``) is started with
``unshare --mount --propagation private``; before it execs, it bind-mounts the host
root onto ``/run/arbup-localhost`` (so the host's own files stay reachable even when the
state dir lies under /tmp), then ``home_admin`` over ``/home/admin``, ``home_root`` over
``/root`` (so the machine's root dotfiles, e.g. a pyenv set-up in .bashrc, neither slow
down nor change SSH sessions), ``rpmdb`` over rpm's ``%_dbpath`` (``/root/.rpmdb`` on
Debian, ``/var/lib/rpm`` on RHEL), ``tmp`` over ``/tmp`` and ``os-release`` over
``/etc/os-release``. ``sshd`` is then started inside that namespace with ``nsenter``,
so every SSH session, and every process it starts (observer daemons included), sees
the host's view. The namespace is recorded as the ``mnt:[inode]`` link of the holder;
``stop`` SIGKILLs every process whose ``/proc/PID/ns/mnt`` is that link, until none is
left. Since the kernel reuses those inode numbers once a namespace is gone, a record
is only trusted if ``/proc/PID/root/run/arbup-localhost`` is this host's root.
Network is shared: each host has its own loopback address, so every host's stand-in
observer can listen on ``<ip>:2882``.

How Debian's rpm is made to behave like a real el7 host's, inside the namespace only,
so that the plain ``rpm -Uvh --prefix=<installPath> <file>`` works unchanged:

* Dependencies. Every package with a scriptlet requires ``/bin/sh`` (rpmbuild adds it
  even with ``AutoReqProv: no``), and rpm checks it against its database, which on a
  Debian machine is empty (the files come from dpkg). On el7 the ``bash`` package
  provides it. Each host's database is therefore seeded, when the host is created,
  with ``arbup-localhost-base`` (packages.build_base_package): a package without files
  that provides ``/bin/sh`` and ``/bin/bash``, standing in for the OS packages.
* Debian's rpm prints "RPM should not be used directly install RPM packages, use
  Alien instead!" on every install unless given ``--force-debian``; a real el7 rpm
  prints nothing of the sort. Inside the namespace ``/usr/bin/rpm`` is bind-mounted over
  by a two-line wrapper (``sys/rpm``) that runs Debian's binary (bind-mounted at
  ``/run/arbup-localhost/sys/debian/rpm``) with ``--force-debian`` added. This is done
  only when the machine's rpm knows that option; elsewhere rpm is left alone.

The machine needs: root, util-linux (unshare, nsenter, setsid, runuser), openssh-server,
rpm, and a system user ``admin`` (created here if missing). Nothing is aimed at any
address outside 127.0.0.0/8.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from arbup.localhosts.packages import build_base_package
from arbup.versions import (
    check_os_tag,
    os_tag_from_os_release,
    parse_observer_version,
    parse_package_file_name,
    rpm_version_release_to_full,
)

NS_ROOT = "/run/arbup-localhost"
RUN_USER = "admin"
ADMIN_HOME = "/home/admin"
ROOT_HOME = "/root"
DEFAULT_INSTALL_PATH = "/home/admin/oceanbase"
DEFAULT_SVR_PORT = 2882
KNOB_DIR_IN_HOST = "/home/admin/.standin"
KNOBS = frozenset(
    {
        "start_delay",
        "stop_delay",
        "die_after",
        "ignore_sigterm",
        "fail_install",
        "install_delay",
        "respawn",
        "bind_ip",
    }
)
HOSTS_FILE = "hosts.json"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What a root login over SSH gets, give or take: commands run by exec() see the same.
HOST_ENV = {
    "PATH": SYSTEM_PATH,
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "SHELL": "/bin/sh",
    "LANG": "C.UTF-8",
}
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


class LocalHostError(RuntimeError):
    """A local host could not be set up, started, stopped or used."""


class HostCommandError(subprocess.CalledProcessError):
    """A command run with LocalHost.exec failed; the message includes its output."""

    def __init__(self, host: str, returncode, cmd, output=None, stderr=None):
        super().__init__(returncode, cmd, output, stderr)
        self.host = host

    def __str__(self) -> str:
        text = f"on {self.host}: command {self.cmd!r} exited with {self.returncode}"
        if self.stdout and self.stdout.strip():
            text += f"\nstdout: {self.stdout.strip()[-2000:]}"
        if self.stderr and self.stderr.strip():
            text += f"\nstderr: {self.stderr.strip()[-2000:]}"
        return text


# --------------------------------------------------------------------- the machine


@lru_cache(maxsize=1)
def rpm_dbpath() -> str:
    """rpm's database path for root on this machine (``/root/.rpmdb`` on Debian)."""
    result = subprocess.run(
        ["rpm", "--eval", "%{_dbpath}"],
        capture_output=True,
        text=True,
        env=HOST_ENV,
        check=False,
    )
    path = result.stdout.strip()
    if result.returncode != 0 or not path.startswith("/") or "%" in path:
        raise LocalHostError(
            f"cannot find rpm's database path: {result.stderr.strip()}"
        )
    return path


@lru_cache(maxsize=1)
def _rpm_binary() -> str:
    found = shutil.which("rpm", path=SYSTEM_PATH)
    if not found:
        raise LocalHostError("rpm is not installed (apt-get install rpm)")
    return os.path.realpath(found)


@lru_cache(maxsize=1)
def _rpm_needs_force_debian() -> bool:
    """True for Debian's rpm, which complains on installs without --force-debian."""
    result = subprocess.run(
        [_rpm_binary(), "--force-debian", "--eval", "1"],
        capture_output=True,
        text=True,
        env=HOST_ENV,
        check=False,
    )
    return result.returncode == 0


@lru_cache(maxsize=1)
def _sshd_binary() -> str:
    found = shutil.which("sshd", path=SYSTEM_PATH)
    if not found:
        raise LocalHostError("sshd is not installed (apt-get install openssh-server)")
    return found


@lru_cache(maxsize=1)
def _sshd_version() -> tuple[int, int]:
    result = subprocess.run(
        [_sshd_binary(), "-V"], capture_output=True, text=True, check=False
    )
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", result.stdout + result.stderr)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def ensure_machine() -> None:
    """Idempotent machine-wide preparation: the admin user and the mountpoints."""
    if os.geteuid() != 0:
        raise LocalHostError("local hosts need root (mount namespaces, sshd, rpm)")
    for tool in ("unshare", "nsenter", "setsid", "runuser", "ssh-keygen"):
        if not shutil.which(tool, path=SYSTEM_PATH):
            raise LocalHostError(f"{tool} is not installed")
    _ensure_admin_user()
    Path(ADMIN_HOME).mkdir(parents=True, exist_ok=True)
    Path(rpm_dbpath()).mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    Path(NS_ROOT).mkdir(mode=0o755, parents=True, exist_ok=True)
    _check_root_login_possible()


def _ensure_admin_user() -> None:
    if _user_exists(RUN_USER):
        return
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--home-dir",
            ADMIN_HOME,
            "--no-create-home",
            "--shell",
            "/bin/bash",
            RUN_USER,
        ],
        capture_output=True,
        text=True,
        env=HOST_ENV,
        check=False,
    )
    if result.returncode != 0 and not _user_exists(RUN_USER):
        raise LocalHostError(f"cannot create user {RUN_USER}: {result.stderr.strip()}")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _admin_ids() -> tuple[int, int]:
    entry = pwd.getpwnam(RUN_USER)
    return entry.pw_uid, entry.pw_gid


def _check_root_login_possible() -> None:
    """Without PAM, sshd refuses every login, even by key, to an account locked by !."""
    try:
        for line in Path("/etc/shadow").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == "root" and len(fields) > 1 and fields[1].startswith("!"):
                raise LocalHostError(
                    "root's password is locked ('!' in /etc/shadow), so sshd "
                    "(UsePAM no) refuses root logins even with a key; unlock it "
                    "without setting a password with: usermod -p '*' root"
                )
    except OSError:
        pass


# ----------------------------------------------------------------------- processes


def _ns_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _alive(pid: int) -> bool:
    """A live process (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def pids_in_namespace(ns: str) -> list[int]:
    """Live processes whose mount namespace link (``mnt:[inode]``) is ``ns``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _ns_of(int(entry)) == ns and _alive(int(entry)):
            pids.append(int(entry))
    return pids


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _port_open(ip: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _check_loopback(ip: str) -> str:
    address = ipaddress.ip_address(ip)
    if address.version != 4 or address not in _LOOPBACK:
        raise ValueError(f"local hosts only live on 127.0.0.0/8, not on {ip}")
    return str(address)


# ------------------------------------------------------------------------ os-release


def os_release_text(os_tag: str) -> str:
    """An /etc/os-release that ``os_tag_from_os_release`` maps back to ``os_tag``."""
    check_os_tag(os_tag)
    match = re.fullmatch(r"([a-z]+?)(\d+)", os_tag)
    if not match:
        raise ValueError(f"cannot present OS tag {os_tag!r} (expected e.g. el7, el8)")
    family, major = match.groups()
    if family == "el":
        name = "CentOS Linux" if int(major) <= 8 else "CentOS Stream"
        fields = {
            "NAME": name,
            "VERSION": f"{major} (Core)" if major == "7" else major,
            "ID": "centos",
            "ID_LIKE": "rhel fedora",
            "VERSION_ID": major,
            "PRETTY_NAME": f"{name} {major}",
            "ANSI_COLOR": "0;31",
            "CPE_NAME": f"cpe:/o:centos:centos:{major}",
        }
    elif family == "alios":
        fields = {
            "NAME": "Alibaba Group Enterprise Linux Server",
            "VERSION": major,
            "ID": "alios",
            "ID_LIKE": "rhel fedora centos",
            "VERSION_ID": major,
            "PRETTY_NAME": f"Alibaba Group Enterprise Linux Server {major}",
        }
    else:
        fields = {
            "NAME": family.capitalize(),
            "VERSION": major,
            "ID": family,
            "VERSION_ID": major,
            "PRETTY_NAME": f"{family.capitalize()} {major}",
        }
    text = "".join(f'{key}="{value}"\n' for key, value in fields.items())
    if os_tag_from_os_release(text) != os_tag:
        raise ValueError(f"cannot present OS tag {os_tag!r} through /etc/os-release")
    return text


# ----------------------------------------------------------------------- LocalHost


@dataclass
class LocalHost:
    """One local arbitration host; paths given to its methods are the host's view."""

    name: str
    ip: str
    ssh_port: int
    root: Path
    os_tag: str

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    # ---- paths and bookkeeping

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def sys_dir(self) -> Path:
        return self.root / "sys"

    @property
    def knob_dir(self) -> Path:
        """The stand-in's knob directory, from outside (/home/admin/.standin inside)."""
        return self.root / "home_admin" / ".standin"

    def outside_path(self, path: str) -> Path | None:
        """Where a path of the host lives on the machine, for /home/admin and /tmp."""
        for inside, outside in (
            (ADMIN_HOME, self.root / "home_admin"),
            ("/tmp", self.root / "tmp"),
        ):
            if path == inside or path.startswith(inside + "/"):
                return outside / path[len(inside) :].lstrip("/")
        return None

    @property
    def namespace(self) -> str | None:
        """The host's mount namespace (``mnt:[inode]``) while it exists, else None."""
        return self._ns_id() if self._holder() is not None else None

    def _ns_id(self) -> str | None:
        try:
            return (self.sys_dir / "ns.id").read_text().strip() or None
        except OSError:
            return None

    def _holder(self) -> int | None:
        """The pid of the process holding the namespace, if it is alive."""
        pid = _read_int(self.sys_dir / "ns.pid")
        return pid if pid and self._in_host(pid) else None

    def _in_host(self, pid: int) -> bool:
        """``pid`` is a live process in this host's namespace."""
        ns = self._ns_id()
        return bool(ns) and _alive(pid) and _ns_of(pid) == ns and self._is_mine([pid])

    def _is_mine(self, pids: list[int]) -> bool:
        """Whether the namespace of these processes (all in one) is this host's.

        Namespace inode numbers are reused once a namespace is gone, so a recorded
        ``mnt:[inode]`` alone could name another host's namespace after this one died
        without ``stop``. This host's namespace has its root mounted at NS_ROOT.
        """
        try:
            want = os.stat(self.root)
        except OSError:
            return False
        for pid in pids:
            try:
                got = os.stat(f"/proc/{pid}/root{NS_ROOT}")
            except OSError:
                continue  # gone meanwhile: ask the next one
            return (got.st_dev, got.st_ino) == (want.st_dev, want.st_ino)
        return False

    def _sshd_pid(self) -> int | None:
        pid = _read_int(self.ssh_dir / "sshd.pid")
        return pid if pid and _comm(pid) == "sshd" and self._in_host(pid) else None

    def processes(self) -> list[int]:
        """Every live process in the host's namespace (holder and sshd included)."""
        ns = self._ns_id()
        pids = pids_in_namespace(ns) if ns else []
        return pids if pids and self._is_mine(pids) else []

    # ---- lifecycle

    def is_running(self) -> bool:
        """sshd is up in the host's namespace."""
        return self._sshd_pid() is not None

    def start(self) -> None:
        """Start sshd in the host's mount namespace (made if needed). Idempotent."""
        if self.is_running():
            return
        ensure_machine()
        holder = self._holder()
        if holder is None:
            self._kill_namespace()
            holder = self._start_namespace()
        self._start_sshd(holder)

    def stop_sshd(self) -> None:
        """Stop sshd and drop its open sessions: the host becomes unreachable, as
        when its network goes away, while its services keep running."""
        pid = self._sshd_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        if not _wait(lambda: not _alive(pid), 10):
            raise LocalHostError(f"{self.name}: sshd {pid} did not stop")
        (self.ssh_dir / "sshd.pid").unlink(missing_ok=True)
        for session in self._sshd_sessions():
            try:
                os.kill(session, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _sshd_sessions(self) -> list[int]:
        """The processes serving open SSH connections (not the listener)."""
        sessions = []
        for pid in self.processes():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"[listener]" in cmdline or pid == self._sshd_pid():
                continue
            if cmdline.startswith(b"sshd: ") or cmdline.startswith(b"sshd-session"):
                sessions.append(pid)
        return sessions

    def start_sshd(self) -> None:
        """Start sshd again in the host's existing namespace."""
        holder = self._holder()
        if holder is None:
            raise LocalHostError(f"{self.name}: its namespace is gone; use start()")
        if self._sshd_pid() is None:
            self._start_sshd(holder)

    def stop(self) -> None:
        """Stop sshd and every process in the host's namespace; wait until all gone."""
        self._kill_namespace()
        for stale in (
            self.sys_dir / "ns.pid",
            self.sys_dir / "ns.id",
            self.ssh_dir / "sshd.pid",
        ):
            stale.unlink(missing_ok=True)

    def _kill_namespace(self, timeout: float = 15.0) -> None:
        ns = self._ns_id()
        if not ns:
            return
        if ns in (_ns_of(os.getpid()), _ns_of(1)):
            raise LocalHostError(
                f"{self.name}: recorded namespace {ns} is the machine's own; "
                "refusing to kill its processes"
            )
        deadline = time.monotonic() + timeout
        while True:
            pids = pids_in_namespace(ns)
            if not pids or not self._is_mine(pids):
                return  # gone, or a stale record now naming another namespace
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() >= deadline:
                raise LocalHostError(
                    f"{self.name}: processes {pids} in namespace {ns} survive SIGKILL"
                )
            time.sleep(0.05)

    def _mount_script(self) -> str:
        q = shlex.quote
        r = NS_ROOT
        lines = [
            "set -e",
            f"mount --bind {q(str(self.root))} {r}",
            f"mount --bind {r}/home_admin {ADMIN_HOME}",
            f"mount --bind {r}/home_root {ROOT_HOME}",
            f"mount --bind {r}/rpmdb {q(rpm_dbpath())}",
            f"mount --bind {r}/tmp /tmp",
            f"mount --bind {r}/os-release /etc/os-release",
        ]
        if _rpm_needs_force_debian():
            lines += [
                f"mount --bind {q(_rpm_binary())} {r}/sys/debian/rpm",
                f"mount --bind {r}/sys/rpm {q(_rpm_binary())}",
            ]
        lines += [
            f"echo $$ > {r}/sys/ns.pid.tmp",
            f"mv {r}/sys/ns.pid.tmp {r}/sys/ns.pid",
            "exec sleep infinity",
        ]
        return "\n".join(lines)

    def _start_namespace(self) -> int:
        for stale in ("ns.pid", "ns.pid.tmp", "ns.id"):
            (self.sys_dir / stale).unlink(missing_ok=True)
        if _rpm_needs_force_debian():
            (self.sys_dir / "debian").mkdir(exist_ok=True)
            (self.sys_dir / "debian" / "rpm").touch()
            wrapper = self.sys_dir / "rpm"
            wrapper.write_text(
                "#!/bin/sh\n"
                "# Debian's rpm without its 'use Alien instead' complaint "
                "(see arbup/localhosts/hosts.py)\n"
                f'exec {NS_ROOT}/sys/debian/rpm --force-debian "$@"\n'
            )
            wrapper.chmod(0o755)
        log_path = self.sys_dir / "namespace.log"
        with open(log_path, "w") as log:
            subprocess.run(
                [
                    "setsid",
                    "-f",
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    self._mount_script(),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=HOST_ENV,
                cwd="/",
                check=True,
            )
        pid_file = self.sys_dir / "ns.pid"
        if not _wait(lambda: _read_int(pid_file) is not None, 10.0):
            raise LocalHostError(
                f"{self.name}: the namespace did not come up: "
                f"{log_path.read_text()[-2000:]}"
            )
        pid = _read_int(pid_file)
        ns = _ns_of(pid) if pid else None
        if not ns or ns == _ns_of(os.getpid()):
            raise LocalHostError(f"{self.name}: namespace holder {pid} is not isolated")
        (self.sys_dir / "ns.id").write_text(ns + "\n")
        return pid

    def _start_sshd(self, holder: int) -> None:
        pid_file = self.ssh_dir / "sshd.pid"
        pid_file.unlink(missing_ok=True)
        result = subprocess.run(
            [
                "nsenter",
                f"--mount=/proc/{holder}/ns/mnt",
                "--wd=/",
                _sshd_binary(),
                "-f",
                f"{NS_ROOT}/ssh/sshd_config",
                "-E",
                f"{NS_ROOT}/ssh/sshd.log",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=HOST_ENV,
            cwd="/",
            check=False,
        )
        if result.returncode != 0:
            raise LocalHostError(
                f"{self.name}: sshd failed to start ({result.returncode}): "
                f"{result.stderr.strip()}\n{self._sshd_log_tail()}"
            )
        if not _wait(
            lambda: self.is_running() and _port_open(self.ip, self.ssh_port), 10.0
        ):
            raise LocalHostError(
                f"{self.name}: sshd is not accepting on {self.ip}:{self.ssh_port}\n"
                f"{self._sshd_log_tail()}"
            )

    def _sshd_log_tail(self) -> str:
        try:
            return (self.ssh_dir / "sshd.log").read_text()[-2000:]
        except OSError:
            return ""

    # ---- inside the host

    def exec(
        self, command: str, check: bool = True, timeout: float | None = 120.0
    ) -> subprocess.CompletedProcess:
        """Run ``sh -c command`` as root inside the host's namespace (not over SSH).

        The environment is that of a root login. Output is captured as text. With
        ``check``, a non-zero exit raises HostCommandError (which shows the output).
        """
        holder = self._holder()
        if holder is None:
            raise LocalHostError(f"{self.name} is not running (its namespace is gone)")
        result = subprocess.run(
            [
                "nsenter",
                f"--mount=/proc/{holder}/ns/mnt",
                "--wd=/",
                "sh",
                "-c",
                command,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=HOST_ENV,
            cwd="/",
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise HostCommandError(
                self.name, result.returncode, command, result.stdout, result.stderr
            )
        return result

    def set_knob(self, name: str, value: str = "") -> None:
        """Create the stand-in knob ``name`` (see assets/observer) with ``value``."""
        path = self._knob_path(name)
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(f"{value}\n" if value != "" else "")
        tmp.chmod(0o644)
        os.replace(tmp, path)

    def clear_knob(self, name: str) -> None:
        self._knob_path(name).unlink(missing_ok=True)

    def _knob_path(self, name: str) -> Path:
        if name not in KNOBS:
            raise ValueError(
                f"unknown knob {name!r}; knobs are {', '.join(sorted(KNOBS))}"
            )
        return self.knob_dir / name

    def installed_version(self) -> str | None:
        """Full version of the installed ``oceanbase`` package, None if none is."""
        result = self.exec(
            "rpm -q --qf '%{VERSION}-%{RELEASE}\\n' oceanbase", check=False
        )
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        if result.returncode != 0 or not lines:
            return None
        return rpm_version_release_to_full(lines[-1])[0]

    # ---- the stand-in observer

    def _read_host_file(self, path: str) -> str | None:
        outside = self.outside_path(path)
        if outside is not None:
            try:
                return outside.read_text(errors="replace")
            except OSError:
                return None
        result = self.exec(f"cat {shlex.quote(path)}", check=False)
        return result.stdout if result.returncode == 0 else None

    def observer_pid(self, install_path: str = DEFAULT_INSTALL_PATH) -> int | None:
        """The pid in ``run/observer.pid`` if that process is alive in this host."""
        text = self._read_host_file(f"{install_path}/run/observer.pid")
        try:
            pid = int((text or "").strip())
        except ValueError:
            return None
        return pid if self._in_host(pid) else None

    def _svr_port(self, install_path: str) -> int | None:
        text = self._read_host_file(f"{install_path}/etc/observer.config.bin")
        try:
            return int(json.loads(text or "")["rpc_port"])
        except (ValueError, KeyError, TypeError):
            return None

    def _service_ip(self) -> str:
        try:
            bind_ip = self._knob_path("bind_ip").read_text().strip()
        except OSError:
            bind_ip = ""
        return self.ip if bind_ip in ("", "0.0.0.0") else bind_ip

    def is_healthy(self, install_path: str = DEFAULT_INSTALL_PATH) -> bool:
        """The observer's pid is alive and its svrPort accepts connections."""
        if self.observer_pid(install_path) is None:
            return False
        port = self._svr_port(install_path)
        return port is not None and _port_open(self._service_ip(), port)

    def running_version(self, install_path: str = DEFAULT_INSTALL_PATH) -> str | None:
        """Full version of the running observer, None unless it is healthy.

        It is the version the live daemon was started from, which it logs when it
        starts; after ``rpm -Uvh`` without a restart that is still the old one, while
        ``bin/observer -V`` already shows the new one. If no such log line is found,
        ``bin/observer -V`` is used.
        """
        pid = self.observer_pid(install_path)
        if pid is None or not self.is_healthy(install_path):
            return None
        log = self._read_host_file(f"{install_path}/log/observer.log") or ""
        found = re.findall(rf"observer started: version=(\S+) pid={pid}\b", log)
        if found:
            return found[-1]
        return self.observer_version(install_path)

    def observer_version(self, install_path: str = DEFAULT_INSTALL_PATH) -> str | None:
        """What the installed ``bin/observer -V`` reports."""
        result = self.exec(
            f"cd {shlex.quote(install_path)} && bin/observer -V", check=False
        )
        return parse_observer_version(result.stdout + result.stderr)

    def start_observer(
        self,
        svr_port: int | None = DEFAULT_SVR_PORT,
        install_path: str = DEFAULT_INSTALL_PATH,
        timeout: float = 30.0,
    ) -> None:
        """Start the observer as the run user and wait until it is healthy.

        With ``svr_port``, a first start (``-m arbitration -P <port> -d <path>/store``);
        with None, a plain ``bin/observer`` using the saved parameters.
        """
        q = shlex.quote
        command = f"cd {q(install_path)} && runuser -u {RUN_USER} -- bin/observer"
        if svr_port is not None:
            command += (
                f" -m arbitration -P {int(svr_port)} -d {q(install_path + '/store')}"
            )
        self.exec(command, timeout=timeout)
        if not _wait(lambda: self.is_healthy(install_path), timeout, 0.1):
            raise LocalHostError(
                f"{self.name}: observer in {install_path} did not become healthy in "
                f"{timeout:g}s"
            )

    def stop_observer(
        self, install_path: str = DEFAULT_INSTALL_PATH, timeout: float = 15.0
    ) -> None:
        """SIGTERM the observer, SIGKILL it if still there after ``timeout``; wait."""
        pid = self.observer_pid(install_path)
        if pid is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            if _wait(lambda: not _alive(pid), wait):
                return
        raise LocalHostError(f"{self.name}: observer pid {pid} does not go away")

    def install_and_start(
        self,
        rpm_path: Path,
        svr_port: int = DEFAULT_SVR_PORT,
        install_path: str = DEFAULT_INSTALL_PATH,
    ) -> None:
        """Set-up helper: install ``rpm_path`` (``rpm -Uvh --prefix``) unless that
        version is already installed, then (re)start the observer as the run user
        unless it already runs that version, and wait until it is healthy.

        Raises HostCommandError if rpm fails (e.g. with the ``fail_install`` knob).
        """
        rpm_path = Path(rpm_path)
        _, full_version, _, _ = parse_package_file_name(rpm_path.name)
        installed = self.installed_version()
        if installed != full_version:
            copy = self.root / "tmp" / rpm_path.name
            shutil.copyfile(rpm_path, copy)
            copy.chmod(0o644)
            try:
                flags = "-Uvh --oldpackage" if installed else "-Uvh"
                self.exec(
                    f"rpm {flags} --prefix={shlex.quote(install_path)} "
                    f"{shlex.quote('/tmp/' + rpm_path.name)}"
                )
            finally:
                copy.unlink(missing_ok=True)
        if self.running_version(install_path) == full_version:
            return
        self.stop_observer(install_path)
        self.start_observer(svr_port, install_path)


# ---------------------------------------------------------------------------- stacks


def client_key_path(state_dir: Path, credential: str = "local") -> Path:
    return Path(state_dir) / "ssh" / "keys" / credential


def known_hosts_path(state_dir: Path) -> Path:
    return Path(state_dir) / "ssh" / "known_hosts"


def _ssh_keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        env=HOST_ENV,
    )


def _ensure_client_key(state_dir: Path, credential: str) -> Path:
    key = client_key_path(state_dir, credential)
    key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pub = key.with_name(key.name + ".pub")
    if not (key.is_file() and pub.is_file()):
        key.unlink(missing_ok=True)
        pub.unlink(missing_ok=True)
        _ssh_keygen(key, f"arbup-{credential}")
    key.chmod(0o600)
    return key


def _sshd_config(host: LocalHost) -> str:
    r = f"{NS_ROOT}/ssh"
    lines = [
        f"# sshd of arbup local host {host.name}; paths are as seen inside its",
        f"# namespace, where {NS_ROOT} is {host.root}",
        f"ListenAddress {host.ip}:{host.ssh_port}",
        f"HostKey {r}/ssh_host_ed25519_key",
        f"AuthorizedKeysFile {r}/authorized_keys",
        f"PidFile {r}/sshd.pid",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "X11Forwarding no",
        "MaxStartups 200",
        "MaxSessions 200",
        "LoginGraceTime 30",
        "LogLevel INFO",
        "AcceptEnv LANG LC_*",
        "Subsystem sftp internal-sftp",
    ]
    if _sshd_version() >= (9, 8):
        lines.append("PerSourcePenalties no")
    return "\n".join(lines) + "\n"


def _prepare_host(host: LocalHost, client_pub: str) -> None:
    uid, gid = _admin_ids()
    root = host.root
    for sub in ("ssh", "sys", "rpmdb", "tmp", "home_admin", "home_root"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "home_root").chmod(0o700)
    dbpath = rpm_dbpath()
    if dbpath.startswith(ROOT_HOME + "/"):
        # the mountpoint of the rpm database inside the host's own /root
        (root / "home_root" / dbpath[len(ROOT_HOME) + 1 :]).mkdir(
            parents=True, exist_ok=True
        )
    (root / "tmp").chmod(0o1777)
    home = root / "home_admin"
    os.chown(home, uid, gid)
    home.chmod(0o755)
    host.knob_dir.mkdir(mode=0o755, exist_ok=True)
    host.set_knob("bind_ip", host.ip)
    (root / "os-release").write_text(os_release_text(host.os_tag))
    _ssh_keygen(host.ssh_dir / "ssh_host_ed25519_key", f"arbup-{host.name}")
    authorized = host.ssh_dir / "authorized_keys"
    authorized.write_text(client_pub.strip() + "\n")
    authorized.chmod(0o600)
    (host.ssh_dir / "sshd_config").write_text(_sshd_config(host))


def _known_hosts_line(host: LocalHost) -> str:
    key_type, key_b64 = (
        (host.ssh_dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    )
    address = host.ip if host.ssh_port == 22 else f"[{host.ip}]:{host.ssh_port}"
    return f"{address} {key_type} {key_b64}\n"


def create_hosts(
    state_dir: Path,
    count: int,
    *,
    first_ip: str = "127.0.1.1",
    ssh_port: int = 2222,
    os_tag: str = "el7",
    credential: str = "local",
) -> list[LocalHost]:
    """Fresh hosts under ``state_dir`` (previous ones are stopped and wiped), with the
    client key, known_hosts and hosts.json; all started, rpm databases seeded."""
    from arbup.models import check_name

    if count < 1:
        raise ValueError("count must be at least 1")
    check_os_tag(os_tag)
    check_name(credential)
    if not 1 <= ssh_port <= 65535:
        raise ValueError(f"bad ssh port {ssh_port}")
    first = ipaddress.ip_address(_check_loopback(first_ip))
    ips = [_check_loopback(str(first + i)) for i in range(count)]
    os_release_text(os_tag)

    state_dir = Path(state_dir).resolve()
    ensure_machine()
    stop_hosts(state_dir)
    shutil.rmtree(state_dir / "hosts", ignore_errors=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    key = _ensure_client_key(state_dir, credential)
    client_pub = key.with_name(key.name + ".pub").read_text()
    base_rpm = build_base_package(state_dir / "cache", os_tag)

    hosts = [
        LocalHost(
            f"host{i + 1}", ip, ssh_port, state_dir / "hosts" / f"host{i + 1}", os_tag
        )
        for i, ip in enumerate(ips)
    ]
    for host in hosts:
        _prepare_host(host, client_pub)
    _write_hosts_file(state_dir, hosts, credential)
    known = known_hosts_path(state_dir)
    known.write_text("".join(_known_hosts_line(h) for h in hosts))
    try:
        for host in hosts:
            host.start()
            shutil.copyfile(base_rpm, host.root / "tmp" / base_rpm.name)
            host.exec(f"rpm -i /tmp/{base_rpm.name} && rm -f /tmp/{base_rpm.name}")
    except BaseException:
        stop_hosts(state_dir)
        raise
    return hosts


def _write_hosts_file(state_dir: Path, hosts: list[LocalHost], credential: str) -> None:
    data = {
        "format": 1,
        "credential": credential,
        "client_key": str(client_key_path(state_dir, credential)),
        "known_hosts": str(known_hosts_path(state_dir)),
        "hosts": [{**asdict(h), "root": str(h.root)} for h in hosts],
    }
    path = state_dir / HOSTS_FILE
    tmp = path.with_name(HOSTS_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def load_hosts(state_dir: Path) -> list[LocalHost]:
    """The hosts create_hosts made under ``state_dir`` (running or not)."""
    path = Path(state_dir) / HOSTS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LocalHostError(
            f"no local hosts in {state_dir} ({path} is missing)"
        ) from None
    return [
        LocalHost(h["name"], h["ip"], int(h["ssh_port"]), Path(h["root"]), h["os_tag"])
        for h in data["hosts"]
    ]


def stop_hosts(state_dir: Path) -> None:
    """Stop every host under ``state_dir``, with every process in its namespace."""
    state_dir = Path(state_dir)
    hosts: dict[Path, LocalHost] = {}
    if (state_dir / HOSTS_FILE).is_file():
        for host in load_hosts(state_dir):
            hosts[host.root.resolve()] = host
    # Host directories that hosts.json does not list (e.g. an interrupted create).
    for ns_file in sorted((state_dir / "hosts").glob("*/sys/ns.id")):
        root = ns_file.parent.parent
        hosts.setdefault(
            root.resolve(), LocalHost(root.name, "127.0.0.1", 0, root, "el7")
        )
    for host in hosts.values():
        host.stop()
