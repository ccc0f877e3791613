"""``deeplungreg benchmark``: every method and baseline on every pair, side by side.

Pairs come from the breathing simulator (CT files, amplitudes, seeds), from
simulated pair folders, or from DIR-Lab 4D-CT / COPDgene folders. Each
(pair, method) runs in its own process (:mod:`.worker`). Outputs in OUTDIR:

* ``results.csv``: one row per pair and method (TRE mean/std/median/p95/max,
  dense error, lung Dice, folding %, SD log J, registration / IO / mask
  seconds, peak RSS and GPU memory, error message if it failed);
* ``results.md``: the paper-style table (TRE mean (std) per case and overall)
  and a summary table per method;
* ``tre_boxplot.png``: TRE per method, pooled and per pair;
* ``checks.json``: the baselines' translation checks.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DeepLungRegError

log = logging.getLogger(__name__)

#: Columns of results.csv, in order.
CSV_COLUMNS = [
    "pair", "method", "tre_before_mean", "tre_before_std", "tre_after_mean", "tre_after_std", "tre_after_median",
    "tre_after_p95", "tre_after_max", "n_landmarks", "dense_error_mean", "dense_error_p95", "lung_dice_before",
    "lung_dice_after", "folding_percent", "sd_log_j", "registration_s", "io_s", "masks_s", "peak_rss_mb", "peak_gpu_mb",
    "device", "error",
]


def simulated_specs(cts: list[str], amplitudes: list[str], seeds: list[int], outdir: Path, *, spacing: float = 2.0,
                    progress: Callable[[str], None] | None = None) -> list[dict]:
    """Simulate (or reuse) a pair per CT, amplitude (preset or mm) and seed under ``outdir/pairs``."""
    from ..io.images import read_image
    from ..simulation import amplitude_parameters, simulate_breathing, write_pair
    from ..transforms.resample import resample_to_spacing

    for a in amplitudes:
        amplitude_parameters(a)  # a preset name or a mean displacement in mm
    specs = []
    for ct_path in cts:
        ct_path = Path(ct_path)
        if not ct_path.exists():
            raise DeepLungRegError(f"benchmark: CT {ct_path} does not exist")
        stem = ct_path.name.split(".")[0]
        ct = None
        for amp in amplitudes:
            for seed in seeds:
                d = outdir / "pairs" / f"{stem}_{amp}_s{seed}_{spacing:g}mm"
                if not (d / "simulation.json").exists():
                    if ct is None:
                        ct = resample_to_spacing(read_image(ct_path, what="benchmark CT"), spacing, fill=-1024.0)
                    if progress:
                        progress(f"simulating {d.name}")
                    write_pair(simulate_breathing(ct, amplitude=amp, seed=seed), d, overwrite=True, source=str(ct_path))
                specs.append({"kind": "simulated", "path": str(d.resolve()), "name": d.name})
    return specs


def pairdir_specs(paths: list[str]) -> list[dict]:
    """Specs of existing simulated pair folders."""
    out = []
    for p in paths:
        p = Path(p)
        if not (p / "simulation.json").exists():
            raise DeepLungRegError(f"benchmark: {p} is not a simulated pair folder (no simulation.json); make one with 'deeplungreg simulate'")
        out.append({"kind": "simulated", "path": str(p.resolve()), "name": p.name})
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
             "name": f"{f.name}{'' if fixed == 'inhale' else '-exhale-fixed'}"} for f in found]


def _flatten(pair: str, method: str, r: dict) -> dict:
    row = {"pair": pair, "method": method}
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
    return row


def method_variant(label: str) -> tuple[str, dict]:
    """``"mlvirnet:finetune=30:finetune_level_mm=3"`` -> ``("mlvirnet", {"finetune": 30, "finetune_level_mm": 3})``."""
    from ..methods.base import parse_options

    name, _, rest = label.partition(":")
    return name.strip(), parse_options([t for t in rest.split(":") if t.strip()], "benchmark")


def _file_safe(label: str) -> str:
    """A method label (``mlvirnet:weights=/a/b.pt``) as a file-name part."""
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", label)


def split_methods(text: str) -> list[str]:
    """Split ``--methods`` at commas outside brackets (``convex:adam_levels_mm=[3,2],adam``)."""
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
) -> list[dict]:
    """Run every method on every pair, each in its own process; write the results and return the rows."""
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

            get_method(name).config_cls.from_dict(opts)
    say = progress or (lambda msg: None)
    checks = {}
    if check_baselines:
        from ..io.images import read_image
        from ..transforms.resample import resample_to_spacing

        for name in [m for m in methods if m in RUNNERS]:
            sample = Path(__file__).resolve().parents[2] / "Resources" / "Sample" / "popi00_demo.nrrd"
            image = resample_to_spacing(read_image(sample), 5.0, fill=-1024.0)
            say(f"checking {name}'s field conversion on a known translation")
            checks[name] = check_conversion(name, image, device=device)
        (outdir / "checks.json").write_text(json.dumps(checks, indent=2))
    work = outdir / "runs"
    work.mkdir(exist_ok=True)
    rows, raw = [], {}
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for spec in specs:
        spec_path = work / f"{spec['name']}.json"
        spec_path.write_text(json.dumps(spec))
        for method in methods:
            out_path = work / f"{spec['name']}__{_file_safe(method)}.json"
            say(f"{method} on {spec['name']}")
            t0 = time.perf_counter()
            try:
                proc = subprocess.run([sys.executable, "-m", "DeepLungRegLib.benchmark.worker", str(spec_path.resolve()), method, device,
                                       str(out_path.resolve())], capture_output=True, text=True, timeout=timeout_s, env=env,
                                      cwd=work)
                if proc.returncode != 0 or not out_path.exists():
                    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                    r = {"error": f"exit {proc.returncode}: {tail}"}
                else:
                    r = json.loads(out_path.read_text())
            except subprocess.TimeoutExpired:
                r = {"error": f"timed out after {timeout_s:.0f} s"}
            raw[(spec["name"], method)] = r
            row = _flatten(spec["name"], method, r)
            rows.append(row)
            msg = row.get("error") or (f"TRE {row['tre_before_mean']:.2f} -> {row['tre_after_mean']:.2f} mm, "
                                       f"{row['registration_s']:.0f} s")
            say(f"{method} on {spec['name']}: {msg} ({time.perf_counter() - t0:.0f} s)")
    write_results(rows, raw, outdir, checks)
    return rows


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
    md = ["# DeepLungReg benchmark", "", "TRE in mm, mean (std) over the landmarks of each pair.", "", markdown_table(rows, raw)]
    if checks:
        md += ["Baseline field conversions checked on a known translation: "
               + "; ".join(f"{k} error {v['error_mm']:.2f} mm" for k, v in checks.items()), ""]
    (outdir / "results.md").write_text("\n".join(md))
    boxplot(raw, outdir / "tre_boxplot.png")
