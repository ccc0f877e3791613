"""Registering a 4D-CT: every phase to a reference phase, one phase after another.

:func:`register_sequence` finds each phase's lung volume (automatic lung mask), takes the phase with the
smallest as the reference (end-exhale) unless one is chosen, and registers every other phase to it with
:func:`~DeepLungRegLib.pipeline.run_registration` into ``OUT/phase_XX/`` (the reference image is fixed,
the phase moving: ``x_phase = x_ref + u(x_ref)``). It holds the reference, one phase and one field at a
time. It ends with ``OUT/sequence.json`` (the reference, each phase's folder, lung volume, TRE where
landmarks are given, timings) and ``OUT/volume_curve.csv``.

With ``start="neighbour"`` the phases are registered outward from the reference, each starting from the
field of its neighbour one step nearer the reference (read back from that phase's folder; the phases are a
cycle, so the last phase neighbours the first); ``start="reference"`` (the default) registers each phase
from scratch. Where landmarks are given, ``OUT/trajectories.csv`` holds each reference landmark's true and
registered position in every phase.

Each phase folder is written as one ``register`` run: complete or absent. A cancel or an interrupt
leaves the phases done so far, complete, and no partial one; ``sequence.json`` appears only at the end.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DeepLungRegError, RegistrationCancelled
from ..io.fields import read_field
from ..io.landmarks import read_landmarks
from ..io.outputs import RECORD_KEY, OutputFolder, check_output_path, replace_problems, same_file
from ..io.phases import Phases, natural_key
from ..io.roles import ROLES
from ..io.runs import RunFolder
from ..memory import peak_rss_mb
from ..options import DEFAULT_METHOD
from ..segmentation import lung_mask

log = logging.getLogger(__name__)

SEQUENCE_FILE = "sequence.json"
VOLUME_FILE = "volume_curve.csv"
TRAJECTORY_FILE = "trajectories.csv"
#: The report's files (``report=True``): kept in step with :data:`DeepLungRegLib.report.sequence.SEQUENCE_REPORT_FILES`,
#: named here so that the overwrite check knows them without importing matplotlib.
REPORT_FILES = ("volume_curve.png", "tre_per_phase.png", "trajectories.png", "report.html")
#: How each phase's registration starts: from scratch, or from its neighbour's field (nearer the reference).
STARTS = ("reference", "neighbour")
#: Files a landmark folder may hold, one per phase.
LANDMARK_SUFFIXES = (".pts", ".csv", ".txt", ".fcsv", ".mrk.json")


def phase_folder(index: int) -> str:
    """The output folder of phase ``index``: ``phase_00``, ``phase_01``, ..."""
    return f"phase_{index:02d}"


def _stem(name: str) -> str:
    low = name.lower()
    for s in sorted(LANDMARK_SUFFIXES, key=len, reverse=True):
        if low.endswith(s):
            return name[: -len(s)]
    return name


def _first_number(name: str) -> int | None:
    m = re.search(r"\d+", name)
    return int(m.group()) if m else None


def match_landmark_files(folder: str | os.PathLike, names: tuple[str, ...] | list[str]) -> dict[int, Path]:
    """The landmark file of each phase in ``folder``: ``{phase index: file}``.

    A file goes to the phase of the same name (``phase_03.csv`` to ``phase_03``); else files and phases are
    paired by their first number where every file's number is a phase's (POPI's ``00-Landmarks.pts`` ... ``90-Landmarks.pts``
    to phases ``00`` ... ``90``); else, as many files as phases, in natural order.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DeepLungRegError(f"sequence: the landmark folder {folder} {'is not a folder' if folder.exists() else 'does not exist'}")
    files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.name.lower().endswith(LANDMARK_SUFFIXES)), key=lambda p: natural_key(p.name))
    if not files:
        raise DeepLungRegError(f"sequence: the landmark folder {folder} holds no landmark files ({', '.join(LANDMARK_SUFFIXES)})")
    by_stem: dict[str, Path] = {}
    for p in files:
        if _stem(p.name) in by_stem:  # one phase's points in two files: which one would be a silent choice
            raise DeepLungRegError(f"sequence: the landmark folder {folder} holds {by_stem[_stem(p.name)].name} and {p.name}; "
                                   "keep one file per phase")
        by_stem[_stem(p.name)] = p
    if any(n in by_stem for n in names):
        return {i: by_stem[n] for i, n in enumerate(names) if n in by_stem}
    fnum = [_first_number(_stem(p.name)) for p in files]
    pnum = [_first_number(n) for n in names]
    if None not in fnum and None not in pnum and len(set(fnum)) == len(fnum) and len(set(pnum)) == len(pnum) and set(fnum) <= set(pnum):
        at = {n: p for n, p in zip(fnum, files)}
        return {i: at[n] for i, n in enumerate(pnum) if n in at}
    if len(files) == len(names):
        return dict(enumerate(files))
    raise DeepLungRegError(f"sequence: the {len(files)} landmark files in {folder} do not match the {len(names)} phases "
                           f"({', '.join(names[:3])}, ...): name them after the phases or give one per phase")


def read_phase_landmarks(folder: str | os.PathLike, names, *, spacing=None) -> dict[int, np.ndarray]:
    """Landmarks per phase index, ``(N, 3)`` LPS mm each, all of one length (row ``n`` the same point in every phase)."""
    files = match_landmark_files(folder, names)
    out = {i: read_landmarks(p, spacing=spacing) for i, p in files.items()}
    lengths = {i: len(v) for i, v in out.items()}
    if len(set(lengths.values())) > 1:
        i, j = sorted(lengths, key=lambda k: lengths[k])[0], sorted(lengths, key=lambda k: lengths[k])[-1]
        raise DeepLungRegError(f"sequence: landmark files hold different numbers of points ({files[i].name}: {lengths[i]}, "
                               f"{files[j].name}: {lengths[j]}); row n must be the same point in every phase")
    return out


def _check_phase_folders(out: Path, n: int, overwrite: bool, inputs) -> None:
    """Refuse, before any work, a phase folder that a run would have to replace without leave."""
    from ..pipeline import ALL_OUTPUT_FILES

    for i in range(n):
        folder = out / phase_folder(i)
        if os.path.islink(folder):
            raise DeepLungRegError(f"sequence: {folder} is a symlink; a run writes its phase folders itself")
        if folder.exists() and not folder.is_dir():
            raise DeepLungRegError(f"sequence: {folder} is a file; a run writes a phase folder there")
        if folder.is_dir():
            problems, _ = replace_problems(folder, ALL_OUTPUT_FILES, overwrite=overwrite, records=RunFolder.records_in(folder),
                                           inputs=inputs)
            if problems:
                raise DeepLungRegError(f"sequence: {problems[0]}")


def _remove_earlier_run(folder: Path, inputs) -> bool:
    """Remove an earlier run's phase folder (the reference's now: it has no registration), where every file in it is
    one that run wrote, unchanged; anything else keeps the folder. Returns whether it went."""
    from ..pipeline import ALL_OUTPUT_FILES

    if not folder.is_dir() or os.path.islink(folder):
        return False
    problems, ours = replace_problems(folder, ALL_OUTPUT_FILES, overwrite=True, records=RunFolder.records_in(folder), inputs=inputs)
    if problems or not ours:
        return False
    for name in sorted(ours, key=lambda n: n == "metrics.json"):  # the record last
        (folder / name).unlink()
    try:
        folder.rmdir()
    except OSError:
        return False  # something else lives there: it stays
    return True


def registration_order(n: int, reference: int, start: str) -> list[tuple[int, int | None]]:
    """``(phase, start phase or None)`` in the order the phases are registered.

    ``"reference"``: every other phase in index order, none with a start. ``"neighbour"``: outward from the
    reference around the cycle (``reference + 1``, ``reference - 1``, ``reference + 2``, ...), each starting from
    the phase one step nearer the reference (the reference's own neighbours start from nothing).
    """
    if start not in STARTS:
        raise DeepLungRegError(f"sequence: start must be one of {', '.join(STARTS)}, got {start!r}")
    if start == "reference":
        return [(i, None) for i in range(n) if i != reference]
    order, seen = [], {reference}
    for d in range(1, n):
        for step in (1, -1):
            i = (reference + step * d) % n
            if i in seen:
                continue
            seen.add(i)
            nearer = (i - step) % n
            order.append((i, None if nearer == reference else nearer))
    return order


def _trajectory_rows(names, ref: int, landmarks: dict[int, np.ndarray], mapped: dict[int, np.ndarray]) -> list[list]:
    """Rows of ``trajectories.csv``: per landmark and phase, the true and the registered position (LPS mm)."""
    rows = []
    ref_points = landmarks[ref]
    for i in sorted(set(landmarks) | set(mapped) | {ref}):
        truth = landmarks.get(i)
        pred = ref_points if i == ref else mapped.get(i)
        for n in range(len(ref_points)):
            t = truth[n] if truth is not None else (np.nan,) * 3
            p = pred[n] if pred is not None else (np.nan,) * 3
            err = float(np.linalg.norm(np.subtract(p, t))) if truth is not None and pred is not None else np.nan
            rows.append([n, i, names[i], *(round(float(v), 4) for v in t), *(round(float(v), 4) for v in p),
                         "" if np.isnan(err) else round(err, 4)])
    return rows


def register_sequence(
    phases: Phases,
    outdir: str | os.PathLike,
    *,
    reference: int | None = None,
    method: str = DEFAULT_METHOD,
    options: dict | None = None,
    device: str = "auto",
    landmarks: dict[int, np.ndarray] | None = None,
    start: str = "reference",
    overwrite: bool = False,
    report: bool = False,
    progress: Callable[[str, float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> dict:
    """Register every phase of ``phases`` to the reference phase; returns the summary written to ``sequence.json``.

    Args:
        phases: the 4D-CT (:func:`~DeepLungRegLib.io.phases.read_phases`).
        outdir: the output folder: ``phase_XX/`` per registered phase, ``sequence.json``, ``volume_curve.csv``.
        reference: the reference phase's index; ``None``: the phase with the smallest lung volume (end-exhale).
        method, options, device: the registration's (as for ``deeplungreg register``).
        landmarks: ``{phase index: (N, 3) LPS mm}``, for TRE per phase (those of the reference and of a phase)
            and the trajectories (``trajectories.csv``).
        start: ``"reference"`` (each phase from scratch) or ``"neighbour"`` (each phase from the field of its
            neighbour nearer the reference; see :func:`registration_order`).
        overwrite: replace an earlier run's own files (those unchanged since), never anything else; an earlier run's
            folder of the phase that is now the reference goes (when it holds only that run's files, unchanged).
        report: write ``report.html`` (volume curve, TRE per phase, trajectories) and each phase's (needs matplotlib).
        progress: ``progress(stage, fraction)``; the stage names the phase.
        cancel: returns True to stop (:class:`~DeepLungRegLib.errors.RegistrationCancelled`).
    """
    from ..methods import get_method
    from ..pipeline import RegistrationJob, run_registration

    n = len(phases)
    names = phases.names
    say = progress or (lambda stage, fraction: None)
    stop = cancel or (lambda: False)
    if reference is not None and not (isinstance(reference, (int, np.integer)) and 0 <= reference < n):
        raise DeepLungRegError(f"sequence: --reference must be a phase index from 0 to {n - 1}, got {reference}")
    config = get_method(method).make_config(options)  # a bad option: now, before the lung masks
    registration_order(n, 0, start)  # a bad start: now
    landmarks = landmarks or {}
    for i in landmarks:
        if not 0 <= i < n:
            raise DeepLungRegError(f"sequence: landmarks given for phase {i}, but the phases are 0 to {n - 1}")
    out = check_output_path(outdir, "sequence")
    inputs = [str(phases.source)]
    if Path(phases.source).is_dir() and out.exists() and same_file(out, phases.source):
        # its phase_XX/ would be written into the user's folder, into its DICOM phase folders where they bear those names
        raise DeepLungRegError(f"sequence: the output folder {out} is the 4D-CT's own folder; choose another (a sub-folder will do)")
    _check_phase_folders(out, n, overwrite, inputs)
    t_start = time.perf_counter()
    if report:
        from ..report.sequence import write_sequence_report  # matplotlib only where a report is written
    with OutputFolder(out, (SEQUENCE_FILE, VOLUME_FILE, TRAJECTORY_FILE, *REPORT_FILES), overwrite=overwrite, owner="sequence", inputs=inputs,
                      record_file=SEQUENCE_FILE) as top:
        # 1. lung volume per phase (one phase in memory at a time)
        volumes: list[float | None] = []
        for i in range(n):
            if stop():
                raise RegistrationCancelled("sequence: cancelled")
            say(f"lung volume of phase {names[i]} ({i + 1}/{n})", 0.1 * i / n)
            image, mask = phases[i], None
            try:
                mask = lung_mask(image)
                volumes.append(float(np.count_nonzero(mask.array) * image.geometry.voxel_volume_ml))
            except DeepLungRegError as exc:
                if reference is None:
                    raise DeepLungRegError(f"sequence: no lung mask in phase {names[i]} ({exc}); choose the reference with --reference") from exc
                log.warning("no lung mask in phase %s (%s): its lung volume is unknown", names[i], exc)
                volumes.append(None)
            del image, mask
        ref = int(np.argmin(volumes)) if reference is None else int(reference)
        rule = "given" if reference is not None else "smallest lung volume (end-exhale)"
        if ref not in landmarks and landmarks:
            log.warning("no landmarks for the reference phase %s: no TRE per phase", names[ref])
        ref_image = phases[ref]
        ref_mask = lung_mask(ref_image) if volumes[ref] is not None else "auto"
        # 2. every other phase to the reference, one after another
        order = registration_order(n, ref, start)
        rows: list[dict] = []
        mapped: dict[int, np.ndarray] = {}
        for k, (i, begin) in enumerate(order):
            if stop():
                raise RegistrationCancelled("sequence: cancelled")
            base, span = 0.1 + 0.88 * k / len(order), 0.88 / len(order)  # the phases to 0.98, then the summary
            label = f"phase {names[i]} ({k + 1}/{len(order)})"
            say(f"{label}: reading", base)
            moving = phases[i]
            with_lm = ref in landmarks and i in landmarks
            job = RegistrationJob(ref_image, moving, method, ref_mask, "auto", landmarks[ref] if with_lm else None,
                                  landmarks[i] if with_lm else None, config=config, device=device)
            del moving
            initial = None if begin is None else read_field(out / phase_folder(begin) / ROLES["transform"].file)
            info = {"phase": i, "name": names[i], "reference": ref, "reference_name": names[ref],
                    "start": None if begin is None else phase_folder(begin)}
            metrics = run_registration(job, out / phase_folder(i), overwrite=overwrite, report=report, cancel=cancel,
                                       progress=lambda stage, f, label=label, base=base, span=span: say(f"{label}: {stage}", base + span * f),
                                       extra_metrics={"sequence": info}, initial_field=initial)
            del job, initial
            row = {"index": i, "name": names[i], "folder": phase_folder(i), "lung_volume_ml": volumes[i],
                   "start": info["start"], "registration_s": metrics["timings_s"].get("total"),
                   "jacobian": {k2: metrics["jacobian"][k2] for k2 in ("folding_percent", "sd_log_j", "min_j", "max_j")}}
            if with_lm:
                row["tre_before"], row["tre_after"] = metrics["tre_before"], metrics["tre_after"]
                mapped[i] = np.asarray(metrics["landmarks"]["mapped_lps"], float)
            rows.append(row)
            log.info("%s registered in %.1f s", label, metrics["timings_s"].get("total", float("nan")))
        del ref_image, ref_mask
        # 3. the summary
        say("volume curve", 0.99)
        known = [v for v in volumes if v is not None]
        phase_rows = sorted(rows + [{"index": ref, "name": names[ref], "folder": None, "lung_volume_ml": volumes[ref],
                                     "reference": True}], key=lambda r: r["index"])
        inhale = int(np.nanargmax([np.nan if v is None else v for v in volumes])) if known else None
        summary = {"source": str(phases.source), "phases": phase_rows, "n_phases": n,
                   "reference": ref, "reference_name": names[ref], "reference_rule": rule, "start": start,
                   "method": method, "options": json.loads(json.dumps(config.to_dict())),
                   "device": device, "lung_volume_ml": volumes,
                   "tidal_volume_ml": (max(known) - min(known)) if len(known) > 1 else None,
                   "end_inhale": inhale, "end_exhale": int(np.nanargmin([np.nan if v is None else v for v in volumes])) if known else None,
                   # the end-inhale phase's registration to the reference holds the ventilation maps (its Jacobian and HU
                   # ventilation); between end-inhale and end-exhale exactly when the reference is the end-exhale phase
                   "ventilation_folder": phase_folder(inhale) if inhale is not None and inhale != ref else None,
                   "field_convention": "phase_XX/displacement.nii.gz: x_phase = x_ref + u(x_ref), mm LPS, on the reference grid",
                   "total_s": round(time.perf_counter() - t_start, 3),
                   "peak_rss_mb": peak_rss_mb()}  # this process's peak so far (None where the platform cannot tell)
        if any("tre_after" in r for r in rows):
            after = [r["tre_after"]["mean"] for r in rows if "tre_after" in r]
            before = [r["tre_before"]["mean"] for r in rows if "tre_before" in r]
            summary["tre_mean_before"], summary["tre_mean_after"] = float(np.mean(before)), float(np.mean(after))
        with open(top.path(VOLUME_FILE), "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "name", "lung_volume_ml"])
            for i in range(n):
                w.writerow([i, names[i], "" if volumes[i] is None else round(volumes[i], 3)])
            w.writerow(["", "tidal_volume_ml", "" if summary["tidal_volume_ml"] is None else round(summary["tidal_volume_ml"], 3)])
        traj: list[dict] = []
        if ref in landmarks:
            header = ["landmark", "index", "name", "true_x", "true_y", "true_z", "registered_x", "registered_y", "registered_z",
                      "error_mm"]
            traj = [dict(zip(header, row)) for row in _trajectory_rows(names, ref, landmarks, mapped)]
            with open(top.path(TRAJECTORY_FILE), "w", newline="") as fh:
                w = csv.DictWriter(fh, header)
                w.writeheader()
                w.writerows(traj)
            summary["trajectories"] = TRAJECTORY_FILE
        if report:
            say("report", 0.995)
            summary["report"] = write_sequence_report(top.path, summary, traj)
        summary[RECORD_KEY] = top.records()
        top.path(SEQUENCE_FILE).write_text(json.dumps(summary, indent=2))
        top.commit()
        if overwrite and _remove_earlier_run(out / phase_folder(ref), inputs):
            log.info("removed %s, an earlier run's registration of the phase that is now the reference", phase_folder(ref))
    say("done", 1.0)
    summary.pop(RECORD_KEY, None)
    return summary


def summary_lines(summary: dict) -> list[str]:
    """What ``deeplungreg sequence`` prints at the end: the reference, the volume curve, TRE per phase."""
    lines = [f"reference phase {summary['reference_name']} (index {summary['reference']}, {summary['reference_rule']})"]
    vols = ", ".join("?" if v is None else f"{v:.0f}" for v in summary["lung_volume_ml"])
    tidal = summary["tidal_volume_ml"]
    lines.append(f"lung volume per phase (mL): {vols}; tidal volume {'unknown' if tidal is None else f'{tidal:.0f} mL'}")
    for r in summary["phases"]:
        if "tre_after" in r:
            b, a = r["tre_before"], r["tre_after"]
            lines.append(f"  {r['name']}: TRE {b['mean']:.2f} -> {a['mean']:.2f} mm (n = {a['n']}), folding "
                         f"{r['jacobian']['folding_percent']:.3f} %, {r['registration_s']:.1f} s")
        elif not r.get("reference"):
            lines.append(f"  {r['name']}: folding {r['jacobian']['folding_percent']:.3f} %, {r['registration_s']:.1f} s")
    return lines
