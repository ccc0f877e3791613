"""Leave-one-CT-out selection and per-CT tables from ``deeplungreg benchmark`` runs on simulated pairs.

    python scripts/loco.py bench-output/loco [MORE_RUN_FOLDERS ...] [--candidates convex,embed] [--md out.md]
        [--rename FOLDER:METHOD=NAME ...] [--ratio A/B ...]

Each run folder is a benchmark output: its ``runs/*/result.json`` (per-landmark errors; read also while the
benchmark is still running) or ``results.json``. Pair names are those of
``benchmark --simulated``: ``CT_AMPLITUDE_sSEED_SPACINGmm`` (``_exhale-fixed`` for the other direction).

Printed (Markdown):

1. **Per CT**: for every CT, amplitude and direction, each method's TRE mean and p95 over the landmarks of
   all seeds pooled, the worst pair's folding % and the mean registration seconds.
2. **Leave one CT out**: for each CT held out, the candidate (``--candidates``, default every method that is
   not a baseline) with the lowest mean TRE over the pairs of the *other* CTs (both directions, every amplitude
   and seed; only the pairs every candidate has a result for) is chosen; its results on the held-out CT are
   reported beside the best candidate there (an
   oracle, shown only to size the gap) and ConvexAdam's two settings (where the run has them). A choice that
   holds is the same on every fold and near the oracle on each held-out CT.
3. With ``--ratio A/B``: per CT, motion and direction, method A's mean TRE and seconds divided by B's, over the
   pairs both have (the targets "mean TRE <= 0.7x ConvexAdam's best" and "time <= ConvexAdam default's"; the
   seconds compare only the pairs both ran in one run folder, beside each other).

A (pair, method) given by more than one folder is taken from the first folder that has it.

``--rename FOLDER:METHOD=NAME`` gives a method of one folder another name (``NAME`` empty: leave it out), e.g. when
two runs used one name for two settings (``convex`` before and after its default changed).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from DeepLungRegLib.benchmark.runner import kept_results  # noqa: E402  - the one reader of run_benchmark's result.json

PAIR_NAME = re.compile(r"^(?P<ct>.+)_(?P<amp>[^_]+)_s(?P<seed>\d+)_(?P<spacing>[\d.]+)mm(?P<exhale>_exhale-fixed)?$")
BASELINES = ("convexadam", "convexadam-best", "elastix")


def _measurements(folder: Path):
    """``(pair, method, result)`` of a benchmark run: from each run's ``runs/*/result.json`` (also while the run
    is going on, or after it was interrupted), else from ``results.json`` (runs made before those files)."""
    kept = kept_results(folder)
    if kept:
        for k in kept:
            yield k["pair"], k["method"], k["result"]
    elif (folder / "results.json").is_file():
        for key, r in json.loads((folder / "results.json").read_text()).items():
            pair, method = key.split("__", 1)
            yield pair, method, r


def read_runs(folders: list[Path], rename: dict[tuple[str, str], str] | None = None) -> list[dict]:
    """One record per (pair, method): CT, amplitude, seed, direction, per-landmark errors, folding, seconds, and
    the run folder it came from. ``rename[(folder, method)]`` names a folder's method otherwise (``""``: left out).
    A (pair, method), after ``rename``, that an earlier folder already gave a result for is left out (the first
    folder wins; said on stderr), so that a pair re-run elsewhere, e.g. to be timed beside a baseline, is not
    counted twice; a failed or incomplete result does not count as given."""
    out = []
    seen: set[tuple[str, str]] = set()
    repeated = defaultdict(int)
    rename = {(str(Path(f).resolve()), m): n for (f, m), n in (rename or {}).items()}
    for folder in folders:
        for pair, method, r in _measurements(folder):
            method = rename.get((str(Path(folder).resolve()), method), method)
            if not method:
                continue
            m = PAIR_NAME.match(pair)
            if m is None:
                continue
            if "error" in r:
                print(f"loco: {pair} {method} failed: {r['error']}", file=sys.stderr)
                continue
            errors = r.get("tre_after_per_landmark")
            if errors is None:
                continue
            if (pair, method) in seen:
                repeated[(str(folder), method)] += 1
                continue
            seen.add((pair, method))
            out.append({"ct": m["ct"], "amp": m["amp"], "seed": int(m["seed"]), "spacing": m["spacing"],
                        "direction": "exhale fixed" if m["exhale"] else "inhale fixed", "method": method,
                        "errors": np.asarray(errors, float), "folding": float(r.get("folding_percent") or 0.0),
                        "seconds": float(r.get("registration_s") or "nan"), "run": str(Path(folder).resolve())})
    for (folder, method), k in sorted(repeated.items()):
        print(f"loco: {folder}: {k} result(s) of {method} left out, an earlier folder has those pairs", file=sys.stderr)
    return out


def pooled(records: list[dict]) -> dict:
    e = np.concatenate([r["errors"] for r in records]) if records else np.zeros(0)
    return {"mean": float(e.mean()) if e.size else float("nan"), "p95": float(np.percentile(e, 95)) if e.size else float("nan"),
            "folding": max((r["folding"] for r in records), default=float("nan")),
            "seconds": float(np.mean([r["seconds"] for r in records])) if records else float("nan"),
            "pairs": len(records), "seeds": sorted({r["seed"] for r in records})}


def per_ct_table(recs: list[dict], methods: list[str]) -> list[str]:
    lines = ["| CT | motion | fixed | seeds | " + " | ".join(f"{m} mean / p95" for m in methods) + " | time (s) per method |",
             "|---|---|---|---|" + "---|" * len(methods) + "---|"]
    groups = defaultdict(list)
    for r in recs:
        groups[(r["ct"], r["amp"], r["direction"])].append(r)
    for (ct, amp, direction) in sorted(groups):
        g = groups[(ct, amp, direction)]
        cells, times, seeds = [], [], set()
        stats = [pooled([r for r in g if r["method"] == m]) for m in methods]
        seeds = set().union(*(p["seeds"] for p in stats))
        for p in stats:
            only = f" (seed {','.join(map(str, p['seeds']))})" if p["seeds"] and set(p["seeds"]) != seeds else ""
            cells.append(f"{p['mean']:.2f} / {p['p95']:.2f}" + (f" (fold {p['folding']:.3f} %)" if p["folding"] > 0.0 else "") + only)
            times.append(f"{p['seconds']:.0f}")
        lines.append(f"| {ct} | {amp} | {direction.split()[0]} | {','.join(map(str, sorted(seeds)))} | " + " | ".join(cells)
                     + " | " + " / ".join(times) + " |")
    return lines


def pair_key(r: dict) -> tuple:
    return r["ct"], r["amp"], r["seed"], r.get("spacing"), r["direction"]


def common_pairs(recs: list[dict], methods: list[str]) -> list[dict]:
    """The records of the pairs that every one of ``methods`` has a result for (a fair comparison while a run is
    still going, or after one failed)."""
    have = {m: {pair_key(r) for r in recs if r["method"] == m} for m in methods}
    shared = set.intersection(*have.values()) if have else set()
    return [r for r in recs if pair_key(r) in shared]


def loco_table(recs: list[dict], candidates: list[str]) -> tuple[list[str], dict[str, str]]:
    recs = common_pairs(recs, candidates) + [r for r in recs if r["method"] in BASELINES]
    cts = sorted({r["ct"] for r in recs})
    base = [b for b in BASELINES if any(r["method"] == b for r in recs)]
    head = "| held-out CT | chosen on the other CTs (their mean TRE) | chosen: held-out mean / p95 by motion | best there (oracle) |"
    head += "".join(f" {b}: mean / p95 by motion |" for b in base)
    lines = [head, "|---|---|---|---|" + "---|" * len(base)]
    chosen_by = {}
    for held in cts:
        train = [r for r in recs if r["ct"] != held]
        test = [r for r in recs if r["ct"] == held]
        scores = {m: pooled([r for r in train if r["method"] == m]) for m in candidates}
        scores = {m: s for m, s in scores.items() if s["pairs"]}
        if not scores:
            continue
        chosen = min(scores, key=lambda m: (scores[m]["mean"], scores[m]["p95"]))

        def by_motion(method: str) -> str:
            parts = []
            for amp in sorted({r["amp"] for r in test if r["method"] == method}):
                p = pooled([r for r in test if r["method"] == method and r["amp"] == amp])
                parts.append(f"{amp} {p['mean']:.2f} / {p['p95']:.2f}")
            return "; ".join(parts)

        held_scores = {m: pooled([r for r in test if r["method"] == m]) for m in candidates}
        present = [m for m in held_scores if held_scores[m]["pairs"]]
        if not present:  # (a run still going: no pair of this CT that every candidate has yet)
            continue
        oracle = min(present, key=lambda m: held_scores[m]["mean"])
        chosen_by[held] = chosen
        row = (f"| {held} | {chosen} ({scores[chosen]['mean']:.2f}) | {by_motion(chosen)} | {oracle} "
               f"({held_scores[oracle]['mean']:.2f}; chosen {held_scores[chosen]['mean']:.2f}) |")
        row += "".join(f" {by_motion(b)} |" for b in base)
        lines.append(row)
    return lines, chosen_by


def ratio_table(recs: list[dict], a: str, b: str) -> list[str]:
    """Per CT, motion and direction: ``a``'s mean TRE over ``b``'s, on the pairs both have, and ``a``'s mean
    seconds over ``b``'s on those of the pairs both ran in one run folder (timed side by side; a time from
    another run, on a machine loaded otherwise, is not compared). A folder continued with ``--resume`` in
    another session holds times of both sessions: one folder is then only an approximation of "side by side"."""
    recs = common_pairs([r for r in recs if r["method"] in (a, b)], [a, b])
    run_of = {(pair_key(r), r["method"]): r.get("run") for r in recs}
    together = {pair_key(r) for r in recs if run_of.get((pair_key(r), a)) == run_of.get((pair_key(r), b))}
    lines = [f"| CT | motion | fixed | pairs | mean TRE {a} / {b} | ratio | pairs timed in one run | seconds {a} / {b} | ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    groups = defaultdict(list)
    for r in recs:
        groups[(r["ct"], r["amp"], r["direction"])].append(r)
    keys = sorted(groups) + [("**all**", "", "")]
    for key in keys:
        g = recs if key[0] == "**all**" else groups[key]
        pa, pb = (pooled([r for r in g if r["method"] == m]) for m in (a, b))
        if not pa["pairs"]:
            continue
        ta, tb = (pooled([r for r in g if r["method"] == m and pair_key(r) in together]) for m in (a, b))
        timed = (f"{ta['pairs']} | {ta['seconds']:.0f} / {tb['seconds']:.0f} | {ta['seconds'] / tb['seconds']:.2f}" if ta["pairs"]
                 else "0 | – | –")
        lines.append(f"| {key[0]} | {key[1]} | {key[2].split(' ')[0]} | {pa['pairs']} | {pa['mean']:.2f} / {pb['mean']:.2f} | "
                     f"{pa['mean'] / pb['mean']:.2f} | {timed} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="benchmark output folders")
    ap.add_argument("--candidates", default="", help="comma-separated methods to choose among (default: every non-baseline)")
    ap.add_argument("--md", type=Path, help="also write the tables to this Markdown file")
    ap.add_argument("--rename", action="append", default=[], metavar="FOLDER:METHOD=NAME",
                    help="name a method of one folder otherwise (NAME empty: leave it out)")
    ap.add_argument("--ratio", action="append", default=[], metavar="A/B", help="method A's mean TRE and time over B's, per CT")
    args = ap.parse_args()
    rename = {}
    for item in args.rename:  # FOLDER is one of the run folders as given (a method name may hold ':' and '=')
        folder = next((str(f) for f in args.runs if item.startswith(f"{f}:")), None)
        method, eq, name = item[len(folder or "") + 1:].rpartition("=")
        if folder is None or not eq or not method:
            print(f"loco: --rename {item!r} must look like FOLDER:METHOD=NAME, FOLDER one of the run folders", file=sys.stderr)
            return 2
        rename[(folder, method)] = name
    recs = read_runs(args.runs, rename)
    if not recs:
        print("loco: no simulated pair with per-landmark errors in these runs", file=sys.stderr)
        return 2
    methods = sorted({r["method"] for r in recs}, key=lambda m: (m in BASELINES, m))
    candidates = [c for c in args.candidates.split(",") if c] or [m for m in methods if m not in BASELINES]
    missing = [c for c in candidates if c not in methods]
    if missing:
        print(f"loco: no results for candidate(s) {', '.join(missing)}; found {', '.join(methods)}", file=sys.stderr)
        return 2
    cts = sorted({r["ct"] for r in recs})
    out = [f"{len(recs)} registrations, {len(cts)} CTs ({', '.join(cts)}); TRE in mm over the landmarks of all seeds pooled.",
           "", "### Per CT", ""]
    out += per_ct_table(recs, methods)
    lines, chosen = loco_table(recs, candidates)
    out += ["", "### Leave one CT out", "", f"Candidates: {', '.join(candidates)}.", ""] + lines
    verdict = set(chosen.values())
    skipped = [ct for ct in cts if ct not in chosen]
    if not chosen:
        out += ["", "No fold has a pair of its held-out CT that every candidate has a result for."]
    else:
        out += ["", ("The same method is chosen on every fold: " + next(iter(verdict))) if len(verdict) == 1
                else "The choice differs between folds: " + ", ".join(f"{k} -> {v}" for k, v in chosen.items())]
    if chosen and skipped:
        out[-1] += f" (no row for {', '.join(skipped)}: no pair there, or none elsewhere, that every candidate has)"
    for pair in args.ratio:
        a, _, b = pair.partition("/")
        if a not in methods or b not in methods:
            print(f"loco: --ratio {pair!r}: no results for {a if a not in methods else b!r}", file=sys.stderr)
            return 2
        out += ["", f"### {a} against {b}", ""] + ratio_table(recs, a, b)
    text = "\n".join(out)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
