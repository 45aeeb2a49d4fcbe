#!/usr/bin/env python3
"""
Side-by-side benchmark: crm_im against the Node.js reference server (and any
other server command), with the shared load generator.

    python bench/run.py                                  # crm_im vs ref-node, relay+idle+storm
    python bench/run.py --servers crm_im,ref-node,raw-autobahn,raw-node --scenarios relay
    python bench/run.py --add pysio-ref "python ref.py --port {PORT}" --repeats 3
    python bench/run.py --summarize bench/results/latest   # rebuild summary/plot only
    python bench/run.py --servers crm_im,ref-node,ref-node-durable --scenarios fanout   # group messages

The C{fanout} scenario (group messages, GROUPS.md) runs once per group shape of
C{--fanout-shapes} (default C{10x100,1x1000}: 10 groups of 100 online members,
then 1 group of 1,000); its offered rates are given in deliveries per second
(C{--fanout-deliveries}) and turned into group messages per second for each
shape, so that both shapes climb the same ladder of deliveries.

What it does:

 1. finds the shared bench (C{--shared}, default C{../shared/bench} next to the
    repository); when it is not writable or not set up, copies it once to a
    writable cache (C{--cache}, default C{$TMPDIR/crm_im-bench}) and runs its
    C{setup.sh} there (npm packages, two small virtualenvs);
 2. builds a private workspace of symlinks to it, so that concurrent users of
    the same copy never overwrite each other's result files;
 3. runs each scenario C{--repeats} times for every server, interleaved
    (run 1 of every server, then run 2, ...), through the bench's C{run.sh},
    which pins the server to core 0 and the load generator to core 1, waits
    for a quiet machine (C{QUIET_MAX}/C{QUIET_WAIT} in the environment), and
    stops the server by PID with SIGTERM;
 4. writes C{<out>/runs/NAME-SCENARIO.K.{json,server.log,loadgen.log}},
    C{<out>/summary.json}, C{<out>/summary.md} and (with matplotlib)
    C{<out>/relay.png}; C{<out>} defaults to C{bench/results/<date>_<time>/}
    and C{bench/results/latest} points at it.

Server commands run under C{bash -c}; C{{PORT}} is replaced by the port (also
in C{$PORT}) and C{{DATA}} by a fresh empty temporary directory, removed after
the run. The built-in C{crm_im} server uses it as its durable SQLite data dir.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SCENARIOS = ("relay", "idle", "storm", "fanout")
# a run's file name: NAME-SCENARIO.K.json, where fanout's SCENARIO names its shape (fanout-10x100)
RUN_FILE_RE = re.compile(r"^(.+)-(relay|idle|storm|fanout-\d+x\d+)\.(\d+)\.json$")
BASE_DEFAULT = "ref-node"
CRM = "crm_im"

# lines in a server log that deserve a look
PROBLEM_RE = re.compile(
    r"Traceback|Unhandled|#error\]|#critical\]|#failure\]|\bCRITICAL\b|\bERROR\b|Exception|lost connection",
)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- locating the bench


def _is_set_up(d: Path) -> bool:
    return (
        (d / "run.sh").is_file()
        and (d / "loadgen" / "loadgen.js").is_file()
        and (d / "loadgen" / "node_modules").is_dir()
        and (d / "ref-node" / "node_modules").is_dir()
        and (d / "ref-node-durable" / "node_modules").is_dir()
        and (d / "ref-raw" / "node_modules").is_dir()
        and (d / ".venv-raw" / "bin" / "python").exists()
    )


def _digest(d: Path) -> str:
    h = hashlib.sha256()
    for name in ("run.sh", "setup.sh", "loadgen/loadgen.js", "ref-node/server.js", "ref-node-durable/server.js",
                 "ref-raw/raw-node.js"):
        p = d / name
        h.update(name.encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def locate_bench(shared: Path, cache: Path | None, setup: bool) -> Path:
    """A set-up, writable copy of the shared bench (the shared folder itself if it qualifies)."""
    if not (shared / "run.sh").is_file():
        sys.exit(f"run.py: no bench at {shared} (expected run.sh there); pass --shared DIR")
    if _is_set_up(shared):
        return shared  # we only ever write into our own workspace, so read-only is fine
    if cache is None:
        cache = Path(os.environ.get("TMPDIR", "/tmp")) / "crm_im-bench"
    if (cache / "run.sh").is_file() and _digest(cache) != _digest(shared):
        log(f"{cache} is a copy of an older bench; refreshing it")
        # keep installed node_modules and virtualenvs, refresh the scripts
        for item in shared.iterdir():
            if item.name in ("results",):
                continue
            dst = cache / item.name
            if item.is_dir():
                shutil.copytree(item, dst, dirs_exist_ok=True)
            else:
                shutil.copy2(item, dst)
    elif not (cache / "run.sh").is_file():
        log(f"copying {shared} to {cache}")
        shutil.copytree(shared, cache, ignore=shutil.ignore_patterns("results"), dirs_exist_ok=True)
    if not _is_set_up(cache):
        # the shared copy may be read-only: make ours writable before installing into it
        for root, dirs, files in os.walk(cache):
            for n in dirs + files:
                p = os.path.join(root, n)
                if not os.path.islink(p):
                    os.chmod(p, os.stat(p).st_mode | 0o200)
        if not setup:
            sys.exit(f"run.py: {cache} is not set up and --no-setup was given")
        log(f"running {cache / 'setup.sh'} (npm install, virtualenvs; once)")
        subprocess.run([str(cache / "setup.sh")], check=True)
    return cache


def make_workspace(bench: Path, where: Path) -> Path:
    """Symlinks to everything in the bench but a private results/ folder."""
    ws = where / ".bench"
    if ws.exists():
        shutil.rmtree(ws)
    ws.mkdir(parents=True)
    for item in bench.iterdir():
        if item.name == "results":
            continue
        (ws / item.name).symlink_to(item)
    (ws / "results").mkdir()
    return ws


# ---------------------------------------------------------------- servers


def builtin_servers(ws: Path, crm_args: str, crm_src: Path | None = None) -> dict[str, str]:
    twistd = Path(sys.executable).with_name("twistd")
    runner = shlex.quote(str(twistd)) if twistd.exists() else f"{shlex.quote(sys.executable)} -m twisted"
    repo = shlex.quote(str(crm_src or REPO))
    return {
        CRM: (
            f"cd {repo} && PYTHONPATH={repo}${{PYTHONPATH:+:$PYTHONPATH}} exec {runner} -n --pidfile= "
            f"crm_im --port {{PORT}} --data-dir {{DATA}} {crm_args}"
        ).strip(),
        "ref-node": f"exec node {ws}/ref-node/server.js",
        # ref-node with its messages in SQLite (WAL, synchronous=FULL, group commit); a fresh database per run
        "ref-node-durable": f"DB_PATH={{DATA}}/im.db exec node {ws}/ref-node-durable/server.js",
        "ref-pysio": f"exec {ws}/.venv-pysio/bin/python {ws}/ref-pysio/server.py",
        "raw-node": f"exec node {ws}/ref-raw/raw-node.js",
        "raw-autobahn": f"exec {ws}/.venv-raw/bin/python {ws}/ref-raw/raw-autobahn.py",
    }


def fanout_shapes(spec: str) -> list[tuple[int, int]]:
    """C{"10x100,1x1000"} -> C{[(10, 100), (1, 1000)]}: (groups, members per group)."""
    shapes = []
    for part in (x.strip() for x in spec.split(",")):
        m = re.fullmatch(r"(\d+)x(\d+)", part)
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 2:
            raise ValueError(f"fanout shape {part!r}: GROUPSxMEMBERS, e.g. 10x100")
        shapes.append((int(m.group(1)), int(m.group(2))))
    return shapes


def fanout_rates(deliveries: str, size: int) -> str:
    """Group messages per second for each offered deliveries/s, for groups of C{size} (each message
    is delivered to the C{size - 1} other members); duplicates dropped."""
    rates: list[int] = []
    for d in (float(x) for x in deliveries.split(",") if x.strip()):
        r = max(1, round(d / (size - 1)))
        if r not in rates:
            rates.append(r)
    return ",".join(str(r) for r in rates)


def scenario_flags(a: argparse.Namespace, scen: str, shape: tuple[int, int] | None = None) -> list[str]:
    if scen == "fanout":
        assert shape is not None
        groups, size = shape
        f = ["--groups", str(groups), "--group-size", str(size),
             "--rates", a.fanout_rates or fanout_rates(a.fanout_deliveries, size),
             "--step-secs", str(a.fanout_step_secs)]
        return f + shlex.split(a.fanout_flags or "")
    if scen == "relay":
        f = ["--rates", a.rates, "--step-secs", str(a.step_secs), "--clients", str(a.clients)]
    elif scen == "idle":
        f = ["--n", str(a.idle_n), "--hold-secs", str(a.idle_hold)] + (["--login"] if a.idle_login else [])
    else:
        f = ["--n", str(a.storm_n), "--concurrency", str(a.storm_concurrency)]
    extra = {"relay": a.relay_flags, "idle": a.idle_flags, "storm": a.storm_flags}[scen]
    return f + shlex.split(extra or "")


def next_index(runs: Path, name: str, scen: str) -> int:
    k = 1
    while (runs / f"{name}-{scen}.{k}.json").exists() or (runs / f"{name}-{scen}.{k}.failed").exists():
        k += 1
    return k


def du_kib(p: Path) -> int:
    total = 0
    for root, _, files in os.walk(p):
        for n in files:
            try:
                total += os.lstat(os.path.join(root, n)).st_blocks * 512
            except OSError:
                pass
    return total // 1024


def run_one(ws: Path, runs: Path, name: str, cmd: str, scen: str, flags: list[str], timeout: int,
            label: str | None = None) -> bool:
    """One run of the load generator's C{scen}; its files are kept as C{NAME-LABEL.K.*} (C{label}
    defaults to C{scen}; fanout's names the group shape)."""
    label = label or scen
    k = next_index(runs, name, label)
    data = Path(tempfile.mkdtemp(prefix=f"bench-{name}-data-"))
    full = cmd.replace("{DATA}", shlex.quote(str(data)))
    log(f"=== {label} run {k}: {name}")
    t0 = time.monotonic()
    try:
        p = subprocess.run(
            [str(ws / "run.sh"), name, full, scen, *flags],
            cwd=str(ws),
            stdout=subprocess.DEVNULL,
            timeout=timeout,
        )
        rc = p.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    data_kib = du_kib(data)
    shutil.rmtree(data, ignore_errors=True)
    res = ws / "results"
    ok = (res / f"{name}-{scen}.json").is_file()
    for ext in ("json", "server.log", "loadgen.log"):
        src = res / f"{name}-{scen}.{ext}"
        if src.exists():
            shutil.move(str(src), str(runs / f"{name}-{label}.{k}.{ext}"))
    if ok:
        out = runs / f"{name}-{label}.{k}.json"
        r = json.loads(out.read_text())
        r["bench_run"] = {"index": k, "rc": rc, "wall_s": round(time.monotonic() - t0, 1), "data_dir_kib": data_kib}
        out.write_text(json.dumps(r, indent=2) + "\n")
    else:
        (runs / f"{name}-{label}.{k}.failed").write_text(f"rc {rc}\n")
        log(f"=== {label} run {k}: {name} FAILED (rc {rc}); logs in {runs}")
    return ok


# ---------------------------------------------------------------- summary


def _load_runs(runs: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for f in sorted(runs.glob("*.json"), key=lambda p: (p.name.rsplit(".", 2)[0], int(p.name.rsplit(".", 2)[1]))):
        m = RUN_FILE_RE.match(f.name)
        if not m:
            continue
        try:
            r = json.loads(f.read_text())
        except ValueError:
            continue
        r["_file"] = f.name
        log_file = f.with_name(f.name[: -len(".json")] + ".server.log")
        problems: list[str] = []
        if log_file.exists():
            for line in log_file.read_text(errors="replace").splitlines():
                if PROBLEM_RE.search(line):
                    problems.append(line.strip()[:300])
        r["_log_problems"] = problems
        out.setdefault(m.group(1), {}).setdefault(m.group(2), []).append(r)
    return out


def _gen_bound(x: dict[str, Any] | None) -> bool:
    # the load generator's core was nearly full while the server's was not
    if not x:
        return False
    lg, sv = x.get("loadgen_cpu"), x.get("server_cpu")
    return lg is not None and lg >= 0.85 and (sv is None or sv < 0.85)


FANOUT_STEP_KEYS = (
    "offered", "offered_deliveries_per_s", "delivered_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "lost",
    "duplicates", "echoed_to_sender", "receipts", "receipts_sent", "receipt_p99_ms", "server_cpu", "loadgen_cpu",
    "other_cpu", "server_rss_kib",
)


def _shape_key(label: str) -> tuple[int, int]:
    groups, size = label[len("fanout-"):].split("x")
    return int(size), int(groups)


def _fanout_rows(scens: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per group shape (C{fanout-10x100}, ...): the best run (capacity, then peak) and every run's figures."""
    out: dict[str, Any] = {}
    for label in sorted((x for x in scens if x.startswith("fanout-")), key=_shape_key):
        fr = [r for r in scens[label] if isinstance(r.get("steps"), list)]
        if not fr:
            continue
        b = max(fr, key=lambda r: (r["capacity"], r["peak_delivered"]))
        peak_run = max(fr, key=lambda r: r["peak_delivered"])
        peak_step = max(peak_run["steps"], key=lambda s: s["delivered_per_s"]) if peak_run["steps"] else None
        at_cap = next((s for s in b["steps"] if s["offered"] == b["capacity"]), None)
        after_cap = next((s for s in b["steps"] if s["offered"] > b["capacity"]), None)
        out[label] = {
            "runs": len(fr),
            "best_run": b["_file"],
            "groups": b.get("groups"),
            "group_size": b.get("group_size"),
            "clients": b.get("clients"),
            "step_secs": b.get("step_secs"),
            "rates": b.get("rates"),
            "group_create_ms": b.get("group_create_ms"),
            "group_joined": b.get("group_joined"),
            "capacity": b["capacity"],
            "capacity_deliveries_per_s": b.get("capacity_deliveries_per_s"),
            "capacity_capped": b.get("capacity_capped", False),
            "capacity_gen_bound": _gen_bound(after_cap),
            "capacity_all": [r["capacity"] for r in fr],
            "p50_at_capacity_ms": at_cap and at_cap.get("p50_ms"),
            "p99_at_capacity_ms": at_cap and at_cap.get("p99_ms"),
            "peak_delivered": peak_run["peak_delivered"],
            "peak_gen_bound": _gen_bound(peak_step),
            "peak_all": [r["peak_delivered"] for r in fr],
            "steps": [{k: st.get(k) for k in FANOUT_STEP_KEYS} | {"retried": "first_attempt" in st}
                      for st in b["steps"]],
            "steps_all_runs": [
                {"run": r["_file"], "steps": [
                    {k: st.get(k) for k in ("offered", "delivered_per_s", "p50_ms", "p99_ms", "lost")}
                    for st in r["steps"]]}
                for r in fr
            ],
            # deliveries lost at steps the server kept up with (>= 99% of the due deliveries per second)
            "lost_at_passing_steps": sum(
                st.get("lost", 0) for r in fr for st in r["steps"]
                if st["delivered_per_s"] >= 0.99 * st["offered_deliveries_per_s"]
            ),
            "duplicates": sum(r.get("duplicates", 0) or 0 for r in fr),
            "echoed_to_sender": sum(r.get("echoed_to_sender", 0) or 0 for r in fr),
            "misrouted": sum(r.get("misrouted", 0) or 0 for r in fr),
            "receipts_missing": sum(
                max(0, st.get("sent", 0) - (st.get("receipts_sent") or 0)) for r in fr for st in r["steps"]
            ),
            "sample_problems": sorted({p for r in fr for p in (r.get("sample_problems") or [])}),
        }
    return out


def summarize(out: Path, base: str = BASE_DEFAULT, order: list[str] | None = None) -> dict[str, Any]:
    runs = _load_runs(out / "runs")
    failed = sorted(p.name for p in (out / "runs").glob("*.failed")) if (out / "runs").exists() else []
    names = [n for n in (order or []) if n in runs] + sorted(n for n in runs if n not in (order or []))
    rows: dict[str, Any] = {}
    for name in names:
        row: dict[str, Any] = {"name": name}
        rel = [r for r in runs[name].get("relay", []) if isinstance(r.get("steps"), list)]
        if rel:
            b = max(rel, key=lambda r: r["capacity"] * 1e6 + r["peak_delivered"])
            peak_run = max(rel, key=lambda r: r["peak_delivered"])
            peak_step = max(peak_run["steps"], key=lambda s: s["delivered_per_s"]) if peak_run["steps"] else None
            after_cap = next((s for s in b["steps"] if s["offered"] > b["capacity"]), None)
            # every step of every run, per offered rate (for the table: the best run's step)
            row["relay"] = {
                "runs": len(rel),
                "best_run": b["_file"],
                "clients": b.get("clients"),
                "step_secs": b.get("step_secs"),
                "rates": b.get("rates"),
                "capacity": b["capacity"],
                "capacity_capped": b.get("capacity_capped", False),
                "capacity_gen_bound": _gen_bound(after_cap),
                "capacity_all": [r["capacity"] for r in rel],
                "peak_delivered": peak_run["peak_delivered"],
                "peak_gen_bound": _gen_bound(peak_step),
                "peak_all": [r["peak_delivered"] for r in rel],
                "steps": [
                    {
                        k: s.get(k)
                        for k in (
                            "offered", "delivered_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "lost",
                            "receipts", "server_cpu", "loadgen_cpu", "other_cpu", "server_rss_kib",
                        )
                    }
                    | {"retried": "first_attempt" in s}
                    for s in b["steps"]
                ],
                "steps_all_runs": [
                    {"run": r["_file"], "steps": [
                        {k: s.get(k) for k in ("offered", "delivered_per_s", "p50_ms", "p99_ms", "lost")}
                        for s in r["steps"]]}
                    for r in rel
                ],
                # messages lost at steps the server kept up with (delivered >= 99% of offered)
                "lost_at_passing_steps": sum(
                    s.get("lost", 0) for r in rel for s in r["steps"] if s["delivered_per_s"] >= 0.99 * s["offered"]
                ),
                "lost_total": sum(s.get("lost", 0) for r in rel for s in r["steps"]),
                "bad_frames": sum(r.get("bad_frames", 0) or 0 for r in rel),
                "sample_problems": sorted({p for r in rel for p in (r.get("sample_problems") or [])}),
                "data_dir_kib": [r.get("bench_run", {}).get("data_dir_kib") for r in rel],
            }
        idl = [r for r in runs[name].get("idle", []) if r.get("kib_per_conn") is not None]
        if idl:
            b = min(idl, key=lambda r: r["kib_per_conn"])
            row["idle"] = {
                "runs": len(idl),
                "n": b["n"],
                "mode": b["mode"],
                "ready": b["ready"],
                "failed": b["failed"],
                "held": b["held_at_end"],
                "kib_per_conn": b["kib_per_conn"],
                "kib_per_conn_all": [r["kib_per_conn"] for r in idl],
                "rss_before_mib": round(b["rss_before_kib"] / 1024, 1),
                "rss_after_mib": round(b["rss_after_kib"] / 1024, 1),
                "connect_phase_s": b["connect_phase_s"],
                "ready_per_s": b.get("ready_per_s"),
                "presence_settle_s": b.get("presence_settle_s"),
            }
        stm = [r for r in runs[name].get("storm", []) if r.get("logins_per_s") is not None]
        if stm:
            b = max(stm, key=lambda r: r["logins_per_s"])
            row["storm"] = {
                "runs": len(stm),
                "n": b["n"],
                "concurrency": b["concurrency"],
                "logged_in": b["logged_in"],
                "failed": b["login_failed"],
                "logins_per_s": b["logins_per_s"],
                "logins_all": [r["logins_per_s"] for r in stm],
                "p50_ms": b["p50_ms"],
                "p99_ms": b["p99_ms"],
                "server_cpu": b.get("server_cpu"),
                "loadgen_cpu": b.get("loadgen_cpu"),
                "gen_bound": _gen_bound(b),
            }
        fan = _fanout_rows(runs[name])
        if fan:
            row["fanout"] = fan
        every = [r for sc in runs[name].values() for r in sc]
        sd = [r["shutdown"] for r in every if r.get("shutdown")]
        stops = [r.get("sigterm_exit_s") for r in every]
        row["health"] = {
            "runs": len(every),
            "errors_in_results": [f"{r['_file']}: {r['error']}" for r in every if r.get("error")],
            "server_died": [r["_file"] for r in every if r.get("server_alive_after") is False],
            "shutdown_clients": sum(s.get("clients", 0) for s in sd),
            "shutdown_notified": sum(s.get("got_server_shutdown", 0) for s in sd),
            "shutdown_closed_ms_max": max(
                (s["closed_after_first_shutdown_ms"] for s in sd if s.get("closed_after_first_shutdown_ms") is not None),
                default=None,
            ),
            "sigterm_exit_s_max": max((s for s in stops if s is not None), default=None),
            "sigkilled": sum(1 for s in stops if s is None),
            "log_problem_lines": sum(len(r["_log_problems"]) for r in every),
            "log_problem_sample": sorted({p for r in every for p in r["_log_problems"]})[:8],
            "waited_for_quiet_s": sum(r.get("waited_for_quiet_s", 0) or 0 for r in every),
            "background_cpu_max": max((r.get("background_cpu_before") or 0 for r in every), default=0),
        }
        rows[name] = row
    any_run = next((r for n in runs for sc in runs[n].values() for r in sc), {})
    summary = {
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": any_run.get("machine"),
        "base": base,
        "failed_runs": failed,
        "servers": names,
        "rows": rows,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = render_md(summary)
    (out / "summary.md").write_text(md)
    return summary


def _fmt(v: Any, d: int = 0) -> str:
    if v is None:
        return "–"
    if isinstance(v, (int, float)):
        return f"{v:,.{d}f}"
    return str(v)


def _ratio(v: Any, b: Any) -> str:
    if v is None or not b:
        return ""
    return f" ({v / b:.2f}×)"


def render_md(s: dict[str, Any]) -> str:
    rows, base = s["rows"], s["base"]
    B = rows.get(base, {})
    L: list[str] = []
    L.append(f"Generated {s['generated']} on {s.get('machine') or 'unknown machine'}.")
    if any(r.get(x) for r in rows.values() for x in ("relay", "idle", "storm")):
        _render_core(L, rows, base, B)
    _render_fanout(L, rows, base)
    _render_health(L, s)
    return "\n".join(L) + "\n"


def _render_core(L: list[str], rows: dict[str, Any], base: str, B: dict[str, Any]) -> None:
    L.append("")
    L.append(
        "| server | relay capacity msg/s | peak delivered msg/s | idle KiB/conn | idle RSS MiB | "
        "storm logins/s | login p99 ms |"
    )
    L.append("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        b = B if name != base else {}
        rl, il, st = r.get("relay"), r.get("idle"), r.get("storm")
        brl, bil, bst = b.get("relay"), b.get("idle"), b.get("storm")
        cap = peak = kib = rss = lps = lp99 = "–"
        if rl:
            ge = "≥" if rl["capacity_capped"] or rl["capacity_gen_bound"] else ""
            cap = f"{ge}{_fmt(rl['capacity'])}{'†' if rl['capacity_gen_bound'] else ''}"
            cap += _ratio(rl["capacity"], brl and brl["capacity"])
            cap += f" <br>runs {'/'.join(_fmt(x) for x in rl['capacity_all'])}" if rl["runs"] > 1 else ""
            peak = f"{'≥' if rl['peak_gen_bound'] else ''}{_fmt(rl['peak_delivered'])}{'†' if rl['peak_gen_bound'] else ''}"
            peak += _ratio(rl["peak_delivered"], brl and brl["peak_delivered"])
            peak += f" <br>runs {'/'.join(_fmt(x) for x in rl['peak_all'])}" if rl["runs"] > 1 else ""
        if il:
            kib = f"{_fmt(il['kib_per_conn'], 1)}{_ratio(il['kib_per_conn'], bil and bil['kib_per_conn'])}"
            kib += f" <br>{il['mode']}, {_fmt(il['held'])}/{_fmt(il['n'])} held"
            rss = f"{_fmt(il['rss_before_mib'], 1)} → {_fmt(il['rss_after_mib'], 1)}"
        if st:
            lps = f"{'≥' if st['gen_bound'] else ''}{_fmt(st['logins_per_s'], 1)}{'†' if st['gen_bound'] else ''}"
            lps += _ratio(st["logins_per_s"], bst and bst["logins_per_s"])
            lps += f" <br>n={st['n']}, K={st['concurrency']}"
            if st["failed"]:
                lps += f", {st['failed']} failed"
            lp99 = _fmt(st["p99_ms"])
        L.append(f"| {name} | {cap} | {peak} | {kib} | {rss} | {lps} | {lp99} |")
    L.append("")
    L.append(
        f"Ratios in parentheses are against {base} (higher is better for capacity, peak and logins/s; "
        "lower for KiB/conn). Capacity = highest offered rate with ≥ 99 % delivered and p99 < 100 ms; "
        "best run shown, all runs after “runs”. † = the load generator's core was nearly full while the "
        "server's was not: a lower bound for the server."
    )
    # per-step relay latency
    rates = sorted({st["offered"] for r in rows.values() if r.get("relay") for st in r["relay"]["steps"]})
    if rates:
        L.append("")
        L.append(
            "Relay, best run, per offered rate: p50 / p99 ms (delivered msg/s; CPU cores used by the server / by "
            "other processes; messages lost = not received within 2 s after the step)."
        )
        L.append("")
        L.append("| server | " + " | ".join(f"{x:,}/s" for x in rates) + " |")
        L.append("|---|" + "---|" * len(rates))
        for name, r in rows.items():
            if not r.get("relay"):
                continue
            by = {st["offered"]: st for st in r["relay"]["steps"]}
            cells = []
            for x in rates:
                st = by.get(x)
                if not st:
                    cells.append("–")
                    continue
                c = f"{_fmt(st['p50_ms'], 1)} / {_fmt(st['p99_ms'], 1)} ({_fmt(st['delivered_per_s'])}"
                if st.get("server_cpu") is not None:
                    c += f"; cpu {st['server_cpu']:.2f}/{st.get('other_cpu') or 0:.2f}"
                c += f"; lost {_fmt(st['lost'])})" if st.get("lost") else ")"
                cells.append(c)
            L.append(f"| {name} | " + " | ".join(cells) + " |")


def _render_fanout(L: list[str], rows: dict[str, Any], base: str) -> None:
    labels = sorted({x for r in rows.values() for x in (r.get("fanout") or {})}, key=_shape_key)
    for label in labels:
        have = {n: r["fanout"][label] for n, r in rows.items() if label in (r.get("fanout") or {})}
        any_f = next(iter(have.values()))
        G, M = any_f["groups"], any_f["group_size"]
        bf = have.get(base)
        L.append("")
        L.append(
            f"Fan-out, {G} group{'s' if G != 1 else ''} of {M:,} online members ({G * M:,} clients; each group "
            f"message is due at the {M - 1:,} other members; {any_f['step_secs']} s steps). Capacity = highest "
            "step with ≥ 99 % of the due deliveries per second and p99 < 100 ms, in deliveries/s (group "
            "messages/s); best run shown, all runs after “runs”."
        )
        L.append("")
        L.append("| server | capacity deliveries/s (msg/s) | p50 / p99 ms at capacity | peak deliveries/s | "
                 "group:create ms | lost at passing steps, dup, echo, receipts missing |")
        L.append("|---|---|---|---|---|---|")
        for name, f in have.items():
            b = bf if name != base else None
            ge = "≥" if f["capacity_capped"] or f["capacity_gen_bound"] else ""
            cap = f"{ge}{_fmt(f['capacity_deliveries_per_s'])} ({_fmt(f['capacity'])})"
            cap += "†" if f["capacity_gen_bound"] else ""
            cap += _ratio(f["capacity_deliveries_per_s"], b and b["capacity_deliveries_per_s"])
            cap += f" <br>runs {'/'.join(_fmt(x) for x in f['capacity_all'])} msg/s" if f["runs"] > 1 else ""
            lat = f"{_fmt(f['p50_at_capacity_ms'], 1)} / {_fmt(f['p99_at_capacity_ms'], 1)}"
            peak = f"{'≥' if f['peak_gen_bound'] else ''}{_fmt(f['peak_delivered'])}{'†' if f['peak_gen_bound'] else ''}"
            peak += _ratio(f["peak_delivered"], b and b["peak_delivered"])
            peak += f" <br>runs {'/'.join(_fmt(x) for x in f['peak_all'])}" if f["runs"] > 1 else ""
            health = (f"{_fmt(f['lost_at_passing_steps'])}, {_fmt(f['duplicates'])}, {_fmt(f['echoed_to_sender'])}, "
                      f"{_fmt(f['receipts_missing'])}")
            L.append(f"| {name} | {cap} | {lat} | {peak} | {_fmt(f['group_create_ms'])} | {health} |")
        rates = sorted({st["offered"] for f in have.values() for st in f["steps"]})
        due = {st["offered"]: st["offered_deliveries_per_s"] for f in have.values() for st in f["steps"]}
        L.append("")
        L.append("Per step, best run: p50 / p99 ms (deliveries/s at the members; server CPU cores / other processes').")
        L.append("")
        L.append("| server | " + " | ".join(f"{x:,} msg/s = {due[x]:,}/s" for x in rates) + " |")
        L.append("|---|" + "---|" * len(rates))
        for name, f in have.items():
            by = {st["offered"]: st for st in f["steps"]}
            cells = []
            for x in rates:
                st = by.get(x)
                if not st:
                    cells.append("–")
                    continue
                c = f"{_fmt(st['p50_ms'], 1)} / {_fmt(st['p99_ms'], 1)} ({_fmt(st['delivered_per_s'])}"
                if st.get("server_cpu") is not None:
                    c += f"; cpu {st['server_cpu']:.2f}/{st.get('other_cpu') or 0:.2f}"
                c += f"; lost {_fmt(st['lost'])})" if st.get("lost") else ")"
                cells.append(c)
            L.append(f"| {name} | " + " | ".join(cells) + " |")


def _render_health(L: list[str], s: dict[str, Any]) -> None:
    rows = s["rows"]
    L.append("")
    L.append("Health: shutdown notices, exit time after SIGTERM, server log lines that look like errors.")
    L.append("")
    L.append("| server | runs | server:shutdown received | SIGTERM → exit s (max) | log problem lines | lost (passing steps / all) |")
    L.append("|---|---|---|---|---|---|")
    for name, r in rows.items():
        h = r["health"]
        sd = f"{_fmt(h['shutdown_notified'])}/{_fmt(h['shutdown_clients'])}" if h["shutdown_clients"] else "–"
        stop = _fmt(h["sigterm_exit_s_max"], 2) + (f", {h['sigkilled']} SIGKILLed" if h["sigkilled"] else "")
        lost = f"{_fmt(r['relay']['lost_at_passing_steps'])} / {_fmt(r['relay']['lost_total'])}" if r.get("relay") else "–"
        L.append(f"| {name} | {h['runs']} | {sd} | {stop} | {h['log_problem_lines']} | {lost} |")
    notes = []
    for name, r in rows.items():
        h = r["health"]
        for e in h["errors_in_results"]:
            notes.append(f"- {name}: loadgen error: {e}")
        if h["server_died"]:
            notes.append(f"- {name}: server not alive at the end of {', '.join(h['server_died'])}")
        for line in h["log_problem_sample"]:
            notes.append(f"- {name} log: `{line}`")
        if r.get("relay") and r["relay"]["sample_problems"]:
            notes.append(f"- {name}: content problems: {'; '.join(r['relay']['sample_problems'][:5])}")
        if h["waited_for_quiet_s"]:
            notes.append(
                f"- {name}: waited {h['waited_for_quiet_s']} s for a quiet machine; background load up to "
                f"{h['background_cpu_max']} cores before a run"
            )
    if s["failed_runs"]:
        notes.append(f"- failed runs: {', '.join(s['failed_runs'])}")
    for name, r in rows.items():
        for label, f in (r.get("fanout") or {}).items():
            if f["sample_problems"] or f["misrouted"]:
                notes.append(f"- {name} {label}: {f['misrouted']} misrouted; content problems: "
                             f"{'; '.join(f['sample_problems'][:5])}")
    if notes:
        L.append("")
        L.extend(notes)


def try_plot(out: Path) -> None:
    try:
        sys.path.insert(0, str(HERE))
        import plot  # noqa: PLC0415

        png = plot.plot(out, out / "relay.png")
        if png:
            log(f"plot: {png}")
    except ImportError as e:
        log(f"no plot ({e}); pip install '.[plot]' for relay.png")


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Benchmark crm_im side by side with the Node.js reference (and other servers).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Environment: QUIET_MAX, QUIET_WAIT, LINGER, SERVER_CPU, LOADGEN_CPU, READY_TIMEOUT (see the bench's run.sh).",
    )
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "bench", help="the shared bench folder")
    p.add_argument("--bench-dir", type=Path, default=os.environ.get("CRM_BENCH_DIR"),
                   help="use this already set-up writable bench copy (or $CRM_BENCH_DIR) instead of --shared")
    p.add_argument("--cache", type=Path, default=None, help="where to copy the shared bench when it is not set up [$TMPDIR/crm_im-bench]")
    p.add_argument("--no-setup", action="store_true", help="never run the bench's setup.sh")
    p.add_argument("--servers", default=f"{CRM},{BASE_DEFAULT}",
                   help="built-in servers: crm_im, ref-node, ref-node-durable, ref-pysio, raw-node, raw-autobahn")
    p.add_argument("--add", nargs=2, action="append", default=[], metavar=("NAME", "COMMAND"),
                   help="another server: shell command with {PORT} (and optionally {DATA}); repeatable")
    p.add_argument("--crm-args", default="", help="extra arguments for the crm_im server, e.g. '--sqlite-synchronous NORMAL'")
    p.add_argument("--crm-src", type=Path, default=None,
                   help="run crm_im from this source tree instead of the checkout, e.g. a snapshot of one commit "
                        "(git archive HEAD | tar -x -C DIR) while the working tree is being edited")
    p.add_argument("--scenarios", default="relay,idle,storm")
    p.add_argument("--repeats", type=int, default=2, help="runs of every scenario per server (interleaved)")
    p.add_argument("--relay-repeats", type=int, help="override --repeats for relay")
    p.add_argument("--idle-repeats", type=int, default=1, help="runs of idle")
    p.add_argument("--storm-repeats", type=int, help="override --repeats for storm")
    p.add_argument("--fanout-repeats", type=int, help="override --repeats for fanout")
    p.add_argument("--rates", default="1000,2000,4000,8000,16000", help="relay: offered msg/s steps")
    p.add_argument("--step-secs", type=float, default=5, help="relay: seconds per step")
    p.add_argument("--clients", type=int, default=1000, help="relay: clients (pairs = clients/2)")
    p.add_argument("--idle-n", type=int, default=2000, help="idle: connections")
    p.add_argument("--idle-connect-only", dest="idle_login", action="store_false",
                   help="idle: Socket.IO CONNECT only; without it every client logs in too (O(N²) presence "
                        "traffic; log in by default: %(default)s)")
    p.add_argument("--idle-hold", type=float, default=10, help="idle: seconds held")
    p.add_argument("--storm-n", type=int, default=2000)
    p.add_argument("--storm-concurrency", type=int, default=200)
    p.add_argument("--fanout-shapes", default="10x100,1x1000",
                   help="fanout: GROUPSxMEMBERS per run, comma-separated (every member is a logged-in client)")
    p.add_argument("--fanout-deliveries", default="5000,10000,20000,40000,80000,160000",
                   help="fanout: offered deliveries/s per step, turned into group messages/s for each shape "
                        "(rate = deliveries / (members - 1), at least 1)")
    p.add_argument("--fanout-rates", default="",
                   help="fanout: group messages/s per step for every shape instead of --fanout-deliveries")
    p.add_argument("--fanout-step-secs", type=float, default=5, help="fanout: seconds per step")
    p.add_argument("--relay-flags", default="", help="more loadgen flags for relay, e.g. '--ack'")
    p.add_argument("--idle-flags", default="")
    p.add_argument("--storm-flags", default="")
    p.add_argument("--fanout-flags", default="", help="more loadgen flags for fanout, e.g. '--warmup-secs 2'")
    p.add_argument("--timeout", type=int, default=900, help="seconds per run before giving up")
    p.add_argument("--base", default=BASE_DEFAULT, help="server the ratios are against")
    p.add_argument("--out", type=Path, help="results folder (appends to its runs) [bench/results/<date>_<time>]")
    p.add_argument("--summarize", type=Path, metavar="DIR", help="only rebuild DIR/summary.* and the plot")
    p.add_argument("--no-plot", action="store_true")
    a = p.parse_args(argv)

    if a.summarize:
        s = summarize(a.summarize, a.base, [CRM, a.base, "ref-node-durable", "ref-pysio", "raw-autobahn", "raw-node"])
        sys.stdout.write((a.summarize / "summary.md").read_text())
        if not a.no_plot:
            try_plot(a.summarize)
        return 0 if s["rows"] else 1

    scens = [x for x in a.scenarios.split(",") if x]
    for x in scens:
        if x not in SCENARIOS:
            p.error(f"unknown scenario {x}")
    try:
        shapes = fanout_shapes(a.fanout_shapes)
    except ValueError as e:
        p.error(str(e))
    for t in ("node", "taskset", "curl", "jq", "ss"):
        if not shutil.which(t):
            sys.exit(f"run.py: {t} is needed (node; apt-get install util-linux curl jq iproute2)")

    bench = a.bench_dir.resolve() if a.bench_dir else None
    if bench and not _is_set_up(bench):
        if a.no_setup:
            sys.exit(f"run.py: {bench} is not set up")
        subprocess.run([str(bench / "setup.sh")], check=True)
    if not bench:
        bench = locate_bench(a.shared.resolve(), a.cache, not a.no_setup)
    log(f"bench: {bench}")

    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H%M%S")
    out = (a.out or HERE / "results" / stamp).resolve()
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    latest = HERE / "results" / "latest"
    if out.parent == latest.parent:
        try:
            if latest.is_symlink() or not latest.exists():
                latest.unlink(missing_ok=True)
                latest.symlink_to(out.name)
        except OSError:
            pass
    ws = make_workspace(bench, out)
    known = builtin_servers(ws, a.crm_args, a.crm_src.resolve() if a.crm_src else None)
    servers: dict[str, str] = {}
    for n in [x for x in a.servers.split(",") if x]:
        if n not in known:
            p.error(f"unknown built-in server {n} (known: {', '.join(known)}); use --add NAME COMMAND")
        servers[n] = known[n]
    for n, c in a.add:
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", n):
            p.error(f"server name {n!r}: letters, digits, _ . + - only")
        servers[n] = c
    (out / "settings.json").write_text(json.dumps({"argv": sys.argv, "servers": servers, "bench": str(bench),
                                                   "env": {k: os.environ[k] for k in ("QUIET_MAX", "QUIET_WAIT", "LINGER")
                                                           if k in os.environ}}, indent=2) + "\n")
    repeats = {
        "relay": a.relay_repeats or a.repeats,
        "idle": a.idle_repeats,
        "storm": a.storm_repeats or a.repeats,
        "fanout": a.fanout_repeats or a.repeats,
    }
    t0 = time.monotonic()
    fails = 0
    try:
        for scen in scens:
            # fanout runs once per group shape, each under its own label (fanout-10x100, ...)
            variants = ([(f"fanout-{g}x{m}", scenario_flags(a, scen, (g, m))) for g, m in shapes]
                        if scen == "fanout" else [(scen, scenario_flags(a, scen))])
            for label, flags in variants:
                for k in range(repeats[scen]):
                    for name, cmd in servers.items():
                        log(f"({time.monotonic() - t0:.0f}s elapsed) {label} {k + 1}/{repeats[scen]}")
                        if not run_one(ws, runs, name, cmd, scen, flags, a.timeout, label):
                            fails += 1
    except KeyboardInterrupt:
        log("interrupted; summarizing what finished")
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    log(f"all done in {time.monotonic() - t0:.0f}s, {fails} failed run(s); results in {out}")
    summarize(out, a.base, list(servers))
    sys.stdout.write((out / "summary.md").read_text())
    if not a.no_plot:
        try_plot(out)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
