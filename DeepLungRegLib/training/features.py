"""Training of paper 000's feature network (``deeplungreg train-features``).

It learns to map an intensity-augmented, noisy CT crop to the MIND-SSC of the
clean crop, so that its descriptors are MIND-like but less sensitive to noise
and contrast changes. Training data: CTs resampled to the feature spacing,
random crops; validation: the same on held-out CTs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DeepLungRegError
from ..features.intensity import normalise_ct
from ..features.mind import mind_ssc
from ..io.images import Image
from ..io.weights import load_torch_file
from ..networks.mindnet import MindNet
from .train import write_training_logs


def _crop(vol: torch.Tensor, size: int, rng: np.random.Generator) -> tuple[slice, slice, slice]:
    return tuple(slice(s, s + size) for s in (int(rng.integers(0, max(1, n - size + 1))) for n in vol.shape[-3:]))


def _augment(t: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    t = t.clamp(0, 1) ** float(rng.uniform(0.8, 1.25))
    t = t * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.05, 0.05))
    return t + float(rng.uniform(0.0, 0.03)) * torch.randn_like(t)


def _prepare(cts: list[tuple[str, Image]], spacing_mm: float, crop: int, mind_radius: int, mind_dilation: int):
    from ..transforms.resample import resample_to_spacing

    out = []
    for name, ct in cts:
        a = normalise_ct(resample_to_spacing(ct, spacing_mm, fill=-1024.0).array)
        if min(a.shape) < crop:
            raise DeepLungRegError(f"train_feature_net: {name} is {a.shape} voxels at {spacing_mm} mm, smaller than the {crop}^3 crop")
        t = torch.as_tensor(a)[None, None]
        out.append((name, t, mind_ssc(t, mind_radius, mind_dilation)))
    return out


def train_feature_net(cts: list[tuple[str, Image]], outdir: str | Path, *, steps: int = 3000, val_cts: list[tuple[str, Image]] | None = None,
                      spacing_mm: float = 2.0, crop: int = 48, batch: int = 2, base: int = 8, learning_rate: float = 3e-3,
                      mind_radius: int = 1, mind_dilation: int = 2, validate_every: int = 100, seed: int = 0,
                      resume: bool = False, progress: Callable[[int, int, dict], None] | None = None) -> dict:
    """Train :class:`MindNet` to predict the MIND-SSC of clean CT crops from augmented ones.

    Args:
        cts, val_cts: ``[(name, CT in HU)]`` for training and validation.
        outdir: gets ``checkpoint.pt`` (resumable), ``log.csv``, ``log.json`` and ``loss.png``.
        spacing_mm: grid of the crops (``embed``'s ``feature_spacing_mm``).
        crop, batch: crops of ``crop^3`` voxels, ``batch`` per step.
        mind_radius, mind_dilation: the MIND-SSC it learns (``embed``'s defaults).

    Returns:
        ``{"checkpoint", "validation_mse", "mind_noise_mse", "steps", "seconds"}``; ``mind_noise_mse``
        is the error of MIND-SSC computed on the augmented validation crops, the baseline
        the network should beat.
    """
    if steps < 1 or crop < 16 or batch < 1:
        raise DeepLungRegError(f"train_feature_net: need steps >= 1, crop >= 16 and batch >= 1, got {steps}, {crop}, {batch}")
    if not cts:
        raise DeepLungRegError("train_feature_net: give at least one training CT")
    outdir = Path(outdir)
    ck_path = outdir / "checkpoint.pt"
    if ck_path.exists() and not resume:
        raise DeepLungRegError(f"train_feature_net: {ck_path} exists; pass --resume to continue it or choose another folder")
    outdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = {"base": base, "channels": 12}
    net = MindNet(**config)
    opt = torch.optim.Adam(net.parameters(), lr=learning_rate)
    start, history = 0, []
    meta = {"spacing_mm": spacing_mm, "crop": crop, "batch": batch, "mind_radius": mind_radius, "mind_dilation": mind_dilation,
            "training_cts": [n for n, _ in cts], "validation_cts": [n for n, _ in (val_cts or [])], "learning_rate": learning_rate}
    if resume:
        if not ck_path.is_file():
            raise DeepLungRegError(f"train_feature_net: --resume needs {ck_path}, which does not exist")
        ck = load_torch_file(ck_path, "cpu", owner="train_feature_net")
        if ck.get("config") != config or ck.get("meta", {}).get("crop") != crop:
            raise DeepLungRegError(f"train_feature_net: {ck_path} was trained with other settings; resume needs the same ones")
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start, history = int(ck["step"]), list(ck["history"])
    train_data = _prepare(cts, spacing_mm, crop, mind_radius, mind_dilation)
    vrng = np.random.default_rng(12345)
    val = []
    for _, img, target in _prepare(val_cts or [], spacing_mm, crop, mind_radius, mind_dilation):
        for _ in range(4):
            sl = _crop(img, crop, vrng)
            noisy = _augment(img[(..., *sl)], vrng)
            val.append((noisy, target[(..., *sl)], mind_ssc(noisy, mind_radius, mind_dilation)))
    baseline = float(np.mean([float((m - t).pow(2).mean()) for _, t, m in val])) if val else None
    rng = np.random.default_rng(seed + start)
    t0 = time.perf_counter()
    score = None
    net.train()
    for step in range(start, steps):
        xs, ys = [], []
        for _ in range(batch):
            _, img, target = train_data[int(rng.integers(len(train_data)))]
            sl = _crop(img, crop, rng)
            xs.append(_augment(img[(..., *sl)], rng))
            ys.append(target[(..., *sl)])
        opt.zero_grad()
        loss = F.mse_loss(net(torch.cat(xs)), torch.cat(ys))
        if not torch.isfinite(loss):
            raise DeepLungRegError(f"train_feature_net: the loss became {float(loss)} at step {step}; lower the learning rate")
        loss.backward()
        opt.step()
        row = {"step": step + 1, "level": 0, "loss": float(loss.detach()), "seconds": round(time.perf_counter() - t0, 2)}
        if val and ((step + 1) % validate_every == 0 or step + 1 == steps):
            net.eval()
            with torch.no_grad():
                score = float(np.mean([float((net(x) - t).pow(2).mean()) for x, t, _ in val]))
            net.train()
            row.update({"validation_mse": score, "mind_noise_mse": baseline})
        history.append(row)
        if progress:
            progress(step + 1, steps, row)
        if (step + 1) % validate_every == 0 or step + 1 == steps:
            tmp = ck_path.with_suffix(".tmp")
            torch.save({"kind": "feature_net", "config": config, "meta": meta, "model": net.state_dict(), "optimizer": opt.state_dict(),
                        "step": step + 1, "history": history, "validation_mse": score, "mind_noise_mse": baseline}, tmp)
            tmp.replace(ck_path)
    write_training_logs(outdir, history, {"config": config, "meta": meta})
    return {"checkpoint": str(ck_path), "validation_mse": score, "mind_noise_mse": baseline, "steps": steps,
            "seconds": round(time.perf_counter() - t0, 1)}


def export_feature_net(checkpoint: str | Path, dest: str | Path, command: str = "", *, overwrite: bool = False) -> Path:
    """Write the inference part of a :func:`train_feature_net` checkpoint (what ``DeepLungRegLib/data/weights`` ships)."""
    checkpoint, dest = Path(checkpoint), Path(dest)
    if not checkpoint.is_file():
        raise DeepLungRegError(f"export_feature_net: {checkpoint} does not exist")
    if dest.exists() and not overwrite:
        raise DeepLungRegError(f"export_feature_net: {dest} exists; pass overwrite=True to replace it")
    ck = load_torch_file(checkpoint, "cpu", owner="export_feature_net")
    if ck.get("kind") != "feature_net":
        raise DeepLungRegError(f"export_feature_net: {checkpoint} is not a feature-network checkpoint")
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": "feature_net", "config": ck["config"], "meta": ck["meta"], "model": ck["model"], "step": ck["step"],
                "validation_mse": ck["validation_mse"], "mind_noise_mse": ck["mind_noise_mse"], "command": command}, dest)
    return dest
