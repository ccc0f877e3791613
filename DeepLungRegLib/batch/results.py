"""The cohort's results: one row per pair in ``results.csv``, a summary in ``results.md``, a TRE box plot."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from ..io.outputs import RECORD_KEY, file_record, read_records, replace_file

#: The columns of ``results.csv``, in order.
RESULT_COLUMNS = (
    "id", "status", "registered_in_this_run", "tre_before_mm", "tre_after_mm", "tre_after_p95_mm", "folding_percent",
    "sd_log_j", "right_lung_ml", "left_lung_ml", "right_lung_ventilation", "left_lung_ventilation", "seconds",
    "peak_rss_mb", "worker", "error",
)
RESULTS_FILE, SUMMARY_FILE, BOXPLOT_FILE = "results.csv", "results.md", "tre_boxplot.png"
#: The cohort-level files a batch writes into its output folder.
RESULT_FILES = (RESULTS_FILE, SUMMARY_FILE, BOXPLOT_FILE)
#: The record (size and hash) of the cohort-level files the last batch wrote: a later batch replaces only those.
BATCH_RECORD = ".deeplungreg-batch.json"
#: What the batch adds to each pair's ``metrics.json``.
BATCH_KEY = "batch"


def result_row(pair_id: str, metrics: dict, *, now: bool) -> dict:
    """The ``results.csv`` row of a pair registered (``now`` in this run, or earlier) from its metrics."""
    def num(x, digits=3):
        return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(float(x), digits)

    j = metrics.get("jacobian", {})
    vent = metrics.get("ventilation", {})
    batch = metrics.get(BATCH_KEY, {})
    row = {c: None for c in RESULT_COLUMNS}
    row.update({
        "id": pair_id, "status": "ok", "registered_in_this_run": bool(now),
        "tre_before_mm": num(metrics.get("tre_before", {}).get("mean")),
        "tre_after_mm": num(metrics.get("tre_after", {}).get("mean")),
        "tre_after_p95_mm": num(metrics.get("tre_after", {}).get("p95")),
        "folding_percent": num(j.get("folding_percent"), 4), "sd_log_j": num(j.get("sd_log_j"), 4),
        "right_lung_ml": num(vent.get("right", {}).get("volume_ml"), 1),
        "left_lung_ml": num(vent.get("left", {}).get("volume_ml"), 1),
        "right_lung_ventilation": num(vent.get("right", {}).get("jacobian_minus_1_mean"), 4),
        "left_lung_ventilation": num(vent.get("left", {}).get("jacobian_minus_1_mean"), 4),
        "seconds": num(batch.get("seconds"), 1),
        "peak_rss_mb": num(metrics.get("diagnostics", {}).get("peak_rss_mb"), 0),
        "worker": batch.get("worker"),
    })
    return row


def failed_row(pair_id: str, error: str, *, now: bool, seconds: float | None = None, worker: str | None = None) -> dict:
    row = {c: None for c in RESULT_COLUMNS}
    row.update({"id": pair_id, "status": "failed", "registered_in_this_run": bool(now), "error": " ".join(str(error).split()),
                "seconds": None if seconds is None else round(seconds, 1), "worker": worker})
    return row


def read_results(outdir: Path) -> dict[str, dict]:
    """The rows of an earlier run's ``results.csv`` by id (empty when there is none)."""
    path = outdir / RESULTS_FILE
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {r["id"]: r for r in csv.DictReader(fh) if r.get("id")}


def batch_records(outdir: Path) -> dict[str, dict] | None:
    """The record of the cohort-level files an earlier batch wrote into ``outdir`` (``None``: none)."""
    return read_records(outdir / BATCH_RECORD)


def write_results(rows: list[dict], outdir: Path, title: str) -> None:
    """``results.csv``, ``results.md`` and (with landmarks) ``tre_boxplot.png``, each replaced at once
    (written beside it, then renamed: a link in its place is replaced, never followed), and their record."""
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, fieldnames=RESULT_COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in RESULT_COLUMNS})
    records = dict(batch_records(outdir) or {})
    replace_file(outdir / RESULTS_FILE, lambda p: p.write_bytes(table.getvalue().encode()))
    replace_file(outdir / SUMMARY_FILE, lambda p: p.write_text(summary_markdown(rows, title)))
    records.update({n: file_record(outdir / n) for n in (RESULTS_FILE, SUMMARY_FILE)})
    before = [float(r["tre_before_mm"]) for r in rows if r["status"] == "ok" and r.get("tre_before_mm") is not None]
    after = [float(r["tre_after_mm"]) for r in rows if r["status"] == "ok" and r.get("tre_after_mm") is not None]
    if after:
        replace_file(outdir / BOXPLOT_FILE, lambda p: _boxplot(before, after, p))
        records[BOXPLOT_FILE] = file_record(outdir / BOXPLOT_FILE)
    replace_file(outdir / BATCH_RECORD, lambda p: p.write_text(json.dumps({RECORD_KEY: records}, indent=2)))


def summary_markdown(rows: list[dict], title: str) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] == "failed"]
    lines = [f"# {title}", "", f"{len(rows)} pairs: {len(ok)} registered, {len(failed)} failed; "
             f"{sum(bool(r['registered_in_this_run']) for r in rows)} run this time.", ""]
    tre = [(float(r["tre_before_mm"]), float(r["tre_after_mm"])) for r in ok if r.get("tre_after_mm") not in (None, "")]
    if tre:
        b, a = np.array(tre).T
        lines += [f"Mean TRE over {len(tre)} pairs with landmarks: {b.mean():.2f} mm before, {a.mean():.2f} mm after "
                  f"(worst pair {a.max():.2f} mm).", ""]
    lines += ["| id | status | TRE before (mm) | TRE after (mm) | p95 after | folding % | SD log J | s | error |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["id"], r["status"]] + [("" if r.get(k) in (None, "") else str(r[k])) for k in
                                          ("tre_before_mm", "tre_after_mm", "tre_after_p95_mm", "folding_percent", "sd_log_j", "seconds")]
        cells.append((r.get("error") or "").replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _boxplot(before: list[float], after: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.boxplot([before, after] if before else [after])
    ax.set_xticks([1, 2] if before else [1], ["before", "after"] if before else ["after"])
    ax.set_ylabel("mean TRE per pair (mm)")
    ax.set_title(f"{len(after)} pairs")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
