"""The simulated 4D-CT (DeepLungRegLib.simulation.cycle): Lujan's breathing curve, hysteresis between the inhale
and exhale halves, the lung volume curve, reproducibility, and the written cycle (read back by io.phases)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from DeepLungRegLib import read_image
from DeepLungRegLib.errors import DeepLungRegError
from DeepLungRegLib.io.fields import read_field
from DeepLungRegLib.io.landmarks import read_landmarks
from DeepLungRegLib.io.phases import read_phases
from DeepLungRegLib.simulation.cycle import breathing_curve, hysteresis_shares, simulate_cycle, write_cycle
from DeepLungRegLib.transforms import resample_to_spacing


@pytest.fixture(scope="module")
def ct8(sample_path):
    return resample_to_spacing(read_image(sample_path), 8.0, fill=-1024.0)


@pytest.fixture(scope="module")
def cycle10(ct8):
    return simulate_cycle(ct8, n_phases=10, amplitude="large", seed=3, n_landmarks=60)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_lujan_curve_inhale_at_0_exhale_at_half_symmetric(n):
    e = breathing_curve(10, lujan_n=n)
    assert e[0] == 0.0 and e[5] == pytest.approx(1.0)
    assert int(np.argmax(e)) == 5
    np.testing.assert_allclose(e[1:5], e[9:5:-1], atol=1e-12)  # the same share at t and 1 - t
    assert np.all(np.diff(e[:6]) > 0)


def test_hysteresis_shares_differ_between_the_halves_and_keep_the_ends():
    cc, ap = hysteresis_shares(10, hysteresis=0.2)
    assert ap[0] == 0.0 and ap[5] == pytest.approx(1.0)
    assert np.all((ap >= 0) & (ap <= 1))
    assert np.all(ap[1:5] > cc[1:5]) and np.all(ap[6:] < cc[6:])  # ahead while exhaling, behind while inhaling
    cc0, ap0 = hysteresis_shares(10, hysteresis=0.0)
    np.testing.assert_array_equal(cc0, ap0)


@pytest.mark.parametrize("kwargs, match", [({"n_phases": 5}, "even whole number"), ({"n_phases": 1}, "even whole number"),
                                           ({"hysteresis": 0.3}, r"hysteresis must lie in \[0, 0.25\]"),
                                           ({"lujan_n": 0}, "lujan_n")])
def test_bad_parameters_are_one_line(ct8, kwargs, match):
    with pytest.raises(DeepLungRegError, match=match):
        simulate_cycle(ct8, **kwargs)


@pytest.mark.slow
def test_volume_curve_has_its_minimum_at_exhale_and_its_maximum_at_inhale(cycle10):
    vols = np.asarray([cycle10.phase(i).lung_volume_ml for i in range(10)])
    assert int(np.argmin(vols)) in (4, 5, 6)
    assert int(np.argmax(vols)) == 0
    assert vols[0] - vols.min() > 100.0  # a tidal volume of a real breath, not a rounding difference


@pytest.mark.slow
def test_inhale_and_exhale_paths_differ_at_equal_cranio_caudal_amplitude(cycle10):
    ref = cycle10.reference_landmarks
    full = cycle10.landmarks(5) - ref  # the whole motion of each landmark
    for k in (1, 2, 3, 4):
        out, back = cycle10.landmarks(k) - ref, cycle10.landmarks(10 - k) - ref  # exhaling and inhaling
        np.testing.assert_allclose(out[:, 2], back[:, 2], atol=1e-4)  # the same cranio-caudal share
        # a loop: further along antero-posteriorly and laterally on the way out than on the way back, by the shares' gap
        gap = cycle10.shares_ap[k] - cycle10.shares_ap[10 - k]
        assert gap > 0
        np.testing.assert_allclose(out[:, :2] - back[:, :2], gap * full[:, :2], atol=1e-3)
    assert np.abs(cycle10.landmarks(2)[:, :2] - cycle10.landmarks(8)[:, :2]).mean() > 0.2  # visible: tenths of a mm
    # phase 0 is the reference, the end-exhale phase the full motion
    np.testing.assert_allclose(cycle10.landmarks(0), ref, atol=1e-6)
    np.testing.assert_allclose(cycle10.field(5), cycle10.exhale_field, atol=1e-6)


@pytest.mark.slow
def test_a_phase_is_reproducible_and_moves_the_lung(cycle10, ct8):
    a, b = cycle10.phase(3), cycle10.phase(3)
    np.testing.assert_array_equal(a.image.array, b.image.array)
    again = simulate_cycle(ct8, n_phases=10, amplitude="large", seed=3, n_landmarks=60)
    np.testing.assert_array_equal(again.phase(3).image.array, a.image.array)
    assert a.min_jacobian > 0
    assert np.abs(a.image.array.astype(float) - cycle10.reference.array).mean() > 5.0


@pytest.mark.slow
def test_write_cycle_writes_phases_fields_landmarks_and_the_volume_curve(ct8, tmp_path):
    cycle = simulate_cycle(ct8, n_phases=4, amplitude="small", seed=1, n_landmarks=30)
    out = write_cycle(cycle, tmp_path / "cycle")
    phases = read_phases(out / "phases")
    assert phases.names == ("phase_00", "phase_01", "phase_02", "phase_03")
    assert phases[2].geometry.same_as(cycle.reference.geometry)
    field, geom = read_field(out / "fields" / "phase_02.nii.gz")
    np.testing.assert_allclose(field, cycle.field(2), atol=1e-4)
    np.testing.assert_allclose(read_landmarks(out / "landmarks" / "phase_03.csv"), cycle.landmarks(3), atol=1e-3)
    info = json.loads((out / "cycle.json").read_text())
    vols = [p["lung_volume_ml"] for p in info["phases"]]
    assert info["tidal_volume_ml"] == pytest.approx(max(vols) - min(vols), abs=1e-3)
    with open(out / "volume_curve.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["lung_volume_ml"]) for r in rows] == pytest.approx(vols)
    # a second run refuses the folder without overwrite, and with it replaces its own files only
    with pytest.raises(DeepLungRegError, match="simulate_cycle: "):
        write_cycle(cycle, out)
    (out / "phases" / "mine.txt").write_text("the user's")
    write_cycle(cycle, out, overwrite=True)
    assert (out / "phases" / "mine.txt").read_text() == "the user's"
    (out / "fields" / "phase_01.nii.gz").write_bytes(b"edited by the user")
    with pytest.raises(DeepLungRegError, match="simulate_cycle: "):
        write_cycle(cycle, out, overwrite=True)
    assert (out / "fields" / "phase_01.nii.gz").read_bytes() == b"edited by the user"
