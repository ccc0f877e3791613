"""Reading a 4D-CT (DeepLungRegLib.io.phases): a folder of phase volumes in natural order, a 4D NRRD (4D or
vector, as SimpleITK reads each), DICOM series of several phases (temporal tags, one folder per phase,
repeated slice positions), and every bad input in one line. Tiny synthetic images written here."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from DeepLungRegLib.errors import DeepLungRegError
from DeepLungRegLib.io.headers import keep_locale
from DeepLungRegLib.io.phases import Phases, natural_key, read_phases

SHAPE = (4, 5, 6)  # (Z, Y, X)
SPACING = (2.0, 1.5, 3.0)  # (x, y, z)
ORIGIN = (-10.0, 5.0, 20.0)
# a rotation about z: the geometry is LPS, not the identity
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def phase_array(t: int) -> np.ndarray:
    """Phase ``t``: voxel values that tell the phase (1000 t) and the voxel apart."""
    return (np.arange(np.prod(SHAPE)).reshape(SHAPE) + 1000 * t - 900).astype(np.int16)


def phase_sitk(t: int, spacing=SPACING) -> sitk.Image:
    img = sitk.GetImageFromArray(phase_array(t))
    img.SetSpacing(spacing)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    return img


def assert_phase(image, t: int) -> None:
    np.testing.assert_array_equal(image.array, phase_array(t))
    assert image.geometry.spacing == pytest.approx(SPACING)
    assert image.geometry.origin == pytest.approx(ORIGIN)
    assert image.geometry.direction == pytest.approx(DIRECTION)


def write_folder(folder, names, ext=".nrrd"):
    folder.mkdir()
    for t, name in enumerate(names):
        sitk.WriteImage(phase_sitk(t), str(folder / f"{name}{ext}"))
    return folder


def test_natural_key_puts_10_after_9():
    assert sorted(["p10", "p9", "p1", "p0"], key=natural_key) == ["p0", "p1", "p9", "p10"]


def test_folder_of_phases_in_natural_order_read_lazily(tmp_path):
    names = [f"phase_{i}" for i in range(11)]  # phase_10 after phase_9, not after phase_1
    folder = write_folder(tmp_path / "cycle", names[::-1], ".nii.gz")  # written in reverse: the order is the names'
    (folder / "notes.txt").write_text("not a phase")
    phases = read_phases(folder)
    assert isinstance(phases, Phases) and len(phases) == 11
    assert phases.names == tuple(names)
    # written reversed: the file phase_i holds array 10 - i
    for i in (0, 9, 10):
        assert_phase(phases[i], 10 - i)


def test_4d_nrrd_as_itk_writes_it(tmp_path):
    path = tmp_path / "cycle.nrrd"
    vol = sitk.JoinSeries([phase_sitk(t) for t in range(3)])
    d4 = np.eye(4)
    d4[:3, :3] = np.asarray(DIRECTION).reshape(3, 3)
    vol.SetDirection(tuple(d4.ravel()))
    vol.SetOrigin((*ORIGIN, 0.0))
    vol.SetSpacing((*SPACING, 1.0))
    sitk.WriteImage(vol, str(path))
    phases = read_phases(path)
    assert len(phases) == 3 and phases.names == ("phase_00", "phase_01", "phase_02")
    for t in range(3):
        assert_phase(phases[t], t)


def test_4d_nrrd_as_slicer_writes_it_a_list_axis(tmp_path):
    """Slicer writes a volume sequence as ``kinds: list domain domain domain``: SimpleITK reads a 3D image with
    one component per phase."""
    img = sitk.GetImageFromArray(np.stack([phase_array(t) for t in range(4)], -1), isVector=True)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    path = tmp_path / "seq.nrrd"
    sitk.WriteImage(img, str(path))
    path.write_bytes(path.read_bytes().replace(b"kinds: vector domain", b"kinds: list domain", 1))
    phases = read_phases(path)
    assert len(phases) == 4
    for t in range(4):
        assert_phase(phases[t], t)


def test_a_displacement_field_is_not_a_4d_ct(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((*SHAPE, 3), np.float32), isVector=True)
    sitk.WriteImage(img, str(tmp_path / "field.nrrd"))
    with pytest.raises(DeepLungRegError, match="read_phases: .*vector voxels of 3 components.*displacement field"):
        read_phases(tmp_path / "field.nrrd")


def _write_dicom_slices(folder, volume: sitk.Image, *, series: str, temporal: int | None, first_instance: int, names: str,
                        trigger: float | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = volume.GetDirection()
    for k in range(volume.GetDepth()):
        s = volume[:, :, k]
        tags = {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": series,
                "0008|0018": f"{series}.{first_instance + k}", "0020|0013": str(first_instance + k),
                "0020|0037": "\\".join(f"{v:g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
                "0020|0032": "\\".join(f"{v:g}" for v in volume.TransformIndexToPhysicalPoint((0, 0, k))),
                "0028|1052": "0", "0028|1053": "1"}
        if temporal is not None:
            tags["0020|0100"] = str(temporal)
        if trigger is not None:
            tags["0018|1060"] = f"{trigger:g}"
        for key, value in tags.items():
            s.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{names}{first_instance + k:04d}.dcm"))
        with keep_locale():  # GDCM's writer sets the process's locale to "C" (and later text reads to ASCII)
            writer.Execute(s)


def test_dicom_series_of_several_phases_split_by_temporal_position(tmp_path):
    folder = tmp_path / "dicom"
    for t in (2, 0, 1):  # written out of order: the temporal position orders them
        _write_dicom_slices(folder, phase_sitk(t), series="1.2.3.4", temporal=t + 1, first_instance=100 * t, names=f"x{2 - t}_")
    phases = read_phases(folder)
    assert phases.names == ("t1", "t2", "t3")
    for t in range(3):
        assert_phase(phases[t], t)


def test_dicom_series_without_temporal_tags_split_by_repeated_positions(tmp_path):
    folder = tmp_path / "dicom"
    for t in range(3):
        _write_dicom_slices(folder, phase_sitk(t), series="1.2.3.5", temporal=None, first_instance=1 + 100 * t, names=f"s{t}_")
    phases = read_phases(folder)
    assert len(phases) == 3
    for t in range(3):
        assert_phase(phases[t], t)


def test_one_dicom_folder_per_phase_ordered_by_temporal_position(tmp_path):
    root = tmp_path / "cycle"
    for t, name in enumerate(["b", "c", "a"]):  # the names disagree with the temporal order
        _write_dicom_slices(root / name, phase_sitk(t), series=f"1.2.3.{10 + t}", temporal=t + 1, first_instance=1, names="im")
    phases = read_phases(root)
    assert phases.names == ("b", "c", "a")
    for t in range(3):
        assert_phase(phases[t], t)


def test_a_gap_in_dicom_temporal_positions_is_a_missing_phase(tmp_path):
    folder = tmp_path / "dicom"
    for t, pos in enumerate((1, 2, 4)):
        _write_dicom_slices(folder, phase_sitk(t), series="1.2.3.6", temporal=pos, first_instance=1 + 100 * t, names=f"s{t}_")
    with pytest.raises(DeepLungRegError, match=r"^read_phases: .*a phase is missing.*none has 3 between t2 and t4$"):
        read_phases(folder)


# ------------------------------------------------------------------ bad input: one line, nothing read
def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def test_a_gap_in_numbered_names_is_a_missing_phase(tmp_path):
    folder = write_folder(tmp_path / "cycle", ["phase_00", "phase_10", "phase_30", "phase_40"])
    with pytest.raises(DeepLungRegError, match="a phase is missing.*steps of 10.*none has 20 between phase_10 and phase_30") as e:
        read_phases(folder)
    _one_line(e)


def test_phases_on_different_grids(tmp_path):
    folder = write_folder(tmp_path / "cycle", ["p0", "p1"])
    sitk.WriteImage(phase_sitk(2, spacing=(2.0, 1.5, 2.5)), str(folder / "p2.nrrd"))
    with pytest.raises(DeepLungRegError, match=r"phase p2 is on a different grid than phase p0 \(spacing") as e:
        read_phases(folder)
    _one_line(e)


def test_a_single_phase(tmp_path):
    folder = write_folder(tmp_path / "cycle", ["p0"])
    with pytest.raises(DeepLungRegError, match=r"a single phase \(p0\); a 4D-CT needs at least two") as e:
        read_phases(folder)
    _one_line(e)
    with pytest.raises(DeepLungRegError, match="is a single 3D volume"):
        read_phases(folder / "p0.nrrd")


def test_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeepLungRegError, match="read_phases: .* is empty") as e:
        read_phases(tmp_path / "empty")
    _one_line(e)


def test_a_missing_path(tmp_path):
    with pytest.raises(DeepLungRegError, match="read_phases: .* does not exist"):
        read_phases(tmp_path / "nowhere")


def test_an_unreadable_phase_file(tmp_path):
    folder = write_folder(tmp_path / "cycle", ["p0", "p1"])
    (folder / "p2.nrrd").write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 6 5 4\nencoding: raw\n\n" + b"\0" * 10)
    with pytest.raises(DeepLungRegError, match="p2.nrrd") as e:
        read_phases(folder)
    _one_line(e)


def test_a_4d_image_in_a_phase_folder(tmp_path):
    folder = tmp_path / "cycle"
    folder.mkdir()
    sitk.WriteImage(sitk.JoinSeries([phase_sitk(t) for t in range(2)]), str(folder / "all.nrrd"))
    with pytest.raises(DeepLungRegError, match="holds one 4D image, all.nrrd; give that file itself"):
        read_phases(folder)


def test_dicom_phase_folders_without_temporal_tags_go_by_name_and_a_gap_is_named(tmp_path):
    root = tmp_path / "cycle"
    for t, name in enumerate(["ph10", "ph0", "ph20"]):
        _write_dicom_slices(root / name, phase_sitk(t), series=f"1.2.3.{20 + t}", temporal=None, first_instance=1, names="im")
    phases = read_phases(root)
    assert phases.names == ("ph0", "ph10", "ph20")
    assert_phase(phases[0], 1)
    _write_dicom_slices(root / "ph40", phase_sitk(3), series="1.2.3.30", temporal=None, first_instance=1, names="im")
    with pytest.raises(DeepLungRegError, match="a phase is missing.*none has 30 between ph20 and ph40"):
        read_phases(root)


def test_one_grid_in_two_formats_is_one_grid_and_a_real_difference_is_not(tmp_path):
    """A tolerance, not rounding: NIfTI stores the origin in float32 (-120.345 -> -120.34500122), which rounding to
    0.01 mm put on the other side of -120.345 from the NRRD's double; 1e-6 mm is one grid, 4e-4 mm per voxel is not."""
    folder = tmp_path / "cycle"
    folder.mkdir()
    for t, ext in enumerate((".nii.gz", ".nrrd", ".mha")):
        img = phase_sitk(t)
        img.SetOrigin((-120.345, -250.0, 0.0))
        sitk.WriteImage(img, str(folder / f"phase_{t:02d}{ext}"))
    assert read_phases(folder).names == ("phase_00", "phase_01", "phase_02")
    other = tmp_path / "other"
    write_folder(other, ["p0", "p1"])
    sitk.WriteImage(phase_sitk(2, spacing=(2.0005 + 1e-6, 1.5, 3.0)), str(other / "p2.nrrd"))
    sitk.WriteImage(phase_sitk(0, spacing=(2.0005, 1.5, 3.0)), str(other / "p0.nrrd"))
    sitk.WriteImage(phase_sitk(1, spacing=(2.0005, 1.5, 3.0)), str(other / "p1.nrrd"))
    assert len(read_phases(other)) == 3  # 2.0005 and 2.000501 straddled a rounding boundary
    sitk.WriteImage(phase_sitk(2, spacing=(2.0013, 1.5, 3.0)), str(other / "p2.nrrd"))
    with pytest.raises(DeepLungRegError, match=r"phase p2 is on a different grid than phase p0 \(spacing \(2.0013, 1.5, 3.0\)") as e:
        read_phases(other)
    _one_line(e)


def test_one_phase_in_two_formats_or_a_broken_link_is_refused(tmp_path):
    """phase_00.nrrd beside its copy phase_00.mha was two phases of the cycle; a dangling link phase_03.nrrd was
    skipped silently (a cycle one phase short, with no gap to tell)."""
    folder = write_folder(tmp_path / "cycle", ["phase_00", "phase_01", "phase_02"])
    sitk.WriteImage(phase_sitk(0), str(folder / "phase_00.mha"))
    with pytest.raises(DeepLungRegError, match=r"phase phase_00 is there twice \(phase_00.mha, phase_00.nrrd\)") as e:
        read_phases(folder)
    _one_line(e)
    (folder / "phase_00.mha").unlink()
    try:
        (folder / "phase_03.nrrd").symlink_to(tmp_path / "unmounted" / "phase_03.nrrd")
    except OSError:  # Windows without the right to make links
        pytest.skip("cannot make a symlink here")
    with pytest.raises(DeepLungRegError, match=r"phase_03.nrrd is not a readable file \(a broken link\?\)") as e:
        read_phases(folder)
    _one_line(e)


@pytest.mark.parametrize("ext", [".nii.gz", ".mha"])
def test_a_displacement_field_in_nifti_or_mha_is_not_a_4d_ct(tmp_path, ext):
    """A field as we write it (NIfTI, vector intent) was read as a 3-phase cycle: only NRRD says 'list' for phases."""
    img = sitk.GetImageFromArray(np.zeros((*SHAPE, 3), np.float32), isVector=True)
    sitk.WriteImage(img, str(tmp_path / f"displacement{ext}"))
    with pytest.raises(DeepLungRegError, match="read_phases: .*vector voxels of 3 components.*displacement field") as e:
        read_phases(tmp_path / f"displacement{ext}")
    _one_line(e)


def test_dicom_phase_folders_ordered_by_trigger_times_that_are_not_evenly_spaced(tmp_path):
    """Trigger times are milliseconds (0, 412, 825, 1237 ms), not identifiers 1, 2, 3: whole numbers in uneven steps
    are no missing phase (they were refused as 'none has 824 between b and c')."""
    root = tmp_path / "cycle"
    for t, (name, ms) in enumerate(zip(["c", "a", "d", "b"], (0, 412, 825, 1237))):
        _write_dicom_slices(root / name, phase_sitk(t), series=f"1.2.3.{50 + t}", temporal=None, first_instance=1, names="im",
                            trigger=ms)
    phases = read_phases(root)
    assert phases.names == ("c", "a", "d", "b")
    assert_phase(phases[2], 2)


def test_dicom_phase_grids_from_the_headers_are_the_grids_read_and_differ_when_they_do(tmp_path):
    root = tmp_path / "cycle"
    for t in range(2):
        _write_dicom_slices(root / f"ph{t}", phase_sitk(t), series=f"1.2.3.{80 + t}", temporal=None, first_instance=1, names="im")
    phases = read_phases(root)
    for i in range(2):  # the header grid (rows, columns, pixel spacing, orientation, positions) is the one ITK builds
        assert phases._sources[i].grid.same_as(phases[i].geometry)
    _write_dicom_slices(root / "ph2", phase_sitk(2, spacing=(2.0, 1.6, 3.0)), series="1.2.3.82", temporal=None,
                        first_instance=1, names="im")
    with pytest.raises(DeepLungRegError, match=r"phase ph2 is on a different grid than phase ph0 \(spacing \(2.0, 1.6, 3.0\)"):
        read_phases(root)
