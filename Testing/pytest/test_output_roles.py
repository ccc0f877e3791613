"""The one table of output roles (DeepLungRegLib.io.roles) drives the files a run writes, the nodes the Slicer
bridge makes, the Slicer module's output selectors and Results buttons, and the review page's overlay menu:
every role reaches each of them (an output dropped by a GUI, as ventilation_hu once was, fails here)."""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from DeepLungRegLib.io.roles import KINDS, OUTPUT_ROLES, ROLES, image_files, maps, node_classes, overlays, selectable

ROOT = Path(__file__).resolve().parents[2]
MODULE_PY = ROOT / "DeepLungReg" / "DeepLungReg.py"
UI = ROOT / "DeepLungReg" / "Resources" / "UI" / "DeepLungReg.ui"


def test_the_table_is_consistent_and_the_old_tables_are_views_of_it():
    from DeepLungRegLib.browser import folder
    from DeepLungRegLib.browser.app import OVERLAYS
    from DeepLungRegLib.pipeline import IMAGE_OUTPUTS, OUTPUT_FILES

    assert len(ROLES) == len(OUTPUT_ROLES) and all(r.kind in KINDS for r in OUTPUT_ROLES)
    files = [r.file for r in OUTPUT_ROLES if r.file]
    assert len(set(files)) == len(files)
    assert all(r.legend for r in maps()) and [r.name for r in maps() if r.centre is None] == ["uncertainty"]  # sequential from 0
    assert IMAGE_OUTPUTS == image_files() and set(image_files().values()) <= set(OUTPUT_FILES)
    assert ROLES["transform"].file in OUTPUT_FILES
    assert OVERLAYS == overlays() and set(folder.OPTIONAL_VIEWS) == {r.name for r in maps()}
    assert set(overlays()) == {r.name for r in OUTPUT_ROLES if r.is_image}  # every image can be shown over the fixed one


def _parameter_fields() -> dict[str, str]:
    tree = ast.parse(MODULE_PY.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DeepLungRegParameterNode")
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_the_slicer_module_offers_every_role():
    """Static (the module runs only inside Slicer): each selectable role has a parameter-node field of its node class
    and one node selector of that class in the .ui; each overlay role has its Results button; the Widget and the
    Logic take both from the table (``outputRoles()``), not from a list of their own."""
    fields = _parameter_fields()
    ui = ET.parse(UI)
    selectors = {}
    for w in ui.iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                types = [t.text for p in w.findall("property") if p.get("name") == "nodeTypes" for t in p.iter("string")]
                selectors[prop.find("string").text] = (w.get("class"), types)
    buttons = {w.get("name"): w.get("class") for w in ui.iter("widget")}
    assert set(selectable()) == {r.name for r in OUTPUT_ROLES if r.kind in ("field", "image", "map")}
    for role, parameter in selectable().items():
        assert fields.get(parameter) == ROLES[role].node_class, (role, parameter, fields.get(parameter))
        assert selectors.get(parameter) == ("qMRMLNodeComboBox", [ROLES[role].node_class]), (role, selectors.get(parameter))
    output_fields = {f for f in fields if f.startswith("output")}
    assert output_fields == set(selectable().values()), "a parameter-node output field that no role names"
    assert {r.name for r in OUTPUT_ROLES if r.button} == set(overlays())
    for role in OUTPUT_ROLES:
        if role.button:
            assert buttons.get(role.button) == "QPushButton", role.name
    text = MODULE_PY.read_text()
    assert "for role in outputRoles()" in text and "role.parameter" in text and "role.button" in text
    for role in OUTPUT_ROLES:  # no role is named in the module's code outside the table
        assert f'"{role.parameter}"' not in text if role.parameter else True
        assert f'"{role.button}"' not in text if role.button else True


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, sample_path):
    """A small CT registration with a lung mask and landmarks written by ``run_registration``: every role has output
    (``convex`` with its uncertainty map)."""
    from DeepLungRegLib import read_image, write_image
    from DeepLungRegLib.io.landmarks import write_landmarks
    from DeepLungRegLib.pipeline import RegistrationJob, run_registration
    from DeepLungRegLib.simulation import simulate_breathing
    from DeepLungRegLib.transforms import resample_to_spacing

    root = tmp_path_factory.mktemp("roles")
    pair = simulate_breathing(resample_to_spacing(read_image(sample_path), 8.0, fill=-1024.0), amplitude="small", seed=4)
    paths = {name: write_image(getattr(pair, name), root / f"{name}.nii.gz") for name in ("fixed", "moving", "fixed_mask")}
    fl = write_landmarks(pair.fixed_landmarks[:8], root / "fl.csv")
    ml = write_landmarks(pair.moving_landmarks[:8], root / "ml.csv")
    job = RegistrationJob.from_files(paths["fixed"], paths["moving"], method="convex", fixed_mask=str(paths["fixed_mask"]),
                                     moving_mask="none", fixed_landmarks=fl, moving_landmarks=ml,
                                     options={"feature_spacing_mm": 4.0, "grid_spacing_mm": [8.0], "search_half_width_mm": [16.0],
                                              "search_step_mm": [4.0], "refine_levels_mm": [], "refine_iterations": [], "refine_learning_rates": [],
                                              "uncertainty": True}, device="cpu")
    run_registration(job, root / "out", report=False)
    return job, root / "out"


def test_every_role_is_written_and_made_as_a_node(run_folder, slicer_core):
    from DeepLungRegLib import slicer_bridge as b
    from DeepLungRegLib.pipeline import read_outputs
    from DeepLungRegLib.slicer_bridge.workflow import ROLE_ATTRIBUTE, write_nodes

    job, out = run_folder
    for role in OUTPUT_ROLES:
        if role.file:
            assert (out / role.file).is_file(), role.name
    hs = b.new_scene()
    fixed = b.volume_node_from_image(hs.scene, job.fixed, "fixed")
    moving = b.volume_node_from_image(hs.scene, job.moving, "moving")
    res = write_nodes(hs.scene, job, read_outputs(out), b.RegistrationNodes(fixed, moving), show=False)
    made = res.nodes()
    assert set(made) == set(ROLES)
    for name, node in made.items():
        assert node.IsA(node_classes()[name]) and node.GetAttribute(ROLE_ATTRIBUTE) == name
        assert node.GetName() == f"moving-to-fixed {ROLES[name].node_name}"
        assert getattr(res, name) is node
    for role in maps():
        d = made[role.name].GetDisplayNode()
        if role.centre is None:  # sequential from 0
            assert d.GetLevel() - d.GetWindow() / 2 == pytest.approx(0.0, abs=1e-6)
        else:
            assert d.GetLevel() == pytest.approx(role.centre)
    assert np.isfinite(b.image_from_volume_node(made["ventilation_hu"]).array).any()


def test_the_review_page_offers_every_overlay(run_folder, slicer_core):
    from DeepLungRegLib.browser import ReviewFolder
    from DeepLungRegLib.browser.app import ReviewPage, missing_dependencies

    if missing_dependencies():
        pytest.skip(f"the review page needs {', '.join(missing_dependencies())}")
    job, out = run_folder
    page = ReviewPage(ReviewFolder.open(out))
    assert [o["value"] for o in page.state.overlays] == list(overlays())
    assert [o["title"] for o in page.state.overlays] == list(overlays().values())
    for role in overlays():
        page._on_overlay(role, 0.5)
        assert page.state.legend is None if role == "warped" else page.state.legend["title"] == overlays()[role]
