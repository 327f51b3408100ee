"""The product's package upload, alone: ``activities.ssh.open_session`` and
``HostSession.upload`` (the SFTP put that the prepare step's ``stage_package``
does), to every host at once. Optionally the sha256 check that follows it.

Usage (PYTHONPATH naming the product tree):
    python -m bench.transfer_product SPEC.json OUT.json
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from activities import facts
from activities.ssh import SshSettings, open_session
from arbup.models import ArbitrationService


async def one(host: dict, spec: dict, settings: SshSettings) -> dict:
    service = ArbitrationService(
        id=1, group_id=1, host=host["ip"], ssh_port=host["port"], ssh_user="root",
        ssh_credential=spec["credential"], svr_ip=host["ip"], svr_port=2882,
        install_path="/home/admin/oceanbase", run_user="admin", operating_system="el7",
        arch=os.uname().machine, version="4.2.1.8-108000022024072217", priority=0,
    )
    log: list[str] = []
    times = {}
    async with open_session(service, settings, log) as s:
        await s.run(f"mkdir -p {spec['remote_dir']}")
        started = time.time()
        await s.upload(Path(spec["local"]), spec["remote"])
        times["upload"] = [started, time.time()]
        if spec.get("verify"):
            started = time.time()
            digest = await facts.sha256(s, spec["remote"])
            times["verify"] = [started, time.time()]
            if digest != spec["sha256"]:
                raise RuntimeError(f"{host['ip']}: sha256 {digest} != {spec['sha256']}")
    return times


async def main_async(spec: dict) -> dict:
    settings = SshSettings(known_hosts=Path(spec["known_hosts"]), key_dir=Path(spec["key_dir"]))
    started = time.time()
    results = await asyncio.gather(*(one(h, spec, settings) for h in spec["hosts"]))
    ended = time.time()
    return {"started": started, "ended": ended,
            "hosts": {h["ip"]: r for h, r in zip(spec["hosts"], results)}}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(asyncio.run(main_async(spec))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
