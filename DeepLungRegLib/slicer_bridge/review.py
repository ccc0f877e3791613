"""A clinician's landmark review of a registration: step through the landmarks, accept or flag each
with a comment, correct a point and see its TRE at once, export the reviewed landmarks and a review
table, and open a saved review again.

The review itself is plain numpy (:class:`LandmarkReview`); the Slicer glue is small: centre the slice
views on a landmark (:meth:`LandmarkReview.centre`), and read corrections that the user made by
dragging control points of the markups nodes (:meth:`LandmarkReview.sync_from_markups`).

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

import numpy as np

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..io.landmarks import write_landmarks
from ..geometry.grid import lps_to_ras
from ..transforms.warp import sample_field_at_points

#: Landmarks with a TRE above this are drawn red, the others green.
TRE_WARNING_MM = 3.0
#: How many of the worst landmarks carry their label in the slice views (with the current one); the
#: others are unlabelled points, so that labels do not pile on each other.
LABELLED_WORST = 5

#: Review states of a landmark.
STATUSES = ("unreviewed", "accepted", "flagged")
#: The files :meth:`LandmarkReview.export` writes (never one of the registration's own).
REVIEW_FILES = ("review.csv", "reviewed_fixed_landmarks.csv", "reviewed_moving_landmarks.csv",
                "reviewed_fixed_landmarks.mrk.json", "reviewed_moving_landmarks.mrk.json")
_COLUMNS = ("index", "label", "fixed_x", "fixed_y", "fixed_z", "moving_x", "moving_y", "moving_z", "tre_before_mm",
            "tre_after_mm", "status", "comment", "corrected")


@dataclass
class LandmarkReview:
    """The review of ``N`` landmark pairs against a displacement field.

    Attributes:
        fixed, moving: ``(N, 3)`` LPS mm (corrections change them; the originals are kept).
        field, geometry: ``(Z, Y, X, 3)`` mm on the fixed grid.
        labels: a name per landmark.
        status, comment: per landmark.
        current: the landmark shown now.
    """

    fixed: np.ndarray
    moving: np.ndarray
    field: np.ndarray
    geometry: Geometry
    labels: list[str] = _field(default_factory=list)
    status: list[str] = _field(default_factory=list)
    comment: list[str] = _field(default_factory=list)
    current: int = 0
    markups: object = _field(default=None, repr=False)

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

    # ------------------------------------------------------------------ numbers
    def tre_before(self) -> np.ndarray:
        return np.linalg.norm(self.fixed - self.moving, axis=1)

    def residual(self) -> np.ndarray:
        """``(N, 3)`` LPS mm: where the registration maps each fixed point, minus its moving point."""
        return self.fixed + sample_field_at_points(self.field, self.geometry, self.fixed) - self.moving

    def tre(self) -> np.ndarray:
        """``(N,)`` TRE after registration, mm, of the points as they are now."""
        return np.linalg.norm(self.residual(), axis=1)

    def summary(self) -> dict:
        t = self.tre()
        return {"n": int(len(t)), "mean": float(t.mean()), "p95": float(np.percentile(t, 95)), "max": float(t.max()),
                "accepted": self.status.count("accepted"), "flagged": self.status.count("flagged"),
                "unreviewed": self.status.count("unreviewed"), "corrected": int(self.corrected().sum())}

    def corrected(self) -> np.ndarray:
        return np.any(self.fixed != self.original_fixed, axis=1) | np.any(self.moving != self.original_moving, axis=1)

    def describe(self, index: int | None = None, by: str = "tre") -> str:
        """One line on a landmark (default: the current one) for the panel."""
        i = self.current if index is None else index
        rank = self.order(by).index(i) + 1
        text = (f"{self.labels[i]}: {rank} of {len(self.fixed)} {'worst first' if by == 'tre' else 'by index'}, "
                f"TRE {self.tre()[i]:.2f} mm (before {self.tre_before()[i]:.2f}), {self.status[i]}")
        text += ", corrected" if self.corrected()[i] else ""
        return text + (f": {self.comment[i]}" if self.comment[i] else "")

    def summary_text(self) -> str:
        s = self.summary()
        return (f"{s['n']} landmarks: TRE mean {s['mean']:.2f} mm, p95 {s['p95']:.2f}, max {s['max']:.2f}; "
                f"{s['accepted']} accepted, {s['flagged']} flagged, {s['unreviewed']} to review, {s['corrected']} corrected")

    # ------------------------------------------------------------------ stepping
    def order(self, by: str = "tre") -> list[int]:
        """Landmark indices, worst TRE first (``"tre"``) or in file order (``"index"``)."""
        if by == "index":
            return list(range(len(self.fixed)))
        if by == "tre":
            return [int(i) for i in np.argsort(-self.tre(), kind="stable")]
        raise DeepLungRegError(f"review: order by 'tre' or 'index', not {by!r}")

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
        {"fixed": self.fixed, "moving": self.moving}[which][self.goto(index)] = p
        return float(self.tre()[index])

    # ------------------------------------------------------------------ Slicer
    def centre(self, scene, index: int | None = None) -> np.ndarray:
        """Centre every slice view on the fixed point of ``index`` (default: the current one); returns it (LPS)."""
        from .grid import jump_to_point

        i = self.current if index is None else self.goto(index)
        jump_to_point(scene, self.fixed[i])
        if self.markups is not None:
            self.label(self.markups)
        return self.fixed[i]

    def sync_from_markups(self, fixed_node=None, moving_node=None) -> list[int]:
        """Take the points the user dragged in the markups nodes (the fixed points, and the moving points
        as stored in their node, without the node's transform); returns the landmarks that changed."""
        from .nodes import landmarks_from_markups

        changed = set()
        for node, points in ((fixed_node, self.fixed), (moving_node, self.moving)):
            if node is None:
                continue
            new = landmarks_from_markups(node, world=False)
            if new.shape != points.shape:
                raise DeepLungRegError(f"review: {node.GetName()!r} has {len(new)} points, the review {len(points)}")
            moved = np.flatnonzero(np.linalg.norm(new - points, axis=1) > 1e-6)
            points[moved] = new[moved]
            changed.update(int(i) for i in moved)
        return sorted(changed)

    @classmethod
    def from_nodes(cls, transform_node, fixed_markups, warped_markups) -> "LandmarkReview":
        """The review of a registration in the scene: the field of its transform node, the user's fixed
        landmarks (world positions) and the moving landmarks the registration placed under the transform
        (read in their own, the moving image's, coordinates); labels from the fixed landmarks."""
        from .nodes import field_from_grid_transform_node, landmarks_from_markups, markups_labels

        field, geometry = field_from_grid_transform_node(transform_node)
        review = cls(landmarks_from_markups(fixed_markups), landmarks_from_markups(warped_markups, world=False), field,
                     geometry, markups_labels(fixed_markups))
        review.markups = warped_markups  # its labels follow the current landmark (:meth:`centre`)
        return review

    def columns(self) -> dict[str, list]:
        """The TRE table: landmark, TRE before and after, the remaining error vector (RAS, as Slicer
        shows coordinates), status and comment."""
        err_lps = self.residual()
        err_ras = lps_to_ras(err_lps)
        return {"Landmark": list(self.labels), "TRE before (mm)": np.round(self.tre_before(), 3),
                "TRE after (mm)": np.round(np.linalg.norm(err_lps, axis=1), 3), "Error R (mm)": np.round(err_ras[:, 0], 3),
                "Error A (mm)": np.round(err_ras[:, 1], 3), "Error S (mm)": np.round(err_ras[:, 2], 3),
                "Status": list(self.status), "Comment": list(self.comment)}

    def show(self, scene, warped_markups, table_node=None, *, editable: bool = False):
        """Write the review into the scene: the moving points of ``warped_markups`` (under the transform),
        the current and the worst labelled ``name: TRE mm`` (:meth:`label`), green up to :data:`TRE_WARNING_MM`, red above, locked unless
        ``editable`` (so the user can drag them to correct them); and the TRE table. Returns the table node."""
        from .nodes import markups_from_landmarks, table_node_from_columns

        t = self.tre()
        markups_from_landmarks(scene, self.moving, "", node=warped_markups)
        self.markups = warped_markups
        self.label(warped_markups, t)
        if warped_markups.GetDisplayNode() is None:
            warped_markups.CreateDefaultDisplayNodes()
        for i, a in enumerate(t):  # "selected" points are drawn green, the others red
            warped_markups.SetNthControlPointSelected(i, bool(a <= TRE_WARNING_MM))
            warped_markups.SetNthControlPointLocked(i, not editable)
        display = warped_markups.GetDisplayNode()
        display.SetSelectedColor(0.1, 0.8, 0.2)
        display.SetColor(0.9, 0.1, 0.1)
        return table_node_from_columns(scene, self.columns(), "", node=table_node)

    def labelled(self, tre: np.ndarray | None = None) -> list[int]:
        """The landmarks whose label the views show: the current one and the :data:`LABELLED_WORST` worst."""
        worst = [int(i) for i in np.argsort(-(self.tre() if tre is None else tre), kind="stable")[:LABELLED_WORST]]
        return sorted({self.current, *worst})

    def label(self, warped_markups, tre: np.ndarray | None = None) -> None:
        """Label the points of :meth:`labelled` ``name: TRE mm``; the others keep that text as their
        description only (an unlabelled point in the views)."""
        t = self.tre() if tre is None else tre
        shown = set(self.labelled(t))
        was = warped_markups.StartModify()  # one Modified event for all points, not two per point
        try:
            for i, (name, a) in enumerate(zip(self.labels, t)):
                text = f"{name}: {a:.1f} mm"
                warped_markups.SetNthControlPointDescription(i, text)
                warped_markups.SetNthControlPointLabel(i, text if i in shown else "")
        finally:
            warped_markups.EndModify(was)

    def take_drop(self, warped_markups) -> int | None:
        """After the user dropped a warped landmark (dragged in a slice view): take the moved points and make
        the last one current; returns it, or ``None`` when no point moved."""
        changed = self.sync_from_markups(moving_node=warped_markups)
        return self.goto(changed[-1]) if changed else None

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
