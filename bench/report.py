"""docs/benchmarks.md and its charts from the harness's raw results.

Everything in the document is generated from the results, except the text between
``<!-- analysis:begin -->`` and ``<!-- analysis:end -->``, which is kept from the
existing document (the written analysis of a run).
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

TOOL_LABELS = {
    "product": "arbup (this product)",
    "ansible-default": "Ansible, defaults (forks 5)",
    "ansible-forks-n": "Ansible, forks = N + pipelining",
    "pyinfra": "pyinfra",
    "bare": "bare floor (asyncssh)",
    "bare-layered": "bare floor, layered",
}
TOOLS = list(TOOL_LABELS)
HOST_STEPS = ("prepare", "stop", "install", "start")
SUBTASK_STEP = {
    "Prepare upgrade arbitration service": "prepare",
    "Stop arbitration service": "stop",
    "Install arbitration rpm": "install",
    "Start arbitration service": "start",
}
HISTORY_WARN_EVENTS = 10_240
HISTORY_WARN_BYTES = 10 * 2**20
HISTORY_LIMIT_EVENTS = 51_200
HISTORY_LIMIT_BYTES = 50 * 2**20
BLOB_WARN_BYTES = 512 * 2**10
BLOB_LIMIT_BYTES = 2 * 2**20
BEGIN, END = "<!-- analysis:begin -->", "<!-- analysis:end -->"


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=2, unit=""):
    if value is None:
        return "–"
    return f"{value:.{digits}f}{unit}"


def ratio(a, b):
    return a / b if a is not None and b else None


# --------------------------------------------------------------------------- e2e


def e2e_table(results: dict) -> dict:
    """(n, delays, tool) -> medians over the runs that succeeded."""
    cells: dict = {}
    for r in results.get("e2e", {}).get("runs", []):
        cell = cells.setdefault((r["n"], r["delays"], r["tool"]), {"runs": [], "failed": []})
        (cell["runs"] if r.get("ok") else cell["failed"]).append(r)
    out = {}
    for key, cell in cells.items():
        runs = cell["runs"]
        out[key] = {
            "e2e": med([r["e2e"] for r in runs]),
            "downtime": med([med(list(r["downtime"].values())) for r in runs]),
            "downtime_max": med([max(r["downtime"].values()) for r in runs]),
            "ok": len(runs),
            "total": len(runs) + len(cell["failed"]),
            "errors": [r.get("error", "")[:300] for r in cell["failed"]],
            "load": med([r.get("load1_before") for r in runs]),
        }
    return out


def chart(results: dict, table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({k[0] for k in table})
    fig, axes = plt.subplots(2, 2, figsize=(12, 9), sharex=True)
    styles = {
        "product": dict(color="tab:red", marker="o", linewidth=2.5),
        "ansible-default": dict(color="tab:blue", marker="s"),
        "ansible-forks-n": dict(color="tab:cyan", marker="s", linestyle="--"),
        "pyinfra": dict(color="tab:green", marker="^"),
        "bare": dict(color="black", marker="x"),
        "bare-layered": dict(color="gray", marker="x", linestyle=":"),
    }
    from matplotlib.ticker import NullFormatter

    extra = sorted({k[2] for k in table} - set(TOOLS))
    for tool in extra:
        styles[tool] = dict(color="tab:red", marker="o", linestyle="--", alpha=0.55)
    for col, delays in enumerate(("realistic", "zero")):
        for row, (metric, title) in enumerate((("e2e", "end-to-end time"),
                                                ("downtime", "downtime per service (median)"))):
            ax = axes[row][col]
            for tool in TOOLS + extra:
                xs, ys = [], []
                for n in sizes:
                    cell = table.get((n, delays, tool))
                    if cell and cell[metric] is not None:
                        xs.append(n)
                        ys.append(cell[metric])
                if xs:
                    label = TOOL_LABELS.get(tool) or (
                        f"arbup + change “{tool.split('@', 1)[-1]}” (scratch copy)")
                    ax.plot(xs, ys, label=label, **styles[tool])
            d = results["delays"][delays]
            ax.set_title(f"{title}, {delays} delays (stop {d['stop_delay']:g} s, "
                         f"start {d['start_delay']:g} s)", fontsize=10)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(sizes)
            ax.set_xticklabels([str(n) for n in sizes])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_ylabel("seconds (log scale)")
            ax.grid(True, which="both", alpha=0.3)
            if row == 1:
                ax.set_xlabel("services upgraded at once (N)")
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle("Upgrading N arbitration services (median of the runs of each point; "
                 "see the tables for their number)", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------- overhead


def _product_breakdown(run: dict) -> dict:
    """Where the product's end-to-end time went, from its subtask records."""
    rec = run["record"]
    subs = [s for s in rec["subtasks"] if s["start"] and s["end"]]
    layers: dict[str, list] = {}
    for s in subs:
        # Every "Wait node" is a layer of its own; other names are one layer each.
        key = f"wait-{s['id']}" if s["name"] == "Wait node" else s["name"]
        layers.setdefault(key, []).append(s)
    # Layers in the order they ran.
    spans = sorted(((min(s["start"] for s in v), max(s["end"] for s in v), name)
                    for name, v in layers.items()), key=lambda t: t[0])
    host = sum(e - b for b, e, name in spans if name in SUBTASK_STEP)
    other = sum(e - b for b, e, name in spans if name not in SUBTASK_STEP)
    gaps = sum(max(0.0, spans[i + 1][0] - spans[i][1]) for i in range(len(spans) - 1))
    return {
        "to_first_subtask": spans[0][0] - rec["started"],
        "host_layers": host,
        "record_and_wait_layers": other,
        "between_layers": gaps,
        "after_last_subtask": rec["ended"] - spans[-1][1],
    }


def _activity_stats(run: dict) -> dict:
    rec = run["record"]
    by_id = {s["id"]: s for s in rec["subtasks"]}
    out: dict = {}
    for a in rec.get("history", {}).get("activities", []):
        sub = by_id.get(a.get("subtask_id"))
        step = SUBTASK_STEP.get(sub["name"]) if sub else None
        if step is None or "started" not in a or "closed" not in a:
            continue
        cell = out.setdefault(step, {"dispatch": [], "run": [], "outside": [], "subtask": []})
        cell["dispatch"].append(a["started"] - a["scheduled"])
        cell["run"].append(a["closed"] - a["started"])
        pause = {"start": run.get("settle", 2.0), "stop": run.get("stop_settle", 0.5)}.get(step, 0.0)
        cell["outside"].append((a["closed"] - a["started"]) - sub["command_s"] - sub["sftp_s"] - pause)
        cell["subtask"].append(sub["end"] - sub["start"])
    return out


def overhead_section(results: dict, table: dict) -> list[str]:
    runs = [r for r in results.get("e2e", {}).get("runs", []) if r.get("ok") and r["delays"] == "zero"]
    sizes = sorted({r["n"] for r in runs})
    lines = []
    lines.append("| N | arbup e2e | bare e2e | overhead (arbup − bare) | bare layered e2e | "
                 "of which barriers (layered − bare) |")
    lines.append("|---|---|---|---|---|---|")
    for n in sizes:
        p = table.get((n, "zero", "product"), {}).get("e2e")
        b = table.get((n, "zero", "bare"), {}).get("e2e")
        bl = table.get((n, "zero", "bare-layered"), {}).get("e2e")
        lines.append(f"| {n} | {fmt(p)} s | {fmt(b)} s | {fmt(p - b if p and b else None)} s | "
                     f"{fmt(bl)} s | {fmt(bl - b if bl and b else None)} s |")
    lines.append("")
    lines.append("Where arbup's end-to-end time goes (zero delays, median over runs; from "
                 "the subtask start/end times the product records):")
    lines.append("")
    lines.append("| N | start → first subtask | host-step layers | wait/record layers | "
                 "between layers | last subtask → result |")
    lines.append("|---|---|---|---|---|---|")
    for n in sizes:
        parts = [_product_breakdown(r) for r in runs if r["tool"] == "product" and r["n"] == n]
        if not parts:
            continue
        keys = ("to_first_subtask", "host_layers", "record_and_wait_layers", "between_layers",
                "after_last_subtask")
        lines.append(f"| {n} | " + " | ".join(fmt(med([p[k] for p in parts]), 2, " s") for k in keys) + " |")
    lines.append("")
    lines.append("Per subtask (zero delays, median over services and runs): the product's "
                 "subtask duration against the bare floor's same step; the product's "
                 "activity dispatch latency (scheduled → started, from the history) and "
                 "its activity time outside the remote commands, the SFTP transfer and "
                 "the settle pauses (the SSH connection each activity opens, and Python).")
    lines.append("")
    lines.append("| N | step | arbup subtask | bare step | overhead | dispatch latency | "
                 "activity time outside commands |")
    lines.append("|---|---|---|---|---|---|---|")
    for n in sizes:
        prod = [r for r in runs if r["tool"] == "product" and r["n"] == n]
        bare = [r for r in runs if r["tool"] == "bare" and r["n"] == n]
        stats: dict = {}
        for r in prod:
            for step, cell in _activity_stats(r).items():
                agg = stats.setdefault(step, {k: [] for k in cell})
                for k, v in cell.items():
                    agg[k].extend(v)
        for step in HOST_STEPS:
            ps = med(stats.get(step, {}).get("subtask", []))
            bs = med([d[step] for r in bare for d in r["steps"].values() if step in d])
            lines.append(
                f"| {n} | {step} | {fmt(ps, 3)} s | {fmt(bs, 3)} s | "
                f"{fmt(ps - bs if ps is not None and bs is not None else None, 3)} s | "
                f"{fmt(med(stats.get(step, {}).get('dispatch', [])), 3)} s | "
                f"{fmt(med(stats.get(step, {}).get('outside', [])), 3)} s |")
    return lines


# ---------------------------------------------------------------------- transfer


def transfer_section(results: dict) -> tuple[list[str], dict]:
    t = results.get("transfer")
    if not t:
        return ["(not run)"], {}
    runs = t["runs"]
    sizes = sorted({r["n"] for r in runs})
    lines = [f"{t['package_mb']} MB package (random bytes, incompressible) to N hosts at "
             "once; MB/s = N × size / wall time of the whole transfer (connections "
             "included), median of the runs.", "",
             "| N | arbup | OpenSSH scp | ratio arbup / scp | runs (arbup, scp) |",
             "|---|---|---|---|---|"]
    ratios = {}
    for n in sizes:
        cell = {}
        for tool in ("product", "scp"):
            # "product-aes" (runs of results from before the product offered AES-GCM
            # first itself) ran the same code as "product".
            names = ("product", "product-aes") if tool == "product" else (tool,)
            rs = [r for r in runs if r["n"] == n and r["tool"] in names]
            ok = [r["mb_per_s"] for r in rs if r.get("ok")]
            cell[tool] = (med(ok), len(ok), len(rs), [r.get("error", "") for r in rs if not r.get("ok")])

        def show(tool):
            value, ok, total, errors = cell[tool]
            if ok == 0 and total:
                return f"**fails** ({total}/{total} runs)"
            return f"{fmt(value, 0)} MB/s" + ("" if ok == total else f" ({total - ok} of {total} failed)")

        scp = cell["scp"][0]
        r_asis = ratio(cell["product"][0], scp)
        ratios[n] = {"as_is": r_asis}
        lines.append(f"| {n} | {show('product')} | {show('scp')} | {fmt(r_asis)} | "
                     f"{cell['product'][2]}, {cell['scp'][2]} |")
    errors = [r.get("error", "") for r in runs if r["tool"] == "product" and not r.get("ok")]
    if errors:
        last = errors[0].strip().splitlines()[-1] if errors[0].strip() else ""
        lines += ["", f"arbup as is, error: `{last[:300]}`"]
    return lines, ratios


# ------------------------------------------------------------------------- scale


def history_fit(results: dict) -> dict | None:
    """events and bytes = a + b * N over every product run with a history."""
    points = []
    for r in results.get("e2e", {}).get("runs", []):
        h = r.get("record", {}).get("history") if r.get("ok") and r["tool"] == "product" else None
        if h:
            points.append((r["n"], h["history_length"], h["history_size_bytes"]))
    one = results.get("scale", {}).get("one_group", {})
    if one.get("ok"):
        g = one["per_group"][0]["history"]
        points.append((one["services"], g["history_length"], g["history_size_bytes"]))
    if len({p[0] for p in points}) < 2:
        return None

    def fit(ys):
        xs = [p[0] for p in points]
        mx, my = statistics.mean(xs), statistics.mean(ys)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        return my - b * mx, b

    ea, eb = fit([p[1] for p in points])
    ba, bb = fit([p[2] for p in points])
    return {
        "points": sorted(set(points)),
        "events": (ea, eb),
        "bytes": (ba, bb),
        "n_at_event_warn": (HISTORY_WARN_EVENTS - ea) / eb if eb > 0 else None,
        "n_at_size_warn": (HISTORY_WARN_BYTES - ba) / bb if bb > 0 else None,
        "n_at_event_limit": (HISTORY_LIMIT_EVENTS - ea) / eb if eb > 0 else None,
        "n_at_size_limit": (HISTORY_LIMIT_BYTES - ba) / bb if bb > 0 else None,
    }


def _res(record: dict, who: str) -> dict:
    return record.get("resources", {}).get(who, {})


def scale_variants_section(results: dict) -> list[str]:
    variants = results.get("scale_variants") or {}
    if not variants:
        return []
    lines = ["", "### The same with changes tried in a scratch copy of the product", "",
             "| change | one group: time | retried / timed-out activities | many groups: "
             "groups done | wall time | retried / timed-out activities |",
             "|---|---|---|---|---|---|"]
    rows = [("as is", results.get("scale", {}))] + list(variants.items())
    for name, v in rows:
        one, many = v.get("one_group", {}), v.get("many_groups", {})
        done = many.get("groups") if many.get("ok") else many.get("successful_groups")
        lines.append(
            f"| {name} | {fmt(one.get('seconds'), 1) + ' s' if one.get('ok') else 'failed'} | "
            f"{one.get('retries', '–')} / {one.get('timeouts', '–')} | "
            f"{done if done is not None else '–'} of {many.get('groups', '–')} | "
            f"{fmt(many.get('seconds'), 1) + ' s' if many.get('ok') else '–'} | "
            f"{many.get('retries', '–')} / {many.get('timeouts', '–')} |")
    return lines


def scale_section(results: dict) -> tuple[list[str], dict]:
    s = results.get("scale")
    if not s:
        return ["(not run)"], {}
    lines = []
    verdict = {}
    one = s.get("one_group", {})
    lines.append(f"### One group of {one.get('services')} services (zero delays)")
    lines.append("")
    if one.get("ok"):
        g = one["per_group"][0]
        h = g["history"]
        n = one["services"]
        verdict["events"] = h["history_length"]
        verdict["bytes"] = h["history_size_bytes"]
        verdict["largest_event"] = h["largest_event_bytes"]
        lines += [
            "| measure | value | per service | Temporal warns at | limit |",
            "|---|---|---|---|---|",
            f"| upgrade time | {fmt(one['seconds'], 1)} s | – | – | – |",
            f"| history events | {h['history_length']} | {h['history_length'] / n:.1f} | "
            f"{HISTORY_WARN_EVENTS:,} | {HISTORY_LIMIT_EVENTS:,} |",
            f"| history size | {h['history_size_bytes'] / 2**20:.2f} MiB | "
            f"{h['history_size_bytes'] / n / 1024:.1f} KiB | 10 MiB | 50 MiB |",
            f"| largest event ({h['largest_event_type']}) | "
            f"{h['largest_event_bytes'] / 1024:.0f} KiB | – | 512 KiB (blob) | 2 MiB (blob) |",
            f"| workflow tasks completed | {h['workflow_tasks']} | – | – | – |",
            f"| activities retried / timed out (heartbeat) | {one.get('retries', '–')} / "
            f"{one.get('timeouts', '–')} | – | – | – |",
            f"| result size (task JSON) | {g['result_bytes'] / 1024:.0f} KiB | – | 512 KiB (blob) | 2 MiB (blob) |",
            f"| worker CPU | {fmt(_res(one, 'worker').get('cpu_seconds'), 1)} s "
            f"({fmt(_res(one, 'worker').get('cpu_pct_of_one_core'), 0)} % of a core) | – | – | – |",
            f"| worker peak RSS | {fmt(_res(one, 'worker').get('peak_rss_mib'), 0)} MiB | – | – | – |",
            f"| Temporal dev server CPU / peak RSS | "
            f"{fmt(_res(one, 'temporal_server').get('cpu_seconds'), 1)} s / "
            f"{fmt(_res(one, 'temporal_server').get('peak_rss_mib'), 0)} MiB | – | – | – |",
        ]
        kinds = h.get("bytes_by_event_kind") or {}
        total = sum(kinds.values()) or 1
        if kinds:
            lines += ["", "What the history is made of (bytes by event kind, largest first):", "",
                      "| event kind | size | share |", "|---|---|---|"]
            for kind, size in list(kinds.items())[:8]:
                lines.append(f"| {kind} | {size / 2**20:.2f} MiB | {100 * size / total:.0f} % |")
    else:
        lines.append(f"FAILED: `{one.get('error', '')[-600:]}`")
        verdict["error"] = one.get("error", "")
    fit = history_fit(results)
    if fit:
        ea, eb = fit["events"]
        ba, bb = fit["bytes"]
        verdict["fit"] = fit
        lines += [
            "",
            "History growth, a straight line fitted over every product run of this "
            f"benchmark (N = {', '.join(str(p[0]) for p in fit['points'])}): "
            f"events ≈ {ea:.0f} + {eb:.2f} × N, size ≈ {ba / 1024:.0f} KiB + "
            f"{bb / 1024:.2f} KiB × N. A single group would reach Temporal's warning at "
            f"N ≈ {fmt(fit['n_at_event_warn'], 0)} (events) / "
            f"{fmt(fit['n_at_size_warn'], 0)} (size), and its limit at "
            f"N ≈ {fmt(fit['n_at_event_limit'], 0)} / {fmt(fit['n_at_size_limit'], 0)}.",
        ]
    many = s.get("many_groups", {})
    lines += ["", f"### {many.get('groups')} groups of {results.get('scale_group_size', 2)} "
              "services upgraded at once (zero delays)", ""]
    if many.get("ok"):
        per = many["per_group"]
        durations = [g["ended"] - g["started"] for g in per]
        lines += [
            "| measure | value |",
            "|---|---|",
            f"| wall time, all groups | {fmt(many['seconds'], 1)} s |",
            f"| throughput | {fmt(many['groups_per_min'], 1)} groups/min, "
            f"{fmt(many['services_per_min'], 1)} services/min |",
            f"| one group's upgrade time (median / max) | {fmt(med(durations), 1)} s / "
            f"{fmt(max(durations), 1)} s |",
            f"| worker CPU | {fmt(_res(many, 'worker').get('cpu_seconds'), 1)} s "
            f"({fmt(_res(many, 'worker').get('cpu_pct_of_one_core'), 0)} % of a core) |",
            f"| worker peak RSS | {fmt(_res(many, 'worker').get('peak_rss_mib'), 0)} MiB |",
            f"| Temporal dev server CPU / peak RSS | "
            f"{fmt(_res(many, 'temporal_server').get('cpu_seconds'), 1)} s / "
            f"{fmt(_res(many, 'temporal_server').get('peak_rss_mib'), 0)} MiB |",
            f"| machine load (1 min) during the run | "
            f"{many.get('load', {}).get('load1_min', '–')} – {many.get('load', {}).get('load1_max', '–')} |",
        ]
        lines.append(f"| activities retried / timed out (heartbeat) | {many.get('retries', '–')} / "
                     f"{many.get('timeouts', '–')} |")
    else:
        lines.append(f"FAILED: {many.get('successful_groups', '?')} of {many.get('groups')} groups "
                     f"succeeded; {many.get('retries', '?')} activities retried, "
                     f"{many.get('timeouts', '?')} timed out. `{many.get('error', '')[-600:]}`")
    lines += scale_variants_section(results)
    return lines, verdict


# -------------------------------------------------------------------------- write


def _kept_analysis(md_path: Path) -> str:
    try:
        text = md_path.read_text()
    except OSError:
        return ""
    match = re.search(re.escape(BEGIN) + r"(.*?)" + re.escape(END), text, re.S)
    return match.group(1).strip("\n") if match else ""


def write(results: dict, out_dir: Path, md_path: Path) -> None:
    out_dir = Path(out_dir)
    md_path = Path(md_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = e2e_table(results)
    png_name = "e2e-downtime.png"
    if table:
        chart(results, table, out_dir / png_name)
    transfer_lines, transfer_ratios = transfer_section(results)
    scale_lines, scale_verdict = scale_section(results)
    m = results["machine"]
    v = results["versions"]
    sizes = sorted({k[0] for k in table})
    L: list[str] = []
    L += [
        "# Benchmarks",
        "",
        "How long arbup takes to upgrade N arbitration services, how long each service "
        "is down, how that compares with Ansible, pyinfra and a bare asyncssh script "
        "running the same commands, how fast it uploads packages, and how it scales.",
        "",
        "Reproduce: `make bench` (as root, like `make test`; about 45 minutes on the "
        "machine below when shared as it was here; "
        "`BENCH_QUICK=1 make bench` for a short check of about 10 minutes: N = 2 and 10, one run each, "
        "Ansible at N = 2 only, small scale tests). The harness is `bench/` (`python -m bench`); raw results "
        "are in `docs/benchmarks/results.json`; a quick run writes its report under "
        "`/tmp/arbup-bench/quick/` instead.",
        "",
        f"Run of {results['started']}: product = {results.get('product_ref')}"
        + ("" if "commit" in str(results.get("product_ref")) else
           f" (commit {results.get('product_commit', '?')}"
           f"{', with uncommitted changes' if results.get('product_dirty') else ''})")
        + ", "
        f"{results['repeats']} runs per cell"
        + "".join(f", {v} at N = {k}" for k, v in (results.get("repeats_by_n") or {}).items())
        + "; Ansible " + ", ".join(f"{v} at N = {k}" for k, v in (results.get("ansible_repeats") or {}).items())
        + (f"; left out: {', '.join(results['skipped'])} (a quarter of an hour per run)"
           if results.get("skipped") else "")
        + f". Harness wall time {results.get('seconds', 0) / 60:.0f} min.",
        "",
        "## Machine and versions",
        "",
        f"- {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['os']}, Linux {m['kernel']}",
        "- " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- Load: 1-minute load average {results.get('load1_at_start', 0):.2f} at the start; "
        f"during the run {results.get('load', {}).get('load1_min', '–')} – "
        f"{results.get('load', {}).get('load1_max', '–')}, machine CPU "
        f"{results.get('load', {}).get('cpu_pct_mean', '–')} % on average. Other agents "
        "ran their tests on this machine at the same time; the busiest processes at "
        "the start were: " + ", ".join(
            f"{p['name']} {p['cpu']:.0f} %" for p in results.get("busiest_processes_at_start", [])[:6]
        ) + "; each table row also records the load before its runs (raw results).",
        "",
        "## Set-up",
        "",
        "- Hosts: arbup's local hosts (`arbup/localhosts`): a real OpenSSH `sshd` per "
        "host on its own loopback address (127.60.0.x; 127.61.0.x for the scale tests) "
        "in its own mount namespace, a real `rpm` database, the stand-in `observer` "
        "installed from real RPMs. Before every run each host is put back: old version "
        "installed (`rpm -Uvh --oldpackage`) and running, nothing staged, delays set.",
        f"- Delays of the stand-in observer: realistic = stop "
        f"{results['delays']['realistic']['stop_delay']:g} s after SIGTERM, port open "
        f"{results['delays']['realistic']['start_delay']:g} s after start; zero = none. "
        f"Settle times as the product's defaults in every runner: {results['settle_seconds']:g} s "
        "after start, 0.5 s after stop (Ansible's `pause` takes whole seconds: 1 s there).",
        "- Same commands: `bench/commands.py` holds the product's per-host command "
        "sequence (probes, SFTP upload to `.part`, sha256 check, rename; TERM, wait "
        "gone, wait port closed; `rpm -Uvh --prefix`; start as the run user, wait "
        "healthy, `observer -V`, settle, check again); the bare floor, Ansible and "
        "pyinfra run it. The harness compares it with the commands the product logged "
        "in this run (below).",
        "- arbup: Temporal dev server (SDK-started, in memory), the product's worker "
        "process (`python -m worker.main`), SQLite records store, upgrades started with "
        "`starter.service.start_upgrade`; end-to-end = start request → workflow result; "
        "downtime = the Stop subtask's start → the Start subtask's end (records store).",
        "- Ansible: `ansible-playbook`, one `shell` task per command (bash), `copy` for "
        "the upload, `pause` for the settle, `register` for the pid; no fact gathering; "
        "host keys checked (StrictHostKeyChecking=yes); times from a callback plugin. "
        "\"Defaults\" = forks 5, no pipelining, Ansible's default ssh_args "
        "(ControlPersist); \"forks = N\" adds pipelining. End-to-end = the process's "
        "wall time.",
        "- pyinfra: its Python API; `server.shell` for commands that are the same on "
        "every host, `python.call` + `host.run_shell_command` for those that depend on "
        "the host or on a value read at run time, `files.put` for the upload. "
        "End-to-end = the process's wall time.",
        "- Bare floor: `bench/bare.py`, one asyncssh connection per host, every host "
        "prepared first (the product's safety barrier), then each host stop → install "
        "→ start on its own; end-to-end = first connect → last host done. \"Layered\" "
        "adds a barrier after every step, the shape of the product's graph and of "
        "Ansible's and pyinfra's runs.",
        "",
    ]
    if any("@" in k[2] for k in table) or results.get("scale_variants"):
        L += ["Rows marked “scratch copy” are the product with one change applied in a copy "
              "outside the repository (`BENCH_VARIANTS`, `BENCH_SCALE_VARIANTS`), run "
              "interleaved with the product as is under the same load, to measure a "
              "recommended change; the Analysis says what each change is.",
              ""]
    eq = results.get("e2e", {}).get("equivalence")
    if eq is not None:
        diffs = {k: v for k, v in eq.items() if v["only_product"] or v["only_bench"]}
        if not diffs:
            L += ["Command check: the commands the product logged in this run are exactly "
                  "those of `bench/commands.py` (numbers such as pids normalized).", ""]
        else:
            L += ["Command check: **the product's logged commands differ from "
                  "`bench/commands.py`** (update it):", ""]
            for step, d in diffs.items():
                L.append(f"- {step}: only the product ran {d['only_product']}; only the "
                         f"bench list has {d['only_bench']}")
            L.append("")

    # Targets
    L += ["## Targets", "", "| target | measured | met? |", "|---|---|---|"]
    for n in sizes:
        for delays in ("realistic", "zero"):
            p = table.get((n, delays, "product"), {})
            b = table.get((n, delays, "bare"), {})
            r = ratio(p.get("downtime"), b.get("downtime"))
            if r is not None:
                L.append(f"| downtime ≤ 1.2 × bare floor (N = {n}, {delays}) | "
                         f"{fmt(p['downtime'])} s vs {fmt(b['downtime'])} s = {r:.2f}× | "
                         f"{'yes' if r <= 1.2 else '**no**'} |")
    transfers = [r for r in results.get("e2e", {}).get("runs", []) if r.get("ok") and r["tool"] == "product"]
    moved = sum(s["transfers"] for r in transfers for s in r["record"]["subtasks"]
                if s["name"] in ("Stop arbitration service", "Install arbitration rpm",
                                 "Start arbitration service"))
    if transfers:
        L.append(f"| no package transfer inside the downtime window | {moved} transfers in "
                 f"Stop/Install/Start over {len(transfers)} product runs | "
                 f"{'yes' if moved == 0 else '**no**'} |")
    p10 = table.get((10, "realistic", "product"), {})
    b10 = table.get((10, "realistic", "bare"), {})
    a10 = table.get((10, "realistic", "ansible-default"), {})
    r = ratio(p10.get("e2e"), b10.get("e2e"))
    if r is not None:
        L.append(f"| end-to-end ≤ 1.3 × bare floor at N = 10, realistic | {fmt(p10['e2e'])} s vs "
                 f"{fmt(b10['e2e'])} s = {r:.2f}× | {'yes' if r <= 1.3 else '**no**'} |")
    for n in sizes:
        pa = table.get((n, "realistic", "product"), {}).get("e2e")
        aa = table.get((n, "realistic", "ansible-default"), {}).get("e2e")
        if pa and aa:
            L.append(f"| faster than Ansible with its defaults (N = {n}, realistic) | "
                     f"{fmt(pa)} s vs {fmt(aa)} s | {'yes' if pa < aa else '**no**'} |")
    for n, rr in transfer_ratios.items():
        shown = rr["as_is"]
        L.append(f"| upload ≥ 0.8 × scp (N = {n}) | "
                 f"{'fails' if shown is None else f'{shown:.2f}×'} | "
                 f"{'yes' if shown is not None and shown >= 0.8 else '**no**'} |")
    if scale_verdict.get("events") is not None:
        ok = (scale_verdict["events"] < HISTORY_WARN_EVENTS
              and scale_verdict["bytes"] < HISTORY_WARN_BYTES)
        L.append(f"| {results['scale']['one_group']['services']}-service group under the "
                 f"history warnings (10,240 events, 10 MiB) | {scale_verdict['events']} events, "
                 f"{scale_verdict['bytes'] / 2**20:.2f} MiB; largest event "
                 f"{scale_verdict['largest_event'] / 1024:.0f} KiB | "
                 f"{'yes' if ok else '**no**'} |")
    elif "error" in scale_verdict:
        L.append("| 200-service group under the history warnings | the run failed | **no** |")
    L.append("")

    L += ["## Analysis", "", BEGIN, _kept_analysis(md_path) or "(to be written after a run)", END, ""]

    # E2E tables
    L += ["## 1. End-to-end time and downtime", "",
          f"![end-to-end time and downtime against N](benchmarks/{png_name})", "",
          "Medians over the runs; ratio = to the bare floor of the same N and delays. "
          "Downtime = per service, stop begun → healthy on the target (after the "
          "settle); the table shows the median service's and the worst service's.", ""]
    for delays in ("realistic", "zero"):
        L += [f"### {delays.capitalize()} delays", "",
              "| N | tool | end-to-end | × bare | downtime (median service) | × bare | "
              "downtime (worst service) | runs ok |",
              "|---|---|---|---|---|---|---|---|"]
        extra = sorted({k[2] for k in table} - set(TOOLS))
        for n in sizes:
            base = table.get((n, delays, "bare"), {})
            for tool in TOOLS + extra:
                c = table.get((n, delays, tool))
                if not c:
                    continue
                label = TOOL_LABELS.get(tool) or f"arbup + change “{tool.split('@', 1)[-1]}” (scratch copy)"
                L.append(f"| {n} | {label} | {fmt(c['e2e'])} s | "
                         f"{fmt(ratio(c['e2e'], base.get('e2e')))} | {fmt(c['downtime'])} s | "
                         f"{fmt(ratio(c['downtime'], base.get('downtime')))} | "
                         f"{fmt(c['downtime_max'])} s | {c['ok']}/{c['total']} |")
        L.append("")
    failed = [(k, c) for k, c in table.items() if c["errors"]]
    if failed:
        L += ["Failed runs:", ""]
        for (n, delays, tool), c in failed:
            L.append(f"- {tool}, N = {n}, {delays}: `{c['errors'][0][:300]}`")
        L.append("")

    L += ["## 2. Orchestration overhead (zero delays)", ""]
    L += overhead_section(results, table)
    L += ["", "## 3. Package transfer", ""]
    L += transfer_lines
    L += ["", "## 4. Scale", ""]
    L += scale_lines
    L.append("")
    md_path.write_text("\n".join(L) + "\n")
