"""The GPU path measured in one run: CPU/CUDA agreement, GPU time and memory per stage, batch on GPU workers, precision.

Everything is made from the bundled demo CT (``popi00_demo.nrrd``), so the script needs nothing but
the repository. Parts, most important first:

* ``a`` agreement at 2 mm: a simulated pair as ``deeplungreg demo`` makes it (the sample at 2 mm,
  ``small`` breathing, seed 0); every built-in method on the CPU and on CUDA: mean TRE on each,
  the difference of the two fields (mm), seconds on each;
* ``b`` GPU seconds per stage and peak GPU memory (``torch.cuda.max_memory_allocated``, reset by
  ``register()`` for each run) at 2 mm (the CUDA runs of ``a``) and at native resolution: the sample
  resampled onto the POPI series' grid (512x512x141 at 0.977x0.977x2 mm) for every method;
* ``c`` ``run_cohort`` (``deeplungreg batch``) on 4 pairs at 4 mm on the library's local cluster (one
  worker per GPU holding the Dask resource ``GPU=1``): each pair ran on such a worker, on CUDA;
* ``d`` precision: TF32 against float32 for ``convex`` and ``embed`` (and the networks), bfloat16
  (``precision=bfloat16``: the networks under autocast, the other methods wholly in bfloat16), and
  MIND-SSC and the feature CNN in bfloat16 against float32;
* ``b600`` 512x512x600 (as ``scripts/bench_fullres.py`` builds it): the default method and ``embed``.

The moving image of each native-resolution case is its fixed image warped by the inverse of a
simulated breathing motion computed at 4 mm (as ``scripts/bench_fullres.py`` prepares it), so the
simulator's landmarks give the TRE.

``--budget SECONDS`` bounds the whole run: a row whose expected time no longer fits is skipped and
recorded as skipped. Rows are written as they come, to ``OUT/gpu_bench.jsonl`` (one JSON record a
line) and ``OUT/gpu_bench.md`` (the tables), both flushed after every row, and printed.

    python scripts/gpu_bench.py --device cuda --out OUT --budget 420
    python scripts/gpu_bench.py --device cpu --quick --out /tmp/gpu-bench   # the dry run: tiny sizes, two methods

``torch.compile`` is not measured: it compiles for each grid shape (every pair has its own working
grid) and its first compilation alone takes longer than a whole registration on the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _demo_ct() -> Path:
    """The bundled demo CT (package data, ``DeepLungRegLib/data/sample``)."""
    from DeepLungRegLib.data import sample_path

    return sample_path()


SAMPLE = _demo_ct()

import numpy as np  # noqa: E402
import torch  # noqa: E402

#: the POPI series' grid (512x512x141 at 0.977x0.977x2 mm)
POPI_SIZE, POPI_SPACING = (512, 512, 141), (0.977, 0.977, 2.0)


# ------------------------------------------------------------------ output
class Report:
    """Rows to ``gpu_bench.jsonl`` and tables to ``gpu_bench.md``, flushed row by row, and printed."""

    def __init__(self, out: Path, budget: float):
        out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        self.budget = budget
        self.jsonl = open(out / "gpu_bench.jsonl", "a", encoding="utf-8")
        self.md = open(out / "gpu_bench.md", "a", encoding="utf-8")
        self.columns: list[str] = []
        self.estimates: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()

    def _write(self, fh, text: str) -> None:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())

    def text(self, line: str) -> None:
        print(line, flush=True)
        self._write(self.md, line + "\n")

    def table(self, title: str, columns: list[str], note: str = "") -> None:
        self.columns = columns
        self.text(f"\n## {title}\n" + (f"\n{note}\n" if note else ""))
        self.text("| " + " | ".join(columns) + " |")
        self.text("|" + "---|" * len(columns))

    def row(self, part: str, record: dict) -> None:
        record = {"part": part, "t_s": round(self.elapsed(), 1), **record}
        self._write(self.jsonl, json.dumps(record, default=str) + "\n")
        self.text("| " + " | ".join(_fmt(record.get(c, "")) for c in self.columns) + " |")

    def fits(self, kind: str, default: float) -> bool:
        """Whether a row of ``kind`` (its last time x 1.3, or ``default`` seconds) fits in what is left."""
        return self.left() > self.estimates.get(kind, default)

    def took(self, kind: str, seconds: float) -> None:
        self.estimates[kind] = 1.3 * seconds + 2.0


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def rounded(x, digits: int = 0):
    """``x`` rounded, or None where it is missing (a CPU run has no GPU peak): JSON has no NaN."""
    return None if x is None else round(float(x), digits)


def stages_text(timings: dict) -> str:
    return "; ".join(f"{k} {v:.2f}" for k, v in timings.items() if k != "total" and v >= 0.05)


# ------------------------------------------------------------------ data
def demo_pair(spacing: float, seed: int = 0, amplitude: str = "small"):
    """The sample at ``spacing`` mm and a simulated exhale of it (``deeplungreg demo``'s kind of pair)."""
    from DeepLungRegLib import read_image
    from DeepLungRegLib.simulation import simulate_breathing
    from DeepLungRegLib.transforms import resample_to_spacing

    ct = resample_to_spacing(read_image(SAMPLE), spacing, fill=-1024.0)
    return simulate_breathing(ct, amplitude=amplitude, seed=seed)


def native_case(size: tuple[int, int, int], spacing: tuple[float, float, float], device: str):
    """The sample resampled onto a grid of ``size`` and ``spacing`` centred on it (air outside), int16,
    and a moving image warped by the inverse of a simulated motion (as ``bench_fullres.prepare``).

    Returns ``(fixed, moving, fixed_mask, moving_mask, fixed_landmarks, moving_landmarks)``; the masks
    are the simulator's at 4 mm (``register()`` resamples them onto the images)."""
    from DeepLungRegLib import Geometry, read_image
    from DeepLungRegLib.simulation import simulate_breathing
    from DeepLungRegLib.transforms import field_to_grid, resample_to_geometry, resample_to_spacing, warp_image

    ct = read_image(SAMPLE)
    g = ct.geometry
    centre = g.index_to_world((np.asarray(g.size, float)[None] - 1) / 2)[0]
    half = (np.asarray(size, float) - 1) / 2 * np.asarray(spacing)
    origin = centre - np.asarray(g.direction_matrix) @ half
    target = Geometry(size, spacing, tuple(origin), g.direction)
    fixed = resample_to_geometry(ct, target, smooth=False, fill=-1024.0)
    fixed = fixed.with_array(np.round(fixed.array).astype(np.int16))
    pair = simulate_breathing(resample_to_spacing(fixed, 4.0, fill=-1024.0), amplitude="small", seed=7)
    back = pair.reversed()  # exhale points -> inhale points: what pulls the inhale into the exhale
    moving = warp_image(fixed, field_to_grid(back.field, back.fixed.geometry, target), target, fill=None,
                        dtype=fixed.array.dtype, device=device)
    return fixed, moving, pair.fixed_mask, pair.moving_mask, pair.fixed_landmarks, pair.moving_landmarks


# ------------------------------------------------------------------ runs
def run_one(fixed, moving, fm, mm, method: str, device: str, config: dict | None = None):
    from DeepLungRegLib.methods import register

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    t = time.perf_counter()
    res = register(fixed, moving, method, fixed_mask=fm, moving_mask=mm, config=config, device=device)
    return res, time.perf_counter() - t


def mean_tre(fl, ml, res=None) -> float:
    from DeepLungRegLib.metrics import tre

    return float(tre(fl, ml).mean()) if res is None else float(tre(fl, ml, res.field, res.geometry).mean())


def gpu_record(res, seconds: float, fl, ml) -> dict:
    d = res.diagnostics
    return {"total_s": round(res.timings.get("total", seconds), 2), "peak_gpu_mb": rounded(d.get("peak_gpu_mb")),
            "peak_rss_mb": rounded(d.get("peak_rss_mb")), "tre_mm": round(mean_tre(fl, ml, res), 3),
            "stages_s": stages_text(res.timings), "device": d.get("device")}


def field_difference(a, b, mask=None) -> dict:
    """max / mean |a - b| (vector norm, mm) over the grid, and the mean inside ``mask``."""
    n = np.linalg.norm(a.field - b.field, axis=-1)
    out = {"field_max_mm": round(float(n.max()), 4), "field_mean_mm": round(float(n.mean()), 4)}
    if mask is not None and mask.shape == n.shape:
        out["field_mean_lung_mm"] = round(float(n[mask].mean()), 4)
    return out


def part_a(rep: Report, args, methods: list[str], configs: dict) -> dict:
    """Agreement at 2 mm; returns the CUDA results by method (for b and d)."""
    pair = demo_pair(args.spacing)
    fl, ml, lung = pair.fixed_landmarks, pair.moving_landmarks, pair.fixed_mask.array > 0
    rep.table(f"a. CPU and {args.device} agree ({args.spacing:g} mm pair {'x'.join(map(str, pair.fixed.geometry.size))}, "
              f"TRE before {mean_tre(fl, ml):.2f} mm)",
              ["method", "CPU s", "GPU s", "CPU TRE", "GPU TRE", "dTRE", "field max mm", "field mean mm", "field mean lung mm",
               "GPU peak MB"],
              "Fields compared voxel by voxel on the fixed grid (|u_gpu - u_cpu|, mm). Precision float32 (TF32 off).")
    gpu_results = {"pair": pair}
    for method in methods:
        if not rep.fits("a_pair", 60.0):
            rep.row("a", {"method": method, "CPU s": f"skipped: {rep.left():.0f} s of the budget left"})
            continue
        t = time.perf_counter()
        try:
            cfg = configs.get(method)
            g, gs = run_one(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, method, args.device, cfg)
            gpu_results[method] = g
            c, cs = run_one(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, method, "cpu", cfg)
            tc, tg = mean_tre(fl, ml, c), mean_tre(fl, ml, g)
            rec = {"method": method, "CPU s": round(c.timings["total"], 2), "GPU s": round(g.timings["total"], 2),
                   "CPU TRE": round(tc, 3), "GPU TRE": round(tg, 3), "dTRE": round(tg - tc, 4),
                   "GPU peak MB": rounded(g.diagnostics.get("peak_gpu_mb"))}
            diff = field_difference(g, c, lung)
            rec.update({"field max mm": diff["field_max_mm"], "field mean mm": diff["field_mean_mm"],
                        "field mean lung mm": diff.get("field_mean_lung_mm", "")})
            rec.update({"cpu_stages_s": stages_text(c.timings), "gpu_stages_s": stages_text(g.timings)})
            rep.row("a", rec)
        except Exception as exc:  # noqa: BLE001 - one method's failure is a result, the others go on
            rep.row("a", {"method": method, "CPU s": f"error: {type(exc).__name__}: {str(exc)[:200]}"})
            traceback.print_exc()
        rep.took("a_pair", time.perf_counter() - t)
    return gpu_results


def part_b_table(rep: Report, title: str) -> None:
    rep.table(title, ["case", "method", "GPU s", "GPU peak MB", "peak RSS MB", "TRE before", "TRE", "stages (s)"],
              "Seconds per stage as register() records them (CUDA synchronised at each stage's end); peak GPU memory "
              "reset at the start of each registration.")


def part_b_2mm(rep: Report, args, gpu_results: dict) -> None:
    pair = gpu_results["pair"]
    fl, ml = pair.fixed_landmarks, pair.moving_landmarks
    part_b_table(rep, f"b. GPU time and memory per stage, {args.spacing:g} mm ({'x'.join(map(str, pair.fixed.geometry.size))})")
    before = round(mean_tre(fl, ml), 3)
    for method, res in gpu_results.items():
        if method == "pair":
            continue
        r = gpu_record(res, res.timings.get("total", 0.0), fl, ml)
        rep.row("b", {"case": f"{args.spacing:g}mm", "method": method, "GPU s": r["total_s"], "GPU peak MB": r["peak_gpu_mb"],
                      "peak RSS MB": r["peak_rss_mb"], "TRE before": before, "TRE": r["tre_mm"], "stages (s)": r["stages_s"]})


def part_b_native(rep: Report, args, case: str, size, spacing, methods: list[str], configs: dict, est: float) -> None:
    part_b_table(rep, f"b. GPU time and memory per stage, {case}: {'x'.join(map(str, size))} at "
                      f"{'x'.join(f'{s:g}' for s in spacing)} mm")
    if not rep.fits(f"prepare_{case}", est):
        rep.row("b", {"case": case, "method": "all", "GPU s": f"skipped: {rep.left():.0f} s of the budget left"})
        return
    t = time.perf_counter()
    try:
        fixed, moving, fm, mm, fl, ml = native_case(size, spacing, args.device)
    except Exception as exc:  # noqa: BLE001
        rep.row("b", {"case": case, "method": "prepare", "GPU s": f"error: {type(exc).__name__}: {str(exc)[:200]}"})
        traceback.print_exc()
        return
    print(f"gpu_bench: {case} prepared in {time.perf_counter() - t:.1f} s", flush=True)
    before = round(mean_tre(fl, ml), 3)
    for method in methods:
        if not rep.fits(case, est):
            rep.row("b", {"case": case, "method": method, "GPU s": f"skipped: {rep.left():.0f} s of the budget left"})
            continue
        t = time.perf_counter()
        try:
            res, s = run_one(fixed, moving, fm, mm, method, args.device, configs.get(method))
            r = gpu_record(res, s, fl, ml)
            rep.row("b", {"case": case, "method": method, "GPU s": r["total_s"], "GPU peak MB": r["peak_gpu_mb"],
                          "peak RSS MB": r["peak_rss_mb"], "TRE before": before, "TRE": r["tre_mm"], "stages (s)": r["stages_s"]})
            del res
        except Exception as exc:  # noqa: BLE001 - out of memory is a result too
            rep.row("b", {"case": case, "method": method, "GPU s": f"error: {type(exc).__name__}: {str(exc)[:200]}"})
            traceback.print_exc()
        rep.took(case, time.perf_counter() - t)


def part_c(rep: Report, args, n_pairs: int, spacing: float, method: str | None, options: dict) -> None:
    """run_cohort on the library's own local cluster; each pair's worker and device checked."""
    rep.table(f"c. batch: {n_pairs} pairs at {spacing:g} mm on the local Dask cluster (device {args.device})",
              ["pair", "status", "worker", "worker resources", "device", "register s", "task s", "TRE", "ok"],
              "ok: the pair ran on a worker that holds GPU=1 and on CUDA (on the CPU: on a worker, on the CPU).")
    if not rep.fits("batch", 90.0 if not args.quick else 60.0):
        rep.row("c", {"pair": "all", "status": f"skipped: {rep.left():.0f} s of the budget left"})
        return
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        rep.row("c", {"pair": "all", "status": f"skipped: {exc}"})
        return
    from DeepLungRegLib.batch.results import BATCH_KEY
    from DeepLungRegLib.batch.run import _make_client, run_cohort
    from DeepLungRegLib.options import DEFAULT_METHOD
    from DeepLungRegLib.simulation import write_pair

    method = method or DEFAULT_METHOD
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-bench-batch-") as tmp:
        rows = []
        for i in range(n_pairs):
            pair = demo_pair(spacing, seed=i, amplitude=("small", "large")[i % 2])
            d = write_pair(pair, Path(tmp) / f"pair{i}")
            rows.append({"id": f"p{i}", "fixed": str(d / "fixed.nii.gz"), "moving": str(d / "moving.nii.gz"),
                         "fixed_mask": str(d / "fixed_mask.nii.gz"), "moving_mask": str(d / "moving_mask.nii.gz"),
                         "fixed_landmarks": str(d / "fixed_landmarks.csv"), "moving_landmarks": str(d / "moving_landmarks.csv")})
        device = "cuda" if args.device.startswith("cuda") else "cpu"
        client, close = _make_client(None, device, None if device == "cuda" else 1)
        try:
            workers = {str(w.get("name")): w.get("resources") or {} for w in client.scheduler_info(n_workers=-1)["workers"].values()}
            print(f"gpu_bench: batch cluster workers {workers}", flush=True)
            out = Path(tmp) / "out"
            results = run_cohort(rows, out, method=method, options=options, device=device, client=client)
        finally:
            close()
        for r in results:
            metrics_path = out / r["id"] / "metrics.json"
            m = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
            worker = str((m.get(BATCH_KEY) or {}).get("worker", r.get("worker", "")))
            dev = (m.get("diagnostics") or {}).get("device", "")
            res = workers.get(worker, {})
            ok = (res.get("GPU") == 1 and dev.startswith("cuda")) if device == "cuda" else (worker in workers and dev == "cpu")
            status = str(r.get("status")) + (f": {str(r['error'])[:160]}" if r.get("error") else "")
            rep.row("c", {"pair": r["id"], "status": status, "worker": worker, "worker resources": json.dumps(res),
                          "device": dev, "register s": (m.get("timings_s") or {}).get("total", ""),
                          "task s": (m.get(BATCH_KEY) or {}).get("seconds", r.get("seconds")),
                          "TRE": (m.get("tre_after") or {}).get("mean", ""), "ok": bool(ok)})
    rep.text(f"\nbatch of {n_pairs} pairs: {time.perf_counter() - t:.1f} s in all (cluster start, {n_pairs} registrations, results)")
    rep.took("batch", time.perf_counter() - t)


def _timed(fn, device: str, repeats: int = 5) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def part_d(rep: Report, args, gpu_results: dict, methods: list[str], configs: dict) -> None:
    pair = gpu_results["pair"]
    fl, ml = pair.fixed_landmarks, pair.moving_landmarks
    rep.table(f"d. precision on {args.device} ({args.spacing:g} mm pair): against float32 on the same device",
              ["method", "precision", "GPU s", "float32 s", "TRE", "float32 TRE", "field max mm", "field mean mm", "GPU peak MB"],
              "tf32: float32 storage, TF32 matrix products and convolutions. bfloat16: the networks run under autocast "
              "(field and refinement in float32); convex/embed/adam/affine compute wholly in bfloat16.")
    on_cuda = args.device.startswith("cuda")
    runs = []
    for method in methods:
        if method not in gpu_results:
            continue
        runs.append((method, "tf32"))  # on the CPU the same as float32: the dry run goes through the code
        if on_cuda:
            runs.append((method, "bfloat16"))
    for method, precision in runs:
        if not rep.fits("d_run", 20.0):
            rep.row("d", {"method": method, "precision": precision, "GPU s": f"skipped: {rep.left():.0f} s of the budget left"})
            continue
        t = time.perf_counter()
        ref = gpu_results[method]
        try:
            res, s = run_one(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, method, args.device,
                             {**(configs.get(method) or {}), "precision": precision})
            diff = field_difference(res, ref)
            rep.row("d", {"method": method, "precision": precision, "GPU s": round(res.timings["total"], 2),
                          "float32 s": round(ref.timings["total"], 2), "TRE": round(mean_tre(fl, ml, res), 3),
                          "float32 TRE": round(mean_tre(fl, ml, ref), 3), "field max mm": diff["field_max_mm"],
                          "field mean mm": diff["field_mean_mm"],
                          "GPU peak MB": rounded(res.diagnostics.get("peak_gpu_mb")),
                          "stages_s": stages_text(res.timings)})
        except Exception as exc:  # noqa: BLE001
            rep.row("d", {"method": method, "precision": precision, "GPU s": f"error: {type(exc).__name__}: {str(exc)[:200]}"})
            traceback.print_exc()
        rep.took("d_run", time.perf_counter() - t)

    # the feature extraction alone: MIND-SSC and the feature CNN, float32 against bfloat16
    rep.table("d. feature extraction in bfloat16 (median of 5 after a warm-up)",
              ["features", "grid", "float32 ms", "bfloat16 ms", "max abs diff", "mean abs diff"],
              "Descriptors lie in [0, 1]. MIND-SSC is elementwise work and box filters (autocast does not touch it): "
              "bfloat16 means computing it in bfloat16; the CNN runs under autocast.")
    if not on_cuda:
        rep.row("d", {"features": "all", "grid": "skipped: bfloat16 is refused on the CPU"})
        return
    from DeepLungRegLib.features import mind_ssc
    from DeepLungRegLib.features.intensity import normalise_ct
    from DeepLungRegLib.networks.mindnet import cnn_descriptor, load_feature_net

    vols = {"2mm": pair.fixed.array}
    if not args.quick:
        vols["256x256x141"] = np.resize(pair.fixed.array, (141, 256, 256))  # a native-size working grid's worth of voxels
    net = load_feature_net(None, args.device)
    for name, arr in vols.items():
        if not rep.fits("d_feat", 10.0):
            rep.row("d", {"features": "all", "grid": f"skipped: {rep.left():.0f} s of the budget left"})
            break
        t = time.perf_counter()
        x = torch.as_tensor(normalise_ct(arr), device=args.device)[None, None]
        try:
            s32, m32 = _timed(lambda: mind_ssc(x), args.device)
            s16, m16 = _timed(lambda: mind_ssc(x.bfloat16()), args.device)
            e = (m16.float() - m32).abs()
            rep.row("d", {"features": "MIND-SSC", "grid": "x".join(map(str, arr.shape[::-1])), "float32 ms": round(1e3 * s32, 2),
                          "bfloat16 ms": round(1e3 * s16, 2), "max abs diff": round(float(e.max()), 4), "mean abs diff": round(float(e.mean()), 5)})
            describe = cnn_descriptor(net)

            def cnn_bf16():
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    return net(x).float()

            c32, n32 = _timed(lambda: describe(x), args.device)
            c16, n16 = _timed(cnn_bf16, args.device)
            e = (n16 - n32).abs()
            rep.row("d", {"features": "feature CNN", "grid": "x".join(map(str, arr.shape[::-1])), "float32 ms": round(1e3 * c32, 2),
                          "bfloat16 ms": round(1e3 * c16, 2), "max abs diff": round(float(e.max()), 4), "mean abs diff": round(float(e.mean()), 5)})
            del x, m32, m16, n32, n16
        except Exception as exc:  # noqa: BLE001
            rep.row("d", {"features": name, "grid": f"error: {type(exc).__name__}: {str(exc)[:200]}"})
            traceback.print_exc()
        rep.took("d_feat", time.perf_counter() - t)


# ------------------------------------------------------------------ main
def quick_configs() -> dict:
    """Small settings for the dry run on 4 mm pairs (those of the tests)."""
    return {
        "affine": {"iterations": [30, 20]},
        "convex": {"feature_spacing_mm": 4.0, "grid_spacing_mm": [8.0, 4.0], "search_half_width_mm": [24.0, 4.0],
                   "search_step_mm": [4.0, 4.0], "refine_levels_mm": [4.0], "refine_iterations": [20], "refine_learning_rates": [0.3]},
        "embed": {"feature_spacing_mm": 4.0, "search_step_mm": 4.0, "keypoints": 800, "refine_levels_mm": [4.0],
                  "refine_iterations": [30], "refine_learning_rates": [0.3]},
        "adam": {"refine_levels_mm": [8.0, 4.0], "refine_iterations": [60, 40], "refine_learning_rates": [1.0, 0.5]},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (the run this is for) or cpu (a dry run)")
    p.add_argument("--out", required=True, help="folder for gpu_bench.jsonl and gpu_bench.md (appended to)")
    p.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run (default 420)")
    p.add_argument("--parts", default="a,b,c,d,b600", help="parts to run, in this order: a,b,c,d,b600")
    p.add_argument("--methods", default="", help="methods of a, b and d (default: every built-in method; --quick: affine,lindef)")
    p.add_argument("--spacing", type=float, default=None, help="spacing of the agreement pair (default 2 mm; --quick: 4 mm)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and two methods: proves the script runs end to end")
    args = p.parse_args(argv)

    from DeepLungRegLib.device import resolve_device
    from DeepLungRegLib.methods import available_methods
    from DeepLungRegLib.options import DEFAULT_METHOD

    args.device = str(resolve_device(args.device))
    args.spacing = args.spacing or (4.0 if args.quick else 2.0)
    rep = Report(Path(args.out), args.budget)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    every = list(available_methods())
    first = [m for m in (DEFAULT_METHOD, "embed") if m in every]
    from DeepLungRegLib.networks import network_names

    nets = [m for m in every if m in network_names() and m not in first]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] or (
        ["affine", "lindef"] if args.quick else first + nets + [m for m in every if m not in first and m not in nets])
    configs = quick_configs() if args.quick else {}
    gpu = args.device.startswith("cuda")
    from DeepLungRegLib.device import tf32_enabled

    env = {"device": args.device, "gpu": torch.cuda.get_device_name(0) if gpu else None, "torch": torch.__version__,
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if gpu else None, "numpy": np.__version__,
           "threads": torch.get_num_threads(), "torch_tf32_default_matmul_conv": tf32_enabled(), "quick": args.quick,
           "budget_s": args.budget, "methods": methods}
    rep.text(f"# gpu_bench {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n`{json.dumps(env)}`")
    rep._write(rep.jsonl, json.dumps({"part": "env", **env}) + "\n")
    if gpu or args.quick:  # CUDA context, cuBLAS, cuDNN and each method's kernels start once, not inside a measured registration
        t = time.perf_counter()
        warm = demo_pair(8.0)
        done = []
        for m in ["affine"] + [m for m in methods if m != "affine"]:
            if time.perf_counter() - t > 60:
                break
            try:
                res, s = run_one(warm.fixed, warm.moving, warm.fixed_mask, warm.moving_mask, m, args.device, configs.get(m))
                done.append(f"{m} {s:.1f} s")
            except Exception as exc:  # noqa: BLE001 - the measured run reports it
                done.append(f"{m} failed ({type(exc).__name__}: {str(exc)[:120]})")
        rep.text(f"\n{args.device} warm-up on an 8 mm pair (context, cuBLAS, cuDNN, kernels): {time.perf_counter() - t:.1f} s: {'; '.join(done)}")

    gpu_results: dict = {}
    if "a" in parts or "b" in parts or "d" in parts:
        gpu_results = part_a(rep, args, methods, configs)
    if "b" in parts:
        part_b_2mm(rep, args, gpu_results)
        size, spacing = ((96, 96, 48), (3.0, 3.0, 4.0)) if args.quick else (POPI_SIZE, POPI_SPACING)
        part_b_native(rep, args, "native" if not args.quick else "native-quick", size, spacing, methods, configs, 45.0)
    if "c" in parts:
        part_c(rep, args, 2 if args.quick else 4, 8.0 if args.quick else 4.0, "affine" if args.quick else None, {})
    if "d" in parts:
        part_d(rep, args, gpu_results, methods if args.quick else first + [m for m in methods if m in nets], configs)
    if "b600" in parts:
        if args.quick:
            size, spacing, m600 = (96, 96, 96), (3.0, 3.0, 2.0), methods[:1]
        else:
            ct_z = POPI_SIZE[2]
            size, spacing, m600 = (512, 512, 600), (POPI_SPACING[0], POPI_SPACING[1], (ct_z - 1) * POPI_SPACING[2] / 599), first
        part_b_native(rep, args, "600" if not args.quick else "600-quick", size, spacing, m600, configs, 120.0)
    rep.text(f"\ngpu_bench: done in {rep.elapsed():.0f} s of a {args.budget:.0f} s budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
