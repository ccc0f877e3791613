"""Adam for the instance optimisations, without ``torch.optim.Optimizer``'s first-use cost.

Building the first ``torch.optim.Optimizer`` in a process imports ``torch._dynamo`` (2-3 s on a CPU), which every
registration in a fresh process paid: each CLI run, each benchmark worker, the first run in Slicer. The update
is torch's own functional Adam (:func:`torch.optim.adam.adam`, the one ``torch.optim.Adam.step`` calls), which does
not import it; this class only keeps its state.
"""

from __future__ import annotations

import torch
from torch.optim.adam import adam as _adam_update


def _step_dtype() -> torch.dtype:
    """The dtype of the step counters, as ``torch.optim.Adam`` makes them (float64 only under a float64 default)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class Adam:
    """Adam over groups of tensors, each group with its own step size (the defaults of ``torch.optim.Adam``:
    betas 0.9 and 0.999, eps 1e-8, no weight decay).

    Args:
        groups: ``[(tensors, lr), ...]``; every tensor must require gradients.

    ``zero_grad()`` then ``loss.backward()`` then ``step()``, as with ``torch.optim.Adam``, with the same updates.
    """

    def __init__(self, groups: list[tuple[list[torch.Tensor], float]], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.groups = [(list(params), float(lr)) for params, lr in groups]
        self.betas, self.eps = betas, eps
        self._state = [([torch.zeros_like(p, memory_format=torch.preserve_format) for p in params],
                        [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params],
                        [torch.tensor(0.0, dtype=_step_dtype(), device="cpu") for _ in params]) for params, _ in self.groups]

    def zero_grad(self) -> None:
        for params, _ in self.groups:
            for p in params:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for (params, lr), (exp_avgs, exp_avg_sqs, steps) in zip(self.groups, self._state):
            with_grad = [i for i, p in enumerate(params) if p.grad is not None]
            if not with_grad:
                continue
            _adam_update([params[i] for i in with_grad], [params[i].grad for i in with_grad],
                         [exp_avgs[i] for i in with_grad], [exp_avg_sqs[i] for i in with_grad], [],
                         [steps[i] for i in with_grad], foreach=None, amsgrad=False, beta1=self.betas[0],
                         beta2=self.betas[1], lr=lr, weight_decay=0.0, eps=self.eps, maximize=False)
