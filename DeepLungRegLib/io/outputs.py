"""Safe output folders: a run's files appear together, or not at all.

:class:`OutputFolder` checks before any work that the target folder can be
created and written and that it holds none of the files the run may write
(unless overwriting), stages every file in a temporary folder beside the
target, and moves the complete set into place only at the end. An error or
an interrupt leaves the target as it was. With ``overwrite``, the earlier
run's own files (listed in its ``metrics.json``) are removed, and nothing
else in the folder is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from ..errors import DeepLungRegError

#: The key of ``metrics.json`` that lists the files a run wrote.
MANIFEST_KEY = "output_files"
#: The file that holds the manifest (written last: its presence marks a complete set).
MANIFEST_FILE = "metrics.json"
_STAGING_PREFIX = ".deeplungreg-partial-"


def _first_file_in_path(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` (or ``path`` itself) when it is not a folder."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return None if p.is_dir() else p


def earlier_outputs(outdir: Path, known: Iterable[str]) -> list[str]:
    """The files of an earlier run in ``outdir``: those its ``metrics.json`` lists, else the ``known`` names present."""
    manifest = outdir / MANIFEST_FILE
    names: list[str] | None = None
    if manifest.is_file():
        try:
            listed = json.loads(manifest.read_text()).get(MANIFEST_KEY)
            if isinstance(listed, list) and all(isinstance(n, str) for n in listed):
                names = listed
        except (ValueError, AttributeError, OSError):
            names = None
    if names is None:
        names = list(known)
    # only plain names inside the folder (a manifest cannot point elsewhere)
    return sorted(n for n in set(names) if n == Path(n).name and not n.startswith(".") and (outdir / n).is_file())


class OutputFolder:
    """Stage a run's outputs and put them in place together.

    Args:
        outdir: the target folder (created, with its parents, if missing).
        names: every file name the run may write (all count for the overwrite check).
        overwrite: replace an earlier run's files.
        owner: the command name for error messages.

    Use as a context manager: files go to :meth:`path`; :meth:`commit` puts the
    written ones in place; leaving the block without commit discards them.
    """

    def __init__(self, outdir: str | os.PathLike, names: Iterable[str], *, overwrite: bool = False, owner: str = "register"):
        self.outdir = Path(outdir)
        self.names = tuple(names)
        self.owner = owner
        self.overwrite = overwrite
        out = self.outdir
        blocker = _first_file_in_path(out)
        if blocker is not None:
            raise DeepLungRegError(f"{owner}: cannot use {out} as the output folder: {blocker} is a file")
        if out.exists():
            clash = [n for n in self.names if (out / n).exists()]
            if clash and not overwrite:
                raise DeepLungRegError(f"{owner}: {out} already holds results ({', '.join(clash[:3])}"
                                       f"{', ...' if len(clash) > 3 else ''}); choose another folder or pass --overwrite")
            not_files = [n for n in clash if not (out / n).is_file()]
            if not_files:
                raise DeepLungRegError(f"{owner}: {out / not_files[0]} is a folder; it cannot be replaced by an output file")
        parent = Path(os.path.abspath(out)).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX + out.name + "-", dir=parent))
        except OSError as exc:
            raise DeepLungRegError(f"{owner}: cannot write into {parent} ({exc.strerror or exc})") from exc
        if out.exists():
            try:
                with tempfile.TemporaryFile(dir=out):
                    pass
            except OSError as exc:
                self.discard()
                raise DeepLungRegError(f"{owner}: cannot write into {out} ({exc.strerror or exc})") from exc
        self._committed = False

    def path(self, name: str) -> Path:
        """Where to write output ``name`` now (inside the staging folder)."""
        if name not in self.names:
            raise DeepLungRegError(f"{self.owner}: {name} is not one of this run's outputs")  # a programming error
        return self.staging / name

    def written(self) -> list[str]:
        return sorted(p.name for p in self.staging.iterdir() if p.is_file())

    def commit(self) -> list[Path]:
        """Put every staged file in place (``metrics.json`` last) and remove the earlier run's stale files."""
        new = self.written()
        out = self.outdir
        if not out.exists():
            os.replace(self.staging, out)  # one atomic step
        else:
            if self.overwrite:
                for stale in earlier_outputs(out, self.names):
                    if stale not in new:
                        (out / stale).unlink()
            for name in sorted(new, key=lambda n: n == MANIFEST_FILE):
                os.replace(self.staging / name, out / name)
            shutil.rmtree(self.staging, ignore_errors=True)
        self._committed = True
        return [out / n for n in new]

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, *exc) -> bool:
        if not self._committed:
            self.discard()
        return False
