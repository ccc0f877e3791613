"""Safe output folders: a run's files appear together, or not at all, and a run
removes or replaces only what a run of ours wrote.

:class:`OutputFolder` checks before any work that the target folder can be
created and written, that no other run is writing into it (a lock file), and
that it holds none of the files the run may write (unless overwriting). It
stages every file in a hidden folder inside the target and moves the complete
set into place only at the end. An error, an interrupt or a full disk leaves
the target as it was.

With ``overwrite``, a file is removed or replaced only when its name is one of
the run's output names, it is not one of the run's inputs, and it still matches
the record (size and SHA-256) that the earlier run wrote into its
``metrics.json``; any other file of an output name is refused before any work.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

from ..errors import DeepLungRegError

#: The key of ``metrics.json`` that lists the files a run wrote.
MANIFEST_KEY = "output_files"
#: The key of ``metrics.json`` that records each written file's size and hash: ``{name: {"bytes", "sha256"}}``.
RECORD_KEY = "output_records"
#: The file that holds the manifest (written last: its presence marks a complete set).
MANIFEST_FILE = "metrics.json"
#: The lock file of a folder a run is writing into (the PID and host of that run, as JSON).
LOCK_FILE = ".deeplungreg-lock"
_STAGING_PREFIX = ".deeplungreg-partial-"
#: A lock that holds no readable owner this long after it was made is a leftover.
_UNREADABLE_LOCK_S = 60.0
#: Errors of a write that found no room (a full disk, a quota, ``ulimit -f``).
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


# ------------------------------------------------------------------ records
def file_record(path: str | os.PathLike) -> dict:
    """``{"bytes": size, "sha256": hex digest}`` of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"bytes": os.stat(path).st_size, "sha256": h.hexdigest()}


def read_records(record_file: Path, key: str = RECORD_KEY) -> dict[str, dict] | None:
    """The output records in ``record_file`` (a ``metrics.json`` of ours), or ``None`` when it is
    not a regular file that holds them."""
    try:
        if not stat.S_ISREG(os.lstat(record_file).st_mode):
            return None
        data = json.loads(Path(record_file).read_text())
    except (OSError, ValueError):
        return None
    records = data.get(key) if isinstance(data, dict) else None
    if not isinstance(records, dict):
        return None
    return {n: r for n, r in records.items()
            if isinstance(n, str) and isinstance(r, dict) and isinstance(r.get("bytes"), int) and isinstance(r.get("sha256"), str)}


def matches_record(path: Path, record: dict | None) -> bool:
    """True when ``path`` is a regular file (not a link) whose size and hash are ``record``'s."""
    if not record:
        return False
    try:
        st = os.lstat(path)
        return stat.S_ISREG(st.st_mode) and st.st_size == record["bytes"] and file_record(path)["sha256"] == record["sha256"]
    except OSError:
        return False


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` are one file: the same resolved path, or the same device and inode
    (a hard link or a symlink to it)."""
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def replace_problems(folder: Path, names: Iterable[str], *, overwrite: bool, records: dict[str, dict] | None,
                     inputs: Iterable[str | os.PathLike] = (), record_file: str = MANIFEST_FILE,
                     hint: str = "choose another folder or pass --overwrite") -> tuple[list[str], list[str]]:
    """What stands in the way of writing ``names`` into ``folder``, and the files of ours that may go.

    Returns:
        ``(problems, ours)``: one-line reasons (empty when the run may go on), and the present files
        that an earlier run of ours wrote and that may be removed or replaced.
    """
    inputs = [str(p) for p in inputs if p is not None and not isinstance(p, bool) and str(p) not in ("", "auto", "none")]
    present = [n for n in names if os.path.lexists(folder / n)]
    problems: list[str] = []
    for n in present:
        hit = next((i for i in inputs if same_file(folder / n, i)), None)
        if hit is not None:
            problems.append(f"{folder / n} is an input of this run ({hit}); an output would replace it: choose another output folder")
    if problems:
        return problems, []
    if not present:
        return [], []
    if not overwrite:
        return [f"{folder} already holds results ({', '.join(present[:3])}{', ...' if len(present) > 3 else ''}); {hint}"], []
    folders = [n for n in present if os.path.isdir(folder / n) and not os.path.islink(folder / n)]
    if folders:
        return [f"{folder / folders[0]} is a folder; it cannot be replaced by an output file"], []
    ours, foreign = [], []
    for n in present:
        if n == record_file:
            (ours if records is not None else foreign).append(n)
        elif records is not None and matches_record(folder / n, records.get(n)):
            ours.append(n)
        else:
            foreign.append(n)
    if foreign:
        return [f"{folder / foreign[0]}{f' (and {len(foreign) - 1} more)' if len(foreign) > 1 else ''} was not written by a run "
                f"of ours, or was changed since (it does not match the record in {folder / record_file}); "
                "move it away or choose another folder"], []
    return [], ours


# ------------------------------------------------------------------ the lock
def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (portable: no signal is sent on Windows)."""
    if pid <= 0:
        return False
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        try:
            kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        finally:
            kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _lock_holder(path: Path) -> dict | None:
    """The lock's owner ``{"pid", "host"}`` while that run may still be going on, else ``None`` (a leftover)."""
    try:
        text = path.read_text()
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    except OSError:
        return {"pid": "?", "host": "?"}
    try:
        owner = json.loads(text)
        pid, host = int(owner["pid"]), str(owner["host"])
    except (ValueError, KeyError, TypeError):
        return {"pid": "?", "host": "?"} if age < _UNREADABLE_LOCK_S else None  # being written, or a leftover
    if host != socket.gethostname():
        return {"pid": pid, "host": host}  # another machine's run: it cannot be told from here
    return {"pid": pid, "host": host} if _pid_alive(pid) else None


class FolderLock:
    """One run per folder: ``folder/.deeplungreg-lock`` made with ``O_CREAT | O_EXCL``, holding the
    run's PID and host. A lock whose process is gone (on this host) is a leftover and is taken over.
    """

    def __init__(self, folder: str | os.PathLike, owner: str = "register"):
        self.path = Path(folder) / LOCK_FILE
        self.owner = owner
        self.held = False

    def acquire(self) -> "FolderLock":
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = _lock_holder(self.path)
                if holder is not None:
                    raise DeepLungRegError(
                        f"{self.owner}: another run (process {holder['pid']} on {holder['host']}) is writing into "
                        f"{self.path.parent}; wait for it to end or choose another folder (if no run is going on, "
                        f"remove {self.path})") from None
                try:
                    os.unlink(self.path)  # a killed run's leftover
                except FileNotFoundError:
                    pass
                continue
            except OSError as exc:
                raise DeepLungRegError(f"{self.owner}: cannot write into {self.path.parent} ({exc.strerror or exc})") from exc
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            self.held = True
            return self
        raise DeepLungRegError(f"{self.owner}: cannot take the lock {self.path}; another run keeps making it")

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def wait_for_unlock(folder: str | os.PathLike, timeout: float) -> bool:
    """Wait up to ``timeout`` s until no live run holds ``folder``'s lock (an ending run of ours, e.g. a killed
    task's process that is still unwinding); returns whether it is free now."""
    path = Path(folder) / LOCK_FILE
    end = time.monotonic() + timeout
    while _lock_holder(path) is not None:
        if time.monotonic() >= end:
            return False
        time.sleep(0.1)
    return True


def remove_stale_staging(folder: Path) -> list[Path]:
    """Staging folders that killed runs left in ``folder`` (call only while holding its lock: then
    no live run of ours is writing there)."""
    gone = []
    for p in folder.glob(_STAGING_PREFIX + "*"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        gone.append(p)
    return gone


def clean_leftovers(folder: str | os.PathLike, owner: str = "register") -> list[Path]:
    """Remove a killed run's staging folders in ``folder`` unless a live run holds its lock (then nothing)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    try:
        with FolderLock(folder, owner):
            return remove_stale_staging(folder)
    except DeepLungRegError:
        return []


# ------------------------------------------------------------------ writing
def _no_room(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _NO_ROOM


def replace_file(dst: Path, fill: Callable[[Path], object], *, mode: int | None = None) -> None:
    """Replace ``dst`` at once: ``fill(tmp)`` writes a new hidden file beside it (created exclusively, so
    never an existing file or a link; its mode from the umask, or ``mode``), which is then renamed onto
    ``dst`` (``os.replace`` replaces the name, it never follows it). On any failure the hidden file goes
    and ``dst`` is as it was."""
    tmp = dst.parent / f"{_STAGING_PREFIX}{secrets.token_hex(6)}{dst.suffix}"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666))
    try:
        fill(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def move_into(src: Path, dst: Path) -> None:
    """Rename ``src`` onto ``dst``; across file systems (``EXDEV``) copy it to a hidden file beside
    ``dst`` first and rename that (``dst`` is replaced at once, or not at all)."""
    try:
        os.replace(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    replace_file(dst, lambda tmp: shutil.copyfile(src, tmp), mode=stat.S_IMODE(os.stat(src).st_mode))
    os.unlink(src)


def check_output_path(outdir: str | os.PathLike, owner: str) -> Path:
    """``outdir`` as a path, refusing an empty name, a dangling symlink and a file on its way."""
    if str(outdir).strip() == "":
        raise DeepLungRegError(f"{owner}: the output folder name is empty; give a folder with -o")
    out = Path(outdir)
    if os.path.islink(out) and not out.exists():
        raise DeepLungRegError(f"{owner}: the output folder {out} is a symlink to {os.readlink(out)}, which does not exist")
    p = Path(os.path.abspath(out))
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    if os.path.islink(p) and not p.exists():
        raise DeepLungRegError(f"{owner}: cannot use {out} as the output folder: {p} is a symlink to {os.readlink(p)}, "
                               "which does not exist")
    if p.exists() and not p.is_dir():
        raise DeepLungRegError(f"{owner}: cannot use {out} as the output folder: {p} is a file")
    return out


class OutputFolder:
    """Stage a run's outputs inside the target folder and put them in place together.

    Args:
        outdir: the target folder (created, with its parents, if missing; the umask decides its mode).
        names: every file name the run may write (all count for the overwrite check).
        overwrite: replace an earlier run's files (only those that still match its record).
        owner: the command name for error messages.
        inputs: the run's input files: none of them is ever replaced or removed.
        record_file: the output (one of ``names``) that holds the record of the others, written last
            (``metrics.json`` for a registration, ``simulation.json`` for a simulated pair).
        read_record: reads the earlier run's record from the folder (a registration's:
            :meth:`DeepLungRegLib.io.runs.RunFolder.records_in`); default :func:`read_records` of ``record_file``.

    Use as a context manager: files go to :meth:`path`; :meth:`records` gives the record for
    ``metrics.json``; :meth:`commit` puts the written ones in place; leaving the block without commit
    (an error, an interrupt, a full disk) discards them and leaves the folder as it was.
    """

    def __init__(self, outdir: str | os.PathLike, names: Iterable[str], *, overwrite: bool = False, owner: str = "register",
                 inputs: Iterable[str | os.PathLike] = (), record_file: str = MANIFEST_FILE,
                 read_record: Callable[[Path], dict[str, dict] | None] | None = None):
        self.names = tuple(names)
        self.record_file = record_file
        self._read_record = read_record or (lambda folder: read_records(folder / record_file))
        self.owner = owner
        self.overwrite = overwrite
        self.inputs = [p for p in inputs if p is not None]
        self.outdir = out = check_output_path(outdir, owner)
        self._committed = False
        self.staging: Path | None = None
        if out.exists():
            self._check()  # before anything is made
        self._created: list[Path] = []  # deepest first; filled as they are made (an interrupt in between removes them)
        self.lock = FolderLock(out, owner)
        with self._discard_on_failure("cannot write into"):
            self._make_folder(out)
            self.lock.acquire()
            remove_stale_staging(out)
            self._check()  # again: a run may have ended in between
            self.staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=out))

    @contextlib.contextmanager
    def _discard_on_failure(self, doing: str):
        """On any failure inside, :meth:`discard`; an ``OSError`` becomes one line, ``{owner}: {doing} {folder} (...)``."""
        try:
            yield
        except OSError as exc:
            self.discard()
            raise DeepLungRegError(f"{self.owner}: {doing} {self.outdir} ({exc.strerror or exc})") from exc
        except BaseException:
            self.discard()
            raise

    def _make_folder(self, out: Path) -> list[Path]:
        """Create ``out`` and its missing parents (mode from the umask), each recorded in ``_created`` (deepest first)
        as soon as it is made; returns those made."""
        missing = []
        p = Path(os.path.abspath(out))
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        try:
            for d in reversed(missing):
                self._created.insert(0, d)  # before: an interrupt right after the mkdir still finds it
                os.mkdir(d)
        except OSError as exc:
            for d in missing:
                try:
                    d.rmdir()
                except OSError:
                    pass
            raise DeepLungRegError(f"{self.owner}: cannot create the output folder {out} ({exc.strerror or exc})") from exc
        return missing

    def _check(self) -> list[str]:
        """Refuse what must not be replaced; returns the earlier run's files that may go."""
        records = self._read_record(self.outdir)
        problems, ours = replace_problems(self.outdir, self.names, overwrite=self.overwrite, records=records, inputs=self.inputs,
                                          record_file=self.record_file)
        if problems:
            raise DeepLungRegError(f"{self.owner}: {problems[0]}")
        return ours

    def path(self, name: str) -> Path:
        """Where to write output ``name`` now (inside the staging folder)."""
        if name not in self.names:
            raise DeepLungRegError(f"{self.owner}: {name} is not one of this run's outputs")  # a programming error
        return self.staging / name

    def written(self) -> list[str]:
        return sorted(p.name for p in self.staging.iterdir() if p.is_file())

    def records(self, exclude: Iterable[str] | None = None) -> dict[str, dict]:
        """``{name: {"bytes", "sha256"}}`` of every staged file but ``exclude`` (default: the record file itself)."""
        skip = {self.record_file} if exclude is None else set(exclude)
        return {n: file_record(self.staging / n) for n in self.written() if n not in skip}

    def commit(self) -> list[Path]:
        """Put every staged file in place (``metrics.json`` last) and remove the earlier run's stale files
        (those that still match its record)."""
        new = self.written()
        out = self.outdir
        with self._discard_on_failure("cannot put the outputs into"):
            earlier = self._check()  # nothing foreign crept in while the run went on
            for stale in earlier:
                if stale not in new:
                    (out / stale).unlink()
            placed: list[str] = []
            try:
                for name in sorted(new, key=lambda n: n == self.record_file):
                    move_into(self.staging / name, out / name)
                    placed.append(name)
            except BaseException:  # an interrupt (a cancel's SIGTERM) or an error midway: what was put in place goes back
                for name in placed:
                    try:
                        os.replace(out / name, self.staging / name)
                    except OSError:
                        pass
                raise
        self._committed = True
        shutil.rmtree(self.staging, ignore_errors=True)
        self.lock.release()
        return [out / n for n in new]

    def discard(self) -> None:
        """Remove the staging folder, the lock, and the folders this run created (when empty)."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.release()
        for d in getattr(self, "_created", []):
            try:
                d.rmdir()
            except FileNotFoundError:
                continue  # not made after all
            except OSError:
                break

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not self._committed:
            self.discard()
            if exc is not None and _no_room(exc):
                raise DeepLungRegError(f"{self.owner}: no room to write the outputs into {self.outdir} ({exc.strerror}); "
                                       "nothing was written") from exc
        return False
