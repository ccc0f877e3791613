"""Benchmark ``adam`` (and optionally other methods) on simulated pairs.

Usage:
    python benchmarks/bench_adam.py [--data ../shared/data] [--methods adam] [--seed 1]
        [--spacing 2.0] [--out bench-output]

For each CT (POPI phase 00 and the pyradiomics chest CT) and each amplitude
(small, large), the CT is resampled to ``--spacing`` mm, a pair is simulated
with ``--seed``, and every method runs in its own process so that the peak
resident memory is that run's alone. Prints a Markdown table: TRE before and
after (mean, 95th percentile), dense error in the lung, folding, SD log J,
registration time (IO excluded) and peak memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CTS = {"popi00": "popi/popi00.nrrd", "lung1": "pyradiomics/lung1_image.nrrd"}

WORKER = r"""
import json, sys, time, resource
from DeepLungRegLib.simulation import read_pair
from DeepLungRegLib.methods import register
from DeepLungRegLib.evaluation import evaluate_field
pair = read_pair(sys.argv[1])
t = time.perf_counter()
res = register(pair.fixed, pair.moving, sys.argv[2], fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask, device=sys.argv[3])
reg_s = time.perf_counter() - t
m = evaluate_field(pair, res.field, res.geometry)
m["registration_s"] = reg_s
m["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
m["peak_gpu_mb"] = res.diagnostics.get("peak_gpu_mb")
print("RESULT " + json.dumps(m))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--methods", default="adam")
    ap.add_argument("--amplitudes", default="small,large")
    ap.add_argument("--cts", default="popi00,lung1")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--spacing", type=float, default=2.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(ROOT / "bench-output"))
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    rows = []
    for ct_name in args.cts.split(","):
        src = data / CTS[ct_name]
        if not src.exists():
            print(f"bench_adam: {src} is missing; pass --data", file=sys.stderr)
            return 2
        for amp in args.amplitudes.split(","):
            pairdir = out / f"{ct_name}_{amp}_s{args.seed}"
            if not (pairdir / "simulation.json").exists():
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "DeepLungRegLib.cli", "simulate", str(src), "-o", str(pairdir), "--amplitude", amp,
                                "--seed", str(args.seed), "--spacing", str(args.spacing), "--overwrite", "-q"], check=True, cwd=ROOT)
                print(f"simulated {pairdir.name} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
            for method in args.methods.split(","):
                proc = subprocess.run([sys.executable, "-c", WORKER, str(pairdir), method, args.device], capture_output=True, text=True, cwd=ROOT)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode or not line:
                    print(f"{method} on {pairdir.name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                    rows.append({"pair": pairdir.name, "method": method, "error": proc.stderr.strip().splitlines()[-1:]})
                    continue
                m = json.loads(line[0][7:])
                rows.append({"pair": pairdir.name, "method": method, **m})
                print(f"{method} on {pairdir.name}: {m['tre_before']['mean']:.2f} -> {m['tre_after']['mean']:.2f} mm in {m['registration_s']:.0f} s", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    hdr = "| pair | method | TRE before mean / p95 (mm) | TRE after mean / p95 (mm) | dense error lung mean (mm) | lung Dice | folding % | SD log J | time (s) | peak RSS (MB) |"
    print(hdr)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['pair']} | {r['method']} | failed: {r['error']} |")
            continue
        b, a = r["tre_before"], r["tre_after"]
        print(f"| {r['pair']} | {r['method']} | {b['mean']:.2f} / {b['p95']:.2f} | {a['mean']:.2f} / {a['p95']:.2f} | "
              f"{r['dense_error_lung']['mean']:.2f} | {r['lung_dice_after']:.3f} | {r['folding_percent']:.3f} | {r['sd_log_j']:.3f} | "
              f"{r['registration_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
