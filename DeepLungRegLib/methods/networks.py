"""The network methods: one registration method per network of :mod:`DeepLungRegLib.networks`.

Each runs its network on a fixed-size grid centred on the fixed lung (both directions by
default), turns the voxel displacement into a world field, and optionally refines it by
instance optimisation (``refine_iterations``, the talk's network + instance optimisation). Weights
come from ``deeplungreg train``; the shipped ones are in ``DeepLungRegLib/data/weights/<name>.pt``.
A new network registers itself in its own file; nothing here names one.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ..errors import DeepLungRegError
from ..io.images import Image
from ..networks import (
    NetworkConfig, build_network, load_checkpoint, load_network_state, network_grid, network_names, network_spec, predict,
    shipped_weights, to_network_pair,
)
from ..transforms.frames import voxel_to_world, world_to_voxel
from ..options import option, redefault
from .base import GridField, MethodConfig, RunContext, register_method
from .common import MindOptions, RegionOptions, region_geometry
from .refine import RefineOptions, Refinement


#: Values of the ``direction`` option.
DIRECTIONS = ("auto", "forward", "reverse")


@dataclass(frozen=True)
class NetworkMethodConfig(RefineOptions, MindOptions, RegionOptions, MethodConfig):
    """Options of the network methods; the optional instance optimisation of the prediction
    (the talk's network + instance optimisation) is :class:`~.refine.RefineOptions`, off by default.

    Attributes:
        refine_iterations: Adam iterations of instance optimisation on the predicted field, per level
            (0: the network alone; ``-O refine_iterations=30`` adds 30 on one level).
        regularisation: diffusion weight of the instance optimisation (on the update).
    """

    weights: str = option("", help="a checkpoint from ``deeplungreg train`` (default: the shipped weights).")
    direction: str = option(
        "auto", choices=DIRECTIONS,
        help="``forward`` runs the network on (fixed, moving) as given. The networks learn which image is the inhale "
             "(the simulator's fixed image), so on a pair the other way round they get much worse. ``reverse`` runs them "
             "on (moving, fixed) and inverts the predicted field. ``auto`` (default) runs both and keeps the one whose "
             "warped moving image is closer to the fixed image (normalised gradient field distance on the network grid: "
             "edges and vessels, not intensities, which the lung's density change and its homogeneous parenchyma make a weak guide).")
    refine_iterations: tuple[int, ...] = redefault(RefineOptions, "refine_iterations", (0,))
    mask_dilation_mm: float = redefault(RegionOptions, "mask_dilation_mm", 4.0)

    def reverse_config(self) -> "NetworkMethodConfig":
        """The pair the other way round: a chosen direction turns with it (``forward`` runs the network on the
        reverse pair as the forward run ran it on the pair, i.e. becomes ``reverse``), ``auto`` stays."""
        turned = {"forward": "reverse", "reverse": "forward"}.get(self.direction, self.direction)
        return dataclasses.replace(super().reverse_config(), direction=turned)

    #: the names of version 1, read only from what it saved (configs, metrics.json), with a DeprecationWarning
    ALIASES: ClassVar[dict] = {"finetune": "refine_iterations", "finetune_level_mm": "refine_levels_mm",
                               "finetune_learning_rate": "refine_learning_rates", "smoothing_passes": "refine_smoothing_passes"}

    def validate(self) -> None:
        super().validate()
        if self.weights and not Path(self.weights).is_file():
            raise DeepLungRegError(f"{type(self).__name__}: weights file {self.weights} does not exist")


def weights_path(method: str, config: NetworkMethodConfig) -> Path:
    return Path(config.weights) if config.weights else shipped_weights(method)


def directed_prediction(model: torch.nn.Module, ncfg, fixed: torch.Tensor, moving: torch.Tensor, grid, direction: str = "auto",
                        autocast_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, dict]:
    """The network's displacement for (fixed, moving) in the chosen ``direction`` (see
    :class:`NetworkMethodConfig`).

    Args:
        fixed, moving: ``(1, 1, Z, Y, X)`` network inputs on ``grid``.
        autocast_dtype: ``torch.float16`` or ``torch.bfloat16`` to run the network (only the network:
            the inversion and the choice stay in float32) under :func:`torch.autocast` on the inputs' device.

    Returns:
        ``(displacement, info)``: ``(1, 3, Z, Y, X)`` network voxels ``(z, y, x)`` in the resampling direction
        of (fixed, moving), and the direction used with the NGF distance of each candidate's warped moving
        image to the fixed image (and the largest residual of the inversion, mm, when the reversed run
        was made).
    """
    from ..losses import ngf
    from ..networks.mlvirnet import warp_voxels
    from ..transforms.fields import invert_field

    def run(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch.autocast(a.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            return predict(model, ncfg, a, b).float()

    candidates, info = {}, {}
    with torch.no_grad():
        if direction in ("auto", "forward"):
            candidates["forward"] = run(fixed, moving)
        if direction in ("auto", "reverse"):
            back = voxel_to_world(run(moving, fixed), grid)  # x_fixed = y + w(y) on the grid
            inverse, info["inverse_residual_mm"] = invert_field(back, grid, device=fixed.device)
            candidates["reverse"] = world_to_voxel(inverse, grid).to(fixed.device)
        # NGF, not the mean squared difference: on 24 network-level cases (three networks, four lung1 pairs
        # each both ways, with and without the simulator's old air slab) NGF picked the better candidate
        # every time, the mean squared difference failed twice (docs/networks.md)
        dist = {k: float(ngf(fixed, warp_voxels(moving, d), eps=ncfg.ngf_eps)) for k, d in candidates.items()}
    chosen = min(dist, key=lambda k: (dist[k], k != "forward"))
    return candidates[chosen], {"direction": chosen, "ngf_distance": {k: round(v, 6) for k, v in dist.items()}, **info}


def run_network(method: str, fixed: Image, moving: Image, fixed_mask, moving_mask, config: NetworkMethodConfig, ctx: RunContext):
    """Predict with the method's network, bring the field to the fixed grid, optionally fine-tune it."""

    dev = ctx.device
    # float16/bfloat16: the network runs under autocast; the field and its refinement stay in float32
    amp = ctx.dtype if ctx.dtype in (torch.float16, torch.bfloat16) else None
    if amp is not None:
        ctx = dataclasses.replace(ctx, dtype=torch.float32)  # the same timings dict
    dt = ctx.dtype
    path = weights_path(method, config)
    with ctx.stage("load_weights"):
        ck = load_checkpoint(path, "cpu")
        if ck["method"] != method:
            raise DeepLungRegError(f"{method}: {path} holds weights of {ck['method']!r}")
        ncfg = NetworkConfig.from_dict(ck["config"])
        model = build_network(ncfg)
        load_network_state(model, ck["model"])
        model.to(dev).eval()
    with ctx.stage("network_input"):
        grid = network_grid(fixed, fixed_mask, ncfg.spacing_mm, ncfg.shape)
        pair = to_network_pair(fixed, moving, grid)
    ctx.check_cancel()
    ctx.progress(f"{method} network", 0.1)
    with ctx.stage("network"), torch.no_grad():
        t0 = time.perf_counter()
        disp, direction = directed_prediction(model, ncfg, pair.fixed.to(dev), pair.moving.to(dev), grid, config.direction, amp)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t_net = time.perf_counter() - t0
        current = torch.as_tensor(voxel_to_world(disp, grid), device=dev, dtype=dt)[None]
    diag = {"weights": str(path), "network_autocast": str(amp).replace("torch.", "") if amp else None,
            "network_grid": grid.to_dict(), "network_seconds": round(t_net, 3), **direction,
            "trained_steps": int(ck.get("step", 0)), "training_data": ck.get("training_data"), "validation": ck.get("validation")}
    current_geom = grid
    refinement = Refinement.of(config, residual=True, label="refine")
    if refinement.enabled:
        fr = region_geometry(fixed, fixed_mask, config.margin_mm)
        mr = region_geometry(moving, moving_mask, config.margin_mm)
        current, current_geom, losses = refinement.run(fixed, moving, fixed_mask, fr, mr, current, grid, ctx, (0.3, 1.0))
        diag["levels"] = losses
    return GridField(current.detach().float(), current_geom), diag


def _register_network_methods() -> None:
    """One registration method per registered network, each with its own config class."""
    for name in network_names():
        spec = network_spec(name)
        config_cls = type(f"{name.capitalize()}Config", (NetworkMethodConfig,),
                          {"__doc__": f"Options of ``{name}`` (see :class:`NetworkMethodConfig`).", "__module__": __name__})

        def run(fixed, moving, fixed_mask, moving_mask, config, ctx, _name=name):
            return run_network(_name, fixed, moving, fixed_mask, moving_mask, config, ctx)

        register_method(name, spec.description, config_cls)(run)


_register_network_methods()
