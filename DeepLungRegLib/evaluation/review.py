"""A clinician's landmark review of a registration, as plain data: step through the landmarks, accept or
flag each with a comment, correct a point and see its TRE at once, export the reviewed landmarks and a
review table, and open a saved review again.

* :class:`LandmarkReview`: the landmarks, their marks and corrections; its numbers are
  :func:`~DeepLungRegLib.metrics.tre_vectors`, :func:`~DeepLungRegLib.metrics.tre` and
  :func:`~DeepLungRegLib.metrics.tre_summary` against the registration's field.
* :class:`ReviewController`: what a review GUI does (select, step, mark and go on, take moved points), with
  observers told of each change. The Slicer module's Widget and the ``deeplungreg review`` page are thin
  adapters on it; the scene side (views centred, points labelled and coloured, the TRE table) is
  :class:`DeepLungRegLib.slicer_bridge.review.ReviewScene`, shared by both.

TRE of landmark ``i`` after registration: ``|p_i + u(p_i) - q_i|`` with ``p_i`` the fixed and ``q_i``
the moving point (mm, LPS) and ``u`` the displacement field (resampling direction).
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..io.landmarks import write_landmarks
from ..metrics.tre import tre, tre_summary, tre_vectors

#: How many of the worst landmarks carry their label in the views (with the current one); the others are
#: unlabelled points, so that labels do not pile on each other.
LABELLED_WORST = 5

#: Review states of a landmark.
STATUSES = ("unreviewed", "accepted", "flagged")
#: The files :meth:`LandmarkReview.export` writes (never one of the registration's own).
REVIEW_FILES = ("review.csv", "reviewed_fixed_landmarks.csv", "reviewed_moving_landmarks.csv",
                "reviewed_fixed_landmarks.mrk.json", "reviewed_moving_landmarks.mrk.json")
_COLUMNS = ("index", "label", "fixed_x", "fixed_y", "fixed_z", "moving_x", "moving_y", "moving_z", "tre_before_mm",
            "tre_after_mm", "status", "comment", "corrected")
#: The orders a review steps in: worst TRE first, as the landmarks are listed, or most uncertain first (where the
#: registration has an uncertainty map).
ORDERS = ("tre", "index", "uncertainty")
#: How each order is named in the panels.
ORDER_NAMES = {"tre": "worst first", "index": "by index", "uncertainty": "most uncertain first"}


@dataclass
class LandmarkReview:
    """The review of ``N`` landmark pairs against a displacement field.

    Attributes:
        fixed, moving: ``(N, 3)`` LPS mm (corrections change them; the originals are kept).
        field, geometry: ``(Z, Y, X, 3)`` mm on the fixed grid (the registration's own array, not a copy).
        labels: a name per landmark.
        status, comment: per landmark.
        current: the landmark shown now.
        uncertainty: ``(N,)`` the registration's uncertainty (mm) at each fixed landmark, or ``None`` (the method
            gave no uncertainty map): with it the review can step most uncertain first.
    """

    fixed: np.ndarray
    moving: np.ndarray
    field: np.ndarray
    geometry: Geometry
    labels: list[str] = _field(default_factory=list)
    status: list[str] = _field(default_factory=list)
    comment: list[str] = _field(default_factory=list)
    current: int = 0
    uncertainty: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.fixed = np.array(self.fixed, dtype=float).reshape(-1, 3)
        self.moving = np.array(self.moving, dtype=float).reshape(-1, 3)
        n = len(self.fixed)
        if n == 0 or self.moving.shape != self.fixed.shape:
            raise DeepLungRegError(f"review: {n} fixed but {len(self.moving)} moving landmarks")
        self.labels = list(self.labels) or [f"P-{i + 1}" for i in range(n)]
        self.status = list(self.status) or ["unreviewed"] * n
        self.comment = list(self.comment) or [""] * n
        if not len(self.labels) == len(self.status) == len(self.comment) == n:
            raise DeepLungRegError("review: one label, status and comment per landmark")
        self.original_fixed, self.original_moving = self.fixed.copy(), self.moving.copy()
        if self.uncertainty is not None:
            self.uncertainty = np.asarray(self.uncertainty, dtype=float).ravel()
            if self.uncertainty.shape != (n,):
                raise DeepLungRegError(f"review: {len(self.uncertainty)} uncertainty values for {n} landmarks")

    def orders(self) -> tuple[str, ...]:
        """The orders this review can step in (``"uncertainty"`` only with an uncertainty per landmark)."""
        return ORDERS if self.uncertainty is not None else tuple(o for o in ORDERS if o != "uncertainty")

    # ------------------------------------------------------------------ numbers
    def tre_before(self) -> np.ndarray:
        """``(N,)`` TRE before registration, mm (:func:`~DeepLungRegLib.metrics.tre` without a field)."""
        return tre(self.fixed, self.moving)

    def residual(self) -> np.ndarray:
        """``(N, 3)`` LPS mm: where the registration maps each fixed point, minus its moving point."""
        return tre_vectors(self.fixed, self.moving, self.field, self.geometry)

    def tre(self) -> np.ndarray:
        """``(N,)`` TRE after registration, mm, of the points as they are now."""
        return tre(self.fixed, self.moving, self.field, self.geometry)

    def summary(self) -> dict:
        """:func:`~DeepLungRegLib.metrics.tre_summary` of the TRE now (n, mean, std, median, p95, max) and the
        count of each status and of corrected landmarks."""
        s = tre_summary(self.tre()).to_dict()
        s.update({status: self.status.count(status) for status in STATUSES if status != "unreviewed"})
        s.update(unreviewed=self.status.count("unreviewed"), corrected=int(self.corrected().sum()))
        return s

    def corrected(self) -> np.ndarray:
        return np.any(self.fixed != self.original_fixed, axis=1) | np.any(self.moving != self.original_moving, axis=1)

    def describe(self, index: int | None = None, by: str = "tre") -> str:
        """One line on a landmark (default: the current one) for the panel."""
        i = self.current if index is None else index
        rank = self.order(by).index(i) + 1
        text = (f"{self.labels[i]}: {rank} of {len(self.fixed)} {ORDER_NAMES[by]}, "
                f"TRE {self.tre()[i]:.2f} mm (before {self.tre_before()[i]:.2f}), {self.status[i]}")
        if self.uncertainty is not None:
            text += f", uncertainty {self.uncertainty[i]:.2f} mm"
        text += ", corrected" if self.corrected()[i] else ""
        return text + (f": {self.comment[i]}" if self.comment[i] else "")

    def summary_text(self) -> str:
        s = self.summary()
        return (f"{s['n']} landmarks: TRE mean {s['mean']:.2f} mm, p95 {s['p95']:.2f}, max {s['max']:.2f}; "
                f"{s['accepted']} accepted, {s['flagged']} flagged, {s['unreviewed']} to review, {s['corrected']} corrected")

    def labelled(self, tre_now: np.ndarray | None = None) -> list[int]:
        """The landmarks whose label the views show: the current one and the :data:`LABELLED_WORST` worst."""
        worst = [int(i) for i in np.argsort(-(self.tre() if tre_now is None else tre_now), kind="stable")[:LABELLED_WORST]]
        return sorted({self.current, *worst})

    # ------------------------------------------------------------------ stepping
    def order(self, by: str = "tre") -> list[int]:
        """Landmark indices, worst TRE first (``"tre"``), in file order (``"index"``) or most uncertain first
        (``"uncertainty"``)."""
        if by == "index":
            return list(range(len(self.fixed)))
        if by == "tre":
            return [int(i) for i in np.argsort(-self.tre(), kind="stable")]
        if by == "uncertainty" and self.uncertainty is not None:
            return [int(i) for i in np.argsort(-self.uncertainty, kind="stable")]
        known = [repr(o) for o in self.orders()]
        raise DeepLungRegError(f"review: order by {', '.join(known[:-1])} or {known[-1]}, not {by!r}"
                               + (" (this registration has no uncertainty map)" if by == "uncertainty" else ""))

    def step(self, offset: int = 1, by: str = "tre") -> int:
        """Move ``offset`` landmarks on (negative: back) in the chosen order, wrapping around; returns the index."""
        order = self.order(by)
        self.current = order[(order.index(self.current) + offset) % len(order)]
        return self.current

    def next(self, by: str = "tre") -> int:
        return self.step(1, by)

    def previous(self, by: str = "tre") -> int:
        return self.step(-1, by)

    def goto(self, index: int) -> int:
        if not 0 <= index < len(self.fixed):
            raise DeepLungRegError(f"review: landmark {index} is outside 0..{len(self.fixed) - 1}")
        self.current = int(index)
        return self.current

    # ------------------------------------------------------------------ decisions and corrections
    def mark(self, status: str, comment: str | None = None, index: int | None = None) -> None:
        if status not in STATUSES:
            raise DeepLungRegError(f"review: status must be one of {', '.join(STATUSES)}, got {status!r}")
        i = self.current if index is None else self.goto(index)
        self.status[i] = status
        if comment is not None:
            self.comment[i] = " ".join(str(comment).split())

    def accept(self, comment: str | None = None, index: int | None = None) -> None:
        self.mark("accepted", comment, index)

    def flag(self, comment: str | None = None, index: int | None = None) -> None:
        self.mark("flagged", comment, index)

    def move_point(self, which: str, index: int, position_lps) -> float:
        """Correct the fixed or moving point ``index``; returns its new TRE."""
        p = np.asarray(position_lps, dtype=float).reshape(3)
        if not np.all(np.isfinite(p)):
            raise DeepLungRegError("review: a corrected point must be finite")
        if which not in ("fixed", "moving"):
            raise DeepLungRegError(f"review: a point is 'fixed' or 'moving', not {which!r}")
        {"fixed": self.fixed, "moving": self.moving}[which][self.goto(index)] = p
        return float(self.tre()[index])

    def take_points(self, fixed=None, moving=None) -> list[int]:
        """Take the positions of all points as a GUI holds them now (``(N, 3)`` LPS mm each, ``None``: unchanged),
        e.g. after the user dragged one; returns the landmarks that moved (by more than 1 um)."""
        changed = set()
        for which, new, points in (("fixed", fixed, self.fixed), ("moving", moving, self.moving)):
            if new is None:
                continue
            new = np.asarray(new, dtype=float)
            if new.shape != points.shape:
                raise DeepLungRegError(f"review: {len(new)} {which} points given, the review has {len(points)}")
            moved = np.flatnonzero(np.linalg.norm(new - points, axis=1) > 1e-6)
            if not np.all(np.isfinite(new[moved])):
                raise DeepLungRegError("review: a corrected point must be finite")
            points[moved] = new[moved]
            changed.update(int(i) for i in moved)
        return sorted(changed)

    def rows(self, by: str = "tre") -> list[dict]:
        """The review table as a GUI lists it, in the order ``by``: index, label, TRE before and after (mm,
        two decimals), status and comment."""
        after, before = self.tre(), self.tre_before()
        return [{"index": i, "label": self.labels[i], "before": f"{before[i]:.2f}", "after": f"{after[i]:.2f}",
                 "status": self.status[i], "comment": self.comment[i]} for i in self.order(by)]

    # ------------------------------------------------------------------ files
    def export(self, folder: str | Path, *, overwrite: bool = False) -> list[Path]:
        """Write the reviewed landmarks (CSV and ``.mrk.json``) and the review table into ``folder``;
        refuses to replace an earlier review unless ``overwrite``, and never writes a registration output.

        Never through a symbolic link: a review file's name that is a link (even one that points nowhere)
        or anything but a regular file is refused. Each file is written as a new temporary file in
        ``folder`` and renamed over its name once all five are written, so a failure (a read-only
        folder, a full disk) is one line and leaves the folder as it was."""
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DeepLungRegError(f"review: cannot make the folder {folder} ({exc.strerror or exc})") from exc
        existing = []
        for name in REVIEW_FILES:
            try:
                mode = os.lstat(folder / name).st_mode
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise DeepLungRegError(f"review: cannot look at {folder / name} ({exc.strerror or exc})") from exc
            if stat.S_ISLNK(mode):
                raise DeepLungRegError(f"review: {folder / name} is a symbolic link; a review is never written through a "
                                       "link (remove it or choose another folder)")
            if not stat.S_ISREG(mode):
                raise DeepLungRegError(f"review: {folder / name} is not a file; remove it or choose another folder")
            existing.append(name)
        if existing and not overwrite:
            raise DeepLungRegError(f"review: {folder} already holds {', '.join(existing)}; choose another folder or overwrite")
        return _replace_files(folder, self._export_contents())

    def _export_contents(self) -> dict[str, bytes]:
        """The five files of :meth:`export`, by name (the landmark files as :func:`write_landmarks` writes them,
        made in a private temporary folder)."""
        tb, ta, corrected = self.tre_before(), self.tre(), self.corrected()
        table = io.StringIO(newline="")
        w = csv.writer(table)
        w.writerow(_COLUMNS)
        for i in range(len(self.fixed)):
            w.writerow([i, self.labels[i], *np.round(self.fixed[i], 4), *np.round(self.moving[i], 4), round(float(tb[i]), 4),
                        round(float(ta[i]), 4), self.status[i], self.comment[i], int(corrected[i])])
        contents = {"review.csv": table.getvalue().encode("utf-8")}
        with tempfile.TemporaryDirectory(prefix="deeplungreg-review-") as private:
            for which, points in (("fixed", self.fixed), ("moving", self.moving)):
                for ext in ("csv", "mrk.json"):
                    name = f"reviewed_{which}_landmarks.{ext}"
                    contents[name] = write_landmarks(points, Path(private) / name, labels=self.labels).read_bytes()
        return contents

    @classmethod
    def load(cls, review_csv: str | Path, field: np.ndarray, geometry: Geometry) -> "LandmarkReview":
        """Open a saved review again (points, labels, statuses and comments from its ``review.csv``)."""
        path = Path(review_csv)
        if not path.is_file():
            raise DeepLungRegError(f"review: {path} does not exist")
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        missing = [c for c in _COLUMNS if rows and c not in rows[0]]
        if not rows or missing:
            raise DeepLungRegError(f"review: {path} is not a review table" + (f" (no {', '.join(missing)})" if missing else ""))
        try:
            fixed = np.array([[float(r[f"fixed_{a}"]) for a in "xyz"] for r in rows])
            moving = np.array([[float(r[f"moving_{a}"]) for a in "xyz"] for r in rows])
        except ValueError as exc:
            raise DeepLungRegError(f"review: {path} holds a point that is not a number ({exc})") from exc
        return cls(fixed, moving, field, geometry, [r["label"] for r in rows], [r["status"] for r in rows],
                   [r["comment"] for r in rows])


def _replace_files(folder: Path, contents: dict[str, bytes]) -> list[Path]:
    """Write each of ``contents`` as a new temporary file in ``folder`` (created exclusively, so never
    through a link; mode from the umask), then rename all of them over their names (``os.replace``
    replaces a name, it never follows it). Any failure removes the temporary files and is one line."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    staged: dict[str, Path] = {}
    try:
        for name, data in contents.items():
            tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
            fd = os.open(tmp, flags, 0o666)
            staged[name] = tmp
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        written = []
        for name, tmp in list(staged.items()):
            os.replace(tmp, folder / name)
            del staged[name]
            written.append(folder / name)
        return written
    except OSError as exc:
        raise DeepLungRegError(f"review: cannot write the review into {folder} ({exc.strerror or exc})") from exc
    finally:
        for tmp in staged.values():
            try:
                os.unlink(tmp)
            except OSError:
                pass


#: What a :class:`ReviewController` tells its observers: ``"current"`` (another landmark is the current one:
#: centre the views on it) or ``"points"`` (points, marks or the display changed: redraw them and the table).
EVENTS = ("current", "points")


class ReviewController:
    """What a review GUI does, once: select a landmark, step through them (worst first or by index), mark the
    current one and go on to the next, take points the user moved. Every change calls the observers with one
    of :data:`EVENTS`; a GUI is an adapter that calls these methods from its buttons and redraws on the events.

    >>> c = ReviewController(review)
    >>> c.observe(lambda event: print(event, c.describe()))
    >>> c.worst(); c.mark("flagged", "misses the vessel")   # flags it and goes on to the next

    Attributes:
        review: the :class:`LandmarkReview`.
        order: ``"tre"`` (worst first), ``"index"`` or ``"uncertainty"`` (most uncertain first, where the review has
            an uncertainty per landmark).
        editable: whether the GUI lets the user drag the warped points to correct them.
    """

    def __init__(self, review: LandmarkReview, order: str = "tre") -> None:
        self.review = review
        self._order = "tre"
        self.order = order
        self.editable = False
        self._observers: list[Callable[[str], None]] = []

    # ------------------------------------------------------------------ observers
    def observe(self, observer: Callable[[str], None]) -> Callable[[str], None]:
        """Call ``observer(event)`` after every change (in the order observers were added); returns it."""
        self._observers.append(observer)
        return observer

    def unobserve(self, observer: Callable[[str], None]) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def _tell(self, event: str) -> None:
        for observer in list(self._observers):
            observer(event)

    # ------------------------------------------------------------------ showing
    @property
    def order(self) -> str:
        return self._order

    @order.setter
    def order(self, by: str) -> None:
        self.review.order(by)  # refused, in one line, where this review cannot step that way
        self._order = by

    @property
    def current(self) -> int:
        return self.review.current

    def select(self, index: int) -> int:
        """Make landmark ``index`` the current one (the GUIs centre their views on it); returns it."""
        self.review.goto(int(index))
        self._tell("current")
        return self.review.current

    def worst(self) -> int:
        """Select the landmark with the largest TRE."""
        return self.select(self.review.order("tre")[0])

    def step(self, offset: int = 1) -> int:
        """Select the landmark ``offset`` places on in :attr:`order` (negative: back), wrapping around."""
        self.review.step(int(offset), self._order)
        self._tell("current")
        return self.review.current

    def next(self) -> int:
        return self.step(1)

    def previous(self) -> int:
        return self.step(-1)

    def set_order(self, by: str) -> int:
        """Step worst first (``"tre"``), by index or most uncertain first from now on, starting at that order's first
        landmark (which is selected and returned)."""
        self.order = by
        self._tell("points")
        return self.select(self.review.order(by)[0])

    def set_editable(self, editable: bool) -> None:
        """Let the user drag the warped points (or lock them again)."""
        self.editable = bool(editable)
        self._tell("points")

    # ------------------------------------------------------------------ deciding and correcting
    def mark(self, status: str, comment: str | None = None) -> int:
        """Mark the current landmark (``"accepted"``, ``"flagged"`` or ``"unreviewed"``) with ``comment``, then
        go on to the next one; returns the new current landmark."""
        self.review.mark(status, comment)
        self._tell("points")
        return self.next()

    def move(self, which: str, index: int, position_lps) -> float:
        """Correct the fixed or moving point ``index`` (LPS mm); returns its new TRE."""
        value = self.review.move_point(which, int(index), position_lps)
        self._tell("points")
        return value

    def drop(self, fixed=None, moving=None) -> int | None:
        """After the user dropped a point (dragged in a view): take all points as the GUI holds them now
        (:meth:`LandmarkReview.take_points`) and make the last moved one the current one (the views stay
        where they are); returns it, or ``None`` when no point moved."""
        changed = self.review.take_points(fixed=fixed, moving=moving)
        if not changed:
            return None
        self.review.goto(changed[-1])
        self._tell("points")
        return self.review.current

    # ------------------------------------------------------------------ what the panel shows
    def describe(self) -> str:
        return self.review.describe(by=self._order)

    def summary_text(self) -> str:
        return self.review.summary_text()

    def comment(self) -> str:
        """The current landmark's comment."""
        return self.review.comment[self.review.current]

    def rows(self) -> list[dict]:
        return self.review.rows(self._order)

    def export(self, folder: str | Path, *, overwrite: bool = False) -> list[Path]:
        return self.review.export(folder, overwrite=overwrite)
