"""Find a tuned setting of the ConvexAdam baseline (benchmark only) by the same ranking as ``deeplungreg tune``.

Each candidate is a set of ``convex_adam_pt`` keyword arguments; every candidate
runs on every pair (in this process, one after the other) and is ranked per pair
by mean TRE, 95th-percentile TRE and SD log J (weighted 1, 1, 0.5); a run that
folds more than 0.1 % or fails ranks last. Use pairs other than the benchmark's:

    python scripts/tune_convexadam.py bench-output/tune/lung1_large_s2 -o bench-output/tune/convexadam_tuning.md

If a candidate other than the defaults wins, add it to ``CONVEXADAM_SETTINGS`` in
``DeepLungRegLib/benchmark/baselines.py``. (On lung1_large_s2 the defaults ranked first.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from DeepLungRegLib.benchmark.baselines import run_convexadam  # noqa: E402
from DeepLungRegLib.errors import DeepLungRegError  # noqa: E402
from DeepLungRegLib.evaluation.evaluate import evaluate_field  # noqa: E402
from DeepLungRegLib.evaluation.tuning import CRITERIA, rank_candidates  # noqa: E402
from DeepLungRegLib.simulation.breathing import read_pair  # noqa: E402

#: ConvexAdam's defaults are lambda_weight 1.25, grid_sp 6, disp_hw 4, selected_niter 80, selected_smooth 0.
CANDIDATES = [
    {},
    {"disp_hw": 6},
    {"lambda_weight": 0.75},
    {"lambda_weight": 2.5},
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="+", help="simulated pair folders (deeplungreg simulate)")
    ap.add_argument("-o", "--output", default="", help="write the ranking table (Markdown) here, and a .json beside it")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    try:
        pairs = [read_pair(p) for p in args.pairs]
    except DeepLungRegError as exc:
        print(f"tune_convexadam: error: {exc}", file=sys.stderr)
        return 2
    n_k = len(CRITERIA)
    scores = np.zeros((len(CANDIDATES), len(pairs), n_k))
    failed = np.zeros((len(CANDIDATES), len(pairs)), bool)
    rows = []
    for ci, cand in enumerate(CANDIDATES):
        for pi, (pair, name) in enumerate(zip(pairs, args.pairs)):
            t0 = time.perf_counter()
            try:
                res = run_convexadam(pair.fixed, pair.moving, device=args.device, settings=cand)
                sc = evaluate_field(pair, res.field)
                vals = [sc["tre_after"]["mean"], sc["tre_after"]["p95"], sc["sd_log_j"]]
                failed[ci, pi] = sc["folding_percent"] > 0.1
                scores[ci, pi] = vals
                rows.append({"candidate": ci, "settings": cand, "pair": Path(name).name, "tre_mean": vals[0],
                             "tre_p95": vals[1], "sd_log_j": vals[2], "folding_percent": sc["folding_percent"],
                             "seconds": time.perf_counter() - t0})
            except Exception as exc:  # a candidate that crashes ranks last
                failed[ci, pi] = True
                rows.append({"candidate": ci, "settings": cand, "pair": Path(name).name, "error": str(exc)})
            print(json.dumps(rows[-1]), flush=True)
    rank = rank_candidates(scores, failed)
    order = np.argsort(rank)
    lines = ["| rank | settings | mean rank | " + " | ".join(f"{Path(n).name} mean / p95 / SD log J / s" for n in args.pairs) + " |",
             "|---|---|---|" + "---|" * len(args.pairs)]
    for r, ci in enumerate(order, 1):
        cells = []
        for pi in range(len(pairs)):
            row = next(x for x in rows if x["candidate"] == ci and x["pair"] == Path(args.pairs[pi]).name)
            cells.append("failed" if "error" in row else
                         f"{row['tre_mean']:.2f} / {row['tre_p95']:.2f} / {row['sd_log_j']:.3f} / {row['seconds']:.0f}")
        lines.append(f"| {r} | `{json.dumps(CANDIDATES[ci]) if CANDIDATES[ci] else 'defaults'}` | {rank[ci]:.2f} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")
        out.with_suffix(".json").write_text(json.dumps({"rows": rows, "mean_rank": rank.tolist(),
                                                        "best": CANDIDATES[int(order[0])]}, indent=2))
    print(f"best: {CANDIDATES[int(order[0])] or 'the defaults'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
