"""``deeplungreg review``: the output folder's checks, the page's state, and the page in a real browser
(Debian's chromium, headless, driven by Playwright).

Without chromium or Playwright the browser test skips in a user's clone and fails in CI
(``DEEPLUNGREG_REQUIRE_BROWSER=1`` or ``DEEPLUNGREG_REQUIRE_SHARED=1``, set by ``.ci/run``).
With ``DEEPLUNGREG_REVIEW_SCREENSHOT=FILE`` it also saves the README's screenshot of the page.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError
from DeepLungRegLib.browser import ReviewFolder

ROOT = Path(__file__).resolve().parents[2]


def _required(what: str) -> None:
    msg = f"the browser test needs {what}"
    if os.environ.get("DEEPLUNGREG_REQUIRE_BROWSER") == "1" or os.environ.get("DEEPLUNGREG_REQUIRE_SHARED") == "1":
        pytest.fail(msg + "; CI forbids skipping it (.ci/run installs it)")
    pytest.skip(msg)


def _need_review_extra() -> None:
    from DeepLungRegLib.browser.app import missing_dependencies

    if missing_dependencies():
        _required(f"{', '.join(missing_dependencies())} (pip install 'DeepLungRegLib[review]')")


def chromium_path() -> str | None:
    """The system's chromium (``DEEPLUNGREG_CHROMIUM`` names another)."""
    given = os.environ.get("DEEPLUNGREG_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def registered(tmp_path_factory, sample_path):
    """A small registration output with landmarks (affine on a 6 mm pair: the page, not the accuracy, is tested)."""
    from DeepLungRegLib.cli import main as cli

    root = tmp_path_factory.mktemp("review")
    pair = root / "pair"
    assert cli(["simulate", str(sample_path), "-o", str(pair), "--amplitude", "small", "--seed", "2", "--spacing", "6",
                "--landmarks", "60"]) == 0
    out = root / "out"
    assert cli(["register", str(pair / "fixed.nii.gz"), str(pair / "moving.nii.gz"), "-o", str(out), "--method", "affine",
                "--fixed-mask", str(pair / "fixed_mask.nii.gz"), "--moving-mask", str(pair / "moving_mask.nii.gz"),
                "--fixed-landmarks", str(pair / "fixed_landmarks.csv"), "--moving-landmarks", str(pair / "moving_landmarks.csv"),
                "-q"]) == 0
    return {"pair": pair, "out": out}


def _copy(out: Path, dest: Path) -> Path:
    shutil.copytree(out, dest)
    return dest


# --------------------------------------------------------------------- the folder
@pytest.mark.slow
def test_a_registration_output_opens_with_its_views_and_landmarks(registered):
    folder = ReviewFolder.open(registered["out"])
    assert folder.views == {"jacobian": True, "ventilation": True, "ventilation_hu": True, "uncertainty": False, "landmarks": True}
    assert folder.fixed_path == (registered["pair"] / "fixed.nii.gz").resolve()
    job = folder.job()
    metrics = json.loads((registered["out"] / "metrics.json").read_text())
    n = len(metrics["tre_per_landmark"])
    assert n > 10 and job.fixed_landmarks.shape == (n, 3) and job.landmark_labels[0] == "P-1" and job.method == "affine"
    # the landmarks written into metrics.json give back the TRE the registration reported
    from DeepLungRegLib.metrics import tre

    out = folder.outputs()
    again = tre(job.fixed_landmarks, job.moving_landmarks, out.result.field, job.fixed.geometry)
    assert np.allclose(again, [p["after"] for p in metrics["tre_per_landmark"]], atol=1e-3)


@pytest.mark.slow
def test_what_is_not_a_registration_output_gets_one_line_naming_what_is_missing(registered, tmp_path):
    out = registered["out"]
    cases = []
    cases.append((tmp_path / "nothing-here", "is not a folder"))
    (tmp_path / "empty").mkdir()
    cases.append((tmp_path / "empty", "is not a registration output (it has no metrics.json)"))
    damaged = _copy(out, tmp_path / "damaged")
    (damaged / "metrics.json").write_text('{"method": "affine", ')
    cases.append((damaged, "metrics.json is damaged"))
    no_field = _copy(out, tmp_path / "no-field")
    (no_field / "displacement.nii.gz").unlink()
    cases.append((no_field, "lacks displacement.nii.gz, which the page needs"))
    old = _copy(out, tmp_path / "old")
    m = json.loads((old / "metrics.json").read_text())
    del m["job"]
    (old / "metrics.json").write_text(json.dumps(m))
    cases.append((old, "does not name the fixed image (a run of the Slicer module, or of an older version); pass --fixed FILE"))
    for folder, words in cases:
        with pytest.raises(DeepLungRegError, match=words.replace("(", r"\(").replace(")", r"\)")) as err:
            ReviewFolder.open(folder)
        assert "\n" not in str(err.value)
    # --fixed/--moving stand in for what metrics.json no longer names
    pair = registered["pair"]
    assert ReviewFolder.open(old, fixed=pair / "fixed.nii.gz", moving=pair / "moving.nii.gz").views["landmarks"]
    with pytest.raises(DeepLungRegError, match="is not the one registered"):
        ReviewFolder.open(out, fixed=_other_grid(pair, tmp_path)).job()


def _other_grid(pair: Path, tmp_path: Path) -> Path:
    from DeepLungRegLib import read_image, write_image
    from DeepLungRegLib.transforms import resample_to_spacing

    return write_image(resample_to_spacing(read_image(pair / "fixed.nii.gz"), 7.0), tmp_path / "coarser.nii.gz")


@pytest.mark.slow
def test_absent_views_are_hidden_not_broken(registered, tmp_path, slicer_core):
    """No ventilation file: no ventilation overlay; no landmarks: no review panel. The page still builds."""
    _need_review_extra()
    from DeepLungRegLib.browser.app import ReviewPage

    folder = _copy(registered["out"], tmp_path / "partial")
    (folder / "ventilation.nii.gz").unlink()
    m = json.loads((folder / "metrics.json").read_text())
    for key in ("landmarks", "tre_per_landmark", "tre_before", "tre_after"):
        m.pop(key)
    (folder / "metrics.json").write_text(json.dumps(m))
    page = ReviewPage(ReviewFolder.open(folder))
    assert [o["value"] for o in page.state.overlays] == ["warped", "jacobian", "ventilation_hu"]
    assert page.review is None and page.state.has_landmarks is False
    page.state.overlay = "jacobian"
    page._on_overlay("jacobian", 0.7)
    assert page.state.legend["title"] == "Jacobian determinant" and page.state.legend["gradient"].startswith("linear-gradient")


@pytest.mark.slow
def test_the_page_opens_on_the_whole_fixed_volume_with_the_grid_on_it(registered, slicer_core):
    """The first look: once the page gives a view its size, the view shows the whole fixed volume, and again
    after a resize; the deformation grid is drawn in each view over the volume only; the current landmark
    and the few worst carry labels, the others are points."""
    _need_review_extra()
    from DeepLungRegLib.browser.app import ReviewPage
    from DeepLungRegLib.slicer_bridge.grid import grid_models, point_in_view, volume_corners_ras
    from DeepLungRegLib.slicer_bridge.review import LABELLED_WORST

    page = ReviewPage(ReviewFolder.open(registered["out"]))
    corners = volume_corners_ras(page.fixed_node)
    views = page.app.view_manager.get_slice_views()
    assert len(views) == 3
    for sizes in (((300, 150), (150, 300), (500, 420)), ((640, 360), (360, 640), (420, 420))):
        for view, size in zip(views, sizes):
            view.render_window().SetSize(*size)
            view.interactor().InvokeEvent("WindowResizeEvent")
            node = view.get_view_node()
            assert tuple(node.GetDimensions()[:2]) == size
            assert all(point_in_view(node, c) for c in corners), (node.GetName(), size)
            # the slice goes through the current landmark, the image stays fitted
            assert node.GetSliceOffset() == pytest.approx(float(np.dot(
                [node.GetSliceToRAS().GetElement(i, 2) for i in range(3)],
                [-page.review.fixed[page.review.current][0], -page.review.fixed[page.review.current][1],
                 page.review.fixed[page.review.current][2]])), abs=max(page.fixed_node.GetSpacing()))
    models = grid_models(page.app.scene, page.nodes.transform)
    assert sorted(models) == ["Axial", "Coronal", "Sagittal"]
    assert sorted(v.get_view_node().GetOrientation() for v in views) == sorted(models)
    page._on_grid(False)
    assert not any(m.GetDisplayNode().GetVisibility() for m in models.values())
    page._on_grid(True)
    assert all(m.GetDisplayNode().GetVisibility() for m in models.values())
    lm = page.nodes.landmarks

    def labelled():
        return [i for i in range(lm.GetNumberOfControlPoints()) if lm.GetNthControlPointLabel(i)]

    worst = page.review.order("tre")
    assert page.review.current == worst[0] and labelled() == sorted(worst[:LABELLED_WORST])
    page.show_landmark(worst[-1])  # the best one: labelled while it is the current one
    assert labelled() == sorted(worst[:LABELLED_WORST] + [worst[-1]])


# --------------------------------------------------------------------- the browser
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _views(page) -> list[np.ndarray]:
    """The three views as the browser shows them (RGB arrays)."""
    from PIL import Image as PILImage

    shots = []
    for img in page.query_selector_all("#views img"):
        shots.append(np.asarray(PILImage.open(io.BytesIO(img.screenshot())).convert("RGB"), dtype=np.int16))
    return shots


def _wait_for(condition, timeout_s: float, what: str):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        value = condition()
        if value:
            return value, time.perf_counter() - t0
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.mark.slow
@pytest.mark.browser
def test_the_review_page_in_chromium(registered, tmp_path, slicer_core):
    """Serve a registration output, load the page in headless chromium: three non-blank views; "worst"
    moves them to the worst landmark; flag it with a comment, export, and find the files; choose the uncertainty
    overlay (its legend shows, the views change) and step most uncertain first."""
    browser_path = chromium_path()
    if browser_path is None:
        _required("chromium (apt-get install chromium, or DEEPLUNGREG_CHROMIUM=/path/to/chrome)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _required("Playwright (pip install playwright)")
    _need_review_extra()

    from DeepLungRegLib import read_image, write_image
    from DeepLungRegLib.transforms import sample_map_at_points

    out = _copy(registered["out"], tmp_path / "out")
    own = {name: _digest(out / name) for name in json.loads((out / "metrics.json").read_text())["output_files"]}
    metrics = json.loads((out / "metrics.json").read_text())
    tre_after = [p["after"] for p in metrics["tre_per_landmark"]]
    worst_label = metrics["landmarks"]["labels"][int(np.argmax(tre_after))]
    n = len(tre_after)
    # an uncertainty map that rises along x (issue 31): a known most uncertain landmark
    fixed = read_image(registered["pair"] / "fixed.nii.gz")
    z, y, x = np.meshgrid(*[np.arange(k, dtype=np.float32) for k in fixed.geometry.shape], indexing="ij")
    write_image(fixed.with_array(0.1 * x + 0.05 * z), out / "uncertainty.nii.gz")
    unsure = sample_map_at_points(0.1 * x + 0.05 * z, fixed.geometry, np.asarray(metrics["landmarks"]["fixed_lps"]))
    unsure_label = metrics["landmarks"]["labels"][int(np.argmax(unsure))]
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    server = subprocess.Popen([sys.executable, "-m", "DeepLungRegLib.cli", "review", str(out), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        t_start = time.perf_counter()
        line = ""
        while "Ctrl+C stops" not in line:
            line = server.stdout.readline()
            assert line or server.poll() is None, "the review server ended before it was ready"
            assert time.perf_counter() - t_start < 180, "the review server did not come up in 180 s"
        assert f"http://127.0.0.1:{port}/" in line
        server_s = time.perf_counter() - t_start
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 850})
            page.set_default_timeout(60_000)  # waits for a state, never a fixed time: generous under load
            expect.set_options(timeout=60_000)
            t0 = time.perf_counter()
            page.goto(re.search(r"http://[^\s;]+", line).group(0))  # the printed URL, with the page's token
            page.wait_for_selector("#worst")

            def rendered():
                shots = _views(page)
                return shots if len(shots) == 3 and all(s.std() > 10 for s in shots) else None

            first, _ = _wait_for(rendered, 60, "three non-blank views")
            page_s = time.perf_counter() - t0
            # Every read after an action waits for the state it asserts (the server answers a click
            # asynchronously: the text and the views change some time after it, later under load).
            current, message = page.locator("#current"), page.locator("#message")
            at_worst = re.compile(rf"^{re.escape(worst_label)}: 1 of {n}\b")
            expect(current).to_have_text(re.compile(rf"^{re.escape(worst_label)}: 1 of {n} worst first"))
            # next, then worst: the text and the views move away and back
            page.click("#next")
            expect(current).to_have_text(re.compile(rf"^\S+: 2 of {n}\b"))
            expect(current).not_to_have_text(at_worst)
            moved, _ = _wait_for(lambda: (lambda s: s if sum(np.abs(a - b).mean() for a, b in zip(s, first)) > 1 else None)(_views(page)),
                                 60, "the views to move to the next landmark")
            t1 = time.perf_counter()
            page.click("#worst")
            expect(current).to_have_text(at_worst)
            _wait_for(lambda: (lambda s: s if sum(np.abs(a - b).mean() for a, b in zip(s, moved)) > 1 else None)(_views(page)),
                      60, "the views to move back to the worst landmark")
            move_s = time.perf_counter() - t1
            # flag the worst landmark with a comment, then export into the output folder
            page.fill("#comment", "misses the vessel")
            expect(page.locator("#comment")).to_have_value("misses the vessel")
            page.click("#flag")
            expect(page.locator("#review-summary")).to_contain_text("1 flagged")
            page.click("#export")
            expect(message).to_contain_text("Exported")
            shot = os.environ.get("DEEPLUNGREG_REVIEW_SCREENSHOT")
            if shot:
                page.click("#worst")
                expect(current).to_have_text(at_worst)
                _wait_for(rendered, 60, "three non-blank views at the worst landmark")
                page.screenshot(path=shot)
            page.click("#export")  # a second export does not replace the first
            expect(message).to_contain_text("already holds")
            # the uncertainty overlay, chosen in the overlay menu: its legend shows and the views change; the review
            # steps most uncertain first, from the landmark where the map is highest
            before = _views(page)
            field_of = lambda sel: page.locator(sel).locator("xpath=ancestor::div[contains(@class, 'v-field')][1]")  # noqa: E731
            field_of("#overlay").click()  # (a select opens where its field is clicked)
            page.get_by_role("option", name="Uncertainty (mm)").click()
            expect(page.locator("#legend")).to_contain_text("Uncertainty (mm)")
            _wait_for(lambda: (lambda s: s if sum(np.abs(a - b).mean() for a, b in zip(s, before)) > 1 else None)(_views(page)),
                      60, "the views to show the uncertainty overlay")
            field_of("#order").click()
            page.get_by_role("option", name="most uncertain first").click()
            expect(current).to_have_text(re.compile(rf"^{re.escape(unsure_label)}: 1 of {n} most uncertain first"))
            browser.close()
        print(f"\nreview page: server ready {server_s:.1f} s after start, page with three views {page_s:.1f} s after "
              f"loading, worst landmark {move_s:.2f} s after the click")
    finally:
        server.terminate()
        server.wait(timeout=30)
    rows = {r["label"]: r for r in csv.DictReader(open(out / "review.csv"))}
    assert rows[worst_label]["status"] == "flagged" and rows[worst_label]["comment"] == "misses the vessel"
    assert sum(r["status"] == "flagged" for r in rows.values()) == 1 and len(rows) == n
    for name in ("reviewed_fixed_landmarks.mrk.json", "reviewed_moving_landmarks.mrk.json", "reviewed_moving_landmarks.csv"):
        assert (out / name).stat().st_size > 100
    assert {name: _digest(out / name) for name in own} == own  # the registration's own files are untouched


def test_review_command_refuses_a_folder_that_is_not_an_output_in_one_line(tmp_path, capsys):
    from DeepLungRegLib.cli import main as cli

    assert cli(["review", str(tmp_path), "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a registration output (it has no metrics.json)" in err[0]


@pytest.mark.slow
def test_an_uncertainty_map_is_an_overlay_with_its_legend_and_orders_the_review(registered, tmp_path, slicer_core):
    """Issue 31 in the browser: a folder with uncertainty.nii.gz offers it as an overlay (legend in mm), and the landmark
    review can step most uncertain first, the values being the map's at the fixed landmarks."""
    _need_review_extra()
    from DeepLungRegLib import read_image, write_image
    from DeepLungRegLib.browser.app import ReviewPage
    from DeepLungRegLib.transforms import sample_map_at_points

    folder = _copy(registered["out"], tmp_path / "unsure")
    fixed = read_image(registered["pair"] / "fixed.nii.gz")
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in fixed.geometry.shape], indexing="ij")
    write_image(fixed.with_array(0.1 * x + 0.05 * z), folder / "uncertainty.nii.gz")  # rises along x: a known order
    opened = ReviewFolder.open(folder)
    assert opened.views["uncertainty"]
    page = ReviewPage(opened)
    assert "uncertainty" in [o["value"] for o in page.state.overlays]
    page._on_overlay("uncertainty", 0.6)
    assert page.state.legend["title"] == "Uncertainty (mm)"
    assert [o["value"] for o in page.state.orders] == ["tre", "index", "uncertainty"]
    page._on_order("uncertainty")
    values = sample_map_at_points(0.1 * x + 0.05 * z, fixed.geometry, page.review.fixed)
    assert [r["index"] for r in page.controller.rows()] == [int(i) for i in np.argsort(-values, kind="stable")]
    assert "most uncertain first" in page.controller.describe()
