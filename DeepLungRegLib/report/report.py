"""Figures (matplotlib, PNG) and a one-page HTML report of a registration.

Slices are shown in the fixed image's index space, stored along L, P, S
whatever the file's axis order, with the physical aspect ratio of the voxels,
superior at the top; they are correct for oblique grids because displaced
points are mapped back to fixed indices before plotting.
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


def _marginal_median(mask: np.ndarray, axis: int) -> int:
    """Median index of the mask's voxels along one array axis (from the projection, no index arrays)."""
    counts = mask.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64)
    return int(np.searchsorted(np.cumsum(counts), (counts.sum() + 1) // 2))


class ReportSlices:
    """The slices a report shows, taken from each volume as it is produced.

    Volumes ``(Z, Y, X[, 3])`` on the fixed grid are viewed (without copies) in
    the storage along L, P, S (:func:`~DeepLungRegLib.transforms.frames.reorient_array`),
    so that axial slices are axial, superior is up and the patient's left on the
    right, however the fixed image is stored. Only an axial and a coronal slice
    through ``centre`` are kept, so a report costs no full-size memory.
    """

    def __init__(self, geometry: Geometry, mask: np.ndarray | None = None):
        from ..transforms.frames import reorient_array

        self._reorient = reorient_array
        self.source = geometry
        #: the display grid: ``geometry`` stored along L, P, S
        self.geometry = reorient_array(np.broadcast_to(np.zeros((), np.uint8), geometry.shape), geometry)[1]
        if mask is not None and np.any(mask):
            m = self._reorient(np.asarray(mask, bool), geometry)[0]
            self.centre = tuple(_marginal_median(m, a) for a in range(3))
        else:
            self.centre = tuple(s // 2 for s in self.geometry.shape)
        self.views: dict[str, dict[str, np.ndarray]] = {}
        self.extra: dict[str, object] = {}

    def add(self, name: str, volume: np.ndarray) -> None:
        """Keep the axial and coronal slices of ``volume`` (on the fixed grid)."""
        v = self._reorient(np.asarray(volume), self.source)[0]
        c = self.centre
        self.views[name] = {"axial": np.array(v[c[0]]), "coronal": np.array(v[:, c[1], :])}

    def add_field(self, name: str, field) -> None:
        """Keep the axial and coronal slices of a displacement field ``(Z, Y, X, 3)`` on the fixed grid: an array,
        or a :class:`~DeepLungRegLib.transforms.fields.SlabField`, which is then sampled on those two slices only."""
        if not hasattr(field, "slab"):
            self.add(name, field)
            return
        g, c = self.geometry, self.centre
        axial = field.on(g.crop((0, 0, c[0]), (g.size[0], g.size[1], 1)))[0]
        coronal = field.on(g.crop((0, c[1], 0), (g.size[0], 1, g.size[2])))[:, 0, :]
        self.views[name] = {"axial": axial, "coronal": coronal}

    def add_moving(self, name: str, moving, fill: float) -> None:
        """The slices of ``moving`` resampled onto the fixed grid without the field (the "before" view)."""
        from ..transforms.warp import warp_image

        g, c = self.geometry, self.centre
        axial = warp_image(moving, None, g.crop((0, 0, c[0]), (g.size[0], g.size[1], 1)), fill=fill).array[0]
        coronal = warp_image(moving, None, g.crop((0, c[1], 0), (g.size[0], 1, g.size[2])), fill=fill).array[:, 0, :]
        self.views[name] = {"axial": axial, "coronal": coronal}


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


def figure_overlays(sl: ReportSlices, path):
    fig, axes = plt.subplots(2, 2, figsize=(10, 9))
    v, g = sl.views, sl.geometry
    for col, view in enumerate(("axial", "coronal")):
        _show(axes[0, col], _composite(v["fixed"][view], v["resampled"][view]), g, view)
        axes[0, col].set_title(f"before ({view}): fixed green, moving magenta")
        _show(axes[1, col], _composite(v["fixed"][view], v["warped"][view]), g, view)
        axes[1, col].set_title(f"after ({view})")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def figure_checkerboard(sl: ReportSlices, path, tiles: int = 8):
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, view in zip(axes, ("axial", "coronal")):
        f, w = sl.views["fixed"][view], sl.views["warped"][view]
        yy, xx = np.indices(f.shape)
        board = ((yy * tiles // f.shape[0]) + (xx * tiles // f.shape[1])) % 2 == 0
        _show(ax, np.where(board, _norm(f), _norm(w)), sl.geometry, view, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"checkerboard fixed / warped ({view})")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def figure_grid(sl: ReportSlices, path, step_mm: float = 8.0):
    """Coronal slice with the deformed grid x + u(x) drawn in fixed index space."""
    fig, ax = plt.subplots(figsize=(6, 6))
    g, c = sl.geometry, sl.centre
    img = sl.views["fixed"]["coronal"]
    _show(ax, _norm(img), g, "coronal", cmap="gray", vmin=0, vmax=1)
    nz, nx = img.shape
    kk, ii = np.meshgrid(np.arange(nz), np.arange(nx), indexing="ij")
    ijk = np.stack([ii, np.full_like(ii, c[1]), kk], -1).reshape(-1, 3).astype(float)
    disp = sl.views["field"]["coronal"].reshape(-1, 3)
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


def figure_jacobian(sl: ReportSlices, path, j_range: tuple[float, float]):
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    lo, hi = j_range
    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(lo, 0.99), vmax=max(hi, 1.01))
    g = sl.geometry
    for ax, view in zip(axes, ("axial", "coronal")):
        _show(ax, _norm(sl.views["fixed"][view]), g, view, cmap="gray", vmin=0, vmax=1)
        j = sl.views["jacobian"][view].astype(float)
        if "mask" in sl.views:
            j = np.ma.masked_where(~sl.views["mask"][view].astype(bool), j)
        im = ax.imshow(j, cmap="RdBu_r", norm=norm, aspect=_aspect(g, view), origin="upper" if view == "axial" else "lower", alpha=0.85)
        ax.set_title(f"Jacobian ({view}), <1 = compression")
    fig.colorbar(im, ax=axes, shrink=0.8, label="J")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def figure_uncertainty(sl: ReportSlices, path):
    """The uncertainty map (mm) over the fixed image, in the lung where there is a mask."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    g = sl.geometry
    top = max(float(np.percentile(np.concatenate([sl.views["uncertainty"][v].ravel() for v in ("axial", "coronal")]), 99)), 0.1)
    for ax, view in zip(axes, ("axial", "coronal")):
        _show(ax, _norm(sl.views["fixed"][view]), g, view, cmap="gray", vmin=0, vmax=1)
        u = sl.views["uncertainty"][view].astype(float)
        if "mask" in sl.views:
            u = np.ma.masked_where(~sl.views["mask"][view].astype(bool), u)
        im = ax.imshow(u, cmap="magma", vmin=0.0, vmax=top, aspect=_aspect(g, view), origin="upper" if view == "axial" else "lower",
                       alpha=0.85)
        ax.set_title(f"uncertainty ({view}): brighter = less sure")
    fig.colorbar(im, ax=axes, shrink=0.8, label="mm")
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
    slices: ReportSlices,
    metrics: dict,
    tre_before: np.ndarray | None = None,
    tre_after: np.ndarray | None = None,
    title: str = "DeepLungReg registration report",
) -> list[Path]:
    """Write the PNG figures and ``report.html`` into ``outdir``; returns the files written.

    ``slices`` holds the views "fixed", "resampled", "warped", "jacobian", "field"
    (and "mask", and "uncertainty" where the method gave one); ``slices.extra["jacobian_range"]`` the 1st
    and 99th percentile of J.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    figs = [("overlay.png", "Overlay before and after"), ("checkerboard.png", "Checkerboard"), ("grid.png", "Deformation grid"), ("jacobian.png", "Jacobian map")]
    figure_overlays(slices, outdir / "overlay.png")
    figure_checkerboard(slices, outdir / "checkerboard.png")
    figure_grid(slices, outdir / "grid.png")
    figure_jacobian(slices, outdir / "jacobian.png", slices.extra.get("jacobian_range", (0.99, 1.01)))
    if "uncertainty" in slices.views:
        figure_uncertainty(slices, outdir / "uncertainty.png")
        how = metrics.get("uncertainty", {}).get("estimate")
        figs.append(("uncertainty.png", f"Uncertainty map{f' (from the {how})' if how else ''}"))
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
    return [outdir / f for f, _ in figs] + [path]
