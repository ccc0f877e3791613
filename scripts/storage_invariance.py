"""Print the storage-invariance table that Testing/pytest/test_methods_invariance.py asserts.

One simulated pair (the bundled sample at 4 mm, small motion, seed 3), its moving
and, separately, its fixed image re-stored as users store scans; for every case
of the test the mean TRE and its difference to the canonical storage, against
the test's tolerance (0.02 mm for exact storages, 0.6 mm for resampled ones).

    python scripts/storage_invariance.py          # about 5 min on 2 cores
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing" / "pytest"))

import test_methods_invariance as t  # noqa: E402  (the matrix, its configs and tolerances)

from DeepLungRegLib import read_image  # noqa: E402
from DeepLungRegLib.metrics import tre  # noqa: E402
from DeepLungRegLib.simulation import simulate_breathing  # noqa: E402
from DeepLungRegLib.simulation.storage import stored_as  # noqa: E402
from DeepLungRegLib.transforms import resample_to_spacing  # noqa: E402


def main() -> int:
    ct = resample_to_spacing(read_image(ROOT / "DeepLungRegLib" / "data" / "sample" / "popi00_demo.nrrd"), t.SPACING, fill=-1024.0)
    pair = simulate_breathing(ct, amplitude="small", seed=3)
    before = tre(pair.fixed_landmarks, pair.moving_landmarks).mean()
    print(f"pair: {pair.fixed.geometry.size} voxels at {t.SPACING:g} mm, TRE before {before:.2f} mm\n")
    print("| image | storage | kind | method | TRE (mm) | canonical (mm) | difference (mm) | tolerance (mm) |")
    print("|---|---|---|---|---|---|---|---|")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for side, name, kind, method in t.CASES:
            ref = t.canonical(pair, method)
            if side == "moving":
                moving, mmask = stored_as(pair.moving, pair.moving_mask, name, tmp, t.SPACING)
                got = t.mean_tre(pair, method, pair.fixed, moving, pair.fixed_mask, mmask)
            else:
                fixed, fmask = stored_as(pair.fixed, pair.fixed_mask, name, tmp, t.SPACING)
                got = t.mean_tre(pair, method, fixed, pair.moving, fmask, pair.moving_mask)
            worst = max(worst, abs(got - ref) / t.TOL[kind])
            print(f"| {side} | {name} | {kind} | {method} | {got:.3f} | {ref:.3f} | {got - ref:+.3f} | {t.TOL[kind]:g} |", flush=True)
    print(f"\nlargest difference: {worst:.2f} of its tolerance")
    return 0 if worst <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
