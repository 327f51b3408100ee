"""arbup's benchmark harness: ``python -m bench`` (``make bench``).

Sections (all in one run; BENCH_SECTIONS picks some):

e2e       N local hosts (N = 2, 10, 50) upgraded from the old to the target version,
          stand-in delays realistic (stop 3 s, start 5 s) and zero, by: the product;
          Ansible with its defaults; Ansible with forks = N and pipelining; pyinfra;
          the bare floor (bench/bare.py) and its layered variant. End-to-end time and
          each service's downtime (stop begun -> healthy on the target), median of
          BENCH_REPEATS runs. The per-subtask orchestration overhead is read from the
          zero-delay runs.
transfer  a 100 MB package to N hosts at once: the product's SFTP upload against
          OpenSSH scp.
scale     one group of 200 services (history events and size, worker memory) and 50
          groups of 2 upgraded at once (throughput, worker CPU and memory).

Environment: BENCH_QUICK=1 (a short run, about 10 minutes: N = 2 and 10, one repeat,
Ansible at N = 2 only, a 20 MB package, small scale tests; its report goes under
BENCH_STATE/quick/, not into docs/),
BENCH_REPEATS, BENCH_REPEATS_BY_N (default "50:2"), BENCH_TRANSFER_REPEATS_BY_N
(default "50:1"), BENCH_SIZES (e.g. "2,10,50"), BENCH_SECTIONS (e.g. "e2e,transfer"), BENCH_TOOLS (e.g. "product,bare"), BENCH_ANSIBLE_REPEATS (repeats of the
Ansible runs per N, default "2:3,10:1,50:1": they take minutes each at N >= 10),
BENCH_PRODUCT_REF (benchmark a git ref of the product instead of the working tree),
BENCH_SKIP (runs left out, "tool:N:delays" with "*" for any delays; by default
Ansible at N = 50 except forks = N with realistic delays), BENCH_NET_E2E and
BENCH_NET_SCALE (first host addresses, default 127.60.0.1 and 127.61.0.1),
BENCH_PRODUCT_DIR (or a product tree elsewhere, e.g. a scratch copy with a change),
BENCH_STATE (scratch directory, default /tmp/arbup-bench), BENCH_OUT (default
docs/benchmarks). Hosts live on 127.60.0.0/24 (e2e, transfer) and 127.61.0.0/24
(scale); nothing is sent anywhere else.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench import ansible_run, hosts as H, product as P, sysinfo
from bench.commands import Params, compare_with_product_log, plan

ROOT = Path(__file__).resolve().parent.parent
E2E_NET = os.environ.get("BENCH_NET_E2E", "127.60.0.1")
SCALE_NET = os.environ.get("BENCH_NET_SCALE", "127.61.0.1")
SETTLE = 2.0
TOOLS = ("product", "ansible-default", "ansible-forks-n", "pyinfra", "bare", "bare-layered")


def env_list(name: str, default: list) -> list:
    raw = os.environ.get(name)
    return [type(default[0])(x) for x in raw.split(",")] if raw else default


class Config:
    def __init__(self) -> None:
        self.quick = os.environ.get("BENCH_QUICK") == "1"
        self.sizes = env_list("BENCH_SIZES", [2, 10] if self.quick else [2, 10, 50])
        self.repeats = int(os.environ.get("BENCH_REPEATS", "1" if self.quick else "3"))
        self.tools = tuple(env_list("BENCH_TOOLS", list(TOOLS)))
        self.tools += tuple(f"product@{name}" for name in self.variants_names())
        self.sections = env_list("BENCH_SECTIONS", ["e2e", "transfer", "scale"])
        self.state = Path(os.environ.get("BENCH_STATE", "/tmp/arbup-bench"))
        # A quick run writes its report under the scratch directory, not into docs/.
        default_out = self.state / "quick" / "benchmarks" if self.quick else ROOT / "docs" / "benchmarks"
        self.out = Path(os.environ.get("BENCH_OUT", default_out))
        self.product_ref = os.environ.get("BENCH_PRODUCT_REF") or None
        self.product_dir = os.environ.get("BENCH_PRODUCT_DIR") or None
        # Extra product trees run as extra tools "product@NAME" (A/B of a change under
        # the same load): BENCH_VARIANTS="NAME=/path,NAME2=/path2".
        raw = os.environ.get("BENCH_VARIANTS", "")
        self.variants = dict(p.split("=", 1) for p in raw.split(",") if p)
        # Fewer repeats at the largest N (each run there takes a minute or more).
        raw = os.environ.get("BENCH_REPEATS_BY_N", "" if self.quick else "50:2")
        self.repeats_by_n = {int(k): int(v) for k, v in (p.split(":") for p in raw.split(",") if p)}
        # Ansible takes minutes per run at N >= 10 on 2 cores: fewer repeats there.
        raw = os.environ.get("BENCH_ANSIBLE_REPEATS", "2:3,10:1,50:1")
        self.ansible_repeats = {int(k): int(v) for k, v in (p.split(":") for p in raw.split(","))}
        # tool:N:delays runs left out ("*" for any); by default the Ansible runs that
        # would take a quarter of an hour each at N = 50 on this machine.
        raw = os.environ.get("BENCH_SKIP", "ansible-default:10:*,ansible-forks-n:10:*"
                             if self.quick else
                             "ansible-default:50:*,ansible-forks-n:50:zero")
        self.skip = {tuple(p.split(":")) for p in raw.split(",") if p}
        self.transfer_mb = 20 if self.quick else 100
        self.transfer_sizes = env_list("BENCH_TRANSFER_SIZES", self.sizes)
        raw = os.environ.get("BENCH_TRANSFER_REPEATS_BY_N", "" if self.quick else "50:1")
        self.transfer_repeats_by_n = {int(k): int(v) for k, v in (p.split(":") for p in raw.split(",") if p)}
        self.scale_services = int(os.environ.get("BENCH_SCALE_SERVICES", "20" if self.quick else "200"))
        self.scale_groups = int(os.environ.get("BENCH_SCALE_GROUPS", "5" if self.quick else "50"))
        self.scale_group_size = 2
        raw = os.environ.get("BENCH_SCALE_VARIANTS", "")
        self.scale_variants = dict(p.split("=", 1) for p in raw.split(",") if p)
        # A scale run that has not finished by then is recorded as failed.
        self.scale_timeout = float(os.environ.get("BENCH_SCALE_TIMEOUT", "600"))


def _variants_names() -> list[str]:
    raw = os.environ.get("BENCH_VARIANTS", "")
    return [p.split("=", 1)[0] for p in raw.split(",") if p]


Config.variants_names = staticmethod(_variants_names)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- runs


def _log_times(lines: list[str]) -> dict:
    """From a product subtask log: seconds spent in remote commands, in SFTP, and
    whether a package transfer happened."""
    commands = sum(float(m) for m in re.findall(r" -> exit -?\d+ in ([\d.]+)s", " ".join(lines)))
    sftp = sum(float(m) for m in re.findall(r"sftp put .* bytes in ([\d.]+)s", " ".join(lines)))
    count = sum(1 for line in lines if line.startswith("$ "))
    return {"command_s": round(commands, 3), "sftp_s": round(sftp, 3), "commands": count,
            "transfers": sum(1 for line in lines if line.startswith("sftp put"))}


def summarize_product_group(g: dict) -> dict:
    """The product's record of one group, without the logs (kept small)."""
    subtasks = []
    for s in g["subtasks"]:
        subtasks.append({k: s[k] for k in ("id", "name", "service_id", "start", "end")}
                        | _log_times(s["log"]))
    out = {k: g[k] for k in ("group_id", "task_id", "status", "started", "ended", "hosts",
                             "result_bytes")}
    out["subtasks"] = subtasks
    if "history" in g:
        out["history"] = g["history"]
    return out


class Runner:
    def __init__(self, cfg: Config, pool: H.Pool, product: P.Product, params: Params,
                 variants: dict[str, P.Product] | None = None):
        self.cfg = cfg
        self.pool = pool
        self.product = product
        self.variants = variants or {}
        self.params = params
        self.count = 0

    def spec(self, hosts, **extra) -> dict:
        return {
            "params": self.params.to_json(),
            "hosts": [{"ip": h.ip, "port": h.ssh_port} for h in hosts],
            "key": str(self.pool.key),
            "known_hosts": str(self.pool.known_hosts),
            "user": "root",
            **extra,
        }

    def _script(self, module: str, spec: dict, tag: str) -> dict:
        run_dir = self.cfg.state / "runs"
        run_dir.mkdir(parents=True, exist_ok=True)
        spec_path = run_dir / f"{tag}.json"
        out_path = run_dir / f"{tag}.out.json"
        spec_path.write_text(json.dumps(spec))
        started = time.time()
        with open(run_dir / f"{tag}.log", "w") as logf:
            proc = subprocess.run([sys.executable, "-m", module, str(spec_path), str(out_path)],
                                  cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT,
                                  timeout=1800, check=False)
        ended = time.time()
        if proc.returncode != 0:
            raise RuntimeError(f"{module} exited {proc.returncode}: "
                               f"{(run_dir / f'{tag}.log').read_text()[-2000:]}")
        result = json.loads(out_path.read_text())
        result["process_seconds"] = ended - started
        return result

    def run(self, tool: str, hosts) -> dict:
        self.count += 1
        tag = f"{tool}-{len(hosts)}-{self.count}"
        extra: dict = {}
        if tool == "product" or tool.startswith("product@"):
            product = self.variants[tool.split("@", 1)[1]] if "@" in tool else self.product
            out = product.upgrade([[{"ip": h.ip, "port": h.ssh_port} for h in hosts]],
                                       packages=[str(p) for p in self.pool.packages.values()],
                                       settle=SETTLE)
            if "error" in out:
                raise RuntimeError(out["error"])
            g = out["groups"][0]
            spans = P.host_spans(g)
            e2e = g["ended"] - g["started"]
            extra["record"] = summarize_product_group(g)
            extra["logs"] = P.logs_by_step(g, 0)
        elif tool in ("bare", "bare-layered"):
            mode = "layered" if tool == "bare-layered" else "pipeline"
            out = self._script("bench.bare", self.spec(hosts, mode=mode), tag)
            spans = out["hosts"]
            e2e = out["ended"] - out["started"]
            extra["process_seconds"] = out["process_seconds"]
        elif tool == "pyinfra":
            out = self._script("bench.pyinfra_run", self.spec(hosts), tag)
            spans = out["hosts"]
            e2e = out["process_seconds"]
            extra["internal_seconds"] = out["ended"] - out["started"]
        elif tool.startswith("ansible"):
            forks = len(hosts) if tool == "ansible-forks-n" else None
            out = ansible_run.run(self.cfg.state / "runs" / tag, self.spec(hosts),
                                  forks=forks, pipelining=forks is not None)
            spans = out["hosts"]
            e2e = out["ended"] - out["started"]
        else:
            raise ValueError(tool)
        downtime = {ip: s["start"][1] - s["stop"][0] for ip, s in spans.items()}
        steps = {ip: {k: v[1] - v[0] for k, v in s.items()} for ip, s in spans.items()}
        return {"e2e": e2e, "downtime": downtime, "steps": steps, **extra}


# ------------------------------------------------------------------------ sections


def run_e2e(cfg: Config, runner: Runner, sampler: sysinfo.LoadSampler) -> dict:
    runs = []
    equivalence = None
    hosts_all = runner.pool.hosts
    for n in cfg.sizes:
        hosts = hosts_all[:n]
        for delays in ("realistic", "zero"):
            for rep in range(cfg.repeats_by_n.get(n, cfg.repeats)):
                tools = cfg.tools
                order = list(tools[rep % len(tools):] + tools[: rep % len(tools)])
                for tool in order:
                    if {(tool, str(n), delays), (tool, str(n), "*")} & cfg.skip:
                        continue
                    if tool.startswith("ansible") and rep >= min(
                            cfg.repeats, cfg.ansible_repeats.get(n, cfg.repeats)):
                        continue
                    H.reset(runner.pool, hosts, delays)
                    load = os.getloadavg()[0]
                    started = time.time()
                    record = {"tool": tool, "n": n, "delays": delays, "rep": rep,
                              "load1_before": round(load, 2)}
                    try:
                        result = runner.run(tool, hosts)
                        bad = H.verify(hosts)
                        if bad:
                            raise RuntimeError(f"hosts not on the target after the run: {bad[:3]}")
                        logs = result.pop("logs", None)
                        if logs and equivalence is None and tool == "product":
                            equivalence = compare_with_product_log(
                                plan(runner.params, hosts[0].ip), logs)
                        record.update(result)
                        record["ok"] = True
                        downs = sorted(result["downtime"].values())
                        log(f"{tool:16s} N={n:<3d} {delays:9s} rep {rep}: "
                            f"e2e {result['e2e']:7.2f}s  downtime median "
                            f"{statistics.median(downs):6.2f}s max {downs[-1]:6.2f}s  "
                            f"(load {load:.1f})")
                    except Exception as exc:  # a failed run is recorded, not fatal
                        record["ok"] = False
                        record["error"] = f"{type(exc).__name__}: {exc}"[-3000:]
                        log(f"{tool:16s} N={n:<3d} {delays:9s} rep {rep}: FAILED {record['error'][:500]}")
                    record["load"] = sampler.between(started, time.time())
                    runs.append(record)
    return {"runs": runs, "equivalence": equivalence}


def make_big_package(path: Path, megabytes: int) -> Path:
    if path.exists() and path.stat().st_size == megabytes * 2**20:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(megabytes):
            f.write(os.urandom(2**20))
    return path


def run_transfer(cfg: Config, runner: Runner, sampler: sysinfo.LoadSampler) -> dict:
    big = make_big_package(cfg.state / "big" / "oceanbase-9.9.9.9-1.el7.x86_64.rpm",
                           cfg.transfer_mb)
    digest = sha256_of(big)
    (cfg.state / "runs").mkdir(parents=True, exist_ok=True)
    remote_dir = "/tmp/arbup-staging"
    remote = f"{remote_dir}/{big.name}.part"
    runs = []
    product_env = runner.product.env()
    for n in cfg.transfer_sizes:
        hosts = runner.pool.hosts[:n]
        for rep in range(cfg.transfer_repeats_by_n.get(n, cfg.repeats)):
            tools = ("product", "scp")
            for tool in tools[rep % 2:] + tools[:rep % 2]:
                for h in hosts:
                    shutil.rmtree(h.root / "tmp" / "arbup-staging", ignore_errors=True)
                    (h.root / "tmp" / "arbup-staging").mkdir()
                load = os.getloadavg()[0]
                started = time.time()
                record = {"tool": tool, "n": n, "rep": rep, "mb": cfg.transfer_mb,
                          "load1_before": round(load, 2)}
                try:
                    if tool.startswith("product"):
                        spec = {"hosts": [{"ip": h.ip, "port": h.ssh_port} for h in hosts],
                                "credential": H.CREDENTIAL, "key_dir": str(runner.pool.key_dir),
                                "known_hosts": str(runner.pool.known_hosts), "local": str(big),
                                "remote": remote, "remote_dir": remote_dir, "sha256": digest}
                        spec_path = cfg.state / "runs" / f"transfer-{tool}-{n}-{rep}.json"
                        spec_path.write_text(json.dumps(spec))
                        out_path = spec_path.with_suffix(".out")
                        proc = subprocess.run(
                            [sys.executable, "-m", "bench.transfer_product", str(spec_path),
                             str(out_path)], env=product_env, cwd=runner.product.product_dir,
                            check=False, capture_output=True, text=True, timeout=1800)
                        if proc.returncode != 0:
                            raise RuntimeError(f"transfer_product exited {proc.returncode}: "
                                               f"{proc.stderr[-1500:]}")
                        out = json.loads(out_path.read_text())
                        seconds = out["ended"] - out["started"]
                    else:
                        t0 = time.time()
                        procs = [subprocess.Popen(
                            ["scp", "-q", "-i", str(runner.pool.key), "-P", str(h.ssh_port),
                             "-o", f"UserKnownHostsFile={runner.pool.known_hosts}",
                             "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                             str(big), f"root@{h.ip}:{remote}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for h in hosts]
                        codes = [p.wait(1800) for p in procs]
                        seconds = time.time() - t0
                        if any(codes):
                            raise RuntimeError(f"scp exit codes {codes}: "
                                               f"{procs[codes.index(max(codes))].stderr.read()[-500:]}")
                    sizes = {h.ip: (h.root / "tmp" / "arbup-staging" / f"{big.name}.part").stat().st_size
                             for h in hosts}
                    if set(sizes.values()) != {big.stat().st_size}:
                        raise RuntimeError(f"incomplete uploads: {sizes}")
                    record.update(ok=True, seconds=seconds,
                                  mb_per_s=n * cfg.transfer_mb / seconds)
                    log(f"transfer {tool:17s} N={n:<3d} rep {rep}: {seconds:6.2f}s "
                        f"{record['mb_per_s']:7.1f} MB/s (load {load:.1f})")
                except Exception as exc:
                    record.update(ok=False, error=f"{type(exc).__name__}: {exc}"[-2000:])
                    log(f"transfer {tool} N={n} rep {rep}: FAILED {record['error'][:400]}")
                record["load"] = sampler.between(started, time.time())
                runs.append(record)
    for h in runner.pool.hosts:
        shutil.rmtree(h.root / "tmp" / "arbup-staging", ignore_errors=True)
    return {"runs": runs, "package_mb": cfg.transfer_mb}


def run_scale(cfg: Config, pool: H.Pool, product: P.Product, worker, temporal,
              sampler: sysinfo.LoadSampler) -> dict:
    out: dict = {}
    packages = [str(p) for p in pool.packages.values()]

    def measured(label: str, groups: list[list]) -> dict:
        H.reset(pool, [h for g in groups for h in g], "zero")
        procs = {"worker": worker}
        if temporal is not None:
            procs["temporal_server"] = temporal
        sampler_p = sysinfo.ProcSampler(procs).start()
        started = time.time()
        record: dict = {"groups": len(groups), "services": sum(len(g) for g in groups),
                        "load1_before": round(os.getloadavg()[0], 2)}
        try:
            result = product.upgrade([[{"ip": h.ip, "port": h.ssh_port} for h in g] for g in groups],
                                     packages=packages, settle=SETTLE, timeout=cfg.scale_timeout + 120,
                                     deadline=cfg.scale_timeout)
            record["resources"] = sampler_p.stop()
            unfinished = [g for g in result["groups"] if g["status"] != "SUCCESSFUL"]
            if unfinished:
                record["groups_not_successful"] = [
                    {"group_id": g["group_id"], "status": g["status"],
                     "message": (g.get("message") or "")[:500]} for g in unfinished]
                done = [g for g in result["groups"] if g["status"] == "SUCCESSFUL"]
                record["successful_groups"] = len(done)
                record["retries"] = sum(g.get("history", {}).get("activities_retried", 0)
                                        for g in result["groups"])
                record["timeouts"] = sum(g.get("history", {}).get("activities_timed_out", 0)
                                         for g in result["groups"])
                raise RuntimeError(f"{len(unfinished)} of {len(groups)} groups did not "
                                   f"succeed: {record['groups_not_successful'][:3]}")
            bad = H.verify([h for g in groups for h in g])
            if bad:
                raise RuntimeError(f"hosts not on the target: {bad[:3]}")
            seconds = result["ended"] - result["started"]
            record["retries"] = sum(g["history"].get("activities_retried", 0) for g in result["groups"])
            record["timeouts"] = sum(g["history"].get("activities_timed_out", 0) for g in result["groups"])
            record.update(ok=True, seconds=seconds,
                          groups_per_min=60 * len(groups) / seconds,
                          services_per_min=60 * record["services"] / seconds,
                          per_group=[{k: g[k] for k in ("group_id", "started", "ended", "result_bytes")}
                                     | {"history": {k: v for k, v in g["history"].items() if k != "activities"}}
                                     for g in result["groups"]])
            if len(groups) == 1:
                record["record"] = summarize_product_group(result["groups"][0])
            log(f"scale {label}: {seconds:.1f}s, worker {record['resources']['worker']}")
        except Exception as exc:
            if sampler_p._thread.is_alive():
                record["resources"] = sampler_p.stop()
            record.update(ok=False, error=f"{type(exc).__name__}: {exc}"[-3000:])
            log(f"scale {label}: FAILED {record['error'][:800]}")
            product.terminate_running()
        record["load"] = sampler.between(started, time.time())
        return record

    services = pool.hosts[: cfg.scale_services]
    out["one_group"] = measured(f"1 group of {len(services)}", [services])
    size = cfg.scale_group_size
    groups = [pool.hosts[i * size:(i + 1) * size] for i in range(cfg.scale_groups)]
    out["many_groups"] = measured(f"{len(groups)} groups of {size}", groups)
    return out


def run_scale_variants(cfg: Config, pool: H.Pool, address: str, temporal,
                       sampler: sysinfo.LoadSampler) -> dict:
    """The scale measurements again with each product tree of BENCH_SCALE_VARIANTS."""
    out = {}
    for name, path in cfg.scale_variants.items():
        product = P.Product(Path(path).resolve(), address, cfg.state / f"product-scale-{name}",
                            db_url=f"sqlite:///{cfg.state}/product-scale-{name}/arbup.db",
                            key_dir=pool.key_dir, known_hosts=pool.known_hosts,
                            credential=H.CREDENTIAL)
        (cfg.state / f"product-scale-{name}" / "arbup.db").unlink(missing_ok=True)
        worker = product.start_worker()
        try:
            log(f"scale, variant {name}")
            out[name] = run_scale(cfg, pool, product, worker, temporal, sampler)
        finally:
            product.stop_worker()
    return out


# ---------------------------------------------------------------------------- main


async def main_async(cfg: Config) -> dict:
    cfg.state.mkdir(parents=True, exist_ok=True)
    cfg.out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": cfg.quick,
        "sizes": cfg.sizes,
        "repeats": cfg.repeats,
        "repeats_by_n": cfg.repeats_by_n,
        "ansible_repeats": cfg.ansible_repeats,
        "skipped": sorted(":".join(k) for k in cfg.skip),
        "transfer_repeats_by_n": cfg.transfer_repeats_by_n,
        "stop_settle_seconds": 0.5,
        "settle_seconds": SETTLE,
        "delays": {k: {"stop_delay": v[0], "start_delay": v[1]} for k, v in H.DELAYS.items()},
        "machine": sysinfo.machine(),
        "versions": sysinfo.versions(),
        "product_ref": cfg.product_ref or "working tree",
        "busiest_processes_at_start": sysinfo.top_processes(),
        "load1_at_start": os.getloadavg()[0],
    }
    try:
        results["product_commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", cfg.product_ref or "HEAD"],
            capture_output=True, text=True, check=False).stdout.strip()
        results["product_dirty"] = bool(subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "activities", "workflows",
             "arbup", "starter", "worker"], capture_output=True, text=True,
            check=False).stdout.strip()) and not cfg.product_ref
    except OSError:
        pass
    log(f"machine {results['machine']}, load {results['load1_at_start']:.2f}")
    sampler = sysinfo.LoadSampler().start()
    product_dir = (Path(cfg.product_dir).resolve() if cfg.product_dir
                   else P.product_dir_for(cfg.product_ref, cfg.state))
    if cfg.product_dir:
        label = product_dir / ".bench-label"
        results["product_ref"] = (label.read_text().strip() if label.is_file()
                                  else f"directory {product_dir}")
    pkgs = H.packages(cfg.state / "packages")
    target = pkgs[H.TARGET]
    params = Params(package_path=str(target), package_file=target.name,
                    package_sha256=sha256_of(target), target_full_version=H.TARGET,
                    settle_seconds=SETTLE)
    temporal_env = await P.start_temporal()
    address = P.temporal_address(temporal_env)
    temporal_proc = P.temporal_server_process()
    log(f"Temporal dev server at {address}")
    bench_started = time.time()
    try:
        if {"e2e", "transfer"} & set(cfg.sections):
            n_hosts = max(cfg.sizes + (cfg.transfer_sizes if "transfer" in cfg.sections else []))
            log(f"starting {n_hosts} hosts for e2e/transfer")
            pool = H.start_pool(cfg.state / "e2e", n_hosts, E2E_NET, pkgs)
            product = P.Product(product_dir, address, cfg.state / "product-e2e",
                                db_url=f"sqlite:///{cfg.state}/product-e2e/arbup.db",
                                key_dir=pool.key_dir, known_hosts=pool.known_hosts,
                                credential=H.CREDENTIAL)
            (cfg.state / "product-e2e" / "arbup.db").unlink(missing_ok=True)
            product.start_worker()
            variants = {}
            for name, path in cfg.variants.items():
                variants[name] = P.Product(Path(path).resolve(), address,
                                           cfg.state / f"product-e2e-{name}",
                                           db_url=f"sqlite:///{cfg.state}/product-e2e-{name}/arbup.db",
                                           key_dir=pool.key_dir, known_hosts=pool.known_hosts,
                                           credential=H.CREDENTIAL)
                (cfg.state / f"product-e2e-{name}" / "arbup.db").unlink(missing_ok=True)
                variants[name].start_worker()
            runner = Runner(cfg, pool, product, params, variants)
            try:
                if "e2e" in cfg.sections:
                    t0 = time.time()
                    results["e2e"] = run_e2e(cfg, runner, sampler)
                    results["e2e"]["load"] = sampler.between(t0, time.time())
                    results["e2e"]["seconds"] = time.time() - t0
                if "transfer" in cfg.sections:
                    t0 = time.time()
                    results["transfer"] = run_transfer(cfg, runner, sampler)
                    results["transfer"]["load"] = sampler.between(t0, time.time())
            finally:
                product.stop_worker()
                for variant in variants.values():
                    variant.stop_worker()
                H.stop_pool(pool)
        if "scale" in cfg.sections:
            n_hosts = max(cfg.scale_services, cfg.scale_groups * cfg.scale_group_size)
            log(f"starting {n_hosts} hosts for scale")
            t0 = time.time()
            pool = H.start_pool(cfg.state / "scale", n_hosts, SCALE_NET, pkgs)
            results["scale_hosts_setup_seconds"] = round(time.time() - t0, 1)
            product = P.Product(product_dir, address, cfg.state / "product-scale",
                                db_url=f"sqlite:///{cfg.state}/product-scale/arbup.db",
                                key_dir=pool.key_dir, known_hosts=pool.known_hosts,
                                credential=H.CREDENTIAL)
            (cfg.state / "product-scale" / "arbup.db").unlink(missing_ok=True)
            worker = product.start_worker()
            try:
                t0 = time.time()
                results["scale"] = run_scale(cfg, pool, product, worker, temporal_proc, sampler)
                results["scale"]["load"] = sampler.between(t0, time.time())
            finally:
                product.stop_worker()
            try:
                if cfg.scale_variants:
                    results["scale_variants"] = run_scale_variants(cfg, pool, address,
                                                                   temporal_proc, sampler)
            finally:
                H.stop_pool(pool)
    finally:
        sampler.stop()
        await temporal_env.shutdown()
    results["seconds"] = round(time.time() - bench_started, 1)
    results["load"] = sampler.between(bench_started, time.time())
    results["busiest_processes_at_end"] = sysinfo.top_processes()
    return results


def main() -> int:
    cfg = Config()
    try:
        results = asyncio.run(main_async(cfg))
    except Exception:
        traceback.print_exc()
        return 1
    path = cfg.out / "results.json"
    path.write_text(json.dumps(results, separators=(",", ":"), default=str))
    log(f"raw results in {path}")
    from bench import report

    report.write(results, cfg.out, cfg.out.parent / "benchmarks.md")
    log("report written")
    return 0
