"""Ansible (ansible-core) running bench.commands: an inventory of the hosts, an
ansible.cfg, and a playbook with one task per command, run with
``ansible-playbook``.

Each command is an ``ansible.builtin.shell`` task (bash, like the product's SSH
sessions), the upload is ``ansible.builtin.copy``, the settle a
``ansible.builtin.pause``; the observer's pid is passed on with ``register``. Facts
are not gathered (the playbook runs the product's own probes instead). Host keys
are checked against the stack's known_hosts (StrictHostKeyChecking=yes). Two
configurations: Ansible's defaults (forks 5, no pipelining, its default ssh_args
with ControlPersist), and forks = N with pipelining. Per-host task times come from
the callback plugin in bench/ansible_plugins, which runs nothing on the hosts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.commands import Cmd, Params, Settle, Upload, plan

PLUGINS = Path(__file__).resolve().parent / "ansible_plugins"


def _jinja(shell: str) -> str:
    if any(mark in shell for mark in ("{{", "{%", "{#")):
        raise ValueError(f"command would be read as a Jinja template: {shell!r}")

    def sub(match: re.Match) -> str:
        name = match.group(1)
        return "{{ svr_ip }}" if name == "svr_ip" else "{{ cap_%s.stdout | trim }}" % name

    return re.sub(r"@([a-z_]+)@", sub, shell)


def _expect_expr(expected: str) -> str:
    if re.fullmatch(r"@([a-z_]+)@", expected):
        return f"(cap_{expected.strip('@')}.stdout | trim) not in r_out.stdout"
    if "'" in expected:
        raise ValueError(f"cannot quote {expected!r}")
    return f"'{expected}' not in r_out.stdout"


def playbook(params: Params) -> list[dict]:
    tasks = []
    for step in plan(params, "@svr_ip@"):
        for index, item in enumerate(step.items):
            name = f"{step.name} {index:02d} {item.kind}"
            if isinstance(item, Settle):
                # pause takes whole seconds, at least 1 (a 0.5 s settle becomes 1 s).
                tasks.append({"name": name, "ansible.builtin.pause": {"seconds": max(1, round(item.seconds))}})
                continue
            if isinstance(item, Upload):
                tasks.append({
                    "name": name,
                    "ansible.builtin.copy": {"src": item.local, "dest": item.remote, "mode": "0644"},
                })
                continue
            assert isinstance(item, Cmd)
            register = f"cap_{item.capture}" if item.capture else "r_out"
            task = {
                "name": name,
                "ansible.builtin.shell": _jinja(item.shell),
                "args": {"executable": "/bin/bash"},
                "register": register,
                "changed_when": False,
                "timeout": int(item.timeout),
            }
            failures = []
            if item.check:
                failures.append(f"{register}.rc != 0")
            failures += [_expect_expr(e).replace("r_out", register) for e in item.expect]
            task["failed_when"] = " or ".join(f"({f})" for f in failures) if failures else False
            tasks.append(task)
    return [{"name": "upgrade arbitration services", "hosts": "arb",
             "gather_facts": False, "tasks": tasks}]


def write_run_dir(run_dir: Path, spec: dict, *, forks: int | None, pipelining: bool) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "cp").mkdir(exist_ok=True)
    (run_dir / "tmp").mkdir(exist_ok=True)
    params = Params(**spec["params"])
    lines = ["[arb]"]
    for h in spec["hosts"]:
        lines.append(f"{h['ip']} ansible_port={h['port']} svr_ip={h['ip']}")
    common = f"-o UserKnownHostsFile={spec['known_hosts']} -o StrictHostKeyChecking=yes"
    lines += [
        "",
        "[arb:vars]",
        f"ansible_user={spec['user']}",
        f"ansible_ssh_private_key_file={spec['key']}",
        f"ansible_ssh_common_args='{common}'",
        "ansible_python_interpreter=/usr/bin/python3",
        "",
    ]
    (run_dir / "inventory.ini").write_text("\n".join(lines))
    cfg = [
        "[defaults]",
        f"inventory = {run_dir / 'inventory.ini'}",
        f"callback_plugins = {PLUGINS}",
        "callbacks_enabled = bench_times",
        "host_key_checking = True",
        "retry_files_enabled = False",
        f"local_tmp = {run_dir / 'tmp'}",
        "nocolor = True",
    ]
    if forks is not None:
        cfg.append(f"forks = {forks}")
    cfg += ["", "[ssh_connection]", f"control_path_dir = {run_dir / 'cp'}"]
    if pipelining:
        cfg.append("pipelining = True")
    (run_dir / "ansible.cfg").write_text("\n".join(cfg) + "\n")
    (run_dir / "playbook.yml").write_text(json.dumps(playbook(params), indent=1))
    return run_dir


def close_masters(run_dir: Path) -> None:
    """End the ControlPersist masters this run left, so no run reuses another's."""
    for sock in (run_dir / "cp").glob("*"):
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"],
                       capture_output=True, timeout=10, check=False)


def run(run_dir: Path, spec: dict, *, forks: int | None, pipelining: bool,
        timeout: float = 1800) -> dict:
    write_run_dir(run_dir, spec, forks=forks, pipelining=pipelining)
    times_file = run_dir / "times.jsonl"
    times_file.unlink(missing_ok=True)
    env = {**os.environ, "ANSIBLE_CONFIG": str(run_dir / "ansible.cfg"),
           "BENCH_TIMES_FILE": str(times_file)}
    playbook_cmd = str(Path(sys.executable).parent / "ansible-playbook")
    started = time.time()
    with open(run_dir / "ansible.log", "w") as log:
        proc = subprocess.run([playbook_cmd, str(run_dir / "playbook.yml")], env=env,
                              stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                              cwd=run_dir, check=False)
    ended = time.time()
    close_masters(run_dir)
    if proc.returncode != 0:
        tail = (run_dir / "ansible.log").read_text()[-3000:]
        raise RuntimeError(f"ansible-playbook exited {proc.returncode}:\n{tail}")
    hosts: dict[str, dict[str, list[float]]] = {}
    for line in times_file.read_text().splitlines():
        rec = json.loads(line)
        step = rec["task"].split()[0]
        span = hosts.setdefault(rec["host"], {}).setdefault(step, [rec["start"], rec["end"]])
        span[0] = min(span[0], rec["start"] or span[0])
        span[1] = max(span[1], rec["end"])
    return {"started": started, "ended": ended, "hosts": hosts}
