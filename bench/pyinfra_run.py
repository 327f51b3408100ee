"""pyinfra running bench.commands, through pyinfra's Python API (as a deploy file
would, plus a state callback for per-host times).

pyinfra runs an operation on every host in parallel (gevent, paramiko) before the
next. A command that is the same on every host is a ``server.shell`` operation;
one that depends on the host (its svrIp) or on a value read at run time (the
observer's pid) or whose output is checked is a ``python.call`` operation that runs
it with ``host.run_shell_command`` at execution time, the way pyinfra's docs show
for run-time values. The upload is ``files.put``; the settle a ``python.call`` that
sleeps. Commands run with bash, as the product's do.

Usage: python -m bench.pyinfra_run SPEC.json OUT.json
"""

from __future__ import annotations

import json
import sys
import time

import gevent
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.api.state import BaseStateCallback
from pyinfra.operations import files, python, server

from bench.commands import Cmd, Params, Settle, Upload, plan, render

VALUES: dict[str, dict[str, str]] = {}
TIMES: dict[str, dict[str, list[float]]] = {}


class Times(BaseStateCallback):
    """Per host and operation: start and end (wall clock)."""

    def __init__(self, state: State):
        self.state = state
        self.starts: dict[tuple[str, str], float] = {}

    def operation_host_start(self, state, host, op_hash):
        self.starts[(host.name, op_hash)] = time.time()

    def operation_host_success(self, state, host, op_hash, retry_count=0):
        names = state.get_op_meta(op_hash).names
        step = next(iter(names)).split()[0] if names else "?"
        start = self.starts.pop((host.name, op_hash), time.time())
        span = TIMES.setdefault(host.name, {}).setdefault(step, [start, time.time()])
        span[0] = min(span[0], start)
        span[1] = max(span[1], time.time())


def run_checked(state, host, item: Cmd, label: str) -> None:
    values = VALUES.setdefault(host.name, {"svr_ip": host.data.svr_ip})
    command = item.render(values)
    ok, output = host.run_shell_command(command=command, _timeout=int(item.timeout))
    stdout = "\n".join(output.stdout_lines)
    if item.check and not ok:
        raise RuntimeError(f"{host.name} {label}: {command!r} failed: {output.stderr}")
    for expected in item.expect:
        wanted = render(expected, values)
        if wanted not in stdout:
            raise RuntimeError(f"{host.name} {label}: {command!r} printed {stdout!r}, "
                               f"not {wanted!r}")
    if item.capture:
        values[item.capture] = stdout.strip()


def settle(state, host, seconds: float) -> None:
    gevent.sleep(seconds)


def main_async(spec: dict) -> dict:
    params = Params(**spec["params"])
    names = [
        (h["ip"], {
            "ssh_hostname": h["ip"],
            "ssh_port": h["port"],
            "ssh_user": spec["user"],
            "ssh_key": spec["key"],
            "ssh_known_hosts_file": spec["known_hosts"],
            "ssh_strict_host_key_checking": "yes",
            "svr_ip": h["ip"],
        })
        for h in spec["hosts"]
    ]
    inventory = Inventory((names, {}))
    config = Config(PARALLEL=len(names), SHELL="bash")
    state = State(inventory, config)
    state.add_callback_handler(Times(state))
    started = time.time()
    connect_all(state)
    for step in plan(params, "@svr_ip@"):
        for index, item in enumerate(step.items):
            name = f"{step.name} {index:02d} {item.kind}"
            if isinstance(item, Settle):
                add_op(state, python.call, name=name, function=settle, seconds=item.seconds)
            elif isinstance(item, Upload):
                add_op(state, files.put, name=name, src=item.local, dest=item.remote,
                       add_deploy_dir=False, create_remote_dir=False, force=True)
            elif "@" in item.shell or item.expect or item.capture:
                add_op(state, python.call, name=name, function=run_checked, item=item,
                       label=name)
            else:
                add_op(state, server.shell, name=name, commands=[item.shell],
                       _ignore_errors=not item.check, _timeout=int(item.timeout))
    run_ops(state)
    ended = time.time()
    failed = [h.name for h in inventory if state.get_results_for_host(h).error_ops]
    disconnect_all(state)
    if failed:
        raise RuntimeError(f"pyinfra: operations failed on {failed}")
    return {"started": started, "ended": ended, "hosts": TIMES}


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    result = main_async(spec)
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
