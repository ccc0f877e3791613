"""A simulated 4D-CT registered phase by phase: TRE per phase against the ground truth, the lung volume curve
against the simulator's, time and peak memory, with each phase started from scratch and from its neighbour.

    python scripts/bench_sequence.py [--ct DeepLungRegLib/data/sample/popi00_demo.nrrd] [--spacing 2] [--phases 10]
        [--amplitude large] [--seed 3] [--method convex] [-O NAME=VALUE ...] [--starts reference,neighbour]
        [-o bench-output/sequence]

The cycle comes from :func:`DeepLungRegLib.simulation.simulate_cycle` (end-inhale phase 0, end-exhale at the
half; ground-truth landmarks per phase). Each start runs ``deeplungreg sequence CYCLE/phases --landmarks
CYCLE/landmarks --start START`` in a process of its own, so its ``sequence.json`` has that run's peak resident
memory. Printed (Markdown): TRE per phase (mean / p95 after; the true motion's mean before), the volume curve
(the simulator's, from its Jacobian, against ours, from automatic lung masks), and per start the total time,
seconds per phase, peak memory, worst folding and mean SD log J. An output folder that exists is reused (the
cycle and each start's run are kept; remove it to measure again).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from DeepLungRegLib import read_image  # noqa: E402
from DeepLungRegLib.simulation.cycle import simulate_cycle, write_cycle  # noqa: E402
from DeepLungRegLib.transforms import resample_to_spacing  # noqa: E402
from DeepLungRegLib.worker import child_environment  # noqa: E402


def make_cycle(args, folder: Path) -> dict:
    if not (folder / "cycle.json").is_file():
        ct = read_image(args.ct)
        if args.spacing:
            ct = resample_to_spacing(ct, args.spacing, fill=-1024.0)
        cycle = simulate_cycle(ct, n_phases=args.phases, amplitude=args.amplitude, seed=args.seed, n_landmarks=args.landmarks)
        write_cycle(cycle, folder)
    return json.loads((folder / "cycle.json").read_text())


def run_start(args, cycle_dir: Path, out: Path, start: str) -> tuple[dict, float]:
    if not (out / "sequence.json").is_file():
        cmd = [sys.executable, "-m", "DeepLungRegLib.cli", "sequence", str(cycle_dir / "phases"), "-o", str(out),
               "--method", args.method, *[a for o in args.option for a in ("-O", o)], "--landmarks", str(cycle_dir / "landmarks"), "--start", start, "-q"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=child_environment(), cwd=ROOT, stdout=sys.stderr)  # stdout: the tables only
        (out / "bench_wall_s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    wall = float((out / "bench_wall_s.txt").read_text()) if (out / "bench_wall_s.txt").is_file() else float("nan")
    return json.loads((out / "sequence.json").read_text()), wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ct", default=str(ROOT / "DeepLungRegLib" / "data" / "sample" / "popi00_demo.nrrd"))
    ap.add_argument("--spacing", type=float, default=2.0, help="resample the CT to this spacing in mm (0: as stored)")
    ap.add_argument("--phases", type=int, default=10)
    ap.add_argument("--amplitude", default="large")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--landmarks", type=int, default=300)
    ap.add_argument("--method", default="convex")
    ap.add_argument("--option", "-O", action="append", default=[], metavar="NAME=VALUE", help="method option (as for sequence)")
    ap.add_argument("--starts", default="reference,neighbour")
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "bench-output" / "sequence")
    args = ap.parse_args()
    starts = [s.strip() for s in args.starts.split(",") if s.strip()]
    cycle_dir = args.output / "cycle"
    truth = make_cycle(args, cycle_dir)
    runs = {s: run_start(args, cycle_dir, args.output / f"run-{s}", s) for s in starts}
    first = next(iter(runs.values()))[0]
    print(f"## {Path(args.ct).name} at {args.spacing or 'its own'} mm, {args.phases} phases, {args.amplitude} motion, "
          f"seed {args.seed}, `{args.method}`; reference {first['reference_name']} ({first['reference_rule']})\n")
    print("| phase | true motion mean (mm) | " + " | ".join(f"{s}: TRE mean / p95 | {s}: s" for s in starts) + " |")
    print("|---|---|" + "---|---|" * len(starts))
    for i in range(first["n_phases"]):
        rows = {s: next(r for r in runs[s][0]["phases"] if r["index"] == i) for s in starts}
        r0 = rows[starts[0]]
        if r0.get("reference"):
            print(f"| {r0['name']} | reference | " + " | ".join(" | " for _ in starts) + " |")
            continue
        cells = []
        for s in starts:
            r = rows[s]
            cells.append(f"{r['tre_after']['mean']:.2f} / {r['tre_after']['p95']:.2f}" + (f" (from {r['start']})" if r.get("start") else ""))
            cells.append(f"{r['registration_s']:.0f}")
        print(f"| {r0['name']} | {r0['tre_before']['mean']:.2f} | " + " | ".join(cells) + " |")
    print()
    sim = [p["lung_volume_ml"] for p in truth["phases"]]
    ours = first["lung_volume_ml"]
    print("| phase | simulator lung volume (mL) | ours (mL) | difference |")
    print("|---|---|---|---|")
    for i, (a, b) in enumerate(zip(sim, ours)):
        print(f"| {first['phases'][i]['name']} | {a:.0f} | {'?' if b is None else f'{b:.0f}'} | "
              f"{'' if b is None else f'{100 * (b - a) / a:+.1f} %'} |")
    print(f"| tidal volume | {max(sim) - min(sim):.0f} | {first['tidal_volume_ml']:.0f} | "
          f"{100 * (first['tidal_volume_ml'] - (max(sim) - min(sim))) / (max(sim) - min(sim)):+.1f} % |\n")
    print("| start | TRE mean / p95, all phases (mm) | total (s) | s per phase | peak memory (MB) | worst folding % | mean SD log J |")
    print("|---|---|---|---|---|---|---|")
    for s in starts:
        summary, wall = runs[s]
        reg = [r for r in summary["phases"] if not r.get("reference")]
        lm_rows = [r for r in reg if "tre_after" in r]
        mean = np.mean([r["tre_after"]["mean"] for r in lm_rows])
        p95 = np.mean([r["tre_after"]["p95"] for r in lm_rows])
        print(f"| {s} | {mean:.2f} / {p95:.2f} (p95 averaged over phases) | {summary['total_s']:.0f} (process {wall:.0f}) | "
              f"{np.mean([r['registration_s'] for r in reg]):.1f} | {summary.get('peak_rss_mb') or float('nan'):.0f} | "
              f"{max(r['jacobian']['folding_percent'] for r in reg):.3f} | {np.mean([r['jacobian']['sd_log_j'] for r in reg]):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
