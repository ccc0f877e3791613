"""Throughput of ``deeplungreg batch``: pairs per hour with 1 and 2 local Dask workers, against a plain
loop of ``register`` jobs in one process (the Dask path's overhead per pair).

    python scripts/bench_batch.py [--pairs 4] [--spacing 4] [--method adam] [-o bench-output/batch]

Every pair of the cohort is the same simulated pair (so that all runs do the same work); the
table gives the wall time of each run (cluster start included), pairs per hour, and the
overhead per pair of the Dask path over the plain loop with the same number of cores in use.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from DeepLungRegLib.batch import run_cohort  # noqa: E402
from DeepLungRegLib.cli import main as cli  # noqa: E402
from DeepLungRegLib.pipeline import RegistrationJob, run_registration  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--spacing", type=float, default=4.0)
    ap.add_argument("--method", default="adam")
    ap.add_argument("-o", "--output", default="bench-output/batch")
    args = ap.parse_args()
    logging.getLogger("distributed").setLevel(logging.WARNING)  # Dask's start and stop messages
    out = Path(args.output)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pair = out / "pair"
    assert cli(["simulate", str(ROOT / "DeepLungRegLib" / "data" / "sample" / "popi00_demo.nrrd"), "-o", str(pair), "--spacing",
                str(args.spacing), "--seed", "1", "-q"]) == 0
    rows = [{"id": f"p{i}", "fixed": pair / "fixed.nii.gz", "moving": pair / "moving.nii.gz", "fixed_mask": pair / "fixed_mask.nii.gz",
             "moving_mask": pair / "moving_mask.nii.gz", "fixed_landmarks": pair / "fixed_landmarks.csv",
             "moving_landmarks": pair / "moving_landmarks.csv"} for i in range(args.pairs)]
    table = []

    t0 = time.perf_counter()
    for r in rows:
        job = RegistrationJob.from_files(r["fixed"], r["moving"], method=args.method, fixed_mask=str(r["fixed_mask"]),
                                         moving_mask=str(r["moving_mask"]), fixed_landmarks=str(r["fixed_landmarks"]),
                                         moving_landmarks=str(r["moving_landmarks"]), device="cpu")
        run_registration(job, out / "loop" / r["id"])
    plain = time.perf_counter() - t0
    table.append(("plain register loop", 1, plain))
    for workers in (1, 2):
        t0 = time.perf_counter()
        res = run_cohort(rows, out / f"dask{workers}", method=args.method, device="cpu", workers=workers)
        wall = time.perf_counter() - t0
        assert all(r["status"] == "ok" for r in res), res
        table.append((f"batch, {workers} worker(s)", workers, wall))
    n = args.pairs
    print(f"\n{n} pairs, {args.spacing:g} mm, method {args.method}, {os.cpu_count()} cores\n")
    print("| run | workers | wall (s) | pairs per hour | s per pair | overhead per pair vs plain loop (s) |")
    print("|---|---|---|---|---|---|")
    for name, w, wall in table:
        over = "" if name.startswith("plain") else f"{(wall - plain) / n:+.1f}" if w == 1 else ""
        print(f"| {name} | {w} | {wall:.1f} | {3600 * n / wall:.0f} | {wall / n:.1f} | {over} |")
    with open(out / "throughput.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "workers", "wall_s", "pairs_per_hour"])
        for name, k, wall in table:
            w.writerow([name, k, round(wall, 1), round(3600 * n / wall)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
