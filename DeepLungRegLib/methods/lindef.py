"""Method ``lindef``: the trained network of paper 001 (Christodoulidis et al.).

The network (:mod:`DeepLungRegLib.networks`) runs on a fixed-size grid centred on the
fixed lung; its voxel displacement becomes a world field on the fixed grid, which
``finetune`` iterations of Adam instance optimisation can refine (the talk's
instance optimisation of a predicted field). Weights come from
``deeplungreg train --method lindef``; the shipped ones are in ``Resources/Weights/lindef.pt``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._network import NetworkMethodConfig, run_network
from .base import register_method


@dataclass(frozen=True)
class LinDefConfig(NetworkMethodConfig):
    """Options of ``lindef`` (see :class:`~DeepLungRegLib.methods._network.NetworkMethodConfig`)."""


@register_method("lindef", "Coupled affine + deformable CNN with non-folding spatial-gradient integration (paper 001)", LinDefConfig)
def run_lindef(fixed, moving, fixed_mask, moving_mask, config: LinDefConfig, ctx):
    return run_network("lindef", fixed, moving, fixed_mask, moving_mask, config, ctx)
