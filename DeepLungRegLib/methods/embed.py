"""Method ``embed``: keypoint displacement embeddings for large lung motion (paper 000).

1. Affine pre-alignment (the ``affine`` method); the moving image is resampled
   through it onto the fixed feature grid.
2. Förstner keypoints in the fixed lung (non-maximum suppression, minimum distance).
3. MIND-SSC features of both images on a grid of ``feature_spacing_mm`` (or, with
   ``features="cnn"``, those of paper 000's light U-Net trained to predict MIND-SSC).
4. Discrete search: for every keypoint the fixed feature patch is compared
   (SSD) with the moving patch at every displacement of a dense 3D set
   (``search_range_mm`` wide in steps of ``search_step_mm``: 21^3 = 9261 by
   default), computed as one grouped 3D correlation per chunk of keypoints.
5. Embedding: each keypoint's cost map is projected onto the leading principal
   components of all cost maps (``torch.pca_lowrank``), or kept raw.
6. Regularisation: diffusion on the kNN keypoint graph in embedding space,
   ``Z <- (I + lambda L)^-1 Z`` with the graph Laplacian ``L``; the costs are
   reconstructed and a soft-argmin gives sub-voxel displacements.
7. A second, local pass (default ``second_pass_range_mm`` 12 mm, 7^3
   displacements): the moving features are warped by the first pass's
   thin-plate spline (sampled on an 8 mm grid) and steps 4-6 are repeated with a
   weaker graph weight, so that the graph diffuses cost maps of small residuals
   instead of the large absolute motion, whose gradients it blurs.
8. Densification by regularised thin-plate splines (``scipy``'s
   ``RBFInterpolator``) or Gaussian scattered-data interpolation, on a grid of
   ``densify_spacing_mm`` (8 mm: on the benchmark pairs it scored as well as 4 mm
   or slightly better, in a sixth of the time, with and without the refinement;
   the exception is lung1 large without the refinement, p95 2.68 against 2.36 mm).
9. Optional refinement by the ``adam`` instance optimisation (the default: "embed+io").
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from scipy import sparse
from scipy.interpolate import RBFInterpolator
from scipy.sparse.linalg import splu
from scipy.spatial import cKDTree

from ..errors import DeepLungRegError
from ..geometry import Geometry
from ..io.images import Image
from ..keypoints import foerstner_keypoints
from ..transforms.warp import GridSampler, sample_field_at_points
from .affine import AlignedStartOptions, affine_aligned_start
from ..options import option
from .base import GridField, GridMap, MethodConfig, RunContext, register_method
from .common import MindOptions, RegionOptions, apply_affine, level_geometry, resample_field
from .costs import keypoint_costs, search_offsets
from .uncertainty import cost_spread
from .refine import RefineOptions, Refinement


@dataclass(frozen=True)
class EmbedConfig(AlignedStartOptions, RefineOptions, MindOptions, RegionOptions, MethodConfig):
    """Options of ``embed``; the refinement ("embed+io") is :class:`~.refine.RefineOptions`.

    Attributes:
        regularisation: diffusion weight of the refinement (on the update).
        mask_dilation_mm: dilation of the fixed mask that weights the refinement.
    """

    keypoints: int = option(2000, 10, 20000, "maximal number of Förstner keypoints in the fixed lung.")
    keypoint_distance_mm: float = option(4.0, 0.5, 50.0, "minimal distance between keypoints.")
    feature_spacing_mm: float = option(2.0, 0.5, 16.0, "grid spacing of the MIND-SSC features (half resolution of a 1 mm CT).")
    features: str = option("mind", help="\"mind\" (handcrafted MIND-SSC) or \"cnn\" (paper 000's light U-Net trained to predict "
                           "MIND-SSC, ``deeplungreg train-features``); the refinement always uses MIND-SSC.", choices=("mind", "cnn"))
    feature_weights: str = option("", help="weights of the feature CNN (\"\" : the shipped ``data/weights/mindnet.pt``).")
    search_range_mm: float = option(40.0, 1.0, 120.0, "full width of the displacement search per axis (after affine alignment).")
    search_step_mm: float = option(2.0, 0.5, 16.0, "step of the displacement search (a multiple of the feature spacing).")
    second_pass_range_mm: float = option(12.0, 0.0, 60.0, "full width of a second, local search around the first pass's result "
                                         "(the moving features warped by its densified field; 0: no second pass).")
    second_pass_step_mm: float = option(2.0, 0.5, 16.0, "step of the second pass.")
    second_pass_smoothing: float = option(0.5, 0.0, 1000.0, "graph-Laplacian weight of the second pass.")
    patch_radius: int = option(1, 0, 4, "radius in feature voxels of the compared patches.")
    embedding: str = option("none", help="\"pca\" (project cost maps on principal components) or \"none\" (raw costs).",
                            choices=("pca", "none"))
    components: int = option(64, 2, 4096, "number of principal components (the paper uses 256 and 512).")
    pca_basis: str = option("", help="a file of PCA bases (written with ``pca_basis_out``) to project on instead of fitting one on "
                            "the pair; a pass whose displacement count has no basis in it fits its own.")
    pca_basis_out: str = option("", help="write the bases fitted (or used) here, one per pass, as ``.npz``.")
    graph_neighbours: int = option(10, 1, 100, "neighbours per keypoint in the kNN graph.")
    graph_smoothing: float = option(2.0, 0.0, 1000.0, "weight lambda of the graph-Laplacian diffusion (0: none).")
    temperature: float = option(0.15, 1e-4, 10.0, "soft-argmin temperature relative to the spread of each cost map.")
    outlier_mm: float = option(5.0, 0.0, 100.0, "a keypoint whose displacement differs from the median of its graph neighbours "
                               "by more than this is replaced by that median (0: off).")
    densify: str = option("tps", help="\"tps\" (regularised thin-plate spline) or \"gaussian\" (scattered-data interpolation).",
                          choices=("tps", "gaussian"))
    densify_smoothing: float = option(2.0, 0.0, 1000.0, "TPS smoothing, or Gaussian sigma in mm.")
    densify_spacing_mm: float = option(8.0, 0.5, 32.0, "grid spacing on which the dense field is interpolated (at least the feature spacing).")
    refine: bool = option(True, help="refine with the instance optimisation (\"embed+io\").")
    chunk: int = option(128, 1, 4096, "keypoints per chunk of the discrete search (memory vs speed).")
    uncertainty: bool = option(False, help="also write uncertainty.nii.gz: per voxel, how far (mm, root mean square) the "
                                           "displacements that the matching costs allow lie from the densified keypoint field, "
                                           "the costs searched like the second pass's around that field at points every "
                                           "keypoint_distance_mm in the lung, featureless parenchyma included (see "
                                           "docs/uncertainty.md). A ranking of where the field is least sure, not a "
                                           "calibrated error.")
    uncertainty_temperature: float = option(0.02, 1e-3, 100.0, "temperature of the uncertainty's softmax over the costs, "
                                                              "relative to the points' mean cost spread (convex's).")
    UNCERTAINTY_ESTIMATE: ClassVar[str] = "matching costs"

    #: the names of version 1, read only from what it saved (configs, metrics.json), with a DeprecationWarning
    ALIASES: ClassVar[dict] = {"smoothing_passes": "refine_smoothing_passes"}

    def reverse_config(self) -> "EmbedConfig":
        """The reverse registration (inverse-consistency uncertainty) writes no PCA basis: the forward run wrote it."""
        return dataclasses.replace(super().reverse_config(), pca_basis_out="")

    def validate(self) -> None:
        super().validate()
        if (self.pca_basis or self.pca_basis_out) and self.embedding != "pca":
            raise DeepLungRegError("EmbedConfig: pca_basis and pca_basis_out need embedding='pca'")
        if self.second_pass_range_mm / self.second_pass_step_mm > 40:
            raise DeepLungRegError("EmbedConfig: second_pass_range_mm / second_pass_step_mm is too many steps per axis (at most 40)")
        steps = self.search_range_mm / self.search_step_mm
        if steps > 40:
            raise DeepLungRegError(f"EmbedConfig: search_range_mm / search_step_mm = {steps:.0f} steps per axis is too many (at most 40)")


# ------------------------------------------------------------------ pieces
def graph_laplacian(points: np.ndarray, neighbours: int) -> sparse.csr_matrix:
    """Symmetric kNN graph Laplacian ``D - W`` with Gaussian weights, normalised to mean degree 1."""
    k = min(neighbours, len(points) - 1)
    if k < 1:
        return sparse.csr_matrix((len(points), len(points)))
    dist, idx = cKDTree(points).query(points, k + 1)
    dist, idx = dist[:, 1:], idx[:, 1:]
    sigma = float(np.median(dist)) or 1.0
    w = np.exp(-(dist / sigma) ** 2)
    rows = np.repeat(np.arange(len(points)), k)
    wm = sparse.coo_matrix((w.ravel(), (rows, idx.ravel())), shape=(len(points),) * 2).tocsr()
    wm = wm.maximum(wm.T)
    deg = np.asarray(wm.sum(1)).ravel()
    lap = sparse.diags(deg) - wm
    return (lap / deg.mean()).tocsr()


def graph_diffuse(values, laplacian: sparse.csr_matrix, weight: float, dense_limit: int = 6000):
    """Solve ``(I + weight L) out = values`` for every column (diffusion on the graph).

    Args:
        values: ``(K, D)`` numpy array or tensor (returned as the same kind, float32,
            on the same device).
        laplacian: ``(K, K)`` graph Laplacian.
        weight: diffusion weight (0: ``values`` unchanged).
        dense_limit: up to this many nodes the SPD system is solved by a dense
            Cholesky factorisation in torch (float32, on the values' device), which is
            several times faster than a sparse LU for thousands of right-hand sides;
            above it by ``scipy``'s sparse LU.
    """
    if weight <= 0:
        return values
    a = sparse.identity(laplacian.shape[0], format="csc") + weight * laplacian.tocsc()
    is_tensor = isinstance(values, torch.Tensor)
    if a.shape[0] <= dense_limit:
        v = values if is_tensor else torch.as_tensor(np.asarray(values))
        chol = torch.linalg.cholesky(torch.as_tensor(a.toarray(), dtype=torch.float32, device=v.device))
        out = torch.cholesky_solve(v.float(), chol)
        return out if is_tensor else out.numpy()
    v = values.cpu().numpy() if is_tensor else values
    out = splu(a.tocsc()).solve(np.ascontiguousarray(v, dtype=np.float64)).astype(np.float32)
    return torch.as_tensor(out, device=values.device) if is_tensor else out


def soft_argmin(costs: torch.Tensor, offsets_mm: torch.Tensor, temperature: float, n: int,
                spread: torch.Tensor | None = None) -> torch.Tensor:
    """Sub-voxel displacement ``(K, 3)``: a softmax-weighted mean over the 3x3x3 displacements around each argmin.

    Args:
        costs: ``(K, D)`` with ``D = n^3`` displacements in :func:`~.costs.displacement_offsets` order.
        offsets_mm: ``(D, 3)`` displacements in mm.
        temperature: relative to each row's spread.
        spread: ``(K, 1)`` cost spread per row (default: median minus minimum cost).
    """
    k = costs.shape[0]
    best = costs.argmin(1)
    zi, yi, xi = best // (n * n), (best // n) % n, best % n
    r = torch.arange(-1, 2, device=costs.device)
    dz, dy, dx = torch.meshgrid(r, r, r, indexing="ij")
    nz = (zi[:, None] + dz.reshape(1, -1)).clamp(0, n - 1)
    ny = (yi[:, None] + dy.reshape(1, -1)).clamp(0, n - 1)
    nx = (xi[:, None] + dx.reshape(1, -1)).clamp(0, n - 1)
    nb = (nz * n + ny) * n + nx  # (K, 27)
    local = costs.gather(1, nb)
    lo = local.min(1, keepdim=True).values
    if spread is None:
        spread = costs.median(1, keepdim=True).values - costs.min(1, keepdim=True).values
    spread = spread.clamp_min(1e-6)
    p = torch.softmax(-(local - lo) / (temperature * spread), dim=1)
    return (p[..., None] * offsets_mm[nb]).sum(1).reshape(k, 3)


def densify_tps(points: np.ndarray, values: np.ndarray, geometry: Geometry, smoothing: float, chunk: int = 4000) -> np.ndarray:
    """Thin-plate-spline interpolation of ``(K, 3)`` values onto ``geometry`` (``(Z, Y, X, 3)``)."""
    rbf = RBFInterpolator(points, values, kernel="thin_plate_spline", smoothing=smoothing, degree=1)
    xyz = geometry.world_coordinates().reshape(-1, 3)
    out = np.empty((len(xyz), 3), np.float32)
    for s in range(0, len(xyz), chunk):
        out[s:s + chunk] = rbf(xyz[s:s + chunk])
    return out.reshape(*geometry.shape, 3)


def densify_gaussian(points: np.ndarray, values: np.ndarray, geometry: Geometry, sigma_mm: float) -> np.ndarray:
    """Gaussian scattered-data interpolation (normalised convolution) of ``(K, C)`` values onto ``geometry``
    (``(Z, Y, X, C)``)."""
    idx = np.round(geometry.world_to_index(points)).astype(int)
    size = np.asarray(geometry.size)
    ok = np.all((idx >= 0) & (idx < size), 1)
    num = np.zeros((*geometry.shape, values.shape[1]), np.float64)
    den = np.zeros(geometry.shape, np.float64)
    np.add.at(num, (idx[ok, 2], idx[ok, 1], idx[ok, 0]), values[ok])
    np.add.at(den, (idx[ok, 2], idx[ok, 1], idx[ok, 0]), 1.0)
    sig = [max(sigma_mm, 1e-3) / s for s in geometry.spacing_zyx]
    den = ndi.gaussian_filter(den, sig, mode="nearest")
    out = np.stack([ndi.gaussian_filter(num[..., c], sig, mode="nearest") for c in range(values.shape[1])], -1)
    return (out / np.maximum(den, 1e-8)[..., None]).astype(np.float32)


def densify_field_on(points: np.ndarray, values: np.ndarray, geometry: Geometry, config: "EmbedConfig") -> np.ndarray:
    """Keypoint displacements ``(K, 3)`` at ``points`` (world mm) made dense on ``geometry`` as ``config.densify`` says
    (``(Z, Y, X, 3)``)."""
    if config.densify == "tps":
        return densify_tps(points, values, geometry, config.densify_smoothing)
    return densify_gaussian(points, values, geometry, max(config.densify_smoothing, 2.0 * config.keypoint_distance_mm))


def reject_outliers(points: np.ndarray, disp: np.ndarray, neighbours: int, threshold_mm: float) -> tuple[np.ndarray, int]:
    """Replace displacements ``(K, 3)`` that differ from their neighbours' median by more than ``threshold_mm``."""
    if threshold_mm <= 0 or len(points) <= neighbours:
        return disp, 0
    _, idx = cKDTree(points).query(points, neighbours + 1)
    med = np.median(disp[idx[:, 1:]], axis=1)
    bad = np.linalg.norm(disp - med, axis=1) > threshold_mm
    out = disp.copy()
    out[bad] = med[bad]
    return out, int(bad.sum())


def fit_pca_basis(costs: torch.Tensor, components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(1, D)`` and the leading principal directions ``(D, q)`` of cost maps ``(K, D)``."""
    q = int(min(components, min(costs.shape) - 1))
    _, _, v = torch.pca_lowrank(costs, q=q, center=True, niter=3)
    return costs.mean(0, keepdim=True), v


def save_pca_bases(path: str, bases: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Write ``{D: (mean (1, D), components (D, q))}`` to ``path`` (``.npz``; refuses to overwrite)."""
    if os.path.exists(path):
        raise DeepLungRegError(f"embed: {path} exists; choose another pca_basis_out")
    arrays = {}
    for d, (mean, v) in bases.items():
        arrays[f"mean_{d}"] = mean.cpu().numpy()
        arrays[f"components_{d}"] = v.cpu().numpy()
    with open(path, "wb") as fh:  # a file object: numpy would otherwise append .npz to the name
        np.savez(fh, **arrays)


def load_pca_bases(path: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Read the bases written by :func:`save_pca_bases` (clear errors for a missing or foreign file)."""
    if not os.path.isfile(path):
        raise DeepLungRegError(f"embed: PCA basis file {path} does not exist")
    try:
        with np.load(path) as z:
            out = {int(k[5:]): (z[k], z[f"components_{k[5:]}"]) for k in z.files if k.startswith("mean_")}
    except Exception as exc:
        raise DeepLungRegError(f"embed: {path} is not a PCA basis file written by pca_basis_out ({exc})") from exc
    for d, (mean, v) in out.items():
        if mean.shape != (1, d) or v.ndim != 2 or v.shape[0] != d:
            raise DeepLungRegError(f"embed: {path} holds a basis of shape {mean.shape}, {v.shape} for {d} displacements")
    if not out:
        raise DeepLungRegError(f"embed: {path} holds no PCA basis")
    return out


def dense_uncertainty(ff: torch.Tensor, mf: torch.Tensor, residual: torch.Tensor, lung: np.ndarray | None, fg: Geometry,
                      config: "EmbedConfig", ctx: RunContext) -> tuple[np.ndarray, Geometry]:
    """How sure the matching costs are of the densified keypoint field, everywhere in the lung
    (:func:`~.uncertainty.cost_spread`): the moving features warped by the field, searched locally as the second pass
    searches (``second_pass_range_mm`` wide, 12 mm without a second pass, in ``second_pass_step_mm``) at points every
    ``keypoint_distance_mm`` in the fixed lung (featureless parenchyma, where no keypoint is, included).

    Args:
        ff, mf: ``(1, C, Z, Y, X)`` fixed and (affine-aligned) moving features on ``fg``.
        residual: ``(1, Z, Y, X, 3)`` the densified keypoint displacement (aligned frame, world mm) on ``fg``.
        lung: ``(Z, Y, X)`` bool fixed lung on ``fg``, or ``None`` (the whole grid).

    Returns:
        ``(values, geometry)``: ``(Zp, Yp, Xp)`` float32 mm on the points' grid (``fg`` subsampled).
    """
    with torch.no_grad():
        mw = GridSampler(fg, fg, mf.device, mf.dtype)(mf, residual.to(mf.dtype), fill=None)
    return cost_spread(ff, mw, lung, fg, range_mm=config.second_pass_range_mm or 12.0, step_mm=config.second_pass_step_mm,
                       spacing_mm=config.keypoint_distance_mm, temperature=config.uncertainty_temperature,
                       patch_radius=config.patch_radius, chunk=config.chunk, ctx=ctx, span=(0.55, 0.6))


def _keypoint_pass(ff, mf, kp_zyx, lap, fg, range_mm, step_mm, smoothing, config, ctx, span, diag, prefix, bases=None):
    """One discrete keypoint search: costs, embedding, graph regularisation (on the keypoint
    graph Laplacian ``lap``), soft-argmin.

    ``bases`` maps a displacement count to a loaded ``(mean, components)``; the basis this
    pass used is stored in it.

    Returns ``(K, 3)`` displacements in world mm from the fixed keypoints into ``mf``'s frame.
    """
    lo, hi = span
    radius, step, offsets, offsets_mm = search_offsets(fg, range_mm, step_mm)
    diag[prefix + "displacements"] = int(len(offsets))
    diag[prefix + "search_half_width_mm"] = float(radius * step * max(fg.spacing))
    with ctx.stage(prefix + "cost_volume"), torch.no_grad():
        costs = keypoint_costs(ff, mf, kp_zyx, radius, step, config.patch_radius, config.chunk,
                               lambda f: (ctx.check_cancel(), ctx.progress(prefix.replace("_", " ") + "discrete search", lo + (hi - lo) * 0.9 * f)))

    with ctx.stage(prefix + "embedding"), torch.no_grad():
        if config.embedding == "pca":
            bases = {} if bases is None else bases
            dcount = costs.shape[1]
            if dcount in bases:
                mean, v = (torch.as_tensor(np.asarray(a), device=costs.device, dtype=costs.dtype) for a in bases[dcount])
                diag[prefix + "pca_basis"] = "loaded"
            else:
                mean, v = fit_pca_basis(costs, config.components)
                diag[prefix + "pca_basis"] = "fitted on this pair"
            bases[dcount] = (mean, v)
            centred = costs - mean
            z = centred @ v
            # variance explained, valid for a loaded basis too: 1 - |residual|^2 / |centred|^2
            resid = float((centred - z @ v.T).pow(2).sum())
            diag[prefix + "pca_components"] = int(v.shape[1])
            diag[prefix + "pca_variance_explained"] = round(1.0 - resid / max(float(centred.pow(2).sum()), 1e-12), 4)
            del centred
        else:
            z = costs
    ctx.progress(prefix.replace("_", " ") + "graph regularisation", lo + (hi - lo) * 0.9)
    with ctx.stage(prefix + "graph_regularisation"):
        z = graph_diffuse(z, lap, smoothing)
    with ctx.stage(prefix + "soft_argmin"), torch.no_grad():
        rec = z @ v.T.float() + mean if config.embedding == "pca" else z
        d = soft_argmin(rec, torch.as_tensor(offsets_mm, device=costs.device, dtype=torch.float32), config.temperature, 2 * radius + 1).cpu().numpy()
        del costs, rec, z
    return d


# --------------------------------------------------------------------- method
@register_method("embed", "Keypoint displacement embeddings: discrete search, PCA, graph regularisation, then Adam (paper 000)", EmbedConfig)
def run_embed(fixed: Image, moving: Image, fixed_mask, moving_mask, config: EmbedConfig, ctx: RunContext):
    dev, dt = ctx.device, ctx.dtype
    diag: dict = {}
    if config.pca_basis_out and os.path.exists(config.pca_basis_out):  # before the work, not after
        raise DeepLungRegError(f"embed: {config.pca_basis_out} exists; choose another pca_basis_out")
    bases = load_pca_bases(config.pca_basis) if config.pca_basis else {}
    # Features on the fixed feature grid; the moving image goes through the affine first.
    descriptor = None
    if config.features == "cnn":
        from ..networks.mindnet import cnn_descriptor, load_feature_net

        descriptor = cnn_descriptor(load_feature_net(config.feature_weights or None, dev))
    fr, mr, mat, af, adiag = affine_aligned_start(fixed, moving, fixed_mask, moving_mask, config, ctx, descriptor=descriptor)
    diag.update(adiag)
    fg, f_img, ff, mf = af.geometry, af.fixed_image, af.fixed_feat, af.moving_feat
    ctx.check_cancel()

    with ctx.stage("keypoints"):
        lung = af.lung
        if lung is not None:
            eroded = ndi.binary_erosion(lung, iterations=1)  # keep keypoints off the lung border
            lung = eroded if eroded.sum() > 100 else lung
        kp_world = foerstner_keypoints(Image(f_img.array, fg), lung, count=config.keypoints,
                                       min_distance_mm=config.keypoint_distance_mm, device=dev)
        ijk = np.round(fg.world_to_index(kp_world)).astype(int)
        kp_world = fg.index_to_world(ijk.astype(float))
        kp_zyx = ijk[:, ::-1].copy()
    if len(kp_zyx) < 10:
        raise DeepLungRegError(f"embed: only {len(kp_zyx)} keypoints found in the fixed lung; check the mask")
    diag["keypoints"] = int(len(kp_zyx))

    lap = graph_laplacian(kp_world, config.graph_neighbours)  # the keypoint graph of both passes
    d = _keypoint_pass(ff, mf, kp_zyx, lap, fg, config.search_range_mm, config.search_step_mm, config.graph_smoothing,
                       config, ctx, (0.15, 0.5), diag, "", bases)
    d, diag["outliers_replaced"] = reject_outliers(kp_world, d, config.graph_neighbours, config.outlier_mm)
    if config.second_pass_range_mm > 0:
        # A local search around the first result: the moving features warped by its
        # densified field, so that the graph diffuses cost maps of small residuals.
        # The spline is sampled on an 8 mm grid only (the local search absorbs what that
        # loses); the features are warped, and the result composed, through that grid.
        with ctx.stage("second_pass_warp"), torch.no_grad():
            coarse_geom = level_geometry(fr, max(8.0, config.feature_spacing_mm))
            coarse = densify_tps(kp_world, d, coarse_geom, config.densify_smoothing)  # aligned frame
            first = resample_field(torch.as_tensor(coarse, device=dev, dtype=dt)[None], coarse_geom, fg)
            mw = GridSampler(fg, fg, dev, dt)(mf, first, fill=None)
            del first
        d2 = _keypoint_pass(ff, mw, kp_zyx, lap, fg, config.second_pass_range_mm, config.second_pass_step_mm,
                            config.second_pass_smoothing, config, ctx, (0.5, 0.55), diag, "second_pass_", bases)
        del mw
        # fixed p matches warped-moving p + d2 = aligned-moving q + first(q), q = p + d2
        d, n_bad = reject_outliers(kp_world, d2 + sample_field_at_points(coarse, coarse_geom, kp_world + d2),
                                   config.graph_neighbours, config.outlier_mm)
        diag["outliers_replaced"] += n_bad
    if config.pca_basis_out:
        save_pca_bases(config.pca_basis_out, bases)
        diag["pca_basis_out"] = config.pca_basis_out
    # Keypoint correspondences: p -> A (p + d); the deformable residual is interpolated densely.
    target = apply_affine(mat, kp_world + d)
    residual = target - apply_affine(mat, kp_world)
    diag["keypoint_displacement_mm_mean"] = round(float(np.linalg.norm(target - kp_world, axis=1).mean()), 3)
    with ctx.stage("densify"):
        cg = level_geometry(fr, max(config.densify_spacing_mm, config.feature_spacing_mm))
        diag["densify_spacing_mm"] = float(max(config.densify_spacing_mm, config.feature_spacing_mm))
        dense = densify_field_on(kp_world, residual, cg, config)
        dense = dense + apply_affine(mat, cg.world_coordinates().reshape(-1, 3)).reshape(dense.shape) - cg.world_coordinates()
        current = torch.as_tensor(dense, device=dev, dtype=dt)[None]
    if config.own_uncertainty():
        with ctx.stage("uncertainty"):
            ctx.progress("uncertainty", 0.55)
            # the densified deformable part in the aligned frame (what the keypoints matched: p -> p + d) on fg
            aligned = densify_field_on(kp_world, d, cg, config)
            residual = resample_field(torch.as_tensor(aligned, device=dev, dtype=dt)[None], cg, fg)
            ctx.maps["uncertainty"] = GridMap(*dense_uncertainty(ff, mf, residual, af.lung, fg, config, ctx))
            del aligned, residual
    ctx.progress("densified", 0.6)
    current_geom = cg
    refinement = Refinement.of(config, residual=True, label="refine", moving_fill=config.moving_fill)
    if config.refine and refinement.enabled:
        current, current_geom, losses = refinement.run(fixed, moving, fixed_mask, fr, mr, current, cg, ctx, (0.6, 1.0))
        diag["levels"] = losses
    diag["working_region"] = fr.to_dict()
    return GridField(current.detach().float(), current_geom), diag
