"""The options every network method is built and trained with; stored in every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import DeepLungRegError
from ..options import Options, option

#: Options that only some networks read (each network's spec names its own, ``NetworkSpec.own_options``).
NETWORK_SPECIFIC_OPTIONS = ("similarity", "coarse_jitter")


@dataclass(frozen=True)
class NetworkConfig(Options):
    """Everything needed to rebuild and train a network; stored in every checkpoint.

    Attributes:
        method: a registered network (:func:`~.registry.network_names`).
        similarity: ``lindef``'s data term: ``"mse"`` (the paper's, the default), ``"ncc"`` or
            ``"ngf"``. ``mlvirnet`` and ``labeldriven`` use NGF, as in their papers.
        supervision: weight of the synthetic-supervision term, the mean end-point error (network
            voxels) between the predicted and the simulator's displacement (the talk's "synthetic
            supervision"; Eppenhof and Pluim). 0, the default, trains with the paper's loss only.
            A pair without a known displacement skips the term.
        coarse_jitter: ``mlvirnet`` only: while a finer level trains, the frozen coarser levels'
            displacement is scaled by a random factor in ``[1 - j, 1 + j]``, so that the level learns
            to correct coarse errors (see :meth:`MLVIRNet.forward`). 0, the default, is the paper.
    """

    method: str = "mlvirnet"
    spacing_mm: float = option(4.0, 0.5, 16.0, "voxel size of the network grid.")
    shape: tuple[int, int, int] = option((64, 64, 64), help="network grid ``(Z, Y, X)`` (multiples of 16).")
    width: float = option(0.5, 0.05, 4.0, "channel scale (1: the papers' widths; 0.25 for CPU).")
    levels: int = option(3, 1, 4, "pyramid levels of ``mlvirnet`` (the paper: 3).")
    alpha: float = option(1.0, 0.0, 1e7, "curvature weight (``mlvirnet``, ``labeldriven``) or ``||A - A_I||_1`` weight (``lindef``).")
    beta: float = option(1.0, 0.0, 1e7, "lung-mask SSD weight (``mlvirnet``, ``labeldriven``) or ``||Phi - Phi_I||_1`` weight (``lindef``).")
    ngf_eps: float = option(0.05, help="NGF edge parameter.")
    learning_rate: float = option(1e-3, 1e-6, 1.0, "Adam step.")
    similarity: str = option("mse", choices=("mse", "ncc", "ngf"))
    supervision: float = option(0.0, 0.0, 1e3)
    coarse_jitter: float = 0.0

    def __post_init__(self):
        from .registry import network_names

        if self.method not in network_names():
            raise DeepLungRegError(f"NetworkConfig: method must be one of {', '.join(network_names())}, got {self.method!r}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if len(self.shape) != 3 or any(s < 16 or s % 16 for s in self.shape) or max(self.shape) > 256:
            raise DeepLungRegError(f"NetworkConfig: shape must be 3 multiples of 16 between 16 and 256, got {self.shape}")
        self.validate()

    def validate(self) -> None:
        from .registry import network_names, network_spec

        super().validate()
        if not 0 <= self.coarse_jitter < 1:
            raise DeepLungRegError(f"NetworkConfig: coarse_jitter must be in [0, 1), got {self.coarse_jitter}")
        # options that only some networks read must keep their defaults elsewhere
        own = network_spec(self.method).own_options
        for f in dataclasses.fields(self):
            if f.name in NETWORK_SPECIFIC_OPTIONS and f.name not in own and getattr(self, f.name) != f.default:
                owners = [n for n in network_names() if f.name in network_spec(n).own_options]
                raise DeepLungRegError(f"NetworkConfig: {f.name} applies to {', '.join(owners)} only, not {self.method}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d


def scaled_width(n: int, width: float) -> int:
    """``n`` channels of a paper's network at ``width`` times its width (at least 2)."""
    return max(2, int(round(n * width)))
