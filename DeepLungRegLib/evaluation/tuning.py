"""Self-configuration: a rank-based search of a method's options on simulated pairs (talk 003).

Every candidate config is run on every pair. On each pair the candidates are
ranked by mean TRE, by 95th-percentile TRE and by the SD of log J (a
plausibility criterion, weighted half), as in the Learn2Reg ranking; a
candidate that folds more than ``max_folding_percent`` or fails is ranked
last. The candidate with the best mean rank over all pairs wins, and its
config is written as a JSON file that ``deeplungreg register --config`` reads.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.stats import rankdata

from ..errors import DeepLungRegError
from ..methods import get_method, register
from ..simulation.breathing import SimulatedPair
from .evaluate import evaluate_field

#: Criteria and their weights in the mean rank.
CRITERIA = (("tre_mean", 1.0), ("tre_p95", 1.0), ("sd_log_j", 0.5))


@dataclass
class TuneResult:
    """Outcome of :func:`tune`.

    Attributes:
        method: the tuned method.
        best: options of the winning candidate (only the searched ones).
        config: the full winning config as a dict.
        rows: one dict per (candidate, pair) run with its scores.
        ranking: one dict per candidate: options, mean rank and mean scores, best first.
    """

    method: str
    best: dict
    config: dict
    rows: list[dict] = field(default_factory=list)
    ranking: list[dict] = field(default_factory=list)


def candidate_grid(method: str, grid: dict[str, list] | None = None, max_candidates: int = 12, seed: int = 0) -> list[dict]:
    """Candidate option sets: the product of ``grid`` (default: the method's ``TUNE_GRID``).

    The method's defaults come first; when the product is larger than
    ``max_candidates`` a seeded random subset is taken. Every candidate is
    validated against the method's config before anything runs.
    """
    spec = get_method(method)
    grid = dict(grid if grid else getattr(spec.config_cls, "TUNE_GRID", {}) or {})
    if not grid:
        raise DeepLungRegError(f"tune: method {method!r} has no default search grid; give one with --grid NAME=[V1,V2,...]")
    names = {f.name for f in dataclasses.fields(spec.config_cls)}
    spec.config_cls.refuse_old_names(grid, "tune", "--grid {name}=[V1,V2,...]")
    for k, values in grid.items():
        if k not in names:
            raise DeepLungRegError(f"tune: {method} has no option {k!r}; known: {', '.join(sorted(names))}")
        if not isinstance(values, (list, tuple)) or len(values) == 0:
            raise DeepLungRegError(f"tune: the grid of {k!r} must be a non-empty list of values, got {values!r}")
    if max_candidates < 1:
        raise DeepLungRegError(f"tune: max_candidates must be >= 1, got {max_candidates}")
    keys = list(grid)
    combos = [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]
    defaults = spec.config_cls().to_dict()
    default_combo = {k: defaults[k] for k in keys}

    def same(a: dict, b: dict) -> bool:
        return json.dumps(a, sort_keys=True, default=list) == json.dumps(b, sort_keys=True, default=list)

    combos = [default_combo] + [c for c in combos if not same(c, default_combo)]
    if len(combos) > max_candidates:
        rng = np.random.default_rng(seed)
        pick = sorted(rng.choice(np.arange(1, len(combos)), size=max_candidates - 1, replace=False).tolist())
        combos = [combos[0]] + [combos[i] for i in pick]
    for c in combos:
        spec.config_cls.from_dict(c)  # refuse absurd values now, not after an hour
    return combos


def rank_candidates(scores: np.ndarray, failed: np.ndarray) -> np.ndarray:
    """Mean rank per candidate.

    Args:
        scores: ``(n_candidates, n_pairs, n_criteria)``, lower is better.
        failed: ``(n_candidates, n_pairs)`` bool; a failed run ranks last on that pair.

    Returns:
        ``(n_candidates,)`` weighted mean rank (1 = best everywhere).
    """
    n_c, n_p, n_k = scores.shape
    weights = np.array([w for _, w in CRITERIA][:n_k], float)
    total = np.zeros(n_c)
    for p in range(n_p):
        for k in range(n_k):
            s = np.where(failed[:, p], np.inf, scores[:, p, k])
            total += weights[k] * rankdata(s, method="average")
    return total / (n_p * weights.sum())


def tune(
    method: str,
    pairs: list[SimulatedPair],
    grid: dict[str, list] | None = None,
    *,
    max_candidates: int = 12,
    seed: int = 0,
    base: dict | None = None,
    names: list[str] | None = None,
    device: str = "auto",
    max_folding_percent: float = 0.1,
    progress: Callable[[str], None] | None = None,
) -> TuneResult:
    """Search ``grid`` for ``method`` on simulated ``pairs`` and return the best config.

    Args:
        pairs: simulated pairs with ground truth (landmarks and masks).
        grid: ``{option: [values]}``; default the method's ``TUNE_GRID``.
        base: fixed options applied to every candidate.
        names: a name per pair for the tables (default ``pair0``, ``pair1``, ...).
        max_folding_percent: a run folding more than this ranks last on its pair.
    """
    if not pairs:
        raise DeepLungRegError("tune: give at least one simulated pair")
    if names is not None and len(names) != len(pairs):
        raise DeepLungRegError(f"tune: {len(names)} names for {len(pairs)} pairs")
    spec = get_method(method)
    base = dict(base or {})
    combos = candidate_grid(method, grid, max_candidates, seed)
    for c in combos:
        spec.config_cls.from_dict({**base, **c})
    say = progress or (lambda msg: None)
    n_k = len(CRITERIA)
    scores = np.full((len(combos), len(pairs), n_k), np.inf)
    failed = np.zeros((len(combos), len(pairs)), bool)
    rows: list[dict] = []
    for ci, combo in enumerate(combos):
        for pi, pair in enumerate(pairs):
            name = names[pi] if names else f"pair{pi}"
            t0 = time.perf_counter()
            row = {"candidate": ci, "pair": name, **{k: _plain(v) for k, v in combo.items()}}
            try:
                res = register(pair.fixed, pair.moving, method, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask,
                               config={**base, **combo}, device=device)
                ev = evaluate_field(pair, res.field)
                row.update(tre_mean=ev["tre_after"]["mean"], tre_p95=ev["tre_after"]["p95"], sd_log_j=ev.get("sd_log_j", np.nan),
                           folding_percent=ev.get("folding_percent", np.nan), seconds=time.perf_counter() - t0)
                scores[ci, pi] = [row[k] for k, _ in CRITERIA]
                failed[ci, pi] = not np.isfinite(row["folding_percent"]) or row["folding_percent"] > max_folding_percent
            except DeepLungRegError as exc:
                row.update(error=str(exc), seconds=time.perf_counter() - t0)
                failed[ci, pi] = True
            rows.append(row)
            say(f"candidate {ci + 1}/{len(combos)} on {name}: "
                + (f"TRE {row['tre_mean']:.2f} mm (95th {row['tre_p95']:.2f}), {row['seconds']:.0f} s" if "tre_mean" in row else f"failed: {row['error']}"))
    if failed.all():
        raise DeepLungRegError("tune: every candidate failed or folded on every pair; see the rows for the reasons")
    ranks = rank_candidates(scores, failed)
    order = np.argsort(ranks, kind="stable")
    ranking = []
    for ci in order:
        ok = ~failed[ci]
        ranking.append({"candidate": int(ci), "mean_rank": round(float(ranks[ci]), 3),
                        **{k: _plain(v) for k, v in combos[ci].items()},
                        **{k: (round(float(scores[ci, ok, j].mean()), 3) if ok.any() else None) for j, (k, _) in enumerate(CRITERIA)},
                        "failed_pairs": int(failed[ci].sum()),
                        "seconds": round(float(np.mean([r["seconds"] for r in rows if r["candidate"] == ci])), 1)})
    best = combos[int(order[0])]
    config = spec.config_cls.from_dict({**base, **best}).to_dict()
    return TuneResult(method, best, config, rows, ranking)


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def write_tune_result(result: TuneResult, path: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write the winning config (``path``, JSON readable by ``register --config``) and the
    ranking as ``<stem>_tuning.md`` and ``<stem>_tuning.json`` beside it."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise DeepLungRegError(f"tune: the config file must end in .json, got {path.name}")
    md = path.with_name(path.stem + "_tuning.md")
    js = path.with_name(path.stem + "_tuning.json")
    for p in (path, md, js):
        if p.exists() and not overwrite:
            raise DeepLungRegError(f"tune: {p} exists; choose another name or pass --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"method": result.method, "config": result.config,
                                "tuned": {k: _plain(v) for k, v in result.best.items()}}, indent=2, default=_plain) + "\n")
    js.write_text(json.dumps({"method": result.method, "ranking": result.ranking, "runs": result.rows}, indent=2, default=float) + "\n")
    keys = list(result.best)
    head = ["rank", *keys, "mean rank", "TRE mean", "TRE p95", "SD log J", "failed", "s/run"]
    lines = [f"# Tuning {result.method}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(result.ranking, 1):
        vals = [str(i), *(json.dumps(r[k]) for k in keys), f"{r['mean_rank']:.2f}",
                *(f"{r[k]:.3f}" if r[k] is not None else "–" for k in ("tre_mean", "tre_p95", "sd_log_j")),
                str(r["failed_pairs"]), f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(vals) + " |")
    md.write_text("\n".join(lines) + "\n")
    return [path, md, js]
