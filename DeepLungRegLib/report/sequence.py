"""The 4D-CT report: the lung volume curve, TRE per phase and landmark trajectories over the breathing cycle.

:func:`write_sequence_report` is called by :func:`DeepLungRegLib.sequence.register_sequence` with ``report=True``
(needs matplotlib, which Slicer's Python lacks: the Slicer module shows the same curve as a plot node instead).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

#: The report's files, in the order they are written.
SEQUENCE_REPORT_FILES = ("volume_curve.png", "tre_per_phase.png", "trajectories.png", "report.html")
#: The trajectory figure shows this many landmarks: those that move most.
TRAJECTORY_LANDMARKS = 6
_AXES = ("x (L-R)", "y (P-A)", "z (I-S)")


def figure_volume_curve(summary: dict, path: Path) -> None:
    """Lung volume (mL) per phase; the reference and the end-inhale phase marked, the tidal volume in the title."""
    names = [r["name"] for r in summary["phases"]]
    vols = [np.nan if v is None else v for v in summary["lung_volume_ml"]]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(range(len(vols)), vols, "o-", color="#1f77b4")
    ref = summary["reference"]
    ax.plot([ref], [vols[ref]], "s", ms=11, mfc="none", mec="#d62728", label=f"reference {names[ref]}")
    if summary.get("end_inhale") is not None:
        i = summary["end_inhale"]
        ax.plot([i], [vols[i]], "^", ms=11, mfc="none", mec="#2ca02c", label=f"end-inhale {names[i]}")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("lung volume (mL)")
    tidal = summary.get("tidal_volume_ml")
    ax.set_title("Lung volume over the cycle" + ("" if tidal is None else f" (tidal volume {tidal:.0f} mL)"))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def figure_tre_per_phase(summary: dict, path: Path) -> bool:
    """Mean TRE before and after per phase (with the 95th percentile after as a tick); False where no phase has TRE."""
    rows = [r for r in summary["phases"] if "tre_after" in r]
    if not rows:
        return False
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(x - 0.2, [r["tre_before"]["mean"] for r in rows], 0.4, label="before", color="#bbbbbb")
    ax.bar(x + 0.2, [r["tre_after"]["mean"] for r in rows], 0.4, label="after", color="#1f77b4")
    ax.plot(x + 0.2, [r["tre_after"]["p95"] for r in rows], "_", ms=14, color="#d62728", label="after, 95th percentile")
    ax.set_xticks(x, [r["name"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("TRE (mm)")
    ax.set_yscale("log")
    ax.set_title(f"Landmark error per phase (against reference {summary['reference_name']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def figure_trajectories(summary: dict, trajectories: list[dict], path: Path) -> bool:
    """Displacement from the reference per phase, true (solid) and registered (dashed), along x, y and z, for
    the landmarks that move most. ``trajectories``: rows of ``trajectories.csv`` as dicts. False without rows."""
    if not trajectories:
        return False
    n_phases = summary["n_phases"]
    names = [r["name"] for r in summary["phases"]]
    ref = summary["reference"]
    n = max(int(r["landmark"]) for r in trajectories) + 1
    true = np.full((n, n_phases, 3), np.nan)
    reg = np.full((n, n_phases, 3), np.nan)
    for r in trajectories:
        k, i = int(r["landmark"]), int(r["index"])
        true[k, i] = [float(r[f"true_{a}"]) for a in "xyz"]
        reg[k, i] = [float(r[f"registered_{a}"]) for a in "xyz"]
    start = true[:, ref:ref + 1].copy()  # each landmark's true position in the reference
    true, reg = true - start, reg - start
    motion = np.nan_to_num(np.nanmax(np.linalg.norm(true, axis=2), axis=1), nan=-1.0)
    pick = np.argsort(motion)[::-1][:TRAJECTORY_LANDMARKS]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharex=True)
    colours = plt.cm.tab10(np.arange(len(pick)) % 10)
    for a, ax in enumerate(axes):
        for c, k in zip(colours, pick):
            ax.plot(range(n_phases), true[k, :, a], "-", color=c, lw=1.5, label=f"landmark {k}" if a == 0 else None)
            ax.plot(range(n_phases), reg[k, :, a], "--", color=c, lw=1.0)
        ax.set_title(f"displacement along {_AXES[a]}")
        ax.set_xticks(range(n_phases), names, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("mm from the reference")
        ax.axvline(ref, color="#888888", lw=0.8)
    axes[0].legend(fontsize=7, title="solid: true, dashed: registered", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def write_sequence_report(path_of: Callable[[str], Path], summary: dict, trajectories: list[dict] | None = None,
                          title: str = "DeepLungReg 4D-CT report") -> list[str]:
    """Write the figures and ``report.html`` (each file at ``path_of(name)``); returns the names written."""
    written = []
    figure_volume_curve(summary, path_of("volume_curve.png"))
    figs = [("volume_curve.png", "Lung volume curve")]
    if figure_tre_per_phase(summary, path_of("tre_per_phase.png")):
        figs.append(("tre_per_phase.png", "Landmark error per phase"))
    if figure_trajectories(summary, trajectories or [], path_of("trajectories.png")):
        figs.append(("trajectories.png", "Landmark trajectories"))
    written += [f for f, _ in figs]
    head = "<tr><th>phase</th><th>lung volume (mL)</th><th>TRE before / after (mm)</th><th>folding %</th><th>SD log J</th><th>s</th><th>outputs</th></tr>"
    rows = []
    for r in summary["phases"]:
        vol = "?" if r.get("lung_volume_ml") is None else f"{r['lung_volume_ml']:.0f}"
        if r.get("reference"):
            rows.append(f"<tr><td>{html.escape(r['name'])}</td><td>{vol}</td><td colspan='4'>reference</td><td></td></tr>")
            continue
        tre = f"{r['tre_before']['mean']:.2f} / {r['tre_after']['mean']:.2f}" if "tre_after" in r else ""
        j = r["jacobian"]
        link = html.escape(r["folder"])
        rows.append(f"<tr><td>{html.escape(r['name'])}</td><td>{vol}</td><td>{tre}</td><td>{j['folding_percent']:.3f}</td>"
                    f"<td>{j['sd_log_j']:.3f}</td><td>{r['registration_s'] or 0:.1f}</td><td><a href='{link}/'>{link}/</a></td></tr>")
    vent = summary.get("ventilation_folder")
    vent_text = (f"<p>Ventilation over the cycle: the Jacobian and HU ventilation maps of <a href='{html.escape(vent)}/'>"
                 f"{html.escape(vent)}/</a> (end-inhale registered to the reference).</p>") if vent else ""
    imgs = "\n".join(f"<h2>{html.escape(t)}</h2><img src='{f}' alt='{html.escape(t)}'>" for f, t in figs)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto}}td,th{{padding:2px 10px;border-bottom:1px solid #ddd}}img{{max-width:100%}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>{summary['n_phases']} phases from {html.escape(str(summary['source']))}; reference {html.escape(summary['reference_name'])}
({html.escape(summary['reference_rule'])}); method {html.escape(summary['method'])}, start {html.escape(summary.get('start', 'reference'))}.</p>
{vent_text}<table>{head}{''.join(rows)}</table>{imgs}</body></html>"""
    path_of("report.html").write_text(page, encoding="utf-8")
    return written + ["report.html"]
