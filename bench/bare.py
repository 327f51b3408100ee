"""The bare floor: one asyncio script that runs bench.commands on every host over
asyncssh, with no orchestration at all.

One verified connection per host serves all of its steps. Modes:

``pipeline`` (the floor): every host is prepared first (the product's safety
    barrier: nothing is stopped before every package is staged), then each host goes
    stop -> install -> start on its own, without waiting for the others.
``layered``: a barrier after every step (every host stopped before any installs,
    ...), the shape of the product's graph and of Ansible's and pyinfra's
    operation-by-operation runs; it tells how much of the product's time is the
    barriers and how much is the rest.

Usage: python -m bench.bare SPEC.json OUT.json (the harness writes SPEC).
Only the standard library, asyncssh and bench.commands are imported.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import asyncssh

from bench.commands import Cmd, Params, Settle, Step, Upload, plan, render


class StepFailed(RuntimeError):
    pass


async def run_item(conn, item, values: dict[str, str], label: str) -> None:
    if isinstance(item, Settle):
        await asyncio.sleep(item.seconds)
        return
    if isinstance(item, Upload):
        async with conn.start_sftp_client() as sftp:
            await sftp.put(item.local, item.remote, block_size=256 * 1024, max_requests=64)
        return
    assert isinstance(item, Cmd)
    command = item.render(values)
    done = await conn.run(command, check=False, timeout=item.timeout)
    if done.exit_status is None:
        raise StepFailed(f"{label}: {command!r} ended without an exit status")
    stdout = str(done.stdout or "")
    if item.check and done.exit_status != 0:
        raise StepFailed(f"{label}: {command!r} exited {done.exit_status}: {done.stderr}")
    for expected in item.expect:
        wanted = render(expected, values)
        if wanted not in stdout:
            raise StepFailed(f"{label}: {command!r} printed {stdout!r}, not {wanted!r}")
    if item.capture:
        values[item.capture] = stdout.strip()


class Host:
    def __init__(self, spec: dict, host: dict, params: Params):
        self.spec = spec
        self.ip = host["ip"]
        self.port = host["port"]
        self.steps = {s.name: s for s in plan(params, self.ip)}
        self.values: dict[str, str] = {}
        self.times: dict[str, list[float]] = {}
        self.conn = None

    async def connect(self) -> None:
        started = time.time()
        self.conn = await asyncssh.connect(
            self.ip,
            port=self.port,
            username=self.spec["user"],
            client_keys=[self.spec["key"]],
            known_hosts=self.spec["known_hosts"],
            agent_path=None,
            config=[],
        )
        self.times["connect"] = [started, time.time()]

    async def step(self, name: str) -> None:
        step: Step = self.steps[name]
        started = time.time()
        for item in step.items:
            await run_item(self.conn, item, self.values, f"{self.ip} {name}")
        self.times[name] = [started, time.time()]

    async def pipeline(self, names: list[str]) -> None:
        for name in names:
            await self.step(name)


async def main_async(spec: dict) -> dict:
    params = Params(**spec["params"])
    hosts = [Host(spec, h, params) for h in spec["hosts"]]
    started = time.time()
    await asyncio.gather(*(h.connect() for h in hosts))
    await asyncio.gather(*(h.step("prepare") for h in hosts))
    if spec.get("mode", "pipeline") == "layered":
        for name in ("stop", "install", "start"):
            await asyncio.gather(*(h.step(name) for h in hosts))
    else:
        await asyncio.gather(*(h.pipeline(["stop", "install", "start"]) for h in hosts))
    ended = time.time()
    for h in hosts:
        h.conn.close()
    await asyncio.gather(*(h.conn.wait_closed() for h in hosts))
    return {
        "started": started,
        "ended": ended,
        "hosts": {h.ip: h.times for h in hosts},
    }


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    try:
        result = asyncio.run(main_async(spec))
    except (StepFailed, asyncssh.Error, OSError) as exc:
        print(f"bare floor failed: {exc}", file=sys.stderr)
        return 1
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
