"""Tests of DeepLungRegLib/io/outputs.py: a run deletes or overwrites only what a run of ours wrote.

Most cases are checked on :class:`OutputFolder` itself (fast); others through the command line on a small simulated pair."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from DeepLungRegLib import DeepLungRegError
from DeepLungRegLib.cli import main
from DeepLungRegLib.io import outputs
from DeepLungRegLib.io.outputs import LOCK_FILE, MANIFEST_FILE, MANIFEST_KEY, OutputFolder, RECORD_KEY, file_record
from DeepLungRegLib.pipeline import ALL_OUTPUT_FILES, RegistrationJob, run_registration
from DeepLungRegLib.simulation import read_pair

from helpers_inputs import FAST_CFG, one_line_error, pair_dir, register_args, run_cli
from helpers_outputs import AFFINE, NoCluster, listing, tiny_pair


# --------------------------------------------------------------- safe outputs
@pytest.mark.slow
def test_a_users_file_of_an_output_name_is_never_overwritten(pair_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "overlay.png").write_text("my own picture")
    r = run_cli(*register_args(pair_dir, out))
    one_line_error(r, "already holds results")
    assert (out / "overlay.png").read_text() == "my own picture" and sorted(p.name for p in out.iterdir()) == ["overlay.png"]


@pytest.mark.slow
def test_an_interrupted_run_leaves_nothing(pair_dir, tmp_path):
    pair = read_pair(pair_dir)
    out = tmp_path / "out"

    def stop(stage, fraction):
        if fraction > 0.5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_registration(RegistrationJob(pair.fixed, pair.moving, "adam", config=FAST_CFG, fixed_mask=pair.fixed_mask,
                                         moving_mask=pair.moving_mask, device="cpu"), out, progress=stop)
    assert not out.exists() and not list(tmp_path.iterdir())  # no half set, no staging folder
    # the same into a folder that holds other files: they stay, nothing is added
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(KeyboardInterrupt):
        run_registration(RegistrationJob(pair.fixed, pair.moving, "adam", config=FAST_CFG, fixed_mask=pair.fixed_mask,
                                         moving_mask=pair.moving_mask, device="cpu"), out, progress=stop)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and len(list(tmp_path.iterdir())) == 1


@pytest.mark.slow
def test_overwrite_removes_the_earlier_runs_own_files_and_only_those(pair_dir, tmp_path):
    out = tmp_path / "out"
    lm = ["--fixed-landmarks", pair_dir / "fixed_landmarks.csv", "--moving-landmarks", pair_dir / "moving_landmarks.csv"]
    assert main(register_args(pair_dir, out, *lm)) == 0
    first = json.loads((out / "metrics.json").read_text())["output_files"]
    assert "tre.png" in first and "ventilation_hu.nii.gz" in first
    assert set(first) == {p.name for p in out.iterdir()} and set(first) <= set(ALL_OUTPUT_FILES)
    (out / "notes.txt").write_text("mine")
    # a rerun without landmarks and without masks' HU ventilation: tre.png must not survive as a stale file
    args = register_args(pair_dir, out, "--overwrite")
    assert main(args) == 0
    names = {p.name for p in out.iterdir()}
    assert "tre.png" not in names and "notes.txt" in names and (out / "notes.txt").read_text() == "mine"
    assert names - {"notes.txt"} == set(json.loads((out / "metrics.json").read_text())["output_files"])


@pytest.mark.slow
def test_an_output_folder_that_cannot_be_created_fails_before_registering(pair_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    t0 = time.perf_counter()
    r = run_cli(*register_args(pair_dir, blocker / "out"))
    one_line_error(r, "is a file")
    r = run_cli(*register_args(pair_dir, blocker))
    one_line_error(r, "is a file")
    assert time.perf_counter() - t0 < 60 and blocker.read_text() == "x"


ROOT = Path(__file__).resolve().parents[2]


NAMES = ("warped.nii.gz", "report.html", "tre.png", MANIFEST_FILE)


def fake_run(out, *, overwrite=False, inputs=(), text="new", names=("warped.nii.gz", "report.html")) -> list[Path]:
    """What run_registration does with its folder: stage the files, record them in metrics.json, commit."""
    with OutputFolder(out, NAMES, overwrite=overwrite, inputs=inputs) as folder:
        for n in names:
            folder.path(n).write_text(f"{text} {n}")
        metrics = {MANIFEST_KEY: sorted([*folder.written(), MANIFEST_FILE]), RECORD_KEY: folder.records()}
        folder.path(MANIFEST_FILE).write_text(json.dumps(metrics))
        return folder.commit()


def leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.startswith(".deeplungreg-")]


def test_an_interrupt_while_the_outputs_are_put_in_place_leaves_no_half_set(tmp_path, monkeypatch):
    """A cancel's SIGTERM (raised as an exception in the worker) between two files of the commit, or while the
    output folder is being made: the files already put in place go back, the folders made go; nothing half-written."""
    real = outputs.move_into
    moved = []

    def move_into(src, dst):
        if moved:
            raise KeyboardInterrupt  # the second file
        moved.append(dst.name)
        real(src, dst)

    monkeypatch.setattr(outputs, "move_into", move_into)
    out = tmp_path / "new" / "out"
    with pytest.raises(KeyboardInterrupt):
        fake_run(out)
    assert moved and not (tmp_path / "new").exists()
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("keep")
    moved.clear()
    with pytest.raises(KeyboardInterrupt):
        fake_run(out)
    assert listing(out) == {"notes.txt": b"keep"}
    monkeypatch.setattr(outputs, "move_into", real)

    def mkdir(path, *args, **kwargs):  # interrupted once the first folder is made
        real_mkdir(path, *args, **kwargs)
        raise KeyboardInterrupt

    real_mkdir = os.mkdir
    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(KeyboardInterrupt):
        OutputFolder(tmp_path / "other" / "out", NAMES)
    monkeypatch.setattr(os, "mkdir", real_mkdir)
    assert not (tmp_path / "other").exists()


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


@pytest.mark.slow
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


def test_15_waiting_for_a_folders_lock_ends_when_its_live_holder_lets_go(tmp_path):
    """batch's retry of a pair whose killed attempt is still unwinding: it waits for that run's lock, not a fixed time."""
    from DeepLungRegLib.io.outputs import FolderLock, wait_for_unlock

    assert wait_for_unlock(tmp_path, 0.0)  # no lock
    lock = FolderLock(tmp_path).acquire()  # held by this (live) process
    assert not wait_for_unlock(tmp_path, 0.3)
    threading.Timer(0.5, lock.release).start()
    assert wait_for_unlock(tmp_path, 60.0) and not (tmp_path / LOCK_FILE).exists()
    (tmp_path / LOCK_FILE).write_text('{"pid": 999999999, "host": "%s"}' % socket.gethostname())  # a dead run's leftover
    assert wait_for_unlock(tmp_path, 0.0)
