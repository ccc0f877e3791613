"""Time per iteration of the instance optimisation's pieces, each as it is computed now and in its plain form.

The refinement (``DeepLungRegLib/methods/refine.py``) spends each Adam iteration on a few operations over the
whole field and the lung's voxels. This prints, for a field of the size of the elastix crop's refinement grid
(62x85x123 at 2.5 mm) and 250 000 sampled lung voxels, the milliseconds of each operation with its gradient:
the plain autograd form (what the code did before) beside the form the code uses, and the largest difference
of their values and gradients (they compute the same thing). It also times ``import torch._dynamo``, which the
first ``torch.optim`` optimiser of a process pays and :class:`DeepLungRegLib.ops.optim.Adam` does not.

    python scripts/bench_refine_ops.py [--size Z Y X] [--points M] [--repeat N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from DeepLungRegLib.losses import diffusion, folding_penalty, folding_penalty_where_low, jacobian_determinant_torch  # noqa: E402
from DeepLungRegLib.losses.regularisers import _diffusion  # noqa: E402
from DeepLungRegLib.ops.filters import _box_mean  # noqa: E402
from DeepLungRegLib.methods.common import smooth3  # noqa: E402


def _ms(fn, repeat: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat * 1000.0


def _grad(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x.grad = None
    out = fn(x)
    out.backward(torch.ones_like(out) if out.ndim else None)
    return out.detach(), x.grad.detach().clone()


def _diff(a, b) -> float:
    """The largest difference of the values and of the gradients, each relative to the plain form's largest magnitude."""
    return max(float((x - y).abs().max() / x.abs().max().clamp_min(1e-30)) for x, y in zip(a, b))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, nargs=3, default=(62, 85, 123), metavar=("Z", "Y", "X"))
    ap.add_argument("--points", type=int, default=250_000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    z, y, x = a.size
    n = a.repeat
    rows = []

    disp = torch.randn(1, 3, z, y, x, requires_grad=True)

    def smooth_plain(t):
        for _ in range(2):
            for d in (2, 3, 4):
                t = _box_mean(t, d, 1, 1)
        return t

    rows.append(("3x3x3 box smoothing, 2 passes (field)", lambda f: smooth_plain(f), lambda f: smooth3(f, 2), disp))

    field = (0.3 * torch.randn(1, z, y, x, 3)).requires_grad_(True)
    sp = (2.5, 2.5, 2.5)
    rows.append(("diffusion regulariser", lambda f: _diffusion(f, sp)[0], lambda f: diffusion(f, sp), field))

    w = torch.eye(3) * 2.5
    folded = field.detach().clone()
    folded[0, 5:8, 5:8, 5:9, 0] -= torch.linspace(0.0, 9.0, 4)  # one small region near folding
    folded.requires_grad_(True)

    def folding_now(f):  # as the refinement does once its guard is on: J without gradients, the penalty where J < 0.1
        with torch.no_grad():
            jac = jacobian_determinant_torch(f, w)
        penalty = folding_penalty_where_low(f, w, jac)
        return penalty if penalty is not None else 0.0 * f.sum()

    rows.append(("folding penalty (J < 0.1 in one small region)", lambda f: folding_penalty(f, w), folding_now, folded))

    feat = torch.randn(1, 12, z, y, x)
    feat_cl = feat.contiguous(memory_format=torch.channels_last_3d)
    idx = torch.randperm(z * y * x)[:a.points].sort().values
    axes = torch.meshgrid(torch.linspace(-1, 1, z), torch.linspace(-1, 1, y), torch.linspace(-1, 1, x), indexing="ij")
    pts = torch.stack(axes[::-1], -1).reshape(-1, 3)[idx]
    grid = (pts + 0.01 * torch.randn_like(pts)).reshape(1, 1, 1, -1, 3).requires_grad_(True)
    rows.append((f"grid_sample of 12 feature channels at {a.points} points",
                 lambda g: F.grid_sample(feat, g, align_corners=True).pow(2).mean(),
                 lambda g: F.grid_sample(feat_cl, g, align_corners=True).pow(2).mean(), grid))

    print(f"field {z}x{y}x{x} (Z, Y, X), {torch.get_num_threads()} threads, mean of {n} runs, forward and backward\n")
    print("| operation | plain autograd (ms) | now (ms) | ratio | largest relative difference (values, gradients) |")
    print("|---|---|---|---|---|")
    for name, plain, now, t in rows:
        diff = _diff(_grad(plain, t), _grad(now, t))
        tp = _ms(lambda: _grad(plain, t), n)
        tn = _ms(lambda: _grad(now, t), n)
        print(f"| {name} | {tp:.0f} | {tn:.0f} | {tn / tp:.2f} | {diff:.1e} |")

    code = "import time, torch; t = time.perf_counter(); import torch._dynamo; print(time.perf_counter() - t)"
    s = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    print(f"\n`import torch._dynamo` in a fresh process (the first torch.optim optimiser's cost): {s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
