"""Tests of DeepLungRegLib/slicer_bridge/background.py on slicer-core: a registration in a background process, and a cancelled one."""

from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import pair_nodes
from DeepLungRegLib import DeepLungRegError

from helpers_slicer import hs, small_pair


@pytest.mark.slow
def test_a_registration_in_a_background_process_and_a_cancelled_one(small_pair, slicer_core, tmp_path):
    """The Slicer module's path: the work runs in a worker process with progress as JSON lines; the scene is
    written only when it has finished, and a cancelled run leaves no node and no file behind."""
    from DeepLungRegLib import slicer_bridge as b
    from DeepLungRegLib.slicer_bridge.background import BackgroundRegistration

    p = small_pair
    hs = b.new_scene()
    fixed, moving, fmask, fl, ml = pair_nodes(b, hs.scene, p)
    before = b.image_from_volume_node(moving).array.copy()
    n_nodes = hs.scene.GetNumberOfNodes()

    stages = []
    run = BackgroundRegistration(hs.scene, b.RegistrationNodes(fixed, moving, fixed_mask=fmask, moving_mask=None, fixed_landmarks=fl,
                                                     moving_landmarks=ml), "affine", device="cpu",
                                 options={"levels_mm": [8.0], "iterations": [40]},
                                 workdir=tmp_path, show=False)
    res = run.wait(progress=lambda s, f: stages.append(f))
    assert run.state == "done" and stages and max(stages) >= 0.99 and stages == sorted(stages)
    m = res.metrics
    assert m["method"] == "affine" and m["tre_after"]["mean"] < 0.6 * m["tre_before"]["mean"]
    field, g = b.field_from_grid_transform_node(res.transform)
    assert g.same_as(p.fixed.geometry, tol=1e-3) and np.isfinite(field).all() and np.abs(field).max() > 1.0
    assert res.tre_table is not None and res.landmarks.GetNumberOfControlPoints() == 30
    assert res.tre_table.GetTable().GetValue(0, 0).ToString() == "L0"  # the labels went through the worker
    assert not list(tmp_path.iterdir())  # the worker's folder is gone
    n_after = hs.scene.GetNumberOfNodes()
    assert n_after > n_nodes

    slow = {"refine_levels_mm": [8.0, 4.0], "refine_iterations": [400, 400], "refine_learning_rates": [0.5, 0.25], "affine_init": False}
    run2 = BackgroundRegistration(hs.scene, b.RegistrationNodes(fixed, moving, fixed_mask=fmask, moving_mask=None), "adam",
                                  device="cpu", options=slow, workdir=tmp_path, show=False)
    deadline = time.time() + 180
    while run2.poll() == "running" and run2.fraction < 0.2 and time.time() < deadline:
        time.sleep(0.2)
    assert run2.state == "running" and run2.fraction >= 0.2
    run2.cancel()
    assert run2.state == "cancelled" and run2.worker.returncode is not None
    assert hs.scene.GetNumberOfNodes() == n_after  # no output node of the cancelled run
    assert np.array_equal(b.image_from_volume_node(moving).array, before) and not list(tmp_path.iterdir())
    with pytest.raises(DeepLungRegError, match="cancelled"):
        run2.finish()
