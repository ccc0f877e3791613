"""What the three network methods share: their options, finding and loading the weights,
running the network on its grid, and the optional instance optimisation (``finetune``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DeepLungRegError
from ..io.images import Image
from .adam import instance_optimise
from .base import GridField, MethodConfig, RunContext, check_range
from .common import region_geometry

#: Shipped weights: ``Resources/Weights/<method>.pt`` beside the library (the source tree or the Slicer install).
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Weights"


#: Values of the ``direction`` option.
DIRECTIONS = ("auto", "forward", "reverse")


@dataclass(frozen=True)
class NetworkMethodConfig(MethodConfig):
    """Options of the network methods.

    Attributes:
        weights: a checkpoint from ``deeplungreg train`` (default: the shipped weights).
        direction: ``forward`` runs the network on (fixed, moving) as given. The networks learn which image
            is the inhale (the simulator's fixed image), so on a pair the other way round they get much worse.
            ``reverse`` runs them on (moving, fixed) and inverts the predicted field. ``auto`` (default) runs
            both and keeps the one whose warped moving image is closer to the fixed image (normalised
            gradient field distance on the network grid: edges and vessels, not intensities, which the
            lung's density change and its homogeneous parenchyma make a weak guide).
        finetune: Adam iterations of instance optimisation on the predicted field (0: the network alone).
        finetune_level_mm: grid spacing of that optimisation.
        finetune_learning_rate: its Adam step (mm).
        regularisation: its diffusion weight (on the update).
        folding_weight: its penalty on J below 0.1.
        smoothing_passes: box passes of its grid.
        mind_radius, mind_dilation: MIND-SSC patch radius and neighbour distance (voxels) of its features.
        mask_dilation_mm: dilation of the fixed lung that weights its similarity.
        margin_mm: margin of its working region around the masks.
    """

    weights: str = ""
    direction: str = "auto"
    finetune: int = 0
    finetune_level_mm: float = 2.5
    finetune_learning_rate: float = 0.25
    regularisation: float = 1.0
    folding_weight: float = 10.0
    smoothing_passes: int = 2
    mind_radius: int = 1
    mind_dilation: int = 2
    mask_dilation_mm: float = 4.0
    margin_mm: float = 20.0

    def validate(self) -> None:
        c = type(self).__name__
        if self.direction not in DIRECTIONS:
            raise DeepLungRegError(f"{c}: direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
        check_range(c, "finetune", self.finetune, 0, 5000)
        check_range(c, "finetune_level_mm", self.finetune_level_mm, 0.5, 32.0)
        check_range(c, "finetune_learning_rate", self.finetune_learning_rate, 1e-4, 20.0)
        check_range(c, "regularisation", self.regularisation, 0.0, 1e4)
        check_range(c, "folding_weight", self.folding_weight, 0.0, 1e6)
        check_range(c, "smoothing_passes", self.smoothing_passes, 0, 10)
        check_range(c, "mind_radius", self.mind_radius, 0, 4)
        check_range(c, "mind_dilation", self.mind_dilation, 1, 6)
        check_range(c, "mask_dilation_mm", self.mask_dilation_mm, 0.0, 100.0)
        check_range(c, "margin_mm", self.margin_mm, 0.0, 200.0)
        if self.weights and not Path(self.weights).is_file():
            raise DeepLungRegError(f"{c}: weights file {self.weights} does not exist")


def weights_path(method: str, config: NetworkMethodConfig) -> Path:
    if config.weights:
        return Path(config.weights)
    path = WEIGHTS_DIR / f"{method}.pt"
    if not path.is_file():
        raise DeepLungRegError(
            f"{method}: no trained weights at {path}; train them with 'deeplungreg train --method {method} --ct CT... -o RUNDIR' "
            f"and pass -O weights=RUNDIR/checkpoint.pt")
    return path


def directed_prediction(model: torch.nn.Module, ncfg, fixed: torch.Tensor, moving: torch.Tensor, grid, direction: str = "auto") -> tuple[torch.Tensor, dict]:
    """The network's displacement for (fixed, moving) in the chosen ``direction`` (see
    :class:`NetworkMethodConfig`).

    Args:
        fixed, moving: ``(1, 1, Z, Y, X)`` network inputs on ``grid``.

    Returns:
        ``(displacement, info)``: ``(1, 3, Z, Y, X)`` network voxels ``(z, y, x)`` in the resampling direction
        of (fixed, moving), and the direction used with the NGF distance of each candidate's warped moving
        image to the fixed image (and the largest residual of the inversion, mm, when the reversed run
        was made).
    """
    from ..losses import ngf
    from ..networks.mlvirnet import warp_voxels
    from ..training import predict, voxel_to_world, world_to_voxel
    from ..transforms.fields import invert_field

    candidates, info = {}, {}
    with torch.no_grad():
        if direction in ("auto", "forward"):
            candidates["forward"] = predict(model, ncfg, fixed, moving)
        if direction in ("auto", "reverse"):
            back = voxel_to_world(predict(model, ncfg, moving, fixed), grid)  # x_fixed = y + w(y) on the grid
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
    from ..training import NetworkConfig, build_network, load_checkpoint, load_network_state, network_grid, to_network_pair, voxel_to_world

    dev, dt = ctx.device, ctx.dtype
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
        disp, direction = directed_prediction(model, ncfg, pair.fixed.to(dev), pair.moving.to(dev), grid, config.direction)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t_net = time.perf_counter() - t0
        current = torch.as_tensor(voxel_to_world(disp, grid), device=dev, dtype=dt)[None]
    diag = {"weights": str(path), "network_grid": grid.to_dict(), "network_seconds": round(t_net, 3), **direction,
            "trained_steps": int(ck.get("step", 0)), "training_data": ck.get("training_data"), "validation": ck.get("validation")}
    current_geom = grid
    if config.finetune > 0:
        fr = region_geometry(fixed, fixed_mask, config.margin_mm)
        mr = region_geometry(moving, moving_mask, config.margin_mm)
        current, current_geom, losses = instance_optimise(
            fixed, moving, fixed_mask, fr, mr, current, grid, (config.finetune_level_mm,), (config.finetune,),
            (config.finetune_learning_rate,), config, ctx, (0.3, 1.0), label="finetune", residual=True, folding_weight=config.folding_weight)
        diag["finetune_levels"] = losses
    return GridField(current.detach().to("cpu", torch.float32), current_geom), diag
