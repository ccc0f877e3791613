"""How well the uncertainty map predicts the true error, beside the simple predictors, on simulated pairs.

    python scripts/validate_uncertainty.py PAIRDIR [PAIRDIR ...] [--method convex] [-O NAME=VALUE ...]
        [-o bench-output/uncertainty] [--md table.md]

Each PAIRDIR is a simulated pair (``deeplungreg simulate`` or ``benchmark --simulated``'s ``pairs/``; its dense
ground truth is ``ground_truth_field.nii.gz``). Per pair, the method registers it with ``uncertainty=true`` and, for
the inverse-consistency predictor, the other way round. The predictors, each a map on the fixed grid (higher =
less sure):

* ``uncertainty``: the method's map (``uncertainty.nii.gz``): from its matching costs (``convex``, ``embed``), or,
  for the other methods, the inverse consistency below (then both rows are the same map);
* ``inverse consistency``: ``|u(x) + w(x + u(x))|`` with ``w`` the reverse registration's field;
* ``intensity residual``: ``|fixed - warped moving|`` (HU), Gaussian-smoothed (sigma 2 mm);
* ``|log J|``: of the forward field.

The true error is ``|u(x) - u_true(x)|`` at fixed lung voxels, and the TRE at the landmarks. Printed per pair and
pooled over the pairs, per predictor: **Spearman** rank correlation with the true error over the lung voxels (a
random sample of 50 000 per pair) and at the landmarks; **usefulness**: the share of the landmarks with a TRE above
2 mm that lie in the most uncertain 10 % of the lung (the cut over the lung voxels; 10 % by chance); and the
**calibration** of the uncertainty map: mean predicted against mean observed error per decile of the prediction,
over the lung voxels. Each pair's sampled values are kept in ``OUT/<pair>_<options>.npz`` and its reverse field in
``OUT/<pair>_backward.nii.gz`` (without the uncertainty's options), so a rerun reprints without registering again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from DeepLungRegLib.evaluation.uncertainty import calibration, spearman  # noqa: E402
from DeepLungRegLib.methods import parse_options  # noqa: E402
from DeepLungRegLib.metrics import jacobian_determinant  # noqa: E402
from DeepLungRegLib.pipeline import RegistrationJob, compute_outputs  # noqa: E402
from DeepLungRegLib.simulation.breathing import read_pair  # noqa: E402
from DeepLungRegLib.transforms.fields import compose_fields  # noqa: E402
from DeepLungRegLib.transforms.warp import sample_map_at_points  # noqa: E402

PREDICTORS = ("uncertainty", "inverse consistency", "intensity residual", "|log J|")
VOXEL_SAMPLE = 50_000
LARGE_MM = 2.0
TOP = 0.10


def backward_field(pairdir: Path, p, method: str, options: dict, cache: Path) -> tuple[np.ndarray, object]:
    """The reverse registration's field (moving fixed), kept in ``cache`` (it does not depend on the uncertainty's options)."""
    from DeepLungRegLib.io.fields import read_field, write_field

    if not cache.is_file():
        base = {k: v for k, v in options.items() if not k.startswith("uncertainty")}
        bwd = compute_outputs(RegistrationJob(p.moving, p.fixed, method, p.moving_mask, p.fixed_mask, config=base, device="cpu"))
        write_field(np.asarray(bwd.result.field, np.float32), bwd.result.geometry, cache)
    return read_field(cache)


def measure(pairdir: Path, method: str, options: dict, backward_cache: Path, seed: int = 0) -> dict:
    """The predictors and the true error at sampled lung voxels and at the landmarks of one pair."""
    from scipy import ndimage as ndi

    p = read_pair(pairdir)
    g = p.fixed.geometry
    fwd = compute_outputs(RegistrationJob(p.fixed, p.moving, method, p.fixed_mask, p.moving_mask, p.fixed_landmarks,
                                          p.moving_landmarks, config={**options, "uncertainty": True}, device="cpu"))
    u = np.asarray(fwd.result.field, np.float32)
    if fwd.result.diagnostics["uncertainty_estimate"] == "inverse consistency":  # the method's map is that predictor
        ic = fwd.uncertainty.array
    else:
        w, wg = backward_field(pairdir, p, method, options, backward_cache)
        ic = np.linalg.norm(compose_fields(u, g, w, wg), axis=-1).astype(np.float32)
        del w
    maps = {
        "uncertainty": fwd.uncertainty.array,
        "inverse consistency": ic,
        "intensity residual": ndi.gaussian_filter(np.abs(p.fixed.array.astype(np.float32) - fwd.warped.array.astype(np.float32)),
                                                  sigma=[2.0 / s for s in g.spacing[::-1]]),
        "|log J|": np.abs(np.log(np.clip(jacobian_determinant(u, g), 1e-3, None))),
    }
    error = np.linalg.norm(u - p.field, axis=-1)
    lung = p.fixed_mask.array.astype(bool)
    idx = np.flatnonzero(lung.ravel())
    rng = np.random.default_rng(seed)
    pick = rng.choice(idx, size=min(VOXEL_SAMPLE, idx.size), replace=False)
    out = {"voxel_error": error.ravel()[pick], "tre": np.asarray(fwd.tre_after, float),
           "estimate": np.asarray(fwd.result.diagnostics["uncertainty_estimate"])}
    for name, m in maps.items():
        key = name.replace(" ", "_").replace("|", "")
        out[f"voxel_{key}"] = m.ravel()[pick]
        out[f"cut_{key}"] = np.quantile(m.ravel()[idx], 1.0 - TOP)
        out[f"landmark_{key}"] = sample_map_at_points(m, g, p.fixed_landmarks)
    return out


def rows_for(data: list[dict]) -> list[tuple[str, float, float, float, int]]:
    """Per predictor: Spearman over voxels, at landmarks, the large-error landmarks in the top 10 %, and their count."""
    rows = []
    for name in PREDICTORS:
        key = name.replace(" ", "_").replace("|", "")
        sv = spearman(np.concatenate([d[f"voxel_{key}"] for d in data]), np.concatenate([d["voxel_error"] for d in data]))
        sl = spearman(np.concatenate([d[f"landmark_{key}"] for d in data]), np.concatenate([d["tre"] for d in data]))
        hits = sum(int(((d[f"landmark_{key}"] >= d[f"cut_{key}"]) & (d["tre"] > LARGE_MM)).sum()) for d in data)
        large = sum(int((d["tre"] > LARGE_MM).sum()) for d in data)
        rows.append((name, sv, sl, hits / large if large else float("nan"), large))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pairs", nargs="+", type=Path)
    ap.add_argument("--method", default="convex")
    ap.add_argument("--option", "-O", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "bench-output" / "uncertainty")
    args = ap.parse_args()
    options = parse_options(args.option)
    args.output.mkdir(parents=True, exist_ok=True)
    data = {}
    tag = "".join(f"_{o}" for o in args.option).replace("/", "-")
    for pd in args.pairs:
        cache = args.output / f"{pd.name}{tag}.npz"
        if not cache.is_file():
            print(f"validate_uncertainty: registering {pd.name}", file=sys.stderr, flush=True)
            np.savez(cache, **measure(pd, args.method, options, args.output / f"{pd.name}_backward.nii.gz"))
        with np.load(cache) as z:
            data[pd.name] = {k: z[k] for k in z.files}
    estimate = str(next(iter(data.values()))["estimate"]) if all("estimate" in d for d in data.values()) else "matching costs"
    print(f"Method `{args.method}`{' ' + ' '.join(args.option) if args.option else ''}, its uncertainty estimated from the "
          f"{estimate}; Spearman with the true error, and the share of landmarks with TRE > {LARGE_MM:g} mm in the most "
          f"uncertain {TOP:.0%} of the lung.\n")
    print("| pair | predictor | Spearman, lung voxels | Spearman, landmarks | TRE > 2 mm in top 10 % (n) |")
    print("|---|---|---|---|---|")
    for label, subset in [*((n, [d]) for n, d in data.items()), ("**all pairs**", list(data.values()))]:
        for name, sv, sl, share, large in rows_for(subset):
            print(f"| {label} | {name} | {sv:.2f} | {sl:.2f} | {'-' if large == 0 else f'{share:.0%}'} ({large}) |")
    print("\nCalibration of the uncertainty map, all pairs (lung voxels, by decile of the prediction):\n")
    print("| decile | mean predicted (mm) | mean true error (mm) |")
    print("|---|---|---|")
    cal = calibration(np.concatenate([d["voxel_uncertainty"] for d in data.values()]),
                      np.concatenate([d["voxel_error"] for d in data.values()]))
    for i, (pm, em, _) in enumerate(cal, 1):
        print(f"| {i} | {pm:.2f} | {em:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
