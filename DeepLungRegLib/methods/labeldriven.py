"""Method ``labeldriven``: the trained network of paper 004 (Hering, Kuckertz et al.).

The network (:mod:`DeepLungRegLib.networks`) runs on a fixed-size grid centred on the
fixed lung; its voxel displacement becomes a world field on the fixed grid, which
``finetune`` iterations of Adam instance optimisation can refine (the talk's
instance optimisation of a predicted field). Weights come from
``deeplungreg train --method labeldriven``; the shipped ones are in ``Resources/Weights/labeldriven.pt``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._network import NetworkMethodConfig, run_network
from .base import register_method


@dataclass(frozen=True)
class LabelDrivenConfig(NetworkMethodConfig):
    """Options of ``labeldriven`` (see :class:`~DeepLungRegLib.methods._network.NetworkMethodConfig`)."""


@register_method("labeldriven", "Label-driven U-Net with B-spline outputs, trained with NGF + curvature + lung labels (paper 004)", LabelDrivenConfig)
def run_labeldriven(fixed, moving, fixed_mask, moving_mask, config: LabelDrivenConfig, ctx):
    return run_network("labeldriven", fixed, moving, fixed_mask, moving_mask, config, ctx)
