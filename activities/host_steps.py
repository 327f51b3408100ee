"""The steps that change a host: prepare, stop, install, start.

Each activity reads the host's actual state first and then does only what is still
needed, so running it twice (a retry, or a worker that died mid-step) is safe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from temporalio import activity

from activities import facts
from activities.ssh import (
    ConnectionPool,
    HostSession,
    SshSettings,
    open_session,
    q,
    step_error,
)
from arbup.errors import ErrorKind
from arbup.inputs import HostStepInput, PrepareResult, StepResult
from arbup.models import ArbitrationService
from arbup.versions import FullVersion

HEARTBEAT_SECONDS = 2.0
# Headroom kept free on the staging file system beyond the package itself.
STAGING_MARGIN_KIB = 16 * 1024


@asynccontextmanager
async def heartbeating(progress: dict) -> AsyncIterator[None]:
    """Heartbeat while the step runs, so a dead worker is noticed within the
    heartbeat timeout and a cancellation reaches the step."""

    async def beat() -> None:
        while True:
            activity.heartbeat(dict(progress))
            await asyncio.sleep(HEARTBEAT_SECONDS)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()


def staged_path(inp: HostStepInput) -> str:
    return f"{inp.options.staging_dir}/{inp.package.file_name}"


def as_run_user(service: ArbitrationService, command: str) -> str:
    """``command`` run as the service's run user (the owner of its ``etc/``)."""
    if service.run_user == service.ssh_user:
        return command
    if service.ssh_user == "root":
        return f"runuser -u {q(service.run_user)} -- {command}"
    return f"sudo -n -u {q(service.run_user)} -- {command}"


class HostSteps:
    """Activities that act on hosts over SSH."""

    def __init__(self, settings: SshSettings, pool: ConnectionPool | None = None):
        self.settings = settings
        self.pool = pool if pool is not None else ConnectionPool()

    @asynccontextmanager
    async def _session(self, inp: HostStepInput, step: str) -> AsyncIterator[HostSession]:
        log: list[str] = []
        progress = {"step": step, "host": inp.service.host}
        activity.logger.info(
            "%s on %s (service %d, attempt %d)",
            step,
            inp.service.address,
            inp.service.id,
            activity.info().attempt,
        )
        async with heartbeating(progress):
            async with open_session(inp.service, self.settings, log, self.pool) as session:
                yield session

    @activity.defn(name="prepare_service")
    async def prepare(self, inp: HostStepInput) -> PrepareResult:
        """Check the host can take the package and stage it there, before anything
        is stopped: the downtime window then holds no file transfer."""
        pkg = inp.package
        target = FullVersion.parse(pkg.full_version)
        async with self._session(inp, "prepare") as s:
            host_arch = await facts.arch(s)
            if host_arch != pkg.arch:
                raise step_error(
                    ErrorKind.WRONG_ARCH,
                    f"{s.label}: host is {host_arch}, package {pkg.file_name} is for "
                    f"{pkg.arch}",
                    s.log,
                )
            host_os = await facts.os_tag(s)
            if host_os != pkg.operating_system:
                raise step_error(
                    ErrorKind.WRONG_OS,
                    f"{s.label}: host runs {host_os or 'an unknown OS'}, package "
                    f"{pkg.file_name} is for {pkg.operating_system}",
                    s.log,
                )

            state = await facts.service_state(s)
            if state.installed and FullVersion.parse(state.installed) > target:
                raise step_error(
                    ErrorKind.TARGET_NOT_NEWER,
                    f"{s.label}: installed {state.installed} is newer than the target "
                    f"{pkg.full_version}",
                    s.log,
                )
            if state.installed == pkg.full_version and state.running == pkg.full_version:
                message = f"already installed and running {pkg.full_version}; nothing to do"
                s.note(message)
                return PrepareResult(
                    log=s.log,
                    message=message,
                    installed_full_version=state.installed,
                    running_full_version=state.running,
                    needs_upgrade=False,
                    staged_path=None,
                )

            await self._check_disk(s, inp)
            path = await stage_package(s, inp)
            await check_package_header(s, inp, path)
            message = (
                f"installed {state.installed or 'nothing'}, running "
                f"{state.running or 'nothing'}; {pkg.file_name} staged at {path}"
            )
            s.note(message)
            return PrepareResult(
                log=s.log,
                message=message,
                installed_full_version=state.installed,
                running_full_version=state.running,
                needs_upgrade=True,
                staged_path=path,
            )

    async def _check_disk(self, s: HostSession, inp: HostStepInput) -> None:
        need_kib = inp.package.size // 1024 + 1
        checks = [
            (inp.options.staging_dir, need_kib + STAGING_MARGIN_KIB),
            (inp.service.install_path, 2 * need_kib),
        ]
        for path, required in checks:
            free = await facts.free_kib(s, path)
            if free < required:
                raise step_error(
                    ErrorKind.INSUFFICIENT_DISK,
                    f"{s.label}: {free // 1024} MiB free under {path}, "
                    f"{required // 1024} MiB needed",
                    s.log,
                )

    @activity.defn(name="stop_service")
    async def stop(self, inp: HostStepInput) -> StepResult:
        """Terminate the observer, force it after the grace period, and wait until
        its port is closed."""
        svc = inp.service
        async with self._session(inp, "stop") as s:
            pid = await facts.observer_pid(s)
            if pid is None:
                if await facts.port_open(s):
                    raise step_error(
                        ErrorKind.STOP_FAILED,
                        f"{s.label}: port {svc.svr_port} is open but no observer pid "
                        f"file names a live process under {svc.install_path}",
                        s.log,
                    )
                s.note("observer is not running; nothing to stop")
                return StepResult(log=s.log, message="already stopped")

            started = time.monotonic()
            await s.run(f"kill -TERM {pid}", check=False)
            stopped = await wait_until(s, gone(pid), inp.options.stop_grace_seconds)
            if not stopped:
                s.note(f"observer {pid} still alive after {inp.options.stop_grace_seconds:.0f}s; killing it")
                await s.run(f"kill -KILL {pid}", check=False)
                if not await wait_until(s, gone(pid), 30):
                    raise step_error(
                        ErrorKind.STOP_FAILED,
                        f"{s.label}: observer {pid} survived SIGKILL",
                        s.log,
                    )

            closed = f"! {facts.port_probe(svc.svr_ip, svc.svr_port)}"
            if not await wait_until(s, closed, inp.options.stop_grace_seconds + 10):
                raise step_error(
                    ErrorKind.STOP_FAILED,
                    f"{s.label}: port {svc.svr_port} still open after observer {pid} exited",
                    s.log,
                )
            # A service manager may start it again behind our back: it must stay down.
            await asyncio.sleep(inp.options.stop_settle_seconds)
            back = await facts.observer_pid(s)
            if back is not None or await facts.port_open(s):
                raise step_error(
                    ErrorKind.STOP_FAILED,
                    f"{s.label}: observer came back (pid {back or 'unknown'}) right "
                    f"after {pid} stopped, and port {svc.svr_port} is still open; "
                    "is a service manager restarting it?",
                    s.log,
                )
            message = f"observer {pid} stopped in {time.monotonic() - started:.1f}s"
            s.note(message)
            return StepResult(log=s.log, message=message)

    @activity.defn(name="install_package")
    async def install(self, inp: HostStepInput) -> StepResult:
        """``rpm -Uvh`` the staged package under the install path, and confirm it."""
        pkg = inp.package
        svc = inp.service
        async with self._session(inp, "install") as s:
            installed = await facts.installed_version(s)
            if installed == pkg.full_version:
                message = f"{pkg.full_version} is already installed; nothing to do"
                s.note(message)
                return StepResult(
                    log=s.log, message=message, installed_full_version=installed
                )

            await wait_for_earlier_rpm(s, inp)
            installed = await facts.installed_version(s)
            if installed == pkg.full_version:
                message = f"{pkg.full_version} was installed by an earlier attempt"
                s.note(message)
                return StepResult(
                    log=s.log, message=message, installed_full_version=installed
                )

            path = await stage_package(s, inp)
            result = await run_rpm(s, inp, f"rpm -Uvh --prefix={q(svc.install_path)} {q(path)}")
            if not result.ok:
                output = (result.stderr or result.stdout).strip()
                kind = (
                    ErrorKind.COMMAND_FAILED
                    if "lock" in output.lower()
                    else ErrorKind.INSTALL_FAILED
                )
                raise step_error(
                    kind,
                    f"{s.label}: rpm -Uvh {pkg.file_name} failed "
                    f"(exit {result.exit_status}): {output[-300:]}",
                    s.log,
                )

            installed = await facts.installed_version(s)
            if installed != pkg.full_version:
                raise step_error(
                    ErrorKind.INSTALL_FAILED,
                    f"{s.label}: after rpm -Uvh, rpm -q reports {installed}, "
                    f"not {pkg.full_version}",
                    s.log,
                )
            message = f"installed {pkg.full_version} (was {inp.service.version})"
            s.note(message)
            return StepResult(log=s.log, message=message, installed_full_version=installed)

    @activity.defn(name="start_service")
    async def start(self, inp: HostStepInput) -> StepResult:
        """Start observer as its run user and report success only once it is alive,
        listening and on the target version, and still so after a settle time."""
        svc = inp.service
        target = inp.package.full_version
        async with self._session(inp, "start") as s:
            state = await facts.service_state(s)
            if state.pid and state.running == target:
                s.note(f"observer {state.pid} already runs {target}")
            elif state.pid:
                raise step_error(
                    ErrorKind.START_FAILED,
                    f"{s.label}: observer {state.pid} is running "
                    f"{state.running or 'an unknown version'}, not {target}; "
                    "stop it first",
                    s.log,
                )
            else:
                await launch_observer(s, inp)

            pid = await wait_healthy(s, target)
            await asyncio.sleep(inp.options.settle_seconds)
            again = await facts.observer_pid(s)
            if again != pid or not await facts.port_open(s):
                raise step_error(
                    ErrorKind.START_FAILED,
                    f"{s.label}: observer {pid} was healthy but did not stay up for "
                    f"{inp.options.settle_seconds:.0f}s; see {svc.install_path}/log",
                    s.log,
                )
            message = f"observer {pid} runs {target} on {svc.address}"
            s.note(message)
            return StepResult(log=s.log, message=message)


def gone(pid: int) -> str:
    """A shell test: process ``pid`` has exited (a zombie awaiting its reaper counts
    as exited; it holds no port and runs no code)."""
    return f"! ps -o stat= -p {pid} | grep -qv Z"


RPM_PID = "rpm.pid"


async def run_rpm(s: HostSession, inp: HostStepInput, command: str):
    """Run an rpm transaction whose pid is kept on the host, so that a cancelled or
    retried step can wait for it instead of racing it."""
    pid_file = q(f"{inp.options.staging_dir}/{RPM_PID}")
    try:
        return await s.run(
            f"mkdir -p {q(inp.options.staging_dir)} && "
            f"sh -c {q(f'echo $$ > {pid_file}; exec {command}')}",
            timeout=1500,
            check=False,
        )
    except asyncio.CancelledError:
        # The step is cancelled: rpm must really have stopped before anything else
        # (a compensation, another step) runs on this host.
        s.note("cancelled: stopping rpm and waiting until it has exited")
        await asyncio.shield(stop_rpm(s, inp))
        raise


async def stop_rpm(s: HostSession, inp: HostStepInput) -> None:
    pid_file = q(f"{inp.options.staging_dir}/{RPM_PID}")
    await s.run(
        f"pid=$(cat {pid_file} 2>/dev/null) && kill -TERM $pid 2>/dev/null; true",
        check=False,
    )
    await wait_for_earlier_rpm(s, inp)


async def wait_for_earlier_rpm(s: HostSession, inp: HostStepInput) -> None:
    """An rpm started by an earlier attempt (a worker that died, a cancelled step)
    may still run: wait until it has exited."""
    pid_file = q(f"{inp.options.staging_dir}/{RPM_PID}")
    running = await s.run(
        f"pid=$(cat {pid_file} 2>/dev/null) && "
        "tr '\\0' ' ' < /proc/$pid/cmdline 2>/dev/null | grep -q rpm && echo $pid",
        check=False,
    )
    pid = running.stdout.strip()
    if running.ok and pid.isdigit():
        s.note(f"rpm {pid} of an earlier attempt is still running; waiting for it")
        if not await wait_until(s, gone(int(pid)), 1500):
            raise step_error(
                ErrorKind.INSTALL_FAILED, f"{s.label}: rpm {pid} never finished", s.log
            )


class Compensations:
    """Activities that undo host steps. Each reads the host first and is a no-op
    when there is nothing to undo, so it can run again after a failure."""

    def __init__(self, steps: HostSteps):
        self.steps = steps

    @activity.defn(name="unstage_package")
    async def unstage(self, inp: HostStepInput) -> StepResult:
        """Undo prepare: remove the staged package (and a partial upload)."""
        async with self.steps._session(inp, "unstage") as s:
            path = staged_path(inp)
            await s.run(f"rm -f {q(path)} {q(path + '.part')}")
            message = f"removed {path}"
            s.note(message)
            return StepResult(log=s.log, message=message)

    @activity.defn(name="restore_service")
    async def restore(self, inp: HostStepInput) -> StepResult:
        """Undo stop: the observer runs again, healthy, on whatever is installed."""
        async with self.steps._session(inp, "restore") as s:
            await wait_for_earlier_rpm(s, inp)
            state = await facts.service_state(s)
            if state.installed is None:
                raise step_error(
                    ErrorKind.START_FAILED,
                    f"{s.label}: no oceanbase package is installed; nothing to start",
                    s.log,
                )
            if state.pid and state.running == state.installed:
                message = f"observer {state.pid} already runs {state.installed}"
            else:
                if state.pid:
                    await s.run(f"kill -TERM {state.pid}", check=False)
                    if not await wait_until(s, gone(state.pid), inp.options.stop_grace_seconds):
                        await s.run(f"kill -KILL {state.pid}", check=False)
                        await wait_until(s, gone(state.pid), 30)
                await launch_observer(s, inp)
                pid = await wait_healthy(s, state.installed)
                await asyncio.sleep(inp.options.settle_seconds)
                if await facts.observer_pid(s) != pid or not await facts.port_open(s):
                    raise step_error(
                        ErrorKind.START_FAILED,
                        f"{s.label}: observer {pid} did not stay up for "
                        f"{inp.options.settle_seconds:.0f}s after being started again",
                        s.log,
                    )
                message = f"observer {pid} runs {state.installed} again"
            s.note(message)
            return StepResult(
                log=s.log, message=message, installed_full_version=state.installed
            )

    @activity.defn(name="reinstall_package")
    async def reinstall(self, inp: HostStepInput) -> StepResult:
        """Undo install: put the package of the previous version back
        (``rpm -Uvh --oldpackage``), confirmed with ``rpm -q``."""
        pkg = inp.package
        svc = inp.service
        async with self.steps._session(inp, "reinstall") as s:
            await wait_for_earlier_rpm(s, inp)
            installed = await facts.installed_version(s)
            if installed == pkg.full_version:
                message = f"{pkg.full_version} is installed; nothing to undo"
            else:
                path = await stage_package(s, inp)
                result = await run_rpm(
                    s, inp, f"rpm -Uvh --oldpackage --prefix={q(svc.install_path)} {q(path)}"
                )
                installed = await facts.installed_version(s)
                if not result.ok or installed != pkg.full_version:
                    raise step_error(
                        ErrorKind.INSTALL_FAILED,
                        f"{s.label}: reinstalling {pkg.file_name} failed "
                        f"(exit {result.exit_status}, rpm -q says {installed}): "
                        f"{(result.stderr or result.stdout).strip()[-300:]}",
                        s.log,
                    )
                await s.run(f"rm -f {q(path)}", check=False)
                message = f"reinstalled {pkg.full_version}"
            s.note(message)
            return StepResult(log=s.log, message=message, installed_full_version=installed)


async def wait_until(s: HostSession, condition: str, seconds: float) -> bool:
    """Poll a shell condition on the host every 0.1 s, in one remote loop."""
    rounds = max(1, int(seconds * 10))
    result = await s.run(
        f"i=0; while [ $i -lt {rounds} ]; do if {condition}; then exit 0; fi; "
        "sleep 0.1; i=$((i+1)); done; exit 1",
        timeout=seconds + 30,
        check=False,
    )
    return result.ok


async def stage_package(s: HostSession, inp: HostStepInput) -> str:
    """Upload the package to the staging path unless a verified copy is there.

    The upload goes to a ``.part`` file that is renamed only after its checksum
    matches, so a dropped connection never leaves a corrupt file at the staging
    path.
    """
    pkg = inp.package
    final = staged_path(inp)
    if await facts.sha256(s, final) == pkg.sha256:
        s.note(f"{final} already staged with the right checksum")
        return final

    local = Path(pkg.path)
    if not local.is_file():
        raise step_error(
            ErrorKind.PACKAGE_MISSING,
            f"package file {pkg.path} is missing on worker; load it again",
            s.log,
        )
    partial = f"{final}.part"
    await s.run(f"mkdir -p {q(inp.options.staging_dir)} && rm -f {q(partial)}")
    await s.upload(local, partial)
    if await facts.sha256(s, partial) != pkg.sha256:
        await s.run(f"rm -f {q(partial)}", check=False)
        raise step_error(
            ErrorKind.CHECKSUM_MISMATCH,
            f"{s.label}: checksum of the uploaded {pkg.file_name} does not match "
            f"{pkg.sha256}",
            s.log,
        )
    await s.run(f"mv -f {q(partial)} {q(final)}")
    return final


async def check_package_header(s: HostSession, inp: HostStepInput, path: str) -> None:
    """The staged RPM must be what its name says: a renamed file would otherwise
    pass every check and fail only at install, with the services already down."""
    pkg = inp.package
    result = await s.run(
        f"rpm -qp --qf '%{{NAME}} %{{VERSION}}-%{{RELEASE}} %{{ARCH}}\\n' {q(path)}"
    )
    found = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    want = f"{pkg.name} {pkg.version}-{pkg.build_number}.{pkg.operating_system} {pkg.arch}"
    if found != want:
        raise step_error(
            ErrorKind.PACKAGE_MISMATCH,
            f"{s.label}: {pkg.file_name} contains {found or 'no readable package'}, "
            f"not {want}; fix the package repository",
            s.log,
        )


async def launch_observer(s: HostSession, inp: HostStepInput) -> None:
    """Run observer's launcher; it daemonizes and returns. Its output goes to a file,
    so a daemon that keeps the inherited descriptors cannot hold the session open."""
    svc = inp.service
    path = svc.install_path
    saved = await s.run(f"test -f {q(f'{path}/{facts.SAVED_PARAMETERS}')}", check=False)
    if saved.ok:
        command = "bin/observer"
    else:
        command = f"bin/observer -m arbitration -P {svc.svr_port} -d {q(f'{path}/store')}"
    out = f"{inp.options.staging_dir}/observer-start.out"
    result = await s.run(
        f"mkdir -p {q(inp.options.staging_dir)} && cd {q(path)} && "
        f"timeout 120 {as_run_user(svc, command)} </dev/null >{q(out)} 2>&1; "
        f"rc=$?; cat {q(out)}; exit $rc",
        timeout=150,
        check=False,
    )
    if not result.ok:
        raise step_error(
            ErrorKind.START_FAILED,
            f"{s.label}: `{command}` exited {result.exit_status}: "
            f"{result.stdout.strip()[-300:]}",
            s.log,
        )


async def wait_healthy(s: HostSession, target: str, seconds: float = 300) -> int:
    """Wait until the observer's pid is alive and its port accepts connections,
    then check its version; return the pid."""
    svc = s.service
    pid_file = q(f"{svc.install_path}/{facts.PID_FILE}")
    rounds = int(seconds * 10)
    # Exit 0: alive and listening; 2: the pid file names a process that is gone.
    result = await s.run(
        f"i=0; while [ $i -lt {rounds} ]; do pid=$(cat {pid_file} 2>/dev/null); "
        'if [ -n "$pid" ] && [ -d /proc/$pid ]; then '
        f"{facts.port_probe(svc.svr_ip, svc.svr_port)} && exit 0; "
        'elif [ -n "$pid" ]; then exit 2; fi; '
        "sleep 0.1; i=$((i+1)); done; exit 1",
        timeout=seconds + 30,
        check=False,
    )
    if result.exit_status == 2:
        raise step_error(
            ErrorKind.START_FAILED,
            f"{s.label}: observer exited right after starting; see "
            f"{svc.install_path}/log",
            s.log,
        )
    if not result.ok:
        raise step_error(
            ErrorKind.START_FAILED,
            f"{s.label}: observer did not come up on {svc.address} within {seconds:.0f}s",
            s.log,
        )
    pid = await facts.observer_pid(s)
    version = await facts.binary_version(s)
    if pid is None or version != target:
        raise step_error(
            ErrorKind.START_FAILED,
            f"{s.label}: observer reports {version or 'no version'}, not {target}",
            s.log,
        )
    return pid
