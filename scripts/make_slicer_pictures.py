"""Render the README / extension-page pictures of the Slicer views, headless.

Runs the same code as the module's Apply (``slicer_bridge.workflow.register_nodes``)
on a breathing pair simulated from the bundled sample CT, in a scene set up as
Slicer sets up its own, and draws three slice views offscreen:

1. the fixed (inhale) CT with the warped exhale overlay and the deformation grid (over the CT only);
2. the Jacobian map over the fixed CT, with its colour legend;
3. the landmarks under the transform, the worst few labelled with their TRE, at the worst one;

and a second picture of the landmark review (``--review-output``): the three slice views centred on
the worst landmark, the fixed landmarks (yellow crosses) beside the warped moving landmarks (green/red by TRE),
after the reviewer flagged that landmark.

    python scripts/make_slicer_pictures.py [-o Resources/Screenshots/slicer_views.png]
        [--review-output Resources/Screenshots/review.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default=str(ROOT / "Resources" / "Screenshots" / "slicer_views.png"))
    ap.add_argument("--review-output", default=str(ROOT / "Resources" / "Screenshots" / "review.png"))
    ap.add_argument("--spacing", type=float, default=2.5, help="resample the sample CT to this spacing (mm)")
    ap.add_argument("--size", type=int, default=420, help="pixels per view")
    args = ap.parse_args()

    from DeepLungRegLib import read_image
    from DeepLungRegLib.simulation import simulate_breathing
    from DeepLungRegLib.evaluation.review import ReviewController
    from DeepLungRegLib.slicer_bridge import RegistrationNodes, markups_from_landmarks, new_scene, volume_node_from_image
    from DeepLungRegLib.slicer_bridge.grid import set_grid_visible
    from DeepLungRegLib.slicer_bridge.render import montage, render_slice_view, write_png
    from DeepLungRegLib.slicer_bridge.review import ReviewScene
    from DeepLungRegLib.slicer_bridge.workflow import jump_to_landmark, register_nodes, show_overlay
    from DeepLungRegLib.transforms import resample_to_spacing

    t0 = time.perf_counter()
    ct = resample_to_spacing(read_image(ROOT / "DeepLungRegLib" / "data" / "sample" / "popi00_demo.nrrd"), args.spacing, fill=-1024.0)
    pair = simulate_breathing(ct, amplitude="small", seed=0)
    hs = new_scene()
    fixed = volume_node_from_image(hs.scene, pair.fixed, "inhale")
    moving = volume_node_from_image(hs.scene, pair.moving, "exhale")
    for node in (fixed, moving):
        node.GetDisplayNode().AutoWindowLevelOff()
        node.GetDisplayNode().SetWindowLevel(1400, -500)  # lung window
    fmask = volume_node_from_image(hs.scene, pair.fixed_mask, "inhale lungs", labelmap=True)
    fmask.GetDisplayNode().SetVisibility(False)
    n = 60
    fl = markups_from_landmarks(hs.scene, pair.fixed_landmarks[:n], "inhale landmarks", labels=[f"L{i + 1}" for i in range(n)])
    ml = markups_from_landmarks(hs.scene, pair.moving_landmarks[:n], "exhale landmarks", labels=[""] * n)
    for node in (fl, ml):
        node.GetDisplayNode().SetVisibility(False)
    res = register_nodes(hs.scene, RegistrationNodes(fixed, moving, fixed_mask=fmask, moving_mask="auto",
                                                     fixed_landmarks=fl, moving_landmarks=ml), "adam", device="auto")
    print(res.summary)
    size = (args.size, args.size)
    centre = pair.fixed.geometry.index_to_world([[s / 2 for s in pair.fixed.geometry.size]])[0]

    show_overlay(hs.scene, fixed, res.warped, 0.5)
    res.landmarks.GetDisplayNode().SetVisibility(False)
    a = render_slice_view(hs, "Green", size=size, centre_lps=centre)
    set_grid_visible(hs.scene, res.transform, False)
    show_overlay(hs.scene, fixed, res.jacobian, 0.7)
    b = render_slice_view(hs, "Green", size=size, centre_lps=centre)
    show_overlay(hs.scene, fixed, res.warped, 0.0)
    res.landmarks.GetDisplayNode().SetVisibility(True)
    res.landmarks.GetDisplayNode().SetTextScale(2.5)
    point = jump_to_landmark(hs.scene, res.landmarks, res.worst_landmark)
    c = render_slice_view(hs, "Red", size=size, centre_lps=point)
    out = write_png(montage([a, b, c]), args.output)
    print(f"wrote {out} in {time.perf_counter() - t0:.0f} s")

    # The review: what the module's "Landmark review" panel shows at the worst landmark.
    review = ReviewController(res.review)  # the registration's own review, as the panel drives it
    scene_review = ReviewScene(hs.scene, review, res.landmarks, res.tre_table)
    worst = review.worst()
    res.review.flag("vessel branch: warped point one slice off", index=worst)
    scene_review.show()
    fl.GetDisplayNode().SetVisibility(True)
    fl.GetDisplayNode().SetSelectedColor(1.0, 0.85, 0.1)
    fl.GetDisplayNode().SetTextScale(0)
    fl.GetDisplayNode().SetGlyphType(fl.GetDisplayNode().Cross2D)  # a cross, so the point under it shows
    fl.GetDisplayNode().SetGlyphScale(5.0)
    res.landmarks.GetDisplayNode().SetGlyphScale(2.5)
    res.landmarks.GetDisplayNode().SetTextScale(2.0)
    point = scene_review.centre()
    views = [render_slice_view(hs, view, size=size, centre_lps=point) for view in ("Red", "Yellow", "Green")]
    out = write_png(montage(views), args.review_output)
    print(review.describe())
    print(review.summary_text())
    print(f"wrote {out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
