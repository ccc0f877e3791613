import numpy as np
import pytest

from DeepLungRegLib import DeepLungRegError, Geometry
from DeepLungRegLib.metrics import dice, inverse_consistency_error, jacobian_determinant, jacobian_stats, tre, tre_summary
from DeepLungRegLib.transforms import affine_to_field, invert_field


def test_known_translation_gives_known_tre(oblique):
    p = oblique.index_to_world(np.random.default_rng(0).uniform(2, 12, (20, 3)))
    q = p + [3.0, 4.0, 0.0]
    assert np.allclose(tre(p, q), 5.0)
    field = np.broadcast_to(np.array([3.0, 4.0, 0.0], np.float32), (*oblique.shape, 3))
    assert np.allclose(tre(p, q, field, oblique), 0.0, atol=1e-5)
    half = field * 0.5
    assert np.allclose(tre(p, q, half, oblique), 2.5, atol=1e-5)


def test_tre_summary_values():
    s = tre_summary(np.arange(1, 101, dtype=float))
    assert s.n == 100 and s.mean == pytest.approx(50.5) and s.median == pytest.approx(50.5)
    assert s.max == 100 and s.p95 == pytest.approx(np.percentile(np.arange(1, 101), 95))


def test_tre_rejects_mismatch():
    with pytest.raises(DeepLungRegError, match="fixed landmarks has 3 points but moving landmarks has 4; landmarks must correspond one to one"):
        tre(np.zeros((3, 3)), np.zeros((4, 3)))


@pytest.mark.parametrize("matrix", [
    [[1.1, 0.2, 0.0], [0.05, 0.9, 0.1], [0.0, 0.1, 1.2]],
    [[0.8, 0.0, 0.0], [0.0, 0.8, 0.0], [0.0, 0.0, 0.8]],
    [[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
])
def test_jacobian_of_affine_field_is_its_determinant(oblique, matrix):
    m = np.eye(4)
    m[:3, :3] = matrix
    m[:3, 3] = [5.0, -3.0, 2.0]
    jac = jacobian_determinant(affine_to_field(m, oblique), oblique)
    assert np.allclose(jac, np.linalg.det(np.array(matrix)), atol=1e-4)


def test_folding_is_detected():
    g = Geometry((20, 20, 20), (1.0, 1.0, 1.0))
    field = np.zeros((*g.shape, 3), np.float32)
    x = np.arange(20, dtype=np.float32)
    field[..., 0] = -1.5 * x[None, None, :]  # dx'/dx = -0.5 -> J < 0 everywhere
    stats = jacobian_stats(jacobian_determinant(field, g))
    assert stats["folding_percent"] == pytest.approx(100.0)
    ident = jacobian_stats(jacobian_determinant(np.zeros_like(field), g))
    assert ident["folding_percent"] == 0.0 and ident["sd_log_j"] == pytest.approx(0.0)


def test_dice():
    a = np.zeros((4, 4, 4), np.uint8)
    b = np.zeros_like(a)
    a[:2] = 1
    b[1:3] = 1
    a[3, 0, 0] = 2
    d = dice(a, b)
    assert d[1] == pytest.approx(0.5) and d[2] == pytest.approx(0.0)


def test_inverse_consistency_of_exact_pair(oblique):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(5)
    u = np.stack([gaussian_filter(rng.standard_normal(oblique.shape), 4) for _ in range(3)], -1).astype(np.float32) * 8
    v, _ = invert_field(u, oblique, iterations=100)
    ice = inverse_consistency_error(u, oblique, v, oblique, mask=np.pad(np.ones(np.subtract(oblique.shape, 6), bool), 3))
    assert ice["mean"] < 0.02
    bad = inverse_consistency_error(u, oblique, np.zeros_like(v), oblique)
    assert bad["mean"] > 0.1
