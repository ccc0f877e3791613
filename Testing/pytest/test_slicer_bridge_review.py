"""Tests of DeepLungRegLib/slicer_bridge/review.py: the review's Export never writes through a link and reports a failure in one line."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError
from DeepLungRegLib.geometry import Geometry
from DeepLungRegLib.slicer_bridge.review import LandmarkReview, REVIEW_FILES


# --------------------------------------------------------------------- Export
def _review(n: int = 4) -> LandmarkReview:
    """A small review: ``n`` landmarks and a zero field on an 8 mm cube."""
    rng = np.random.default_rng(0)
    fixed = rng.uniform(10, 50, (n, 3))
    return LandmarkReview(fixed, fixed + 1.0, np.zeros((8, 8, 8, 3)), Geometry((8, 8, 8), (8.0, 8.0, 8.0)))


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: (os.readlink(p).encode() if p.is_symlink() else p.read_bytes()) for p in sorted(folder.iterdir())}


@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="symbolic links need POSIX here")
@pytest.mark.parametrize("overwrite", [False, True])
def test_export_refuses_a_symlinked_review_csv_and_leaves_its_target_untouched(tmp_path, overwrite):
    """Before: Export opened review.csv for writing and wrote through the link (and ``exists()`` is
    false for a dangling link, so even the earlier-review check passed). After: refused, nothing written."""
    folder, elsewhere = tmp_path / "shared", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    victim = elsewhere / "notes.txt"
    victim.write_text("the user's own notes\n")
    review = _review()
    for name, target in (("review.csv", victim), ("reviewed_moving_landmarks.mrk.json", elsewhere / "not-there-yet.json")):
        (folder / name).symlink_to(target)
        before = _listing(folder)
        with pytest.raises(DeepLungRegError, match=f"{re.escape(name)} is a symbolic link") as err:
            review.export(folder, overwrite=overwrite)
        assert "\n" not in str(err.value)
        assert victim.read_text() == "the user's own notes\n" and sorted(p.name for p in elsewhere.iterdir()) == ["notes.txt"]
        assert _listing(folder) == before  # nothing written, no temporary file left
        (folder / name).unlink()


def test_export_replaces_each_file_by_a_new_one(tmp_path):
    """An earlier review.csv hard-linked elsewhere keeps its content there: Export writes a new file and
    renames it over the name (before: it wrote into the existing file, so through the hard link too)."""
    folder = tmp_path / "out"
    review = _review()
    review.export(folder)
    elsewhere = tmp_path / "kept.csv"
    os.link(folder / "review.csv", elsewhere)
    kept = elsewhere.read_bytes()
    review.flag("looked again", index=0)
    written = review.export(folder, overwrite=True)
    assert sorted(p.name for p in written) == sorted(REVIEW_FILES) == sorted(p.name for p in folder.iterdir())
    assert elsewhere.read_bytes() == kept and b"looked again" in (folder / "review.csv").read_bytes()
    again = LandmarkReview.load(folder / "review.csv", review.field, review.geometry)
    assert again.status == review.status and np.allclose(again.moving, review.moving, atol=1e-4)


def test_exported_files_follow_the_umask(tmp_path):
    if sys.platform == "win32":
        pytest.skip("POSIX permissions")
    old = os.umask(0o022)
    try:
        _review().export(tmp_path)
    finally:
        os.umask(old)
    assert {oct((tmp_path / n).stat().st_mode & 0o777) for n in REVIEW_FILES} == {oct(0o644)}


def _export_unprivileged(review: LandmarkReview, folder: Path) -> str | None:
    """Export into ``folder`` as a user its permissions stop: this process, or, when the tests run as root
    (whom permissions do not stop), a forked child that has become user nobody. Returns the refusal's
    line, or ``None`` when the export went through."""
    if os.geteuid() != 0:
        try:
            review.export(folder, overwrite=True)
        except DeepLungRegError as exc:
            return str(exc)
        return None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                review.export(folder, overwrite=True)
                code = 0
            except DeepLungRegError as exc:
                os.write(write, str(exc).encode())
                code = 3
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        message = fh.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) in (0, 3), f"the export's child failed ({status})"
    return message if os.WEXITSTATUS(status) == 3 else None


@pytest.mark.skipif(sys.platform == "win32", reason="read-only folders are POSIX permissions here")
def test_export_into_a_read_only_folder_is_one_line_and_leaves_it_as_it_was():
    """Before: PermissionError's traceback (and the page showed nothing). After: one line; the folder
    as it was, without temporary files."""
    root = Path(tempfile.mkdtemp(prefix="deeplungreg-readonly-"))
    folder = root / "results"
    try:
        root.chmod(0o755)
        folder.mkdir()
        (folder / "review.csv").write_text("an earlier review\n")
        folder.chmod(0o555)
        before = _listing(folder)
        review = _review()
        review.tre()  # the field sampled once here, not first in a forked child
        message = _export_unprivileged(review, folder)
        assert message is not None and "\n" not in message
        assert message.startswith(f"review: cannot write the review into {folder} (Permission denied")
        assert _listing(folder) == before
    finally:
        if folder.exists():
            folder.chmod(0o755)
        shutil.rmtree(root)
