"""Peak memory and time per stage of ``deeplungreg register`` on full-resolution CTs.

Three fixed images, each registered with the default method and lung masks found
automatically, all outputs written on the full-resolution fixed grid:

* ``2mm``: the POPI CT resampled to 2 mm (the size the methods are tuned on);
* ``popi``: the real POPI DICOM series at its full resolution, 512x512x141 (read
  once from DICOM and written as the case's ``fixed.nii.gz``);
* ``600``: the POPI CT resampled to 512x512x600 (0.98 x 0.98 x 0.47 mm), as a
  full-resolution COPD scan is stored; its float32 field alone is 1.9 GB.

The moving image of each is the fixed one warped by the inverse of a simulated
breathing motion (``small``, computed at 4 mm and applied at full resolution), so
the TRE of the simulator's landmarks is printed as well. Each registration runs in
a fresh process, whose peak resident memory is read at every stage.

    python scripts/bench_fullres.py                  # all three (about 20 min on 2 cores)
    python scripts/bench_fullres.py --cases 2mm,popi
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def prepare(case: str, folder: Path, data: Path) -> dict:
    """Write ``fixed.nii.gz``, ``moving.nii.gz`` and the landmark CSVs of a case into ``folder``."""
    import numpy as np

    from DeepLungRegLib import Geometry, read_image, write_image
    from DeepLungRegLib.io.landmarks import write_landmarks
    from DeepLungRegLib.simulation import simulate_breathing
    from DeepLungRegLib.transforms import field_to_grid, resample_to_geometry, resample_to_spacing, warp_image

    if case == "popi":
        fixed = read_image(data / "popi" / "dicom-phase00")
    else:
        ct = read_image(data / "popi" / "popi00.nrrd")
        if case == "2mm":
            fixed = resample_to_spacing(ct, 2.0, fill=-1024.0)
        elif case == "600":
            g = ct.geometry
            extent = (g.size[2] - 1) * g.spacing[2]
            target = Geometry((512, 512, 600), (g.spacing[0], g.spacing[1], extent / 599), g.origin, g.direction)
            fixed = resample_to_geometry(ct, target, smooth=False, fill=None)
            fixed = fixed.with_array(np.round(fixed.array).astype(np.int16))
        else:
            raise SystemExit(f"bench_fullres: unknown case {case!r}")
    pair = simulate_breathing(resample_to_spacing(fixed, 4.0, fill=-1024.0), amplitude="small", seed=7)
    back = pair.reversed()  # its field maps exhale points to inhale points: what pulls the inhale into the exhale
    g = fixed.geometry
    moving = warp_image(fixed, field_to_grid(back.field, back.fixed.geometry, g), g, fill=None, dtype=fixed.array.dtype)
    write_image(fixed, folder / "fixed.nii.gz")
    write_image(moving, folder / "moving.nii.gz")
    write_landmarks(pair.fixed_landmarks, folder / "fixed_landmarks.csv")
    write_landmarks(pair.moving_landmarks, folder / "moving_landmarks.csv")
    return {"size": list(g.size), "spacing": [round(s, 3) for s in g.spacing], "voxels_M": round(float(np.prod(g.size)) / 1e6, 1)}


def child(folder: Path, method: str | None) -> None:
    """Run one registration in this (fresh) process; print a JSON record of its stages."""
    from DeepLungRegLib.memory import peak_rss_mb
    from DeepLungRegLib.pipeline import RegistrationJob, run_registration

    stages: list[dict] = []
    t0 = time.perf_counter()

    def mark(stage: str) -> None:
        if stages and stages[-1]["stage"] == stage:
            return
        now = time.perf_counter() - t0
        if stages:
            stages[-1]["seconds"] = round(now - stages[-1]["start"], 1)
            stages[-1]["peak_rss_mb"] = round(peak_rss_mb() or 0.0)
        stages.append({"stage": stage, "start": now})

    def progress(stage: str, fraction: float) -> None:
        # group the methods' many stage names into the pipeline's steps
        if stage in ("lung masks", "working frame", "field to the fixed grid"):
            mark(stage)
        elif stage.startswith("done") or stage == "outputs done":
            return
        else:
            mark("method" if fraction < 0.9 else stage)

    mark("read inputs")
    kw = {"method": method} if method else {}
    job = RegistrationJob.from_files(folder / "fixed.nii.gz", folder / "moving.nii.gz", fixed_landmarks=str(folder / "fixed_landmarks.csv"),
                                     moving_landmarks=str(folder / "moving_landmarks.csv"), device="cpu", **kw)
    metrics = run_registration(job, folder / "out", progress=progress)
    mark("end")
    stages.pop()
    print(json.dumps({"stages": stages, "total_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak_rss_mb() or 0.0),
                      "method": metrics["method"], "tre_before": metrics["tre_before"]["mean"], "tre_after": metrics["tre_after"]["mean"],
                      "folding_percent": metrics["jacobian"]["folding_percent"],
                      "working_grid": metrics["diagnostics"].get("working_grid", {}).get("size")}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="2mm,popi,600")
    p.add_argument("--method", default=None, help="default: the CLI's default method")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--keep", help="keep the inputs and outputs in this folder (and reuse inputs found there)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(Path(a.child), a.method)
        return 0
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench-fullres-"))
    rows = []
    for case in a.cases.split(","):
        folder = root / case
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / "info.json").is_file() and (folder / "moving.nii.gz").is_file():  # --keep folder of an earlier run
            info = json.loads((folder / "info.json").read_text())
        else:
            print(f"bench_fullres: preparing {case} ...", file=sys.stderr, flush=True)
            info = prepare(case, folder, Path(a.data))
            (folder / "info.json").write_text(json.dumps(info))
        import shutil

        shutil.rmtree(folder / "out", ignore_errors=True)
        print(f"bench_fullres: registering {case} {info['size']} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--child", str(folder)] + (["--method", a.method] if a.method else [])
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            return 1
        rec = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append((case, info, rec))
        print(f"\n### {case}: {info['size']} voxels at {info['spacing']} mm ({info['voxels_M']} M), method {rec['method']}\n")
        print("| stage | seconds | peak RSS so far (GB) |\n|---|---|---|")
        for s in rec["stages"]:
            print(f"| {s['stage']} | {s['seconds']} | {s['peak_rss_mb'] / 1024:.2f} |")
        print(f"| **total** | **{rec['total_s']}** | **{rec['peak_rss_mb'] / 1024:.2f}** |")
        print(f"\nTRE {rec['tre_before']:.2f} -> {rec['tre_after']:.2f} mm, folding {rec['folding_percent']:.3f} %, "
              f"working grid {rec['working_grid']}", flush=True)
    print("\n| case | size | voxels (M) | method | total (s) | peak RSS (GB) | TRE before -> after (mm) |\n|---|---|---|---|---|---|---|")
    for case, info, rec in rows:
        print(f"| {case} | {'x'.join(map(str, info['size']))} | {info['voxels_M']} | {rec['method']} | {rec['total_s']} | "
              f"{rec['peak_rss_mb'] / 1024:.2f} | {rec['tre_before']:.2f} -> {rec['tre_after']:.2f} |")
    if not a.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
