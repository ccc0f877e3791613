"""Grid search of a network method's loss weights (alpha, beta, supervision, ...) by short training runs.

Every candidate trains a fresh network, from the same seed, on the same
sequence of simulated pairs (one pool built once and copied), for ``--steps``
steps, and is scored by the held-out validation TRE (a small and a large pair
simulated from each ``--val-ct``) averaged over its last three validations,
which evens out the step-to-step noise of batch-size-1 training. For
``mlvirnet`` only the coarsest level is trained (with the loss on the finest
grid, as in ``deeplungreg train``): that level does most of the large-motion
work and costs a fraction of a full run. The table is printed and written as
Markdown, with a JSON copy beside it::

    python scripts/search_loss_weights.py --method mlvirnet --ct ../shared/data/popi/popi00.nrrd \\
        ../shared/data/elastix-lung/3DCT_lung_baseline_small.mha --val-ct ../shared/data/pyradiomics/lung1_image.nrrd \\
        --grid beta=1,10,100 --grid supervision=0,0.1,1 --steps 400 -O width=0.5 -o bench-output/search-mlvirnet.md

Short runs rank the weights by how fast they learn, not by where a long run
ends; use the result as a starting point for ``deeplungreg train``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from DeepLungRegLib.errors import DeepLungRegError  # noqa: E402
from DeepLungRegLib.io.images import read_image  # noqa: E402
from DeepLungRegLib.methods.base import parse_options  # noqa: E402
from DeepLungRegLib.training import NetworkConfig, SimulatedPairPool, build_network, validation_pairs, validation_tre  # noqa: E402
from DeepLungRegLib.training.train import train_step  # noqa: E402

SEARCHABLE = ("alpha", "beta", "supervision", "ngf_eps", "learning_rate")


def parse_grid(items: list[str]) -> dict[str, list[float]]:
    """``["beta=1,10", "supervision=[0,0.1]"]`` -> ``{"beta": [1.0, 10.0], "supervision": [0.0, 0.1]}``
    (values read as ``deeplungreg tune --grid`` reads them)."""
    grid: dict[str, list[float]] = {}
    for name, values in parse_options(items, "--grid").items():
        if name not in SEARCHABLE:
            raise DeepLungRegError(f"--grid {name}: write NAME=V1,V2,... with NAME one of {', '.join(SEARCHABLE)}")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise DeepLungRegError(f"--grid {name}: give at least one value")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise DeepLungRegError(f"--grid {name}: the values must be numbers, got {values!r}")
        grid[name] = [float(v) for v in values]
    return grid


def run_candidate(cfg: NetworkConfig, pool: SimulatedPairPool, val, steps: int, refresh_every: int, validate_every: int,
                  seed: int) -> dict:
    """Train one candidate from scratch; the validation TRE after every ``validate_every`` steps."""
    torch.manual_seed(seed)
    pool = copy.deepcopy(pool)  # the same pairs, augmentations and refreshes for every candidate
    model = build_network(cfg)
    level = cfg.levels - 1 if cfg.method == "mlvirnet" else 0
    params = model.train_level(level) if cfg.method == "mlvirnet" else list(model.parameters())
    opt = torch.optim.Adam(params, lr=cfg.learning_rate)
    scores, t0 = [], time.perf_counter()
    for step in range(steps):
        if step and step % refresh_every == 0:
            pool.refresh()
        pair = pool.sample()
        train_step(model, cfg, opt, pair, level, step)
        if (step + 1) % validate_every == 0 or step + 1 == steps:
            scores.append({"step": step + 1, **validation_tre(model, cfg, val)})
    last = scores[-3:]
    return {"scores": scores, "tre": float(np.mean([s["tre_after"] for s in last])),
            "p95": float(np.mean([s["tre_after_p95"] for s in last])), "final_tre": scores[-1]["tre_after"],
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", required=True, choices=("lindef", "mlvirnet", "labeldriven"))
    p.add_argument("--ct", nargs="+", required=True, help="training CTs")
    p.add_argument("--val-ct", nargs="+", required=True, help="held-out CTs for the validation pairs")
    p.add_argument("--grid", action="append", required=True, metavar="NAME=V1,V2", help=f"values to try; NAME one of {', '.join(SEARCHABLE)}")
    p.add_argument("--option", "-O", action="append", metavar="NAME=VALUE", help="network option fixed for every candidate (e.g. width=0.5)")
    p.add_argument("--spacing", type=float, default=4.0)
    p.add_argument("--shape", default="64,64,64")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--validate-every", type=int, default=50)
    p.add_argument("--refresh-every", type=int, default=25)
    p.add_argument("--pool", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spatial-augment", action="store_true", help="a new anatomy per simulated pair (as deeplungreg train --spatial-augment)")
    p.add_argument("-o", "--output", required=True, help="Markdown table to write (a .json beside it)")
    args = p.parse_args(argv)
    try:
        out = Path(args.output)
        if out.exists():
            raise DeepLungRegError(f"{out} exists; choose another file")
        if args.steps < 1 or args.validate_every < 1:
            raise DeepLungRegError("--steps and --validate-every must be >= 1")
        grid = parse_grid(args.grid)
        base = {"method": args.method, "spacing_mm": args.spacing, "shape": [int(v) for v in args.shape.split(",")],
                **parse_options(args.option, "search")}
        names = list(grid)
        candidates = [NetworkConfig.from_dict({**base, **dict(zip(names, values))}) for values in itertools.product(*grid.values())]
        load = [(Path(c).name.split(".")[0], read_image(c, what=f"CT {c}"), None) for c in args.ct]
        val_cts = [(Path(c).name.split(".")[0], read_image(c, what=f"CT {c}"), None) for c in args.val_ct]
    except DeepLungRegError as exc:
        print(f"search_loss_weights: {exc}", file=sys.stderr)
        return 2
    print(f"{len(candidates)} candidates, {args.steps} steps each; building the pairs ...", file=sys.stderr, flush=True)
    pool = SimulatedPairPool(load, candidates[0].spacing_mm, candidates[0].shape, args.pool, seed=args.seed,
                             spatial_augment=args.spatial_augment)
    val = validation_pairs(val_cts, candidates[0])
    before = validation_tre(build_network(candidates[0]), candidates[0], val)["tre_before"]
    rows = []
    for i, cfg in enumerate(candidates, 1):
        res = run_candidate(cfg, pool, val, args.steps, args.refresh_every, args.validate_every, args.seed)
        rows.append({**{n: getattr(cfg, n) for n in names}, **res})
        print(f"[{i}/{len(candidates)}] " + " ".join(f"{n}={getattr(cfg, n):g}" for n in names)
              + f": TRE {res['tre']:.2f} mm (p95 {res['p95']:.1f}), {res['seconds']:.0f} s", file=sys.stderr, flush=True)
    rows.sort(key=lambda r: r["tre"])
    level = " (coarsest level only)" if args.method == "mlvirnet" else ""
    lines = [f"# Loss-weight search: {args.method}{level}, {args.steps} steps each", "",
             f"Training CTs: {', '.join(n for n, _, _ in load)}; validation: {', '.join(n for n, _, _ in val_cts)} "
             f"(initial TRE {before:.2f} mm). Fixed: {json.dumps({k: v for k, v in base.items() if k not in names})}. "
             f"Refresh every {args.refresh_every} steps, spatial augmentation {'on' if args.spatial_augment else 'off'}. "
             "TRE and p95 are the means of the last three validations.", "",
             "| rank | " + " | ".join(names) + " | TRE (mm) | p95 (mm) | final TRE | seconds |",
             "|---" * (len(names) + 5) + "|"]
    for r, row in enumerate(rows, 1):
        lines.append(f"| {r} | " + " | ".join(f"{row[n]:g}" for n in names)
                     + f" | {row['tre']:.2f} | {row['p95']:.2f} | {row['final_tre']:.2f} | {row['seconds']:.0f} |")
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"command": sys.argv, "initial_tre": before, "rows": rows}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
