"""
C{python -m fuzz.run}: run every fuzz target under atheris for a number
of inputs and report the figures (inputs, seconds, inputs per second,
coverage, corpus, peak memory); exit 1 if any target crashed.

    python -m fuzz.run --runs 3000                 # the smoke run (tests/test_fuzz.py)
    nice python -m fuzz.run --runs 1000000 --corpus /var/tmp/crm_im-corpus  # the long run

Each target runs in its own process (libFuzzer ends the process when it is
done), on a scratch corpus seeded from C{fuzz/seeds/<target>}; crash
inputs are written to C{--artifacts} (default: the current directory).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import TARGETS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

_STAT = re.compile(rb"^stat::(\w+):\s*(\d+)", re.M)
_COVERAGE = re.compile(rb"#(\d+)\s+(?:DONE|INITED|NEW|REDUCE|pulse)\s+cov: (\d+) ft: (\d+)(?: corp: (\d+))?")


def runTarget(name: str, runs: int, corpus: Path, artifacts: Path, maxTime: int | None = None,
              extra: tuple[str, ...] = ()) -> dict[str, object]:
    """
    Run one target; its figures, C{"crashed"} and the output's tail.
    """
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "fuzz", name,
        f"-runs={runs}", "-print_final_stats=1", f"-artifact_prefix={artifacts}{os.sep}",
        "-max_len=4096", "-timeout=10", "-rss_limit_mb=1024",
    ]
    dictionary = HERE / "dicts" / f"{name}.dict"
    if dictionary.exists():
        command.append(f"-dict={dictionary}")
    if maxTime is not None:
        command.append(f"-max_total_time={maxTime}")
    command += list(extra)
    command += [str(corpus), str(HERE / "seeds" / name)]
    started = time.monotonic()
    process = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    output = process.stdout
    stats = {key.decode(): int(value) for key, value in _STAT.findall(output)}
    coverage = _COVERAGE.findall(output)
    last = coverage[-1] if coverage else (b"0", b"0", b"0", b"0")
    executed = stats.get("number_of_executed_units", 0)
    return {
        "target": name,
        "crashed": process.returncode != 0,
        "returncode": process.returncode,
        "inputs": executed,
        "seconds": round(seconds, 1),
        "per_second": round(executed / seconds) if seconds else 0,
        "cov": int(last[1]),
        "ft": int(last[2]),
        "corpus": len(os.listdir(corpus)),
        "new_units": stats.get("new_units_added", 0),
        "peak_rss_mb": stats.get("peak_rss_mb", 0),
        "tail": output[-6000:].decode("utf-8", "replace"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3000, help="inputs per target")
    parser.add_argument("--max-time", type=int, default=None, help="seconds per target at most")
    parser.add_argument("--targets", nargs="*", default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--corpus", type=Path, default=None, help="keep the corpora here (one folder per target)")
    parser.add_argument("--artifacts", type=Path, default=Path.cwd(), help="where crash inputs go")
    options = parser.parse_args(argv)
    scratch = None
    if options.corpus is None:
        scratch = tempfile.TemporaryDirectory(prefix="crm_im-fuzz-")
        options.corpus = Path(scratch.name)
    failed = False
    print(f"{'target':<12} {'inputs':>10} {'seconds':>8} {'inputs/s':>9} {'cov':>6} {'ft':>7} {'corpus':>7} {'rss MB':>7}  result",
          flush=True)
    for name in options.targets:
        result = runTarget(name, options.runs, options.corpus / name, options.artifacts, options.max_time)
        verdict = f"CRASH (exit {result['returncode']})" if result["crashed"] else "ok"
        print(f"{name:<12} {result['inputs']:>10} {result['seconds']:>8} {result['per_second']:>9} {result['cov']:>6} "
              f"{result['ft']:>7} {result['corpus']:>7} {result['peak_rss_mb']:>7}  {verdict}", flush=True)
        if result["crashed"]:
            failed = True
            print(result["tail"], flush=True)
    if scratch is not None:
        scratch.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
