"""Training loop of the network methods: on-the-fly simulated pairs, validation TRE on held-out
pairs, checkpoints that can be resumed, CSV/JSON logs and a loss-curve picture."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import DeepLungRegError
from ..io.images import Image
from ..networks import NetworkConfig, NetworkPair, build_network, load_checkpoint, load_network_state, network_names, network_spec, predict
from ..transforms.frames import voxel_to_world
from ..transforms.warp import sample_field_at_points
from .data import SimulatedPairPool, from_simulated
from .models import training_loss

CHECKPOINT = "checkpoint.pt"


def validation_tre(model: torch.nn.Module, cfg: NetworkConfig, pairs: list[NetworkPair]) -> dict:
    """Mean TRE (mm) before and after over the landmarks of ``pairs``."""
    before, after = [], []
    model.eval()
    with torch.no_grad():
        for p in pairs:
            u = voxel_to_world(predict(model, cfg, p.fixed, p.moving), p.geometry)
            moved = p.fixed_points + sample_field_at_points(u, p.geometry, p.fixed_points)
            before.append(np.linalg.norm(p.fixed_points - p.moving_points, axis=1))
            after.append(np.linalg.norm(moved - p.moving_points, axis=1))
    model.train()
    b, a = np.concatenate(before), np.concatenate(after)
    return {"tre_before": float(b.mean()), "tre_after": float(a.mean()), "tre_after_p95": float(np.percentile(a, 95))}


def validation_pairs(val_cts: list[tuple[str, Image, Image | None]], cfg: NetworkConfig, reversed_too: bool = False) -> list[NetworkPair]:
    """The held-out validation pairs: a small and a large pair simulated from each CT (fixed seeds,
    150 landmarks), on ``cfg``'s network grid; with ``reversed_too`` each also the other way round
    (the exhale image fixed)."""
    from ..simulation import simulate_breathing

    pairs = []
    for i, (name, ct, mask) in enumerate(val_cts):
        for amp in ("small", "large"):
            sim = simulate_breathing(ct, amplitude=amp, seed=10_000 + i, mask=mask, n_landmarks=150)
            pairs.append(from_simulated(sim, cfg.spacing_mm, cfg.shape, f"{name}_{amp}"))
            if reversed_too:
                pairs.append(from_simulated(sim.reversed(), cfg.spacing_mm, cfg.shape, f"{name}_{amp}_reversed"))
    return pairs


def train_step(model: torch.nn.Module, cfg: NetworkConfig, opt: torch.optim.Optimizer, pair: NetworkPair, level: int = 0,
               step: int = 0) -> dict:
    """One optimiser step on one pair; returns the loss and its logged parts."""
    opt.zero_grad()
    loss, parts = training_loss(model, cfg, pair, level)
    if not torch.isfinite(loss):
        raise DeepLungRegError(f"train: the loss became {float(loss)} at step {step}; lower learning_rate")
    loss.backward()
    opt.step()
    return {"loss": float(loss.detach()), **parts}


def level_schedule(cfg: NetworkConfig, steps: int, level_steps: tuple[int, ...] | None = None, pretrained: bool = False) -> list[int]:
    """The level trained at each step. A multilevel network (``mlvirnet``) trains coarsest first (paper 002):
    ``level_steps[i]`` steps on the i-th level counted from the coarsest, or by default an equal share of
    ``steps`` each. ``pretrained`` (fine-tuning trained weights) allows 0 steps on a level."""
    levels = network_spec(cfg.method).levels(cfg)
    if levels == 1:
        if level_steps is not None:
            multilevel = [n for n in network_names() if network_spec(n).levels(NetworkConfig(method=n)) > 1]
            raise DeepLungRegError(f"train: level_steps applies to {', '.join(multilevel)} only, not {cfg.method}")
        return [0] * steps
    if level_steps is not None:
        low = 0 if pretrained else 1
        if len(level_steps) != levels or any(int(n) < low for n in level_steps):
            kind = "step counts >= 0" if pretrained else "positive step counts (0 only when starting from trained weights)"
            raise DeepLungRegError(f"train: level_steps needs {levels} {kind}, coarsest first; got {list(level_steps)}")
        if sum(level_steps) != steps:
            raise DeepLungRegError(f"train: level_steps {list(level_steps)} add up to {sum(level_steps)} steps, not {steps}")
        return [levels - 1 - i for i, n in enumerate(level_steps) for _ in range(int(n))]
    per = max(1, steps // levels)
    return [max(0, levels - 1 - min(i // per, levels - 1)) for i in range(steps)]


def load_initial_weights(model: torch.nn.Module, cfg: NetworkConfig, path: str | Path) -> dict:
    """Start training from trained weights (a checkpoint or shipped weights of the same method and widths)."""
    ck = load_checkpoint(path)
    if ck["method"] != cfg.method:
        raise DeepLungRegError(f"train: {path} holds weights of {ck['method']!r}, not {cfg.method!r}")
    try:
        load_network_state(model, ck["model"])
    except RuntimeError as exc:
        raise DeepLungRegError(f"train: the weights in {path} do not fit this network (config {ck['config']}); use the same width "
                               f"and levels") from exc
    return ck


def save_checkpoint(path: Path, model, optimizer, cfg: NetworkConfig, step: int, level: int, history: list, data: dict, score: dict | None) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"method": cfg.method, "config": cfg.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "level": level, "history": history, "training_data": data, "validation": score}, tmp)
    tmp.replace(path)


def plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [h["step"] for h in history]
    loss = np.array([h["loss"] for h in history])
    ax[0].plot(steps, loss, lw=0.6, alpha=0.5, label="loss")
    if len(loss) >= 10:
        k = max(5, len(loss) // 20)
        ax[0].plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), lw=1.5, label=f"mean of {k}")
    for lv in sorted({h["level"] for h in history}):
        first = next(h["step"] for h in history if h["level"] == lv)
        ax[0].axvline(first, color="grey", ls=":", lw=0.8)
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("training loss")
    ax[0].legend()
    val = [h for h in history if "tre_after" in h]
    if val:
        ax[1].plot([h["step"] for h in val], [h["tre_after"] for h in val], "o-", label="after")
        ax[1].axhline(val[0]["tre_before"], color="grey", ls="--", label="before")
        ax[1].set_ylabel("validation TRE (mm)")
        ax[1].legend()
    ax[1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_training_logs(outdir: Path, history: list[dict], header: dict) -> None:
    """``log.csv`` (one row per step), ``log.json`` (``header`` and the history) and ``loss.png`` in ``outdir``."""
    first = ["step", "level", "loss"]
    keys = first + sorted({k for h in history for k in h} - set(first))
    with open(outdir / "log.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    (outdir / "log.json").write_text(json.dumps({**header, "history": history}, indent=1))
    plot_losses(history, outdir / "loss.png")


def train(
    cfg: NetworkConfig,
    cts: list[tuple[str, Image, Image | None]],
    outdir: str | Path,
    *,
    steps: int = 1000,
    val_cts: list[tuple[str, Image, Image | None]] | None = None,
    real_pairs: list[NetworkPair] | None = None,
    pool_size: int = 8,
    refresh_every: int = 25,
    validate_every: int = 100,
    seed: int = 0,
    resume: bool = False,
    level_steps: tuple[int, ...] | None = None,
    spatial_augment: bool = False,
    amplitude_range_mm: tuple[float, float] | None = None,
    reverse_fraction: float = 0.0,
    init: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int, dict], None] | None = None,
) -> dict:
    """Train ``cfg.method`` and write ``checkpoint.pt``, ``log.csv``, ``log.json`` and ``loss.png`` in ``outdir``.

    Args:
        cts: training CTs ``[(name, ct in HU, lung mask or None)]``; pairs are simulated from them on the fly.
        val_cts: CTs for the held-out validation pairs (one small and one large pair each).
        real_pairs: real pairs (on their own network grids) mixed into the pool.
        refresh_every: steps between two new simulations in the pool.
        resume: continue from ``outdir/checkpoint.pt`` (its config must match ``cfg``).
        spatial_augment: give every simulated pair a new anatomy (random rotation, scaling and mirroring
            of the CT, :func:`~.data.augment_anatomy`) before its breathing is simulated.
        amplitude_range_mm: draw every simulated pair's mean lung displacement (mm) uniformly from this
            range instead of the small/large presets (validation keeps the presets).
        reverse_fraction: share of the simulated pairs made the other way round (the exhale image fixed);
            when above 0 the validation scores the reversed pairs too.
        init: start from these trained weights (fine-tuning, e.g. the shipped ones on your own CTs);
            ``mlvirnet`` then keeps every level's own weights instead of copying the coarser one's.
        level_steps: ``mlvirnet``: steps per level, coarsest first (adding up to ``steps``); default an equal share.

    Returns:
        The last validation score and where things were written.
    """
    outdir = Path(outdir)
    ck_path = outdir / CHECKPOINT
    if ck_path.exists() and not resume:
        raise DeepLungRegError(f"train: {ck_path} exists; pass --resume to continue it or choose another folder")
    if steps < 1:
        raise DeepLungRegError(f"train: steps must be >= 1, got {steps}")
    outdir.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    torch.manual_seed(seed)
    model = build_network(cfg).to(dev)
    resumed = load_checkpoint(ck_path, dev) if resume else None
    if resumed is not None and init is None:
        init = resumed.get("training_data", {}).get("initial_weights")  # a fine-tuning run stays one
    if init is not None and resumed is None:
        load_initial_weights(model, cfg, init)
    spec = network_spec(cfg.method)
    schedule = level_schedule(cfg, steps, level_steps, pretrained=init is not None)
    start, history, level = 0, [], schedule[0]
    params = spec.trainable(model, level, init is None)
    opt = torch.optim.Adam(params, lr=cfg.learning_rate)
    if resumed is not None:
        ck = resumed
        if NetworkConfig.from_dict(ck["config"]).to_dict() != cfg.to_dict():  # options added since then take their defaults
            raise DeepLungRegError(f"train: {ck_path} was trained with another config ({ck['config']}); resume needs the same one")
        load_network_state(model, ck["model"])
        start, history, level = int(ck["step"]), list(ck["history"]), int(ck["level"])
        params = spec.trainable(model, level, False)
        opt = torch.optim.Adam(params, lr=cfg.learning_rate)
        opt.load_state_dict(ck["optimizer"])
    pool = SimulatedPairPool(cts, cfg.spacing_mm, cfg.shape, pool_size, seed=seed + 1000 * start, spatial_augment=spatial_augment,
                             amplitude_range_mm=amplitude_range_mm, reverse_fraction=reverse_fraction)
    extra = list(real_pairs or [])
    val_pairs = validation_pairs(val_cts or [], cfg, reversed_too=reverse_fraction > 0)
    data = {"training_cts": [n for n, _, _ in cts], "validation_cts": [n for n, _, _ in (val_cts or [])],
            "real_pairs": [p.name for p in extra], "simulated_pairs_made": pool.made, "spatial_augment": spatial_augment,
            "amplitudes": list(pool.amplitude_range_mm) if pool.amplitude_range_mm else list(pool.amplitudes),
            "reverse_fraction": reverse_fraction, "refresh_every": refresh_every, "initial_weights": None if init is None else str(init)}
    if spec.levels(cfg) > 1:
        data["level_steps"] = [schedule.count(lv) for lv in range(spec.levels(cfg) - 1, -1, -1)]
    rng = np.random.default_rng(seed + start)
    score = None
    t0 = time.perf_counter()
    for step in range(start, steps):
        if schedule[step] != level:
            level = schedule[step]
            opt = torch.optim.Adam(spec.trainable(model, level, init is None), lr=cfg.learning_rate)
        if step > start and step % refresh_every == 0:
            pool.refresh()
        pair = extra[int(rng.integers(len(extra)))] if extra and rng.random() < 0.3 else pool.sample()
        pair = pair.to(dev)
        spec.freeze(model, level)
        row = {"step": step + 1, "level": level, **train_step(model, cfg, opt, pair, level, step),
               "seconds": round(time.perf_counter() - t0, 2)}
        if val_pairs and ((step + 1) % validate_every == 0 or step + 1 == steps):
            score = validation_tre(model, cfg, val_pairs)
            row.update(score)
        history.append(row)
        if progress:
            progress(step + 1, steps, row)
        if (step + 1) % validate_every == 0 or step + 1 == steps:
            data["simulated_pairs_made"] = pool.made
            save_checkpoint(ck_path, model, opt, cfg, step + 1, level, history, data, score)
    write_training_logs(outdir, history, {"config": cfg.to_dict(), "training_data": data})
    return {"checkpoint": str(ck_path), "validation": score, "steps": steps, "seconds": round(time.perf_counter() - t0, 1)}


def export_weights(checkpoint: str | Path, dest: str | Path, command: str = "", *, overwrite: bool = False) -> Path:
    """Write the inference part of a checkpoint (method, config, weights, training data, validation
    score, steps, and the command that trained it) to ``dest``: what ``DeepLungRegLib/data/weights`` ships."""
    ck = load_checkpoint(checkpoint)
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise DeepLungRegError(f"export_weights: {dest} exists; pass overwrite=True to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"method": ck["method"], "config": ck["config"], "model": ck["model"], "step": ck["step"],
                "training_data": ck["training_data"], "validation": ck["validation"], "command": command}, dest)
    return dest
