"""Method ``mlvirnet``: the trained network of paper 002 (mlVIRNET, Hering et al.).

The network (:mod:`DeepLungRegLib.networks`) runs on a fixed-size grid centred on the
fixed lung; its voxel displacement becomes a world field on the fixed grid, which
``finetune`` iterations of Adam instance optimisation can refine (the talk's
instance optimisation of a predicted field). Weights come from
``deeplungreg train --method mlvirnet``; the shipped ones are in ``Resources/Weights/mlvirnet.pt``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._network import NetworkMethodConfig, run_network
from .base import register_method


@dataclass(frozen=True)
class MLVIRNetConfig(NetworkMethodConfig):
    """Options of ``mlvirnet`` (see :class:`~DeepLungRegLib.methods._network.NetworkMethodConfig`)."""


@register_method("mlvirnet", "Multilevel U-Nets composed coarse to fine, trained level by level with NGF + curvature + mask (paper 002)", MLVIRNetConfig)
def run_mlvirnet(fixed, moving, fixed_mask, moving_mask, config: MLVIRNetConfig, ctx):
    return run_network("mlvirnet", fixed, moving, fixed_mask, moving_mask, config, ctx)
