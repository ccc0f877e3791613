"""Figures (matplotlib, PNG) and a one-page HTML report of a registration.

Slices are shown in the fixed image's index space with the physical aspect
ratio of the voxels, superior at the top; they are correct for oblique grids
because displaced points are mapped back to fixed indices before plotting.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402

from ..geometry import Geometry  # noqa: E402

WINDOW = (-1000.0, 300.0)


def _norm(a: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    return np.clip((a.astype(np.float32) - lo) / (hi - lo), 0, 1)


def _centre(mask: np.ndarray | None, shape) -> tuple[int, int, int]:
    if mask is not None and mask.any():
        kk, jj, ii = np.nonzero(mask)
        return int(np.median(kk)), int(np.median(jj)), int(np.median(ii))
    return tuple(s // 2 for s in shape)


def _views(vol: np.ndarray, c: tuple[int, int, int]):
    """Axial (y down, x right) and coronal (z up, x right) slices."""
    return {"axial": vol[c[0]], "coronal": vol[:, c[1], :]}


def _aspect(g: Geometry, view: str) -> float:
    return g.spacing[1] / g.spacing[0] if view == "axial" else g.spacing[2] / g.spacing[0]


def _show(ax, img, g, view, **kw):
    ax.imshow(img, aspect=_aspect(g, view), origin="upper" if view == "axial" else "lower", interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])


def _composite(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fixed in green, moving in magenta: aligned structures look grey."""
    a, b = _norm(a), _norm(b)
    return np.stack([b, a, b], -1)


def figure_overlays(fixed, moving_resampled, warped, g, c, path):
    fig, axes = plt.subplots(2, 2, figsize=(10, 9))
    for col, view in enumerate(("axial", "coronal")):
        _show(axes[0, col], _composite(_views(fixed, c)[view], _views(moving_resampled, c)[view]), g, view)
        axes[0, col].set_title(f"before ({view}): fixed green, moving magenta")
        _show(axes[1, col], _composite(_views(fixed, c)[view], _views(warped, c)[view]), g, view)
        axes[1, col].set_title(f"after ({view})")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def figure_checkerboard(fixed, warped, g, c, path, tiles: int = 8):
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, view in zip(axes, ("axial", "coronal")):
        f, w = _views(fixed, c)[view], _views(warped, c)[view]
        yy, xx = np.indices(f.shape)
        board = ((yy * tiles // f.shape[0]) + (xx * tiles // f.shape[1])) % 2 == 0
        _show(ax, np.where(board, _norm(f), _norm(w)), g, view, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"checkerboard fixed / warped ({view})")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def figure_grid(fixed, field, g, c, path, step_mm: float = 8.0):
    """Coronal slice with the deformed grid x + u(x) drawn in fixed index space."""
    fig, ax = plt.subplots(figsize=(6, 6))
    sl = fixed[:, c[1], :]
    _show(ax, _norm(sl), g, "coronal", cmap="gray", vmin=0, vmax=1)
    nz, nx = sl.shape
    kk, ii = np.meshgrid(np.arange(nz), np.arange(nx), indexing="ij")
    ijk = np.stack([ii, np.full_like(ii, c[1]), kk], -1).reshape(-1, 3).astype(float)
    disp = field[:, c[1], :, :].reshape(-1, 3)
    moved = g.world_to_index(g.index_to_world(ijk) + disp).reshape(nz, nx, 3)
    si = max(1, int(round(step_mm / g.spacing[0])))
    sk = max(1, int(round(step_mm / g.spacing[2])))
    for k in range(0, nz, sk):
        ax.plot(moved[k, :, 0], moved[k, :, 2], color="orange", lw=0.7)
    for i in range(0, nx, si):
        ax.plot(moved[:, i, 0], moved[:, i, 2], color="orange", lw=0.7)
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, nz - 0.5)
    ax.set_title(f"deformation grid (coronal, {step_mm:g} mm)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def figure_jacobian(fixed, jac, mask, g, c, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    lo, hi = float(np.percentile(jac, 1)), float(np.percentile(jac, 99))
    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(lo, 0.99), vmax=max(hi, 1.01))
    for ax, view in zip(axes, ("axial", "coronal")):
        _show(ax, _norm(_views(fixed, c)[view]), g, view, cmap="gray", vmin=0, vmax=1)
        j = _views(jac, c)[view].astype(float)
        if mask is not None:
            j = np.ma.masked_where(~_views(mask, c)[view], j)
        im = ax.imshow(j, cmap="RdBu_r", norm=norm, aspect=_aspect(g, view), origin="upper" if view == "axial" else "lower", alpha=0.85)
        ax.set_title(f"Jacobian ({view}), <1 = compression")
    fig.colorbar(im, ax=axes, shrink=0.8, label="J")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def figure_tre(before: np.ndarray, after: np.ndarray, path):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].boxplot([before, after])
    axes[0].set_xticks([1, 2], ["before", "after"])
    axes[0].set_ylabel("TRE (mm)")
    axes[0].set_title("landmark error")
    bins = np.linspace(0, max(before.max(), after.max()) + 1e-6, 30)
    axes[1].hist(before, bins=bins, alpha=0.6, label=f"before (mean {before.mean():.2f} mm)")
    axes[1].hist(after, bins=bins, alpha=0.6, label=f"after (mean {after.mean():.2f} mm)")
    axes[1].set_xlabel("TRE (mm)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(
    outdir: Path,
    fixed: np.ndarray,
    moving_resampled: np.ndarray,
    warped: np.ndarray,
    field: np.ndarray,
    jac: np.ndarray,
    geometry: Geometry,
    metrics: dict,
    mask: np.ndarray | None = None,
    tre_before: np.ndarray | None = None,
    tre_after: np.ndarray | None = None,
    title: str = "DeepLungReg registration report",
) -> Path:
    """Write the PNG figures and ``report.html`` into ``outdir``; returns the HTML path.

    All volumes are ``(Z, Y, X)`` on the fixed grid ``geometry``.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    c = _centre(mask, fixed.shape)
    figs = [("overlay.png", "Overlay before and after"), ("checkerboard.png", "Checkerboard"), ("grid.png", "Deformation grid"), ("jacobian.png", "Jacobian map")]
    figure_overlays(fixed, moving_resampled, warped, geometry, c, outdir / "overlay.png")
    figure_checkerboard(fixed, warped, geometry, c, outdir / "checkerboard.png")
    figure_grid(fixed, field, geometry, c, outdir / "grid.png")
    figure_jacobian(fixed, jac, mask, geometry, c, outdir / "jacobian.png")
    if tre_before is not None and tre_after is not None:
        figure_tre(np.asarray(tre_before), np.asarray(tre_after), outdir / "tre.png")
        figs.append(("tre.png", "Target registration error"))
    rows = []

    def flat(prefix, d):
        for k, v in d.items():
            if isinstance(v, dict):
                flat(f"{prefix}{k}.", v)
            elif isinstance(v, (int, float, str)) and not isinstance(v, bool):
                rows.append((prefix + k, f"{v:.4g}" if isinstance(v, float) else str(v)))

    flat("", {k: v for k, v in metrics.items() if k not in ("config", "diagnostics")})
    table = "\n".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    imgs = "\n".join(f"<h2>{html.escape(t)}</h2><img src='{f}' alt='{html.escape(t)}'>" for f, t in figs)
    cfg = html.escape(json.dumps(metrics.get("config", {}), indent=1))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}td{{padding:2px 10px;border-bottom:1px solid #ddd}}img{{max-width:100%}}</style>
</head><body><h1>{html.escape(title)}</h1><h2>Metrics</h2><table>{table}</table>{imgs}
<h2>Configuration</h2><pre>{cfg}</pre></body></html>"""
    path = outdir / "report.html"
    path.write_text(page)
    return path
