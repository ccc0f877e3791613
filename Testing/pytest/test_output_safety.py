"""A run deletes or overwrites only what a run of ours wrote (issue 28: cases 3-6, 10-13, 15).

Most cases are checked on :class:`OutputFolder` itself (fast); one end-to-end run each for
``ulimit -f`` and for ``batch``'s quiet output, on a tiny synthetic pair.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError, Geometry, Image, write_image
from DeepLungRegLib.io import outputs
from DeepLungRegLib.io.outputs import LOCK_FILE, MANIFEST_FILE, MANIFEST_KEY, RECORD_KEY, OutputFolder, file_record

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("warped.nii.gz", "report.html", "tre.png", MANIFEST_FILE)
AFFINE = {"levels_mm": [8.0], "iterations": [30]}


def fake_run(out, *, overwrite=False, inputs=(), text="new", names=("warped.nii.gz", "report.html")) -> list[Path]:
    """What run_registration does with its folder: stage the files, record them in metrics.json, commit."""
    with OutputFolder(out, NAMES, overwrite=overwrite, inputs=inputs) as folder:
        for n in names:
            folder.path(n).write_text(f"{text} {n}")
        metrics = {MANIFEST_KEY: sorted([*folder.written(), MANIFEST_FILE]), RECORD_KEY: folder.records()}
        folder.path(MANIFEST_FILE).write_text(json.dumps(metrics))
        return folder.commit()


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.startswith(".deeplungreg-")]


def tiny_pair(folder: Path, n: int = 32) -> tuple[Path, Path]:
    """A blob and the same blob shifted by two voxels, 4 mm voxels."""
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32)
    g = Geometry((n, n, n), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0))
    c = n / 2
    fixed = (1000 * np.exp(-((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2) / 60)).astype(np.int16)
    moving = (1000 * np.exp(-((x - c - 2) ** 2 + (y - c) ** 2 + (z - c) ** 2) / 60)).astype(np.int16)
    folder.mkdir(parents=True, exist_ok=True)
    return write_image(Image(fixed, g), folder / "fixed.nii.gz"), write_image(Image(moving, g), folder / "moving.nii.gz")


# ------------------------------------------------------------------ 3: --overwrite deletes what a manifest lists
def test_3_overwrite_never_removes_files_a_metrics_json_lists_that_are_not_our_outputs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "fixed.nii.gz").write_bytes(b"the user's input image")
    (out / "notes.txt").write_text("the user's notes")
    # a metrics.json (here of our own format, with a correct record of both) that lists foreign names
    (out / MANIFEST_FILE).write_text(json.dumps({MANIFEST_KEY: ["fixed.nii.gz", "notes.txt"],
                                                 RECORD_KEY: {n: file_record(out / n) for n in ("fixed.nii.gz", "notes.txt")}}))
    fake_run(out, overwrite=True)
    assert (out / "fixed.nii.gz").read_bytes() == b"the user's input image" and (out / "notes.txt").read_text() == "the user's notes"
    assert (out / "warped.nii.gz").read_text() == "new warped.nii.gz"
    # the same with an old-style list only: refused or not, the two files stay
    (out / MANIFEST_FILE).write_text(json.dumps({MANIFEST_KEY: ["fixed.nii.gz", "notes.txt", "warped.nii.gz"]}))
    with pytest.raises(DeepLungRegError, match="not written by a run of ours"):
        fake_run(out, overwrite=True)
    assert (out / "fixed.nii.gz").is_file() and (out / "notes.txt").is_file() and (out / "warped.nii.gz").is_file()


def test_3_overwrite_replaces_only_outputs_that_still_match_their_record(tmp_path):
    out = tmp_path / "out"
    fake_run(out, names=("warped.nii.gz", "report.html", "tre.png"))
    fake_run(out, overwrite=True, text="second", names=("warped.nii.gz", "report.html"))  # tre.png: ours, unchanged: removed
    assert not (out / "tre.png").exists() and (out / "warped.nii.gz").read_text() == "second warped.nii.gz"
    (out / "report.html").write_text("edited by the user since")  # no longer matches the record
    before = listing(out)
    with pytest.raises(DeepLungRegError, match="report.html was not written by a run of ours, or was changed since"):
        fake_run(out, overwrite=True, text="third")
    assert listing(out) == before


# ------------------------------------------------------------------ 4: batch overwrites a user's files
@pytest.fixture
def cohort(tmp_path):
    fixed, moving = tiny_pair(tmp_path / "pair")
    path = tmp_path / "cohort.csv"
    path.write_text(f"id,fixed,moving,fixed_mask,moving_mask\ncase1,{fixed},{moving},none,none\n")
    return path


class NoCluster:
    """A client that must not be used: a refusal comes before any work."""

    def __getattr__(self, name):
        raise AssertionError(f"the cluster was used ({name}) although the cohort had to be refused first")


@pytest.mark.parametrize("where", ["report.html in OUTDIR/<id>", "results.csv in OUTDIR", "results.md in OUTDIR",
                                   "the cohort file is OUTDIR/results.csv"])
def test_4_batch_refuses_before_any_work_a_cohort_whose_outputs_would_land_on_a_users_file(tmp_path, cohort, where):
    from DeepLungRegLib.batch import run_cohort

    out = tmp_path / "out"
    (out / "case1").mkdir(parents=True)
    if where.startswith("report.html"):
        (out / "case1" / "report.html").write_text("my report")
    elif where.startswith("results"):
        (out / where.split()[0]).write_text("my table")
    else:
        cohort = Path(cohort.replace(out / "results.csv"))
    before = listing(out)
    with pytest.raises(DeepLungRegError) as e:
        run_cohort(cohort, out, method="affine", options=AFFINE, client=NoCluster())
    msg = str(e.value)
    assert "\n" not in msg and "nothing was run" in msg
    assert ("is an input" in msg) if where.startswith("the cohort") else ("not written by a run of ours" in msg)
    assert listing(out) == before


# ------------------------------------------------------------------ 5: an input named like an output
def test_5_an_input_in_the_output_folder_named_like_an_output_is_refused_before_any_work(tmp_path):
    from DeepLungRegLib.pipeline import RegistrationJob, run_registration

    fixed, moving = tiny_pair(tmp_path / "pair")
    out = tmp_path / "out"
    out.mkdir()
    (out / "warped.nii.gz").write_bytes(moving.read_bytes())  # the user's moving image, named like an output
    before = listing(out)
    job = RegistrationJob.from_files(fixed, out / "warped.nii.gz", method="affine", fixed_mask="none", moving_mask="none",
                                     options=AFFINE, device="cpu")
    stages = []
    with pytest.raises(DeepLungRegError, match=r"warped.nii.gz is an input of this run"):
        run_registration(job, out, overwrite=True, progress=lambda stage, f: stages.append(stage))
    assert stages == [] and listing(out) == before  # refused before the registration started
    # the same through a hard link (another name of the same file) and with an earlier run's record of it
    os.link(out / "warped.nii.gz", tmp_path / "moving_link.nii.gz")
    (out / MANIFEST_FILE).write_text(json.dumps({RECORD_KEY: {"warped.nii.gz": file_record(out / "warped.nii.gz")}}))
    with pytest.raises(DeepLungRegError, match="is an input of this run"):
        OutputFolder(out, NAMES, overwrite=True, inputs=[tmp_path / "moving_link.nii.gz"])
    assert (out / "warped.nii.gz").read_bytes() == moving.read_bytes() and not leftovers(out)


# ------------------------------------------------------------------ 6: two runs into one folder
def test_6_a_second_run_into_a_folder_that_a_live_run_writes_is_refused(tmp_path):
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from DeepLungRegLib.io.outputs import OutputFolder
        with OutputFolder({str(out)!r}, ["warped.nii.gz"]) as f:
            f.path("warped.nii.gz").write_text("run A")
            print("ready", flush=True)
            sys.stdin.read()  # until the test lets it go on
            f.commit()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(DeepLungRegError, match=rf"another run \(process {child.pid} on .*\) is writing into"):
            fake_run(out, overwrite=True)
        # in one process too (two threads or two calls)
        with OutputFolder(tmp_path / "b", NAMES):
            with pytest.raises(DeepLungRegError, match="another run"):
                OutputFolder(tmp_path / "b", NAMES)
    finally:
        child.communicate("", timeout=60)
    assert child.returncode == 0 and (out / "warped.nii.gz").read_text() == "run A" and not leftovers(tmp_path)


# ------------------------------------------------------------------ 10: modes and -o ""
@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_10_output_folders_and_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        fake_run(tmp_path / "shared" / "out")
    finally:
        os.umask(old)
    for d in (tmp_path / "shared", tmp_path / "shared" / "out"):
        assert oct(d.stat().st_mode & 0o777) == oct(0o777 & ~umask), d
    for f in (tmp_path / "shared" / "out").iterdir():
        assert oct(f.stat().st_mode & 0o777) == oct(0o666 & ~umask), f


def test_10_an_empty_output_folder_name_is_refused(tmp_path, monkeypatch):
    from DeepLungRegLib.batch import run_cohort

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DeepLungRegError, match="output folder name is empty"):
        fake_run("")
    with pytest.raises(DeepLungRegError, match="output folder name is empty"):
        run_cohort([{"id": "a", "fixed": __file__, "moving": __file__}], "", method="affine", client=NoCluster())
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 11: another file system
def test_11_an_output_folder_on_another_file_system_takes_the_outputs(tmp_path, monkeypatch):
    """``out`` is a mount point: a rename between it and anything outside fails with EXDEV."""
    out = tmp_path / "mnt"
    out.mkdir()
    real = os.replace

    def inside(p) -> bool:
        p = os.path.abspath(p)
        return p == str(out) or p.startswith(str(out) + os.sep)

    def replace(src, dst, **kw):
        if inside(src) != inside(dst):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        return real(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)
    fake_run(out)
    assert (out / "warped.nii.gz").read_text() == "new warped.nii.gz" and not leftovers(tmp_path)


def test_11_a_cross_device_rename_falls_back_to_a_copy(tmp_path, monkeypatch):
    real = os.replace

    def replace(src, dst, **kw):  # every rename between two folders crosses a device
        if os.path.dirname(os.path.abspath(src)) != os.path.dirname(os.path.abspath(dst)):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        return real(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", replace)
    fake_run(tmp_path / "out")
    fake_run(tmp_path / "out", overwrite=True, text="again")
    assert (tmp_path / "out" / "warped.nii.gz").read_text() == "again warped.nii.gz" and not leftovers(tmp_path)


# ------------------------------------------------------------------ 12: a writable folder in a read-only parent
def test_12_a_writable_folder_whose_parent_is_read_only_takes_the_outputs(tmp_path, monkeypatch):
    parent = tmp_path / "readonly"
    out = parent / "mine"
    out.mkdir(parents=True)
    parent.chmod(0o555)
    try:
        try:  # root (as in CI) writes anyway: then make the parent refuse new entries another way
            (parent / "probe").mkdir()
            (parent / "probe").rmdir()
            real = os.mkdir

            def mkdir(path, *a, **kw):
                if Path(os.path.abspath(path)).parent == parent:
                    raise PermissionError(errno.EACCES, "Permission denied", str(path))
                return real(path, *a, **kw)

            monkeypatch.setattr(os, "mkdir", mkdir)
        except PermissionError:
            pass
        monkeypatch.chdir(out)
        fake_run(".")
        assert (out / "warped.nii.gz").read_text() == "new warped.nii.gz" and sorted(os.listdir(parent)) == ["mine"]
    finally:
        parent.chmod(0o755)


# ------------------------------------------------------------------ 13: full disk, ulimit -f, dangling -o symlink
def test_13_a_full_disk_gives_one_line_and_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    out = tmp_path / "out"
    fake_run(out, names=("warped.nii.gz", "report.html", "tre.png"))
    before = listing(out)
    real = Path.write_text

    def write_text(self, *a, **kw):
        if ".deeplungreg-partial-" in str(self) and self.name == "report.html":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(DeepLungRegError, match="no room to write the outputs into .*No space left on device") as e:
        fake_run(out, overwrite=True, text="second")
    assert "\n" not in str(e.value) and listing(out) == before
    with pytest.raises(DeepLungRegError, match="no room"):
        fake_run(tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()  # the folders this run made are gone again


@pytest.mark.skipif(sys.platform == "win32", reason="ulimit -f (RLIMIT_FSIZE) is POSIX")
def test_13_ulimit_f_gives_one_line_instead_of_a_traceback(tmp_path):
    import resource

    fixed, moving = tiny_pair(tmp_path / "pair")
    out = tmp_path / "out"

    def limit():  # as after 'ulimit -f 64' (CPython ignores SIGXFSZ itself: the write fails with EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    r = subprocess.run([sys.executable, "-m", "DeepLungRegLib.cli", "register", str(fixed), str(moving), "-o", str(out),
                        "--method", "affine", "-O", "levels_mm=[8]", "-O", "iterations=[30]", "--fixed-mask", "none",
                        "--moving-mask", "none", "--device", "cpu", "-q"], capture_output=True, text=True, preexec_fn=limit,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}, timeout=600)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("deeplungreg: error: register: no room") and "File too large" in lines[0]
    assert not out.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need a privilege on Windows")
def test_13_a_dangling_output_symlink_gives_one_line(tmp_path):
    link = tmp_path / "results"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(DeepLungRegError, match="is a symlink to .*gone, which does not exist"):
        fake_run(link)
    with pytest.raises(DeepLungRegError, match="is a symlink to .*gone, which does not exist"):
        fake_run(link / "sub")
    assert sorted(os.listdir(tmp_path)) == ["results"] and not (tmp_path / "gone").exists()


# ------------------------------------------------------------------ 15: a killed run's leftovers; batch's noise
def test_15_a_killed_runs_staging_folder_and_lock_are_cleaned_up_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os
        from DeepLungRegLib.io.outputs import OutputFolder
        f = OutputFolder({str(out)!r}, ["warped.nii.gz"])
        f.path("warped.nii.gz").write_text("half")
        os._exit(9)  # killed: no cleanup runs
        """)], env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 9 and leftovers(tmp_path)  # what a killed run leaves
    fake_run(out)
    assert not leftovers(tmp_path) and (out / "warped.nii.gz").read_text() == "new warped.nii.gz"


def test_15_an_unreadable_lock_is_respected_while_fresh_and_taken_over_once_old(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text("")  # being written by a run that has just started
    with pytest.raises(DeepLungRegError, match="another run"):
        fake_run(out)
    monkeypatch.setattr(outputs, "_UNREADABLE_LOCK_S", 0.0)  # ... or a leftover, once old
    fake_run(out)
    assert not leftovers(tmp_path)


def test_15_batch_is_quiet_without_verbose(tmp_path, cohort):
    pytest.importorskip("distributed", reason="deeplungreg batch needs Dask distributed (pip install '.[batch]')")
    r = subprocess.run([sys.executable, "-m", "DeepLungRegLib.cli", "batch", str(cohort), "-o", str(tmp_path / "out"),
                        "--method", "affine", "--workers", "1", "--device", "cpu", "-q", "-O", "levels_mm=[8]",
                        "-O", "iterations=[30]"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    noise = [ln for ln in r.stderr.splitlines() if "INFO" in ln or "Traceback" in ln or "distributed" in ln or "Error" in ln]
    assert noise == [], r.stderr[-2000:]  # a method's own warning (no lung mask here) may stay
    assert "1 registered, 0 failed" in r.stdout and (tmp_path / "out" / "case1" / "warped.nii.gz").is_file()


def _tiny_pair():
    from DeepLungRegLib.simulation.breathing import SimulatedPair

    g = Geometry((12, 10, 8), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3).ravel())
    img = Image(np.arange(12 * 10 * 8, dtype=np.int16).reshape(8, 10, 12), g)
    mask = Image(np.ones((8, 10, 12), bool), g)
    pts = np.array([[4.0, 4.0, 4.0], [8.0, 6.0, 4.0]])
    return SimulatedPair(img, img, mask, mask, np.zeros((8, 10, 12, 3), np.float32), pts, pts, {"amplitude": "small"})


def test_a_simulated_pair_replaces_only_its_own_earlier_files(tmp_path):
    """simulate --overwrite and the demo's pair folder: an earlier pair of ours is replaced; a user's file with a
    pair name (or one of ours changed since) is refused in one line and left as it was, even with overwrite."""
    from DeepLungRegLib.simulation import read_pair, write_pair

    pair, out = _tiny_pair(), tmp_path / "pair"
    write_pair(pair, out)
    info = json.loads((out / "simulation.json").read_text())
    assert set(info[RECORD_KEY]) == {"fixed.nii.gz", "moving.nii.gz", "fixed_mask.nii.gz", "moving_mask.nii.gz",
                                     "ground_truth_field.nii.gz", "fixed_landmarks.csv", "moving_landmarks.csv"}
    assert RECORD_KEY not in read_pair(out).info
    with pytest.raises(DeepLungRegError, match="already holds a pair"):
        write_pair(pair, out)
    write_pair(pair, out, overwrite=True)  # our own, unchanged: replaced
    (out / "fixed_landmarks.csv").write_text("x,y,z\n1,2,3\n")  # the user edits one
    before = listing(tmp_path)
    with pytest.raises(DeepLungRegError, match="was not written by a run of ours"):
        write_pair(pair, out, overwrite=True)
    assert listing(tmp_path) == before
    user = tmp_path / "mine"  # a user's folder that happens to hold a fixed.nii.gz
    user.mkdir()
    (user / "fixed.nii.gz").write_bytes(b"the user's scan")
    with pytest.raises(DeepLungRegError, match="was not written by a run of ours"):
        write_pair(pair, user, overwrite=True)
    assert (user / "fixed.nii.gz").read_bytes() == b"the user's scan" and sorted(os.listdir(user)) == ["fixed.nii.gz"]


def test_a_simulated_pair_never_replaces_the_ct_it_is_made_from(tmp_path):
    """simulate CT -o OUT --overwrite with CT = OUT/fixed.nii.gz (an earlier pair's fixed image, or the user's CT
    under that name): refused in one line before any work, the CT left as it was."""
    from DeepLungRegLib.simulation import write_pair
    from DeepLungRegLib.simulation.breathing import check_pair_outdir

    pair, out = _tiny_pair(), tmp_path / "pair"
    write_pair(pair, out)
    ct = out / "fixed.nii.gz"
    before = ct.read_bytes()
    for call in (lambda: check_pair_outdir(out, True, [ct]), lambda: write_pair(pair, out, overwrite=True, source=str(ct))):
        with pytest.raises(DeepLungRegError, match="is the input"):
            call()
    assert ct.read_bytes() == before


def test_the_demo_refuses_a_foreign_output_before_any_work(tmp_path):
    """deeplungreg demo -o OUT where OUT holds a user's report.html: one line, at once (before the simulation), OUT as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("my notes")
    before = listing(tmp_path)
    r = subprocess.run([sys.executable, "-m", "DeepLungRegLib.cli", "demo", "-o", str(out), "-q"], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "was not written by a run of ours" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "simulated exhale" not in r.stdout and listing(tmp_path) == before
