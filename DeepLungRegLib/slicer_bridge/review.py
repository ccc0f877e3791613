"""The landmark review in the MRML scene: the Slicer side of
:class:`~DeepLungRegLib.evaluation.review.LandmarkReview` and
:class:`~DeepLungRegLib.evaluation.review.ReviewController` (which hold the review itself).

* :func:`show_review`: the warped landmarks labelled ``name: TRE mm`` and coloured by their error, and the
  TRE table;
* :func:`centre_on`: the slice views centred on a landmark;
* :func:`points_from_markups`: the points as the user dragged them in the markups nodes;
* :class:`ReviewScene`: keeps the scene in step with a controller (and feeds drags back to it), for the
  Slicer module's Widget and the ``deeplungreg review`` page alike.
"""

from __future__ import annotations

import numpy as np

from ..evaluation.review import LABELLED_WORST, REVIEW_FILES, STATUSES, LandmarkReview, ReviewController
from ..geometry.grid import lps_to_ras
from .grid import jump_to_point
from .nodes import landmarks_from_markups, markups_from_landmarks, table_node_from_columns

__all__ = ["LABELLED_WORST", "REVIEW_FILES", "STATUSES", "TRE_WARNING_MM", "LandmarkReview", "ReviewController", "ReviewScene",
           "centre_on", "label_points", "points_from_markups", "review_columns", "show_review"]

#: Landmarks with a TRE above this are drawn red, the others green.
TRE_WARNING_MM = 3.0


def review_columns(review: LandmarkReview) -> dict[str, list]:
    """The TRE table: landmark, TRE before and after, the remaining error vector (RAS, as Slicer shows
    coordinates), status and comment."""
    err_lps = review.residual()
    err_ras = lps_to_ras(err_lps)
    return {"Landmark": list(review.labels), "TRE before (mm)": np.round(review.tre_before(), 3),
            "TRE after (mm)": np.round(np.linalg.norm(err_lps, axis=1), 3), "Error R (mm)": np.round(err_ras[:, 0], 3),
            "Error A (mm)": np.round(err_ras[:, 1], 3), "Error S (mm)": np.round(err_ras[:, 2], 3),
            "Status": list(review.status), "Comment": list(review.comment)}


def label_points(review: LandmarkReview, warped_markups, tre: np.ndarray | None = None) -> None:
    """Label the points of :meth:`~LandmarkReview.labelled` ``name: TRE mm``; the others keep that text as their
    description only (an unlabelled point in the views)."""
    t = review.tre() if tre is None else tre
    shown = set(review.labelled(t))
    was = warped_markups.StartModify()  # one Modified event for all points, not two per point
    try:
        for i, (name, a) in enumerate(zip(review.labels, t)):
            text = f"{name}: {a:.1f} mm"
            warped_markups.SetNthControlPointDescription(i, text)
            warped_markups.SetNthControlPointLabel(i, text if i in shown else "")
    finally:
        warped_markups.EndModify(was)


def show_review(scene, review: LandmarkReview, warped_markups, table_node=None, *, editable: bool = False):
    """Write the review into the scene: the moving points of ``warped_markups`` (under the transform),
    the current and the worst labelled ``name: TRE mm`` (:func:`label_points`), green up to :data:`TRE_WARNING_MM`,
    red above, locked unless ``editable`` (so the user can drag them to correct them); and the TRE table.
    Returns the table node."""
    t = review.tre()
    markups_from_landmarks(scene, review.moving, "", node=warped_markups)
    label_points(review, warped_markups, t)
    if warped_markups.GetDisplayNode() is None:
        warped_markups.CreateDefaultDisplayNodes()
    for i, a in enumerate(t):  # "selected" points are drawn green, the others red
        warped_markups.SetNthControlPointSelected(i, bool(a <= TRE_WARNING_MM))
        warped_markups.SetNthControlPointLocked(i, not editable)
    display = warped_markups.GetDisplayNode()
    display.SetSelectedColor(0.1, 0.8, 0.2)
    display.SetColor(0.9, 0.1, 0.1)
    return table_node_from_columns(scene, review_columns(review), "", node=table_node)


def centre_on(scene, review: LandmarkReview, index: int | None = None) -> np.ndarray:
    """Centre every slice view on the fixed point of ``index`` (default: the current one, else it becomes
    the current one); returns it (LPS)."""
    i = review.current if index is None else review.goto(index)
    jump_to_point(scene, review.fixed[i])
    return review.fixed[i]


def points_from_markups(review: LandmarkReview, fixed_node=None, moving_node=None) -> dict:
    """The points as the user left them in the markups nodes, for :meth:`ReviewController.drop`: the fixed
    points (world) and the moving points as stored in their node, without the node's transform (the warped
    landmarks live under the registration's transform, in the moving image's coordinates)."""
    found = {}
    for which, node in (("fixed", fixed_node), ("moving", moving_node)):
        if node is not None:
            found[which] = landmarks_from_markups(node, world=False)
    return found


class ReviewScene:
    """Keeps the scene in step with a :class:`ReviewController`: centres the views on the current landmark
    (labels follow it), redraws the warped points and the TRE table when points or marks change (unlocked
    while the controller is :attr:`~ReviewController.editable`), and gives the controller the points the user
    dropped after dragging a warped landmark. The Widget and the review page each make one.

    Args:
        scene: the MRML scene.
        controller: the review's controller.
        warped_markups: the moving landmarks under the registration's transform (``NodeRegistration.landmarks``).
        table_node: the TRE table node, or ``None``.
    """

    def __init__(self, scene, controller: ReviewController, warped_markups, table_node=None) -> None:
        self.scene, self.controller, self.markups, self.table = scene, controller, warped_markups, table_node
        controller.observe(self._on_change)
        self._tag = warped_markups.AddObserver(warped_markups.PointEndInteractionEvent, self._on_drop)
        self.show()

    def show(self) -> None:
        """Redraw the points and the table."""
        self.table = show_review(self.scene, self.controller.review, self.markups, self.table,
                                 editable=self.controller.editable)

    def centre(self) -> np.ndarray:
        """Centre the views on the current landmark and label it; returns its fixed point (LPS)."""
        point = centre_on(self.scene, self.controller.review)
        label_points(self.controller.review, self.markups)
        return point

    def _on_change(self, event: str) -> None:
        if event == "current":
            self.centre()
        else:
            self.show()

    def _on_drop(self, caller=None, event=None) -> None:
        self.controller.drop(**points_from_markups(self.controller.review, moving_node=self.markups))

    def close(self) -> None:
        """Stop following the controller and the markups node."""
        self.controller.unobserve(self._on_change)
        if self._tag is not None:
            self.markups.RemoveObserver(self._tag)
            self._tag = None
