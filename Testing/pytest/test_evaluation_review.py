"""The landmark review model and the controller that the Slicer module's Widget and the review page share
(DeepLungRegLib.evaluation.review), in plain Python: no Slicer, no scene."""

from __future__ import annotations

import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError, Geometry
from DeepLungRegLib.evaluation.review import EVENTS, LandmarkReview, ReviewController
from DeepLungRegLib.metrics import tre, tre_summary, tre_vectors


@pytest.fixture
def review() -> LandmarkReview:
    """Five landmarks against a constant field u = (1, 0, 0) mm: the TRE of each is known in closed form."""
    g = Geometry((10, 10, 10), (2.0, 2.0, 2.0), (-5.0, -5.0, -5.0))
    field = np.zeros((10, 10, 10, 3))
    field[..., 0] = 1.0
    fixed = np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0], [4.0, 0.0, 2.0], [0.0, 4.0, 4.0], [2.0, 6.0, 0.0]])
    offsets = np.array([[1.0, 0.0, 0.0], [1.0, 3.0, 0.0], [1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    return LandmarkReview(fixed, fixed + offsets, field, g, [f"P{i}" for i in range(5)])


def test_the_numbers_are_the_metrics_ones(review):
    """TRE, residuals and the summary are metrics.tre / tre_vectors / tre_summary, not a second implementation."""
    expect = np.array([0.0, 3.0, 1.0, 0.0, 4.0])
    assert np.allclose(review.tre(), expect, atol=1e-9)
    assert np.allclose(review.tre(), tre(review.fixed, review.moving, review.field, review.geometry))
    assert np.allclose(review.residual(), tre_vectors(review.fixed, review.moving, review.field, review.geometry))
    assert np.allclose(review.tre_before(), np.linalg.norm(review.fixed - review.moving, axis=1))
    s = review.summary()
    assert {k: s[k] for k in ("n", "mean", "std", "median", "p95", "max")} == pytest.approx(tre_summary(expect).to_dict())
    assert (s["accepted"], s["flagged"], s["unreviewed"], s["corrected"]) == (0, 0, 5, 0)


def test_the_controller_steps_worst_first_or_by_index_and_tells_its_observers(review):
    c = ReviewController(review)
    events = []
    c.observe(events.append)
    assert c.worst() == 4 and events == ["current"]
    # worst first: 4 (4 mm), 1 (3 mm), 2 (1 mm), 0, 3 (0 mm, stable); wrapping both ways
    assert [c.next() for _ in range(5)] == [1, 2, 0, 3, 4]
    assert c.previous() == 3 and c.step(-4) == 4
    assert c.set_order("index") == 0 and c.current == 0  # an order starts at its first landmark
    assert events[-2:] == ["points", "current"] and c.order == "index"
    assert [c.next() for _ in range(3)] == [1, 2, 3] and c.previous() == 2
    assert c.select(3) == 3 and c.current == 3 and events[-1] == "current"
    assert all(e in EVENTS for e in events)
    with pytest.raises(DeepLungRegError, match="order by 'tre' or 'index'"):
        c.set_order("random")
    with pytest.raises(DeepLungRegError, match="outside 0..4"):
        c.select(5)
    assert c.rows()[0]["index"] == 0 and [r["index"] for r in ReviewController(review, "tre").rows()] == [4, 1, 2, 0, 3]


def test_most_uncertain_first_where_the_registration_has_an_uncertainty_map(review):
    """Issue 31: with an uncertainty per landmark the review steps most uncertain first; without one that order is
    refused in one line that says why."""
    with pytest.raises(DeepLungRegError, match="order by 'tre' or 'index', not 'uncertainty' .*no uncertainty map"):
        ReviewController(review).set_order("uncertainty")
    assert review.orders() == ("tre", "index")
    unsure = LandmarkReview(review.fixed, review.moving, review.field, review.geometry, review.labels,
                            uncertainty=[0.5, 2.0, 0.1, 3.0, 1.0])
    assert unsure.orders() == ("tre", "index", "uncertainty")
    c = ReviewController(unsure, "uncertainty")
    assert [r["index"] for r in c.rows()] == [3, 1, 4, 0, 2]
    assert c.set_order("tre") == 4 and c.set_order("uncertainty") == 3  # chosen, an order starts at its first
    assert c.next() == 1 and "2 of 5 most uncertain first" in c.describe() and "uncertainty 2.00 mm" in c.describe()
    with pytest.raises(DeepLungRegError, match="3 uncertainty values for 5 landmarks"):
        LandmarkReview(review.fixed, review.moving, review.field, review.geometry, uncertainty=[1.0, 2.0, 3.0])


def test_marking_records_the_comment_and_goes_on_to_the_next(review):
    c = ReviewController(review)
    events = []
    c.observe(events.append)
    c.worst()
    assert c.mark("flagged", "  misses the   vessel ") == 1
    assert review.status[4] == "flagged" and review.comment[4] == "misses the vessel"
    assert events == ["current", "points", "current"]  # the scene redraws the marks, then centres on the next
    c.mark("accepted")
    assert review.status[1] == "accepted" and review.comment[1] == "" and c.current == 2
    assert "1 accepted, 1 flagged, 3 to review" in c.summary_text()
    assert c.describe().startswith("P2: 3 of 5 worst first, TRE 1.00 mm (before")
    assert c.comment() == ""
    with pytest.raises(DeepLungRegError, match="status must be one of"):
        c.mark("maybe")


def test_a_moved_or_dropped_point_gives_its_new_tre_at_once(review):
    c = ReviewController(review)
    events = []
    c.observe(events.append)
    # move the moving point of landmark 1 to where the field maps its fixed point: TRE 0
    assert c.move("moving", 1, review.fixed[1] + [1.0, 0.0, 0.0]) == pytest.approx(0.0, abs=1e-9)
    assert events == ["points"] and review.corrected().tolist() == [False, True, False, False, False]
    # a drop: the GUI gives all points as it holds them; the last moved becomes current, the views stay
    c.select(0)
    events.clear()
    held = review.moving.copy()
    held[2] = review.fixed[2] + [1.0, 0.0, 0.0]
    held[4] = review.fixed[4] + [1.0, 0.0, 0.0]
    assert c.drop(moving=held) == 4 and c.current == 4 and events == ["points"]
    assert np.allclose(review.tre(), 0.0, atol=1e-9) and review.summary()["corrected"] == 3
    assert c.drop(moving=review.moving.copy()) is None and events == ["points"]  # nothing moved: nothing told
    with pytest.raises(DeepLungRegError, match="3 moving points given, the review has 5"):
        c.drop(moving=held[:3])
    with pytest.raises(DeepLungRegError, match="must be finite"):
        c.move("fixed", 0, [np.nan, 0.0, 0.0])


def test_an_observer_can_be_removed_and_editing_is_a_display_change(review):
    c = ReviewController(review)
    events = []
    c.observe(events.append)
    c.set_editable(True)
    assert c.editable and events == ["points"]
    c.unobserve(events.append)
    c.next()
    assert events == ["points"]


def test_export_and_load_round_trip_through_the_controller(review, tmp_path):
    c = ReviewController(review)
    c.worst()
    c.mark("flagged", "check")
    written = c.export(tmp_path)
    assert len(written) == 5
    again = LandmarkReview.load(tmp_path / "review.csv", review.field, review.geometry)
    assert again.status == review.status and again.labels == review.labels and np.allclose(again.tre(), review.tre())
