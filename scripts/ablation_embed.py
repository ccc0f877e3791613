"""Ablation of method ``embed`` (paper 000): embedding, graph regularisation and refinement.

For each simulated pair folder, every variant runs in its own process (so peak
memory is its own) and is scored against the pair's ground truth:

    python scripts/ablation_embed.py PAIRDIR [PAIRDIR ...] [-o ablation.md] [--variants raw,pca64,...]

Variants (all else at the defaults):
    raw       raw cost maps, graph diffusion, no refinement
    pca64     PCA with 64 components, graph diffusion, no refinement (also pca256, pca512)
    nograph   raw costs, no graph diffusion (in either pass), no refinement
    onepass   raw costs, graph diffusion, no second (local) pass, no refinement
    onepass+io  as onepass, with the Adam refinement
    cnn       the shipped feature CNN instead of MIND-SSC, no refinement
    cnn+io    the shipped feature CNN, with the Adam refinement
    default   raw costs, graph diffusion, Adam refinement ("embed+io", the method's default)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "raw": {"embedding": "none", "refine": False},
    "pca64": {"embedding": "pca", "components": 64, "refine": False},
    "pca256": {"embedding": "pca", "components": 256, "refine": False},
    "pca512": {"embedding": "pca", "components": 512, "refine": False},
    "nograph": {"embedding": "none", "graph_smoothing": 0.0, "second_pass_smoothing": 0.0, "refine": False},
    "onepass": {"embedding": "none", "second_pass_range_mm": 0.0, "refine": False},
    "onepass+io": {"second_pass_range_mm": 0.0},
    "cnn": {"features": "cnn", "refine": False},
    "cnn+io": {"features": "cnn"},
    "default": {},
}

WORKER = r"""
import json, resource, sys, time
from DeepLungRegLib.simulation import read_pair
from DeepLungRegLib.methods import register
from DeepLungRegLib.evaluation import evaluate_field
pair = read_pair(sys.argv[1])
t = time.perf_counter()
res = register(pair.fixed, pair.moving, "embed", fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask,
               config=json.loads(sys.argv[2]), device=sys.argv[3])
seconds = time.perf_counter() - t
m = evaluate_field(pair, res.field, res.geometry)
print("RESULT " + json.dumps({"tre_mean": m["tre_after"]["mean"], "tre_p95": m["tre_after"]["p95"],
      "dense": m["dense_error_lung"]["mean"], "folding": m["folding_percent"], "seconds": seconds,
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "pca_variance": res.diagnostics.get("pca_variance_explained")}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("-o", "--output", default=str(ROOT / "bench-output" / "ablation_embed.md"))
    args = ap.parse_args()
    names = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        print(f"ablation_embed: unknown variant(s) {unknown}; known: {list(VARIANTS)}", file=sys.stderr)
        return 2
    lines = ["| pair | variant | TRE mean (mm) | TRE p95 (mm) | dense error (mm) | folding % | time (s) | peak RSS (MB) | PCA variance |",
             "|---|---|---|---|---|---|---|---|---|"]
    for pair in args.pairs:
        if not (Path(pair) / "simulation.json").exists():
            print(f"ablation_embed: {pair} is not a simulated pair folder", file=sys.stderr)
            return 2
        for name in names:
            proc = subprocess.run([sys.executable, "-c", WORKER, pair, json.dumps(VARIANTS[name]), args.device],
                                  capture_output=True, text=True, cwd=ROOT)
            out = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not out:
                lines.append(f"| {Path(pair).name} | {name} | failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]} |||||||")
            else:
                r = json.loads(out[0][7:])
                pv = "" if r["pca_variance"] is None else f"{r['pca_variance']:.3f}"
                lines.append(f"| {Path(pair).name} | {name} | {r['tre_mean']:.2f} | {r['tre_p95']:.2f} | {r['dense']:.2f} | "
                             f"{r['folding']:.3f} | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | {pv} |")
            print(lines[-1], flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
