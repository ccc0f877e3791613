"""Tests of DeepLungRegLib/ops/filters.py."""

import pytest
import torch

from DeepLungRegLib.ops.filters import box_mean3d


@pytest.mark.parametrize("before,after", [(1, 1), (2, 2), (0, 3), (0, 1), (0, 0)])
def test_box_mean_equals_replicate_padded_average_pool(before, after):
    x = torch.rand(2, 3, 7, 9, 11, dtype=torch.float64, requires_grad=True)
    k = before + after + 1
    ref = torch.nn.functional.avg_pool3d(torch.nn.functional.pad(x, (before, after) * 3, mode="replicate"), k, stride=1)
    out = box_mean3d(x, before, after)
    assert out.shape == x.shape
    assert torch.allclose(out, ref, atol=1e-12)
    w = torch.rand_like(ref)
    g, = torch.autograd.grad((out * w).sum(), x)
    g_ref, = torch.autograd.grad((ref * w).sum(), x)
    assert torch.allclose(g, g_ref, atol=1e-12)
    # a constant stays constant, to the ends
    c = torch.full((1, 1, 4, 5, 6), 2.5)
    assert torch.allclose(box_mean3d(c, before, after), c)


@pytest.mark.parametrize("n,before,after", [(1, 1, 1), (2, 2, 2), (3, 0, 4), (5, 3, 0), (6, 1, 2)])
def test_box_mean_gradient_is_the_filters_adjoint_also_on_axes_shorter_than_the_window(n, before, after):
    from DeepLungRegLib.ops.filters import box_mean_along

    x = torch.rand(2, n, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: box_mean_along(t, 1, before, after), (x,))
    assert torch.autograd.gradcheck(lambda t: box_mean_along(t, -2, before, after), (x,))
    # the autograd Function's forward is the plain filter's
    from DeepLungRegLib.ops.filters import _box_mean

    assert x.requires_grad and torch.equal(box_mean_along(x, 1, before, after).detach(), _box_mean(x.detach(), 1, before, after))
