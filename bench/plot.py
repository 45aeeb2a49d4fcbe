#!/usr/bin/env python3
"""
Plot relay latency against delivered rate, one line per server.

    python bench/plot.py bench/results/latest            # -> bench/results/latest/relay.png
    python bench/plot.py DIR -o relay.png --all-runs
    python bench/plot.py a-relay.json b-relay.json -o x.png

Input: a results folder written by C{bench/run.py} (its C{runs/NAME-relay.K.json};
per server the best run: highest capacity, then highest peak) or relay JSON
files from the bench's C{run.sh} directly. Left: p50 (dashed) and p99 (solid)
latency, log scale, against delivered msg/s, each point one offered-rate step.
Right: delivered against offered msg/s (the diagonal is "keeps up").

Needs matplotlib: C{pip install '.[plot]'}.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ORDER = ["crm_im", "ref-node", "ref-pysio", "raw-autobahn", "raw-node"]
COLORS = {
    "crm_im": "#d62728",
    "ref-node": "#1f77b4",
    "ref-pysio": "#9467bd",
    "raw-autobahn": "#ff7f0e",
    "raw-node": "#2ca02c",
}


def load(paths: list[Path], all_runs: bool = False) -> dict[str, list[dict[str, Any]]]:
    """server name -> relay results (best run first)."""
    found: dict[str, list[dict[str, Any]]] = {}
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted((p / "runs").glob("*-relay.*.json")) or sorted(p.glob("*-relay*.json"))
        else:
            files.append(p)
    for f in files:
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(r.get("steps"), list) or not r["steps"]:
            continue
        m = re.match(r"^(.+)-relay(\.\d+)?\.json$", f.name)
        name = r.get("name") or (m.group(1) if m else f.stem)
        r["_file"] = f.name
        found.setdefault(name, []).append(r)
    for name, rs in found.items():
        rs.sort(key=lambda r: -(r.get("capacity", 0) * 1e6 + r.get("peak_delivered", 0)))
        if not all_runs:
            del rs[1:]
    return found


def plot(src: Path | list[Path], png: Path, all_runs: bool = False, title: str | None = None) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    data = load(src if isinstance(src, list) else [src], all_runs)
    if not data:
        print(f"plot: no relay results in {src}", file=sys.stderr)
        return None
    names = [n for n in ORDER if n in data] + sorted(n for n in data if n not in ORDER)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1.6, 1]})
    extra = iter(["#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"])
    max_off = 0
    for name in names:
        color = COLORS.get(name) or next(extra, "black")
        for i, r in enumerate(data[name]):
            steps = sorted(r["steps"], key=lambda s: s["offered"])
            x = [s["delivered_per_s"] for s in steps]
            alpha = 1.0 if i == 0 else 0.35
            lbl = name if i == 0 else None
            p99 = [s["p99_ms"] for s in steps]
            p50 = [s["p50_ms"] for s in steps]
            ax.plot(x, p99, "-o", color=color, alpha=alpha, label=lbl, ms=5, lw=2)
            ax.plot(x, p50, "--s", color=color, alpha=alpha, ms=4, lw=1.3)
            if i == 0:
                for s in steps:
                    if s["p99_ms"] is not None:
                        ax.annotate(f"{s['offered'] // 1000}k" if s["offered"] >= 1000 else str(s["offered"]),
                                    (s["delivered_per_s"], s["p99_ms"]), textcoords="offset points",
                                    xytext=(4, 5), fontsize=7, color=color)
            offs = [s["offered"] for s in steps]
            max_off = max(max_off, *offs)
            ax2.plot(offs, x, "-o", color=color, alpha=alpha, label=lbl, ms=5, lw=2)
    ax.set_yscale("log")
    ax.set_xlim(left=0)
    ax.axhline(100, color="grey", lw=0.8, ls=":")
    ax.text(ax.get_xlim()[0], 100, " 100 ms (capacity rule)", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("delivered messages/s")
    ax.set_ylabel("latency, ms (log)")
    ax.set_title("relay latency vs delivered rate\n(solid p99, dashed p50; labels = offered msg/s)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=COLORS.get(n, "black"), lw=2, label=n) for n in names]
    handles += [Line2D([], [], color="black", lw=2, label="p99"), Line2D([], [], color="black", ls="--", label="p50")]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax2.plot([0, max_off], [0, max_off], color="grey", lw=0.8, ls=":")
    ax2.set_xlabel("offered messages/s")
    ax2.set_ylabel("delivered messages/s")
    ax2.set_title("throughput (dotted: delivered = offered)", fontsize=10)
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8, loc="upper left")
    first = next(iter(data.values()))[0]
    sub = title or (
        f"{first.get('clients', '?')} clients, {first.get('step_secs', '?')} s steps, "
        f"{first.get('date', '')[:10]}, {first.get('machine', '')}; best run per server"
        + (" (faint: other runs)" if all_runs else "")
    )
    fig.suptitle(sub, fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", type=Path, help="results folder(s) or relay JSON file(s)")
    ap.add_argument("-o", "--output", type=Path, help="PNG path [DIR/relay.png]")
    ap.add_argument("--all-runs", action="store_true", help="also draw every other run, faint")
    ap.add_argument("--title")
    a = ap.parse_args()
    out = a.output or (a.inputs[0] / "relay.png" if a.inputs[0].is_dir() else Path("relay.png"))
    try:
        png = plot(a.inputs, out, a.all_runs, a.title)
    except ImportError:
        print("plot.py needs matplotlib: pip install '.[plot]'", file=sys.stderr)
        return 2
    if png:
        print(png)
    return 0 if png else 1


if __name__ == "__main__":
    sys.exit(main())
