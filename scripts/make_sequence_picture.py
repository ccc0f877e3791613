"""Render the README picture of a 4D-CT in the Slicer views, headless.

Simulates a breathing cycle from the bundled sample CT (``simulation.cycle.simulate_cycle``), loads it as a
volume sequence and registers every phase to the end-exhale phase with the module's code
(``slicer_bridge.sequence.register_sequence_node``: the transform, warped and Jacobian sequences in one
sequence browser). Then, for a few phases, it selects the phase in the browser (as playing the cycle does) and
draws a coronal slice view offscreen:

1. the phase itself over the reference phase (half and half: the motion shows as double edges);
2. the warped phase over the reference (the motion compensated);
3. the phase's Jacobian over the reference (blue: the lung smaller than at the reference, red: larger);

beside the lung volume curve per phase (composed with matplotlib and saved as a 256-colour PNG by Pillow: a
script, not the module's path).

    python scripts/make_sequence_picture.py [-o Resources/Screenshots/sequence.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

#: a quick registration per phase (two levels, few iterations)
FAST_ADAM = {"refine_levels_mm": [8.0, 4.0], "refine_iterations": [60, 40], "refine_learning_rates": [1.0, 0.5]}


#: the rows of the picture: (label, what is over the reference, its opacity)
ROWS = (("phase over reference", "phase", 0.5), ("warped over reference", "warped_proxy", 0.5),
        ("Jacobian", "jacobian_proxy", 0.7))


def crop_to_content(views: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Cut the black bands above and below the slice (the same rows in every view)."""
    lit = np.flatnonzero(views[0][0].max(axis=(1, 2)) > 8)
    top, bottom = (int(lit[0]), int(lit[-1]) + 1) if len(lit) else (0, views[0][0].shape[0])
    return [[v[top:bottom] for v in row] for row in views]


def compose(views: list[list[np.ndarray]], columns: list[str], summary: dict, path: Path) -> Path:
    """The views (rows x columns) with their labels, and the lung volume curve beside them, as a 256-colour PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image as PILImage

    h, w = views[0][0].shape[:2]
    n_rows, n_cols = len(views), len(columns)
    fig = plt.figure(figsize=((n_cols * w) / 100 * 1.62, (n_rows * h) / 100 * 1.12), dpi=100)
    grid = fig.add_gridspec(n_rows, n_cols + 2, width_ratios=[1] * n_cols + [0.3, 2.4], wspace=0.03, hspace=0.04,
                            left=0.03, right=0.99, top=0.93, bottom=0.09)
    for r, row in enumerate(views):
        for c, view in enumerate(row):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(view)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(ROWS[r][0], fontsize=8)
    ax = fig.add_subplot(grid[:, n_cols + 1])
    vols = [np.nan if v is None else v for v in summary["lung_volume_ml"]]
    names = [r["name"] for r in summary["phases"]]
    ref = summary["reference"]
    ax.plot(range(len(vols)), vols, "o-", color="#2150b3", label="lung volume")
    ax.plot([ref], [vols[ref]], "s", color="#c01f1f", markersize=9, label=f"reference ({names[ref]})")
    ax.set_xticks(range(len(vols)), [n.replace("phase_", "") for n in names])
    ax.set_xlabel("phase", fontsize=9)
    ax.set_ylabel("lung volume (mL)", fontsize=9)
    ax.set_title(f"lung volume per phase: tidal volume {summary['tidal_volume_ml']:.0f} mL", fontsize=9)
    ax.legend(loc="upper center", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.open(buf).convert("RGB").quantize(colors=256).save(path, optimize=True)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default=str(ROOT / "Resources" / "Screenshots" / "sequence.png"))
    ap.add_argument("--spacing", type=float, default=4.0, help="resample the sample CT to this spacing (mm)")
    ap.add_argument("--phases", type=int, default=6, help="phases of the simulated cycle (even)")
    ap.add_argument("--size", type=int, default=240, help="pixels per view")
    args = ap.parse_args()

    from DeepLungRegLib import read_image
    from DeepLungRegLib.io.phases import read_phases
    from DeepLungRegLib.simulation.cycle import simulate_cycle, write_cycle
    from DeepLungRegLib.slicer_bridge import new_scene, volume_node_from_image
    from DeepLungRegLib.slicer_bridge.render import render_slice_view
    from DeepLungRegLib.slicer_bridge.sequence import register_sequence_node, sequence_node_from_phases
    from DeepLungRegLib.slicer_bridge.workflow import show_overlay
    from DeepLungRegLib.transforms import resample_to_spacing

    t0 = time.perf_counter()
    ct = resample_to_spacing(read_image(ROOT / "DeepLungRegLib" / "data" / "sample" / "popi00_demo.nrrd"), args.spacing, fill=-1024.0)
    cycle = simulate_cycle(ct, n_phases=args.phases, amplitude="large", seed=0, n_landmarks=60)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_cycle(cycle, Path(tmp) / "cycle")
        phases = read_phases(folder / "phases")
        hs = new_scene()
        seq = sequence_node_from_phases(hs.scene, phases, "4D-CT")
        summary, nodes = register_sequence_node(hs.scene, seq, Path(tmp) / "out", method="adam", options=FAST_ADAM,
                                                landmarks=folder / "landmarks")
        ref = summary["reference"]
        print(f"reference {summary['reference_name']}; tidal volume {summary['tidal_volume_ml']:.0f} mL; "
              f"TRE {summary.get('tre_mean_before', float('nan')):.2f} -> {summary.get('tre_mean_after', float('nan')):.2f} mm")
        reference = volume_node_from_image(hs.scene, phases[ref], "reference phase")
        browser = nodes["browser"]
        phase_proxy = browser.GetProxyNode(seq)
        for node in (reference, phase_proxy, nodes["warped_proxy"]):
            node.GetDisplayNode().AutoWindowLevelOff()
            node.GetDisplayNode().SetWindowLevel(1400, -500)  # lung window
        size = (args.size, args.size)
        g = phases[ref].geometry
        centre = g.index_to_world([[g.size[0] / 2, g.size[1] * 0.45, g.size[2] / 2]])[0]
        shown = [i for i in np.linspace(0, ref, 4).round().astype(int)]  # from end-inhale to the reference
        rows: list[list[np.ndarray]] = [[] for _ in ROWS]
        for i in shown:
            browser.SetSelectedItemNumber(int(i))  # as the browser's play does: the proxies show phase i
            for row, (_, key, opacity) in enumerate(ROWS):
                show_overlay(hs.scene, reference, phase_proxy if key == "phase" else nodes[key], opacity)
                rows[row].append(render_slice_view(hs, "Green", size=size, centre_lps=centre))
        out = compose(crop_to_content(rows), [phases.names[i] for i in shown], summary, Path(args.output))
    print(f"phases shown: {', '.join(phases.names[i] for i in shown)} (columns); rows: phase over reference, warped over "
          f"reference, Jacobian")
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
