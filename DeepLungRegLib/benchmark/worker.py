"""One benchmark measurement in its own process: one pair, one method.

    python -m DeepLungRegLib.benchmark.worker REQUEST.json

The measurement request of the library's worker protocol (:mod:`DeepLungRegLib.worker`), started by
:class:`DeepLungRegLib.worker.WorkerProcess`: ``{"spec": PAIR SPEC, "method": LABEL, "device": DEVICE}``;
its ``{"done"}`` line carries the result row's fields.

Running each method in a fresh process makes the peak memory that method's
own, and a crash loses only that row. The pair is read (timed as IO), the lung
masks found where the pair has none (timed apart), the method or baseline run
(timed alone), and the field scored.
"""

from __future__ import annotations

import sys
import time
from typing import Callable


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (see :func:`DeepLungRegLib.memory.peak_rss_mb`; 0 where unknown)."""
    from ..memory import peak_rss_mb as peak

    return peak() or 0.0


def load_pair(spec: dict):
    """``(fixed, moving, fixed_mask, moving_mask, fixed_points, moving_points, ground_truth_pair)`` of a spec."""
    from ..errors import DeepLungRegError

    kind = spec.get("kind")
    if kind == "simulated":
        from ..simulation import read_pair

        p = read_pair(spec["path"])
        return p.fixed, p.moving, p.fixed_mask, p.moving_mask, p.fixed_landmarks, p.moving_landmarks, p
    if kind == "dirlab":
        from .dirlab import dirlab_files, load_dirlab_case

        files = dirlab_files(spec["root"], int(spec["case"]), spec.get("dataset", "4dct"))
        f, m, fp, mp = load_dirlab_case(files, fixed=spec.get("fixed", "inhale"))
        return f, m, None, None, fp, mp, None
    raise DeepLungRegError(f"benchmark: unknown pair kind {kind!r}")


def measure(spec: dict, method: str, device: str = "auto", progress: Callable[[str, float], None] | None = None) -> dict:
    """Run ``method`` (a registered method or a baseline) on the pair of ``spec`` and score it."""
    import torch

    from ..evaluation import score_field
    from ..methods import available_methods, register
    from ..segmentation import lung_mask
    from .baselines import run_baseline
    from .runner import method_variant

    t0 = time.perf_counter()
    fixed, moving, fmask, mmask, fp, mp, gt = load_pair(spec)
    io_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if fmask is None:
        fmask, mmask = lung_mask(fixed), lung_mask(moving)
    masks_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    name, options = method_variant(method)  # "method" or "method:option=value:..."
    if name in available_methods():
        res = register(fixed, moving, name, fixed_mask=fmask, moving_mask=mmask, config=options or None, device=device,
                       progress=progress)
        field, diag = res.field, res.diagnostics
        stages = {k: round(v, 2) for k, v in res.timings.items() if k != "total"}
    else:
        out = run_baseline(name, fixed, moving, fmask, mmask, device=device)
        field, diag = out.field, out.diagnostics
        stages = {k[:-2]: round(v, 2) for k, v in diag.items() if k.endswith("_s")}
    reg_s = time.perf_counter() - t0
    row = score_field(field, fixed.geometry, fmask, mmask, fp, mp, None if gt is None else gt.field, per_landmark=True)
    row.update(io_s=round(io_s, 3), masks_s=round(masks_s, 3), registration_s=round(reg_s, 3),
               peak_rss_mb=round(peak_rss_mb(), 1), stages_s=stages,
               device=str(diag.get("device", device)))
    if torch.cuda.is_available() and str(row["device"]).startswith("cuda"):
        row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row


def measure_request(request: dict, progress: Callable[[str, float], None]) -> dict:
    """The measurement request: ``{"spec", "method", "device"}`` -> ``{"done": "measure", ...the row's fields}``."""
    from ..errors import DeepLungRegError

    spec, method = request.get("spec"), request.get("method")
    if not isinstance(spec, dict) or not isinstance(method, str):
        raise DeepLungRegError("benchmark: a measurement request needs a 'spec' object and a 'method' label")
    return {"done": "measure", **measure(spec, method, str(request.get("device") or "auto"), progress)}


def main(argv: list[str] | None = None) -> int:
    from ..worker import main as serve

    return serve(sys.argv[1:] if argv is None else argv, measure_request)


if __name__ == "__main__":
    raise SystemExit(main())
