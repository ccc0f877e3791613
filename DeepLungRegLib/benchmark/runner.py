"""``deeplungreg benchmark``: every method and baseline on every pair, side by side.

Pairs come from the breathing simulator (CT files, amplitudes, seeds), from
simulated pair folders, or from DIR-Lab 4D-CT / COPDgene folders. Each
(pair, method) runs in its own process (:mod:`.worker`). Outputs in OUTDIR:

* ``results.csv``: one row per pair and method (TRE mean/std/median/p95/max,
  dense error, lung Dice, folding %, SD log J, registration / IO / mask
  seconds, peak RSS and GPU memory, error message if it failed);
* ``results.md``: per direction (inhale fixed, exhale fixed), the paper-style
  table (TRE mean (std) per case and overall) and a summary table per method;
  then the mean seconds of each method's stages;
* ``tre_boxplot.png``: TRE per method, pooled and per pair;
* ``checks.json``: the baselines' translation checks.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..data import sample_path
from ..errors import DeepLungRegError

log = logging.getLogger(__name__)

#: Columns of results.csv, in order.
CSV_COLUMNS = [
    "pair", "direction", "method", "tre_before_mean", "tre_before_std", "tre_after_mean", "tre_after_std", "tre_after_median",
    "tre_after_p95", "tre_after_max", "n_landmarks", "dense_error_mean", "dense_error_p95", "lung_dice_before",
    "lung_dice_after", "folding_percent", "sd_log_j", "registration_s", "io_s", "masks_s", "peak_rss_mb", "peak_gpu_mb",
    "device", "stages_s", "error",
]

#: ``--directions`` values -> the direction recorded with each pair.
DIRECTIONS = {"inhale": "inhale fixed", "exhale": "exhale fixed"}


def simulated_specs(cts: list[str], amplitudes: list[str], seeds: list[int], outdir: Path, *, spacing: float = 2.0,
                    directions: tuple[str, ...] = ("inhale",), progress: Callable[[str], None] | None = None) -> list[dict]:
    """Simulate (or reuse) a pair per CT, amplitude (preset or mm) and seed under ``outdir/pairs``, in each
    direction: ``"inhale"`` (the CT fixed, the simulated exhale moving) and ``"exhale"`` (the same pair the
    other way round, ``SimulatedPair.reversed``: the simulated exhale fixed)."""
    from ..io.images import read_image
    from ..simulation import amplitude_parameters, simulate_breathing, write_pair
    from ..transforms.resample import resample_to_spacing

    for a in amplitudes:
        amplitude_parameters(a)  # a preset name or a mean displacement in mm
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad or not directions:
        raise DeepLungRegError(f"benchmark: directions are {' and '.join(DIRECTIONS)}, not {', '.join(bad) or 'none'}")
    specs = []
    for ct_path in cts:
        ct_path = Path(ct_path)
        if not ct_path.exists():
            raise DeepLungRegError(f"benchmark: CT {ct_path} does not exist")
        stem = ct_path.name.split(".")[0]
        ct = None
        for amp in amplitudes:
            for seed in seeds:
                base = f"{stem}_{amp}_s{seed}_{spacing:g}mm"
                folders = {d: outdir / "pairs" / (base if d == "inhale" else f"{base}_exhale-fixed") for d in directions}
                if not all((d / "simulation.json").exists() for d in folders.values()):
                    if ct is None:
                        ct = resample_to_spacing(read_image(ct_path, what="benchmark CT"), spacing, fill=-1024.0)
                    if progress:
                        progress(f"simulating {base}")
                    pair = simulate_breathing(ct, amplitude=amp, seed=seed)
                    for direction, d in folders.items():
                        write_pair(pair if direction == "inhale" else pair.reversed(), d, overwrite=True, source=str(ct_path))
                for direction, d in folders.items():
                    specs.append({"kind": "simulated", "path": str(d.resolve()), "name": d.name,
                                  "direction": DIRECTIONS[direction]})
    return specs


def pairdir_specs(paths: list[str]) -> list[dict]:
    """Specs of existing simulated pair folders."""
    out = []
    for p in paths:
        p = Path(p)
        if not (p / "simulation.json").exists():
            raise DeepLungRegError(f"benchmark: {p} is not a simulated pair folder (no simulation.json); make one with 'deeplungreg simulate'")
        info = json.loads((p / "simulation.json").read_text())
        reversed_ = bool(info.get("reversed", False))
        out.append({"kind": "simulated", "path": str(p.resolve()), "name": p.name,
                    "direction": DIRECTIONS["exhale" if reversed_ else "inhale"]})
    return out


def dirlab_specs(root: str, dataset: str, cases: list[int] | None = None, fixed: str = "inhale") -> list[dict]:
    """Specs of the DIR-Lab cases found under ``root`` (images and landmarks present)."""
    from .dirlab import find_cases

    found = find_cases(root, dataset)
    if cases:
        found = [f for f in found if f.case in cases]
    if not found:
        what = "CaseNPack/Images/caseN_T00_s.img" if dataset == "4dct" else "copdN/copdN_iBHCT.img"
        raise DeepLungRegError(f"benchmark: no DIR-Lab {dataset} case with images and landmarks under {root} (expected {what})")
    return [{"kind": "dirlab", "root": str(Path(root).resolve()), "case": f.case, "dataset": dataset, "fixed": fixed,
             "name": f"{f.name}{'' if fixed == 'inhale' else '-exhale-fixed'}", "direction": DIRECTIONS[fixed]}
            for f in found]


def _flatten(pair: str, method: str, r: dict, direction: str = "") -> dict:
    row = {"pair": pair, "direction": direction, "method": method}
    if "error" in r:
        row["error"] = r["error"]
        return row
    for which in ("before", "after"):
        t = r[f"tre_{which}"]
        row[f"tre_{which}_mean"], row[f"tre_{which}_std"] = t["mean"], t["std"]
    a = r["tre_after"]
    row.update(tre_after_median=a["median"], tre_after_p95=a["p95"], tre_after_max=a["max"], n_landmarks=a["n"])
    if "dense_error_lung" in r:
        row["dense_error_mean"], row["dense_error_p95"] = r["dense_error_lung"]["mean"], r["dense_error_lung"]["p95"]
    for k in ("lung_dice_before", "lung_dice_after", "folding_percent", "sd_log_j", "registration_s", "io_s", "masks_s",
              "peak_rss_mb", "peak_gpu_mb", "device"):
        if k in r and r[k] is not None:
            row[k] = r[k]
    if r.get("stages_s"):
        row["stages_s"] = "; ".join(f"{k} {v:.1f}" for k, v in r["stages_s"].items())
    return row


def method_variant(label: str) -> tuple[str, dict]:
    """``"mlvirnet:refine_iterations=30:refine_levels_mm=3"`` -> ``("mlvirnet", {"refine_iterations": 30, "refine_levels_mm": 3})``."""
    from ..methods.base import parse_options

    name, _, rest = label.partition(":")
    return name.strip(), parse_options([t for t in rest.split(":") if t.strip()], "benchmark")


def _file_safe(label: str) -> str:
    """A method label (``mlvirnet:weights=/a/b.pt``) as a file-name part."""
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", label)


def split_methods(text: str) -> list[str]:
    """Split ``--methods`` at commas outside brackets (``convex:refine_levels_mm=[3,2],adam``)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [m for m in out if m]


def run_benchmark(
    specs: list[dict],
    methods: list[str],
    outdir: str | os.PathLike,
    *,
    device: str = "auto",
    timeout_s: float = 3600.0,
    check_baselines: bool = True,
    progress: Callable[[str], None] | None = None,
    resume: bool = False,
) -> list[dict]:
    """Run every method on every pair, each in its own process; write the results and return the rows.

    Each measurement is also kept in ``outdir/runs/<pair>__<method>/result.json`` as soon as it ends;
    ``resume`` reuses those of an earlier, interrupted run into ``outdir`` (for the same pair folder and
    method, without an error) instead of measuring them again."""
    from ..methods import available_methods
    from .baselines import RUNNERS, check_conversion

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if not specs:
        raise DeepLungRegError("benchmark: no pairs to run")
    known = set(available_methods()) | set(RUNNERS)
    unknown = [m for m in methods if method_variant(m)[0] not in known]
    if unknown:
        raise DeepLungRegError(f"benchmark: unknown method(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for m in methods:  # refuse bad variant options before anything runs
        name, opts = method_variant(m)
        if opts:
            if name in RUNNERS:
                raise DeepLungRegError(f"benchmark: the baseline {name} takes no options ({m})")
            from ..methods import get_method

            get_method(name).config_cls.refuse_old_names(opts, "benchmark", f"{name}:{{name}}=VALUE")
            get_method(name).config_cls.from_dict(opts)
    say = progress or (lambda msg: None)
    checks = {}
    if check_baselines:
        from ..io.images import read_image
        from ..transforms.resample import resample_to_spacing

        for name in [m for m in methods if m in RUNNERS]:
            sample = sample_path()
            image = resample_to_spacing(read_image(sample), 5.0, fill=-1024.0)
            say(f"checking {name}'s field conversion on a known translation")
            checks[name] = check_conversion(name, image, device=device)
        (outdir / "checks.json").write_text(json.dumps(checks, indent=2))
    work = outdir / "runs"
    work.mkdir(exist_ok=True)
    rows, raw = [], {}
    for spec in specs:
        for method in methods:
            folder = work / f"{spec['name']}__{_file_safe(method)}"
            folder.mkdir(exist_ok=True)
            t0 = time.perf_counter()
            r = _earlier_result(folder, spec, method) if resume else None
            if r is None:
                say(f"{method} on {spec['name']}")
                r = _measure_in_process(spec, method, device, folder, timeout_s)
                (folder / RESULT_FILE).write_text(json.dumps({"pair": spec["name"], "path": spec.get("path"), "method": method,
                                                              "direction": spec.get("direction", ""), "result": r}))
            else:
                say(f"{method} on {spec['name']}: measured by an earlier run (--resume)")
            raw[(spec["name"], method)] = r
            row = _flatten(spec["name"], method, r, spec.get("direction", ""))
            rows.append(row)
            msg = row.get("error") or (f"TRE {row['tre_before_mean']:.2f} -> {row['tre_after_mean']:.2f} mm, "
                                       f"{row['registration_s']:.0f} s")
            say(f"{method} on {spec['name']}: {msg} ({time.perf_counter() - t0:.0f} s)")
    write_results(rows, raw, outdir, checks)
    return rows


#: One measurement's record in its run folder (see :func:`run_benchmark`).
RESULT_FILE = "result.json"


def kept_result(path: str | os.PathLike) -> dict | None:
    """A measurement :func:`run_benchmark` kept (``{"pair", "path", "method", "direction", "result"}``), or ``None``
    when ``path`` is not one (missing, unreadable, or not of that form)."""
    try:
        kept = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(kept, dict) or not isinstance(kept.get("result"), dict):
        return None
    if not all(isinstance(kept.get(k), str) for k in ("pair", "method")):
        return None
    return kept


def kept_results(outdir: str | os.PathLike) -> list[dict]:
    """Every measurement kept in a benchmark's ``outdir`` (also while it runs, or after it was interrupted)."""
    return [k for p in sorted((Path(outdir) / "runs").glob(f"*/{RESULT_FILE}")) if (k := kept_result(p)) is not None]


def _earlier_result(folder: Path, spec: dict, method: str) -> dict | None:
    """The result an earlier run kept in ``folder`` for this pair and method, if it has one without an error."""
    kept = kept_result(folder / RESULT_FILE)
    if kept is None or "error" in kept["result"]:
        return None
    if (kept.get("pair"), kept.get("path"), kept.get("method")) != (spec["name"], spec.get("path"), method):
        return None
    return kept["result"]


def _measure_in_process(spec: dict, method: str, device: str, folder: Path, timeout_s: float) -> dict:
    """One measurement in a worker process of its own (:mod:`.worker`): its result, or ``{"error": ONE LINE}``."""
    from ..worker import WorkerCrashed, WorkerProcess

    proc = WorkerProcess({"spec": spec, "method": method, "device": device}, folder, module="DeepLungRegLib.benchmark.worker",
                         exit_with_parent=True, log_reported_errors=False)
    try:
        result = proc.wait(interval=0.2, timeout=timeout_s)
    except TimeoutError:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    except (DeepLungRegError, WorkerCrashed) as exc:
        code = proc.returncode
        return {"error": f"exit {code}: {exc}"}
    result.pop("done", None)
    return result


# ------------------------------------------------------------------ outputs
def _fmt(v, nd=2) -> str:
    return "" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"


def markdown_table(rows: list[dict], raw: dict | None = None) -> str:
    """The paper-style table: TRE mean (std) per pair and method, with the initial error and an overall row."""
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["pair"], r["method"]): r for r in rows}
    lines = ["| Pair | Initial | " + " | ".join(methods) + " |", "|---" * (len(methods) + 2) + "|"]
    pooled: dict[str, list] = {m: [] for m in ["Initial", *methods]}
    for p in pairs:
        first = next((by[(p, m)] for m in methods if "tre_before_mean" in by.get((p, m), {})), None)
        cells = [f"{_fmt(first['tre_before_mean'])} ({_fmt(first['tre_before_std'])})" if first else ""]
        if raw and first:
            k = next(m for m in methods if "tre_before_mean" in by.get((p, m), {}))
            pooled["Initial"] += raw[(p, k)].get("tre_before_per_landmark", [])
        for m in methods:
            r = by.get((p, m), {})
            cells.append(f"{_fmt(r['tre_after_mean'])} ({_fmt(r['tre_after_std'])})" if "tre_after_mean" in r else "failed")
            if raw and "tre_after_mean" in r:
                pooled[m] += raw[(p, m)].get("tre_after_per_landmark", [])
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    if raw:
        cells = [f"**{_fmt(np.mean(v))} ({_fmt(np.std(v))})**" if v else "" for v in pooled.values()]
        lines.append("| **All landmarks** | " + " | ".join(cells) + " |")
    lines += ["", "| Method | TRE mean | TRE p95 | dense err (mm) | lung Dice | folding % | SD log J | time (s) | peak RSS (MB) | failed |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        ok = [r for r in rows if r["method"] == m and "tre_after_mean" in r]
        bad = sum(1 for r in rows if r["method"] == m and "error" in r)

        def avg(key):
            vals = [r[key] for r in ok if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        lines.append(f"| {m} | {_fmt(avg('tre_after_mean'))} | {_fmt(avg('tre_after_p95'))} | {_fmt(avg('dense_error_mean'))} | "
                     f"{_fmt(avg('lung_dice_after'), 3)} | {_fmt(avg('folding_percent'), 3)} | {_fmt(avg('sd_log_j'), 3)} | "
                     f"{_fmt(avg('registration_s'), 1)} | {_fmt(avg('peak_rss_mb'), 0)} | {bad} |")
    return "\n".join(lines) + "\n"


def stage_table(raw: dict) -> str:
    """Mean seconds of each method's stages over the pairs it ran on (what makes a method slow)."""
    methods = list(dict.fromkeys(m for _, m in raw))
    lines = ["| Method | total (s) | stages: mean seconds |", "|---|---|---|"]
    for m in methods:
        runs = [v for (_, mm), v in raw.items() if mm == m and "stages_s" in v]
        if not runs:
            continue
        names = list(dict.fromkeys(k for v in runs for k in v["stages_s"]))
        parts = [f"{k} {np.mean([v['stages_s'].get(k, 0.0) for v in runs]):.1f}" for k in names]
        lines.append(f"| {m} | {np.mean([v['registration_s'] for v in runs]):.1f} | {', '.join(parts)} |")
    return "\n".join(lines) + "\n"


def markdown_report(rows: list[dict], raw: dict) -> str:
    """``results.md``'s body: the tables of :func:`markdown_table` for each direction, then :func:`stage_table`."""
    directions = list(dict.fromkeys(r.get("direction", "") for r in rows))
    md = []
    for d in directions:
        pairs = {r["pair"] for r in rows if r.get("direction", "") == d}
        if len(directions) > 1 or d:
            md += [f"## {d[:1].upper() + d[1:] if d else 'Other pairs'}", ""]
        md += [markdown_table([r for r in rows if r["pair"] in pairs], {k: v for k, v in raw.items() if k[0] in pairs}), ""]
    return "\n".join(md + ["## Time per stage", "", stage_table(raw)])


def boxplot(raw: dict, path: Path) -> Path | None:
    """Box plots of per-landmark TRE after registration: pooled, and per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(dict.fromkeys(p for p, _ in raw))
    methods = list(dict.fromkeys(m for _, m in raw))
    ok = {k: v for k, v in raw.items() if "tre_after_per_landmark" in v}
    if not ok:
        return None
    n = len(pairs) + 1
    cols = min(3, n)
    rows_ = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows_, cols, figsize=(4.2 * cols, 3.4 * rows_), squeeze=False)

    def panel(ax, title, keys):
        data, labels = [], []
        before = [v for k in keys for v in ok.get(k, {}).get("tre_before_per_landmark", [])]
        if before:
            data.append(before)
            labels.append("initial")
        for m in methods:
            vals = [v for k in keys if k[1] == m for v in ok.get(k, {}).get("tre_after_per_landmark", [])]
            if vals:
                data.append(vals)
                labels.append(m)
        if data:
            ax.boxplot(data, showfliers=True, flierprops={"markersize": 2})
            ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("TRE (mm)")

    keys_all = list(ok)
    panel(axes[0, 0], "all pairs", keys_all)
    for i, p in enumerate(pairs, start=1):
        panel(axes[i // cols, i % cols], p, [k for k in keys_all if k[0] == p])
    for j in range(n, rows_ * cols):
        axes[j // cols, j % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(rows: list[dict], raw: dict, outdir: Path, checks: dict | None = None) -> None:
    with open(outdir / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    (outdir / "results.json").write_text(json.dumps({f"{p}__{m}": v for (p, m), v in raw.items()}, indent=1))
    md = ["# DeepLungReg benchmark", "", "TRE in mm, mean (std) over the landmarks of each pair.", "", markdown_report(rows, raw)]
    if checks:
        md += ["Baseline field conversions checked on a known translation: "
               + "; ".join(f"{k} error {v['error_mm']:.2f} mm" for k, v in checks.items()), ""]
    (outdir / "results.md").write_text("\n".join(md))
    boxplot(raw, outdir / "tre_boxplot.png")
