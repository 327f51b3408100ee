"""The product's package upload, alone: ``activities.ssh.open_session`` and
``HostSession.upload`` (the SFTP put that the prepare step's ``stage_package``
does), to every host at once. Optionally the sha256 check that follows it.

With ``"aes_gcm_first": true``, connections offer AES-GCM first (the second
recommended change), likewise simulated.

With ``"fixed_block_size": true`` in the spec, SFTP writes are kept within the
server's limit (asyncssh's default block size, the server's ``limits@openssh.com``
max write length) instead of the product's fixed 256 KiB: the change recommended
in docs/benchmarks.md, simulated here without touching the product, to measure it.

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


def keep_writes_within_server_limit() -> None:
    """Make SFTPClient.put ignore a block size above the server's max write length."""
    import asyncssh

    original = asyncssh.SFTPClient.put

    async def put(self, *args, block_size=-1, **kwargs):
        limit = self.limits.max_write_len if getattr(self, "limits", None) else 0
        if limit and block_size is not None and block_size > limit:
            block_size = -1
        return await original(self, *args, block_size=block_size, **kwargs)

    asyncssh.SFTPClient.put = put


AES_GCM_FIRST = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
]


def prefer_aes_gcm() -> None:
    """Make asyncssh.connect offer AES-GCM before ChaCha20-Poly1305 (asyncssh's first
    choice, much slower in asyncssh than AES-GCM on a CPU with AES instructions)."""
    import asyncssh

    original = asyncssh.connect

    def connect(*args, **kwargs):
        kwargs.setdefault("encryption_algs", AES_GCM_FIRST)
        return original(*args, **kwargs)

    asyncssh.connect = connect


async def main_async(spec: dict) -> dict:
    if spec.get("fixed_block_size"):
        keep_writes_within_server_limit()
    if spec.get("aes_gcm_first"):
        prefer_aes_gcm()
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
