"""Tests of DeepLungRegLib/ops/optim.py: the instance optimisations' Adam."""

import subprocess
import sys

import pytest
import torch

from DeepLungRegLib.ops.optim import Adam


def test_adam_makes_torch_optims_updates_with_a_step_size_per_group():
    torch.manual_seed(0)
    a, b = torch.randn(50, 3, requires_grad=True), torch.randn(3, 3, requires_grad=True)
    a2, b2 = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    ours, theirs = Adam([([a], 0.3), ([b], 0.003)]), torch.optim.Adam([{"params": [a2], "lr": 0.3}, {"params": [b2], "lr": 0.003}])
    for opt, x, y in ((ours, a, b), (theirs, a2, b2)):
        for _ in range(15):
            opt.zero_grad()
            (x @ y).sin().sum().backward()
            opt.step()
    assert torch.equal(a, a2) and torch.equal(b, b2)
    # zero_grad lets the gradients go, as torch's does; a tensor without a gradient is not moved
    ours.zero_grad()
    assert a.grad is None and b.grad is None
    before = a.detach().clone()
    (b.sum()).backward()
    ours.step()
    assert torch.equal(a, before) and not torch.equal(b, b2)


@pytest.mark.slow
def test_a_registration_does_not_import_torch_dynamo():
    """torch.optim's optimisers import torch._dynamo when the first is made (2-3 s on a CPU, in every fresh process)."""
    code = (
        "import sys, numpy as np\n"
        "from DeepLungRegLib import Image, Geometry\n"
        "from DeepLungRegLib.methods.base import register\n"
        "a = np.random.default_rng(0).normal(-700, 150, (24, 24, 24)).astype(np.float32)\n"
        "g = Geometry((24, 24, 24), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0))\n"
        "for method, cfg in (('affine', {'iterations': [3, 3]}), ('convex', {'refine_iterations': [3]})):\n"
        "    register(Image(a, g), Image(np.roll(a, 1, 0), g), method, config=cfg, device='cpu')\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False"
