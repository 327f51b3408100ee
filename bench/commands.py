"""The work an upgrade does on one host, as a list of shell commands: the one place
the bare floor, Ansible and pyinfra runners read it from.

It is the command sequence that arbup's activities (activities/host_steps.py and
activities/facts.py) run on a host that runs the old version and has nothing
staged: the probes of prepare, the upload to a ``.part`` file, its sha256 and
rename; stop (TERM, wait gone, wait port closed, a short settle and a check that it
stayed down); ``rpm -Uvh --prefix``; start as
the run user, wait healthy, ``observer -V``, settle, check again. The harness
compares it with the commands the product logged in the same benchmark (see
``compare_with_product_log``) and reports any difference.

Items of a step:

* ``Cmd``: one remote command, run as its own SSH exec. ``check``: a non-zero exit
  fails the run. ``expect``: substrings its stdout must contain. ``capture``: the
  stripped stdout is kept under that name; ``@name@`` in a later command is
  replaced by it (the observer's pid, which the product reads the same way).
* ``Upload``: the package to the staging ``.part`` path (SFTP or the tool's own).
* ``Settle``: the product's settle times (after start; after stop), a pause on the
  controlling side.

Only the standard library is used: the bare floor imports this and nothing of
the product.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Cmd:
    shell: str
    check: bool = True
    expect: tuple[str, ...] = ()
    capture: str | None = None
    timeout: float = 60.0
    kind: str = "cmd"

    def render(self, values: dict[str, str]) -> str:
        return render(self.shell, values)


@dataclass(frozen=True)
class Upload:
    local: str
    remote: str
    kind: str = "upload"


@dataclass(frozen=True)
class Settle:
    seconds: float
    kind: str = "settle"


@dataclass(frozen=True)
class Step:
    name: str
    items: tuple = field(default_factory=tuple)


STEP_NAMES = ("prepare", "stop", "install", "start")


@dataclass(frozen=True)
class Params:
    """What the commands depend on; the same values the product gets."""

    package_path: str  # on the controlling machine
    package_file: str
    package_sha256: str
    target_full_version: str  # e.g. 4.3.4.0-200000022024070119
    install_path: str = "/home/admin/oceanbase"
    staging_dir: str = "/tmp/arbup-staging"
    svr_port: int = 2882
    run_user: str = "admin"
    settle_seconds: float = 2.0
    stop_grace_seconds: float = 30.0
    stop_settle_seconds: float = 0.5

    def to_json(self) -> dict:
        return asdict(self)


def render(shell: str, values: dict[str, str]) -> str:
    def sub(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"no captured value {name!r} for command {shell!r}")
        return values[name]

    return re.sub(r"@([a-z_]+)@", sub, shell)


def q(value: object) -> str:
    return shlex.quote(str(value))


# ---------------------------------------------------------------- the product's shell


def rpm_query() -> str:
    return "rpm -q --qf '%{VERSION}-%{RELEASE}\\n' oceanbase"


def observer_pid(p: Params) -> str:
    pid_file = f"{p.install_path}/run/observer.pid"
    return (
        f"pid=$(cat {q(pid_file)} 2>/dev/null) && [ -n \"$pid\" ] "
        "&& tr '\\0' ' ' < /proc/$pid/cmdline 2>/dev/null | grep -q observer "
        '&& echo "$pid"'
    )


def port_probe(ip: str, port: int) -> str:
    return f"timeout 2 bash -c {q(f'exec 3<>/dev/tcp/{ip}/{port}')} 2>/dev/null"


def binary_version(p: Params) -> str:
    observer = f"{p.install_path}/bin/observer"
    return f"test -x {q(observer)} && {q(observer)} -V 2>&1"


def started_after_install(p: Params, pid: str) -> str:
    observer = f"{p.install_path}/bin/observer"
    return (
        f"now=$(date +%s); age=$(ps -o etimes= -p {pid}) && "
        f"changed=$(stat -c %Z {q(observer)}) && "
        '[ $((now - age)) -ge "$changed" ]'
    )


def free_kib(path: str) -> str:
    return (
        f"p={q(path)}; while [ ! -e \"$p\" ]; do p=$(dirname \"$p\"); done; "
        'df -Pk "$p" | tail -n 1'
    )


def sha256(path: str) -> str:
    return f"sha256sum {q(path)} 2>/dev/null"


def gone(pid: str) -> str:
    return f"! ps -o stat= -p {pid} | grep -qv Z"


def wait_until(condition: str, seconds: float) -> str:
    rounds = max(1, int(seconds * 10))
    return (
        f"i=0; while [ $i -lt {rounds} ]; do if {condition}; then exit 0; fi; "
        "sleep 0.1; i=$((i+1)); done; exit 1"
    )


def wait_healthy(p: Params, ip: str, seconds: float = 300) -> str:
    pid_file = q(f"{p.install_path}/run/observer.pid")
    rounds = int(seconds * 10)
    return (
        f"i=0; while [ $i -lt {rounds} ]; do pid=$(cat {pid_file} 2>/dev/null); "
        'if [ -n "$pid" ] && [ -d /proc/$pid ]; then '
        f"{port_probe(ip, p.svr_port)} && exit 0; "
        'elif [ -n "$pid" ]; then exit 2; fi; '
        "sleep 0.1; i=$((i+1)); done; exit 1"
    )


def launch(p: Params) -> str:
    # A restart with saved parameters, as on every host the harness resets.
    out = f"{p.staging_dir}/observer-start.out"
    command = f"runuser -u {q(p.run_user)} -- bin/observer"
    return (
        f"mkdir -p {q(p.staging_dir)} && cd {q(p.install_path)} && "
        f"timeout 120 {command} </dev/null >{q(out)} 2>&1; "
        f"rc=$?; cat {q(out)}; exit $rc"
    )


def earlier_rpm(p: Params) -> str:
    """Is an rpm of an earlier attempt still running? (its pid is kept on the host)"""
    pid_file = q(f"{p.staging_dir}/rpm.pid")
    return (
        f"pid=$(cat {pid_file} 2>/dev/null) && "
        "tr '\\0' ' ' < /proc/$pid/cmdline 2>/dev/null | grep -q rpm && echo $pid"
    )


def rpm_with_pid(p: Params, command: str) -> str:
    """An rpm transaction whose pid is kept on the host while it runs."""
    pid_file = q(f"{p.staging_dir}/rpm.pid")
    return (
        f"mkdir -p {q(p.staging_dir)} && "
        f"sh -c {q(f'echo $$ > {pid_file}; exec {command}')}"
    )


def package_header(file_name: str) -> str:
    """What ``rpm -qp`` prints for oceanbase-<version>-<build>.<os>.<arch>.rpm."""
    stem = file_name.removeprefix("oceanbase-").removesuffix(".rpm")
    version_release, arch = stem.rsplit(".", 1)
    return f"oceanbase {version_release} {arch}"


def version_expect(full_version: str) -> tuple[str, ...]:
    version, build = full_version.split("-", 1)
    return (f"OceanBase_CE {version})", f"REVISION: {build}-")


# ------------------------------------------------------------------------ the steps


def plan(p: Params, ip: str) -> list[Step]:
    """The four steps for the host at ``ip`` (its svrIp), in order."""
    final = f"{p.staging_dir}/{p.package_file}"
    partial = f"{final}.part"
    target_version = version_expect(p.target_full_version)
    prepare = Step(
        "prepare",
        (
            Cmd("uname -m"),
            Cmd("cat /etc/os-release", check=False),
            Cmd(rpm_query(), check=False),
            Cmd(observer_pid(p), check=False, capture="old_pid"),
            Cmd(port_probe(ip, p.svr_port), check=False),
            Cmd(started_after_install(p, "@old_pid@"), check=False),
            Cmd(binary_version(p), check=False),
            Cmd(free_kib(p.staging_dir)),
            Cmd(free_kib(p.install_path)),
            Cmd(sha256(final), check=False),
            Cmd(f"mkdir -p {q(p.staging_dir)} && rm -f {q(partial)}"),
            Upload(p.package_path, partial),
            Cmd(sha256(partial), check=False, expect=(p.package_sha256,)),
            Cmd(f"mv -f {q(partial)} {q(final)}"),
            Cmd(f"rpm -qp --qf '%{{NAME}} %{{VERSION}}-%{{RELEASE}} %{{ARCH}}\\n' {q(final)}",
                expect=(package_header(p.package_file),)),
        ),
    )
    stop = Step(
        "stop",
        (
            Cmd(observer_pid(p), check=False, capture="stop_pid"),
            Cmd("kill -TERM @stop_pid@", check=False),
            Cmd(
                wait_until(gone("@stop_pid@"), p.stop_grace_seconds),
                timeout=p.stop_grace_seconds + 30,
            ),
            Cmd(wait_until(f"! {port_probe(ip, p.svr_port)}", p.stop_grace_seconds + 10),
                timeout=p.stop_grace_seconds + 40),
            # It must stay down (no service manager starting it again).
            Settle(p.stop_settle_seconds),
            Cmd(observer_pid(p), check=False),
            Cmd(port_probe(ip, p.svr_port), check=False),
        ),
    )
    install = Step(
        "install",
        (
            Cmd(rpm_query(), check=False),
            Cmd(earlier_rpm(p), check=False),
            Cmd(rpm_query(), check=False),
            Cmd(sha256(final), check=False, expect=(p.package_sha256,)),
            Cmd(rpm_with_pid(p, f"rpm -Uvh --prefix={q(p.install_path)} {q(final)}"),
                timeout=1500),
            Cmd(rpm_query(), check=False, expect=(p.target_full_version,)),
        ),
    )
    start = Step(
        "start",
        (
            Cmd(rpm_query(), check=False),
            Cmd(observer_pid(p), check=False),
            Cmd(port_probe(ip, p.svr_port), check=False),
            Cmd(f"test -f {q(p.install_path + '/etc/observer.config.bin')}", check=False),
            Cmd(launch(p), timeout=150),
            Cmd(wait_healthy(p, ip), timeout=330),
            Cmd(observer_pid(p), check=False, capture="new_pid"),
            Cmd(binary_version(p), check=False, expect=target_version),
            Settle(p.settle_seconds),
            Cmd(observer_pid(p), check=False, expect=("@new_pid@",)),
            Cmd(port_probe(ip, p.svr_port)),
        ),
    )
    return [prepare, stop, install, start]


def commands_of(steps: list[Step]) -> dict[str, list[str]]:
    """The shell of every command per step, placeholders left in."""
    return {s.name: [i.shell for i in s.items if isinstance(i, Cmd)] for s in steps}


# ------------------------------------------------------ the product's log, compared


_NUMBER = re.compile(r"\b\d+\b")
_PLACEHOLDER = re.compile(r"@[a-z_]+@")
_LOGGED = re.compile(r"^\$ (.*?) -> (?:exit -?\d+ in |timed out|no exit status|connection lost)")


def normalize(command: str) -> str:
    return _NUMBER.sub("N", _PLACEHOLDER.sub("N", command))


def product_commands(log: list[str]) -> list[str]:
    """The commands of a product subtask log (``$ cmd -> exit ...`` lines)."""
    out = []
    for line in log:
        if not line.startswith("$ "):
            continue
        match = _LOGGED.match(line)
        if match:
            out.append(match.group(1))
        elif line.endswith("..."):
            out.append(line[2:])  # clipped before its outcome
    return out


def compare_with_product_log(steps: list[Step], logs: dict[str, list[str]]) -> dict:
    """Per step, the commands only the product ran and those only the bench list has
    (numbers normalized, since pids differ). The product clips long log lines, so a
    clipped command is compared on its visible prefix."""
    ours = commands_of(steps)
    report = {}
    for name, commands in ours.items():
        theirs = [normalize(c) for c in product_commands(logs.get(name, []))]
        mine = [normalize(" ".join(c.split())) for c in commands]
        only_product, only_bench = [], list(mine)
        for command in theirs:
            clipped = command.endswith("...")
            match = next(
                (
                    m
                    for m in only_bench
                    if m == command or (clipped and m.startswith(command[:-3]))
                ),
                None,
            )
            if match is None:
                only_product.append(command)
            else:
                only_bench.remove(match)
        report[name] = {"only_product": only_product, "only_bench": only_bench}
    return report
