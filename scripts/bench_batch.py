"""Throughput of ``deeplungreg batch``: seconds per pair with 1 and 2 local Dask workers, against a plain
loop of ``register`` jobs in one process (the Dask path's overhead per pair).

    python scripts/bench_batch.py [--pairs 4] [--spacing 4] [--method adam] [--repeat 1] [-o bench-output/batch]

Every pair of the cohort is the same simulated pair (so that all runs do the same work). The three
configurations run back to back, ``--repeat`` times in turn (so that a change of the machine's load
falls on all of them); the table gives each run's wall time (cluster start included), pairs per hour,
seconds per pair, the difference from the plain loop's seconds per pair, and the load average when it
started, and for batch the mean seconds of a task outside its registration and outputs (from each pair's
``metrics.json``: what the Dask path and the pair's process add, less sensitive to the load). Each Dask worker
runs its pairs in one resident worker process, which imports torch and the library once, as the plain loop
does: the table's first line is the time of that import (``python -c 'import torch, DeepLungRegLib.pipeline'``,
the median of 3), part of each Dask worker's first pair.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from DeepLungRegLib.batch import run_cohort  # noqa: E402
from DeepLungRegLib.cli import main as cli  # noqa: E402
from DeepLungRegLib.pipeline import RegistrationJob, run_registration  # noqa: E402
from DeepLungRegLib.worker import child_environment  # noqa: E402


def process_start_s(repeat: int = 3) -> float:
    """Seconds to start a Python that imports torch and the pipeline (what each Dask worker's resident process does first)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, DeepLungRegLib.pipeline"], check=True, env=child_environment())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--spacing", type=float, default=4.0)
    ap.add_argument("--method", default="adam")
    ap.add_argument("--repeat", type=int, default=1, help="run the three configurations this many times, in turn")
    ap.add_argument("-o", "--output", default="bench-output/batch")
    args = ap.parse_args()
    import distributed  # noqa: F401 - its import sets its loggers to INFO: quiet its start and stop messages after it

    logging.getLogger("distributed").setLevel(logging.WARNING)
    out = Path(args.output)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pair = out / "pair"
    assert cli(["simulate", str(ROOT / "DeepLungRegLib" / "data" / "sample" / "popi00_demo.nrrd"), "-o", str(pair), "--spacing",
                str(args.spacing), "--seed", "1", "-q"]) == 0
    rows = [{"id": f"p{i}", "fixed": pair / "fixed.nii.gz", "moving": pair / "moving.nii.gz", "fixed_mask": pair / "fixed_mask.nii.gz",
             "moving_mask": pair / "moving_mask.nii.gz", "fixed_landmarks": pair / "fixed_landmarks.csv",
             "moving_landmarks": pair / "moving_landmarks.csv"} for i in range(args.pairs)]
    n = args.pairs
    start_s = process_start_s()

    def plain(k: int) -> None:
        for r in rows:
            job = RegistrationJob.from_files(r["fixed"], r["moving"], method=args.method, fixed_mask=str(r["fixed_mask"]),
                                             moving_mask=str(r["moving_mask"]), fixed_landmarks=str(r["fixed_landmarks"]),
                                             moving_landmarks=str(r["moving_landmarks"]), device="cpu")
            run_registration(job, out / f"loop{k}" / r["id"])

    def batch(workers: int, k: int) -> None:
        res = run_cohort(rows, out / f"dask{workers}-{k}", method=args.method, device="cpu", workers=workers)
        assert all(r["status"] == "ok" for r in res), res

    def outside_registration(folder: Path) -> float:
        """Mean seconds of a batch task beyond its registration and outputs (process start, reading the inputs,
        Dask): the task's seconds minus the registration's own, from each pair's metrics.json (load-robust)."""
        extra = []
        for r in rows:
            m = json.loads((folder / r["id"] / "metrics.json").read_text())
            t = m["timings_s"]
            extra.append(m["batch"]["seconds"] - t["total"] - t.get("masks", 0.0) - t.get("outputs", 0.0))
        return statistics.mean(extra)

    configs = [("plain register loop (one process)", 1, plain), ("batch, 1 worker", 1, lambda k: batch(1, k)),
               ("batch, 2 workers", 2, lambda k: batch(2, k))]
    table = []
    for k in range(args.repeat):
        for name, workers, run in configs:
            before = load()
            t0 = time.perf_counter()
            run(k)
            wall = time.perf_counter() - t0
            extra = outside_registration(out / f"dask{workers}-{k}") if not name.startswith("plain") else None
            table.append((name, workers, wall, before, extra))
            print(f"{name}: {wall:.1f} s (load {before:.2f})", file=sys.stderr, flush=True)
    plain_per_pair = statistics.median(w for name, _, w, _, _ in table if name.startswith("plain")) / n
    print(f"\n{n} pairs, {args.spacing:g} mm, method {args.method}, {os.cpu_count()} cores, {args.repeat} round(s); "
          f"load average now {load():.2f}\n")
    print("| run | workers | wall (s) | pairs per hour | s per pair | vs plain loop per pair | task s outside the registration "
          "| load at start |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| process start (import torch + pipeline; once per Dask worker) | | {start_s:.1f} | | {start_s:.1f} | "
          f"{100 * start_s / plain_per_pair:+.1f} % | | |")
    for name, w, wall, before, extra in table:
        diff = "" if name.startswith("plain") else f"{100 * (wall / n - plain_per_pair) / plain_per_pair:+.1f} %"
        shown = "" if extra is None else f"{extra:.1f}"
        print(f"| {name} | {w} | {wall:.1f} | {3600 * n / wall:.0f} | {wall / n:.1f} | {diff} | {shown} | {before:.2f} |")
    with open(out / "throughput.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "workers", "wall_s", "pairs_per_hour", "s_per_pair", "load_at_start"])
        w.writerow(["process start", "", round(start_s, 2), "", round(start_s, 2), ""])
        for name, k, wall, before, _ in table:
            w.writerow([name, k, round(wall, 1), round(3600 * n / wall), round(wall / n, 2), round(before, 2)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
