"""The ``deeplungreg`` command line.

Every user error ends in one line ``deeplungreg: error: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import warnings
import time
from pathlib import Path

import numpy as np

from . import __version__
from .data import sample_path
from .errors import DeepLungRegError, RegistrationCancelled, Terminated
from .options import DEFAULT_METHOD

SAMPLE = sample_path()  # the demo CT, package data (DeepLungRegLib/data/sample)


class _Progress:
    """A tqdm bar fed by ``progress(stage, fraction)`` callbacks (no bar where tqdm is not installed,
    e.g. Slicer's Python). Where no bar is shown (``-q``, stderr not a terminal, no tqdm), each new stage is
    logged at INFO instead, which ``-v`` shows: a log file or a CI job still sees where a long run is."""

    def __init__(self, desc: str, enabled: bool = True):
        self.desc, self.stage = desc, None
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
            return
        self.bar = tqdm(total=100, desc=desc, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} [{postfix}]", disable=not (enabled and sys.stderr.isatty()), file=sys.stderr)

    def __call__(self, stage: str, fraction: float) -> None:
        if self.bar is None or self.bar.disable:
            if stage != self.stage:
                self.stage = stage
                logging.getLogger("DeepLungRegLib.cli").info("%s: %s (%.0f %%)", self.desc, stage, 100 * min(max(fraction, 0.0), 1.0))
            return
        self.bar.set_postfix_str(stage, refresh=False)
        self.bar.n = int(round(100 * min(max(fraction, 0.0), 1.0)))
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def _parse_options(pairs: list[str] | None, config_file: str | None, method: str, command: str = "register") -> dict:
    """The method options of a command: ``--config``'s file, then ``-O``'s. A saved file's old option names
    are read as the new ones (with a ``DeprecationWarning``); ``-O`` takes the current names only."""
    from .methods import get_method
    from .methods.base import parse_options
    from .options import read_config_document

    options = get_method(method).config_cls
    cfg: dict = {}
    if config_file:
        saved, written_for = read_config_document(config_file, command)
        cfg = options.current_names(saved)
        if written_for and written_for != method:
            raise DeepLungRegError(f"{command}: {config_file} holds options of method {written_for!r}, not {method!r}; pass --method {written_for}")
    typed = parse_options(pairs, command)
    options.refuse_old_names(typed, command, "-O {name}=VALUE")
    cfg.update(typed)
    return cfg


class _Removed(argparse.Action):
    """A flag of an earlier version: hidden from ``--help`` and refused in one line that names its replacement."""

    def __init__(self, option_strings, dest, use: str, **kwargs):
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.use = use

    def __call__(self, parser, namespace, values, option_string=None):
        command = parser.prog.split()[-1]
        parser.exit(2, f"deeplungreg: error: {command}: {option_string} is no longer an option; use {self.use}\n")


def numbers(command: str, text: str, kind: type, what: str) -> tuple:
    """A comma list of numbers from an option; a bad entry is a one-line error naming the option."""
    try:
        return tuple(kind(v) for v in text.split(","))
    except ValueError as exc:
        raise DeepLungRegError(f"{command}: {what}, got {text!r}") from exc


def cmd_methods(args) -> int:
    from .methods import available_methods, method_settings

    for name, desc in available_methods().items():
        print(f"{name:10s} {desc}")
        if args.options or args.verbose:
            for opt in method_settings(name):
                print(f"           {opt['name']} = {json.dumps(opt['default'])}  {opt['help']}")
    return 0


def cmd_register(args) -> int:
    from .pipeline import RegistrationJob, run_registration, summary_lines

    job = RegistrationJob.from_files(
        args.fixed, args.moving, method=args.method, fixed_mask=args.fixed_mask, moving_mask=args.moving_mask,
        fixed_landmarks=args.fixed_landmarks, moving_landmarks=args.moving_landmarks, spacing=args.spacing,
        options=_parse_options(args.option, args.config, args.method), device=args.device)
    with _Progress(f"register ({args.method})", not args.quiet) as bar:
        metrics = run_registration(job, args.output, overwrite=args.overwrite, progress=bar)
    print("\n".join(summary_lines(metrics)))
    print(f"outputs in {Path(args.output).resolve()} (report: {Path(args.output).resolve() / 'report.html'})")
    return 0


def cmd_batch(args) -> int:
    from .batch import run_cohort

    if not args.verbose:  # Dask's own start/stop messages (its import sets its loggers to INFO: quiet them after it)
        try:
            import distributed  # noqa: F401
        except ImportError:
            pass  # run_cohort says how to install it
        logging.getLogger("distributed").setLevel(logging.WARNING)
    options = _parse_options(args.option, args.config, args.method, "batch")
    with _Progress(f"batch ({args.method})", not args.quiet) as bar:
        shown = {"dashboard": False}

        def progress(state: dict) -> None:
            if state.get("dashboard") and not shown["dashboard"]:
                print(f"batch: Dask dashboard at {state['dashboard']}", file=sys.stderr, flush=True)
                shown["dashboard"] = True
            ended = state["done"] + state["failed"]
            bar(f"{state['done']} done, {state['failed']} failed, {state['running']} queued or running", ended / max(state["total"], 1))

        rows = run_cohort(args.cohort, args.output, method=args.method, options=options, device=args.device,
                          scheduler=args.scheduler, workers=args.workers, retry_failed=args.retry_failed, progress=progress)
    ok = sum(r["status"] == "ok" for r in rows)
    now = sum(bool(r["registered_in_this_run"]) for r in rows)
    print(f"batch: {len(rows)} pairs, {ok} registered, {len(rows) - ok} failed ({now} run this time); "
          f"results in {(Path(args.output) / 'results.csv').resolve()}")
    return 0 if ok == len(rows) else 1


def cmd_worker(args) -> int:
    """One request (JSON: a registration, or a 4D-CT with ``"kind": "sequence"``), with progress as JSON lines on
    stdout: the child side of :class:`DeepLungRegLib.worker.WorkerProcess` (which starts ``python -m
    DeepLungRegLib.worker``, the same)."""
    from .worker import handle_request, run_request

    return run_request(handle_request, args.request)


def cmd_simulate(args) -> int:
    from .io.images import read_image
    from .simulation import simulate_breathing, write_pair
    from .transforms.resample import resample_to_spacing

    from .simulation.breathing import amplitude_parameters, check_pair_outdir

    out = Path(args.output)
    check_pair_outdir(out, args.overwrite, [args.ct])  # before the simulation's minutes of work; never over the CT
    amplitude_parameters(args.amplitude)
    if args.spacing is not None and not (np.isfinite(args.spacing) and 0.2 <= args.spacing <= 20.0):
        raise DeepLungRegError(f"simulate: --spacing must be between 0.2 and 20 mm, got {args.spacing:g}")
    ct = read_image(args.ct, what=f"CT {args.ct}")
    if args.spacing is not None:
        ct = resample_to_spacing(ct, args.spacing, fill=-1024.0)
    with _Progress(f"simulate ({args.amplitude})", not args.quiet) as bar:
        pair = simulate_breathing(ct, amplitude=args.amplitude, seed=args.seed, noise_hu=args.noise, n_landmarks=args.landmarks, progress=bar)
    if args.reverse:
        pair = pair.reversed()
    write_pair(pair, out, overwrite=args.overwrite, source=str(args.ct))
    i = pair.info
    print(f"simulated {args.amplitude} pair (seed {args.seed}{', reversed: the exhale is fixed' if args.reverse else ''}): mean lung displacement {i['mean_lung_displacement_mm']:.1f} mm, "
          f"max {i['max_lung_displacement_mm']:.1f} mm, min Jacobian {i['min_jacobian']:.2f}, {i['n_landmarks']} landmarks")
    print(f"written to {out.resolve()}")
    return 0


def cmd_sequence(args) -> int:
    from .io.phases import read_phases
    from .sequence import read_phase_landmarks, register_sequence, summary_lines

    phases = read_phases(args.input, what=f"4D-CT {args.input}")
    if args.reference is not None and not 0 <= args.reference < len(phases):
        raise DeepLungRegError(f"sequence: --reference must be a phase index from 0 to {len(phases) - 1}, got {args.reference}")
    landmarks = read_phase_landmarks(args.landmarks, phases.names, spacing=args.spacing) if args.landmarks else None
    options = _parse_options(args.option, args.config, args.method, "sequence")
    if not args.quiet:
        print(f"sequence: {len(phases)} phases ({', '.join(phases.names)}) from {args.input}", file=sys.stderr, flush=True)
    with _Progress(f"sequence ({args.method})", not args.quiet) as bar:
        summary = register_sequence(phases, args.output, reference=args.reference, method=args.method, options=options,
                                    device=args.device, landmarks=landmarks, start=args.start, overwrite=args.overwrite,
                                    report=args.report, progress=bar)
    print("\n".join(summary_lines(summary)))
    print(f"outputs in {Path(args.output).resolve()} (sequence.json, volume_curve.csv, phase_XX/)")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate_field
    from .io.fields import read_field
    from .simulation import read_pair

    pair = read_pair(args.pair)
    field, geom = read_field(args.displacement)
    m = evaluate_field(pair, field, geom)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    b, a = m["tre_before"], m["tre_after"]
    print(f"TRE before {b['mean']:.2f} ± {b['std']:.2f} mm, after {a['mean']:.2f} ± {a['std']:.2f} mm (95th {a['p95']:.2f}, max {a['max']:.2f})")
    d = m["dense_error_lung"]
    print(f"dense error in lung: mean {d['mean']:.2f} mm, 95th {d['p95']:.2f} mm, max {d['max']:.2f} mm")
    print(f"lung Dice {m['lung_dice_before']:.3f} -> {m['lung_dice_after']:.3f}; folding {m['folding_percent']:.3f} %; SD log J {m['sd_log_j']:.3f}")
    return 0


def cmd_tre(args) -> int:
    from .io.fields import read_field
    from .io.landmarks import check_pairing, read_landmarks
    from .metrics import tre, tre_summary

    fp = read_landmarks(args.fixed_points, spacing=args.spacing)
    mp = read_landmarks(args.moving_points, spacing=args.spacing)
    check_pairing(fp, mp, "tre", (str(args.fixed_points), str(args.moving_points)))
    out = {"before": tre_summary(tre(fp, mp)).to_dict()}
    if args.field:
        field, geom = read_field(args.field)
        out["after"] = tre_summary(tre(fp, mp, field, geom)).to_dict()
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"TRE {k}: {v['mean']:.2f} ± {v['std']:.2f} mm (median {v['median']:.2f}, 95th {v['p95']:.2f}, max {v['max']:.2f}, n={v['n']})")
    return 0


def cmd_demo(args) -> int:
    from .io.images import read_image
    from .pipeline import RegistrationJob, run_registration, summary_lines
    from .simulation import simulate_breathing, write_pair
    from .simulation.breathing import check_pair_outdir

    sample = Path(args.sample) if args.sample else SAMPLE
    if not sample.exists():
        raise DeepLungRegError(f"demo: the bundled sample {sample} is missing; reinstall or pass --sample CT")
    out = Path(args.output)
    check_pair_outdir(out / "pair", True, [sample])  # an earlier demo's pair may go, nothing else (before the work)
    from .io.outputs import check_output_path, replace_problems
    from .io.runs import RunFolder
    from .pipeline import ALL_OUTPUT_FILES

    if check_output_path(out, "demo").is_dir():  # and so may an earlier demo's registration outputs, nothing else
        problems, _ = replace_problems(out, ALL_OUTPUT_FILES, overwrite=True, records=RunFolder.records_in(out), inputs=[sample])
        if problems:
            raise DeepLungRegError(f"demo: {problems[0]}")
    t0 = time.perf_counter()
    ct = read_image(sample, what="demo sample")
    print(f"demo: sample CT {sample.name}, {ct.geometry.size} voxels at {tuple(round(s, 2) for s in ct.geometry.spacing)} mm")
    with _Progress("simulate (small)", not args.quiet) as bar:
        pair = simulate_breathing(ct, amplitude="small", seed=args.seed, progress=bar)
    write_pair(pair, out / "pair", overwrite=True, source=str(sample))
    print(f"demo: simulated exhale with mean lung displacement {pair.info['mean_lung_displacement_mm']:.1f} mm "
          f"(max {pair.info['max_lung_displacement_mm']:.1f} mm)")
    job = RegistrationJob(pair.fixed, pair.moving, args.method, pair.fixed_mask, pair.moving_mask, pair.fixed_landmarks,
                          pair.moving_landmarks, device=args.device)
    with _Progress(f"register ({args.method})", not args.quiet) as bar:
        metrics = run_registration(job, out, overwrite=True, progress=bar)
    from .evaluation import evaluate_field
    from .io.fields import read_field

    ev = evaluate_field(pair, read_field(out / "displacement.nii.gz")[0])
    b, a = metrics["tre_before"]["mean"], metrics["tre_after"]["mean"]
    print("\n".join(summary_lines(metrics)))
    print(f"TRE reduced by {100 * (1 - a / b):.1f} %; folding {metrics['jacobian']['folding_percent']:.3f} %; "
          f"dense error in lung {ev['dense_error_lung']['mean']:.2f} mm; registration {metrics['timings_s']['total']:.1f} s")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; outputs in {out.resolve()}; open {(out / 'report.html').resolve()}")
    return 0


def cmd_benchmark(args) -> int:
    from .methods import available_methods
    from .benchmark.runner import dirlab_specs, pairdir_specs, run_benchmark, simulated_specs, split_methods

    out = Path(args.output)
    if (out / "results.csv").exists() and not (args.overwrite or args.resume):
        raise DeepLungRegError(f"benchmark: {out} already holds results.csv; choose another folder or pass --overwrite "
                               "(or --resume, to reuse its measurements)")
    sources = [x for x in (args.simulated, args.pairs, args.dirlab, args.copd) if x]
    if len(sources) != 1:
        raise DeepLungRegError("benchmark: give exactly one of --simulated CT..., --pairs DIR..., --dirlab ROOT, --copd ROOT")
    methods = list(available_methods()) if args.methods == "all" else split_methods(args.methods)
    methods += split_methods(args.baselines or "")
    if not methods:
        raise DeepLungRegError("benchmark: no methods given")

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"benchmark: {msg}", file=sys.stderr, flush=True)

    seeds = list(numbers("benchmark", args.seeds, int, "--seeds takes whole numbers like 1,2,3"))
    amplitudes = [a.strip() for a in args.amplitudes.split(",")]
    cases = list(numbers("benchmark", args.cases, int, "--cases takes DIR-Lab case numbers like 1,2,3")) if args.cases else None
    if args.simulated:
        cts = args.simulated[:1] if args.quick else args.simulated
        directions = tuple(d.strip() for d in args.directions.split(",") if d.strip())
        specs = simulated_specs(cts, amplitudes[:1] if args.quick else amplitudes, seeds[:1] if args.quick else seeds, out,
                                spacing=args.spacing, directions=directions[:1] if args.quick else directions, progress=say)
    elif args.pairs:
        specs = pairdir_specs(args.pairs[:1] if args.quick else args.pairs)
    else:
        specs = dirlab_specs(args.dirlab or args.copd, "4dct" if args.dirlab else "copd", cases, args.fixed)
        specs = specs[:1] if args.quick else specs
    rows = run_benchmark(specs, methods, out, device=args.device, timeout_s=args.timeout, progress=say, resume=args.resume)
    print((out / "results.md").read_text())
    print(f"benchmark: {len(rows)} runs; results in {(out / 'results.csv').resolve()}, table in results.md, box plots in tre_boxplot.png")
    return 1 if all("error" in r for r in rows) else 0


def cmd_tune(args) -> int:
    from .evaluation.tuning import tune, write_tune_result
    from .methods.base import parse_options
    from .simulation.breathing import read_pair

    out = Path(args.output)
    for p in (out, out.with_name(out.stem + "_tuning.md"), out.with_name(out.stem + "_tuning.json")):
        if p.exists() and not args.overwrite:
            raise DeepLungRegError(f"tune: {p} exists; choose another name or pass --overwrite")
    if out.suffix.lower() != ".json":
        raise DeepLungRegError(f"tune: the config file must end in .json, got {out.name}")
    grid = {}
    for k, v in parse_options(args.grid, "tune").items():
        grid[k] = v if isinstance(v, list) else [v]
    base = _parse_options(args.option, args.config, args.method, "tune")
    pairs = [read_pair(p) for p in args.pairs]
    names = [Path(p).resolve().name for p in args.pairs]

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"tune: {msg}", file=sys.stderr, flush=True)

    res = tune(args.method, pairs, grid or None, max_candidates=args.max_candidates, seed=args.seed, base=base, names=names,
               device=args.device, progress=say)
    files = write_tune_result(res, out, overwrite=args.overwrite)
    print(files[1].read_text())
    print(f"tune: best {json.dumps(res.best)}; config written to {out.resolve()} "
          f"(use: deeplungreg register --method {args.method} --config {out})")
    return 0


def cmd_train(args) -> int:
    from .io.images import read_image
    from .methods.base import parse_options
    from .simulation.breathing import read_pair
    from .training import NetworkConfig, from_simulated, train
    from .training.data import check_amplitude_range

    opts = parse_options(args.option, "train")
    shape = list(numbers("train", args.shape, int, "--shape takes three whole numbers like 64,64,64"))
    cfg = NetworkConfig.from_dict({"method": args.method, "spacing_mm": args.spacing, "shape": shape, **opts})
    level_steps = numbers("train", args.level_steps, int, "--level-steps takes whole numbers like 2000,400,400") if args.level_steps else None
    steps = args.steps if args.steps is not None else (sum(level_steps) if level_steps else 1000)
    amplitude_range = None
    if args.amplitude_range:
        amplitude_range = check_amplitude_range(numbers("train", args.amplitude_range, float, "--amplitude-range takes two numbers in mm like 4,25"))

    def load(paths):
        out = []
        for p in paths or []:
            out.append((Path(p).name.split(".")[0], read_image(p, what=f"CT {p}"), None))
        return out

    cts = load(args.ct)
    if not cts and not args.pairs:
        raise DeepLungRegError("train: give at least one --ct CT (pairs are simulated from it) or --pairs DIR")
    if not cts:
        raise DeepLungRegError("train: --pairs only adds real pairs to simulated ones; give at least one --ct too")
    real = [from_simulated(read_pair(d), cfg.spacing_mm, cfg.shape, Path(d).name) for d in args.pairs or []]

    def progress(step: int, steps: int, row: dict) -> None:
        bar(f"step {step}/{steps} loss {row['loss']:.4g}" + (f" val TRE {row['tre_after']:.2f} mm" if "tre_after" in row else ""), step / steps)

    with _Progress(f"train {args.method}", enabled=not args.quiet) as bar:
        res = train(cfg, cts, args.output, steps=steps, level_steps=level_steps, val_cts=load(args.val_ct), real_pairs=real, pool_size=args.pool,
                    refresh_every=args.refresh_every, validate_every=args.validate_every, seed=args.seed, resume=args.resume,
                    spatial_augment=args.spatial_augment, amplitude_range_mm=amplitude_range, reverse_fraction=args.reverse_fraction,
                    init=args.init,
                    device=args.device if args.device != "auto" else ("cuda" if __import__("torch").cuda.is_available() else "cpu"),
                    progress=progress)
    v = res["validation"]
    print(f"train: {res['steps']} steps in {res['seconds']:.0f} s; checkpoint {res['checkpoint']}"
          + (f"; validation TRE {v['tre_before']:.2f} -> {v['tre_after']:.2f} mm" if v else ""))
    return 0


def cmd_train_features(args) -> int:
    from .training.features import train_feature_net
    from .io.images import read_image

    def load(paths):
        return [(Path(p).name.split(".")[0], read_image(p, what=f"CT {p}")) for p in paths or []]

    def progress(step: int, steps: int, row: dict) -> None:
        bar(f"step {step}/{steps} loss {row['loss']:.4g}" + (f" val MSE {row['validation_mse']:.4g}" if "validation_mse" in row else ""),
            step / steps)

    with _Progress("train-features", enabled=not args.quiet) as bar:
        res = train_feature_net(load(args.ct), args.output, steps=args.steps, val_cts=load(args.val_ct), spacing_mm=args.spacing,
                                crop=args.crop, batch=args.batch, base=args.base, learning_rate=args.learning_rate,
                                validate_every=args.validate_every, seed=args.seed, resume=args.resume, progress=progress)
    print(f"train-features: {res['steps']} steps in {res['seconds']:.0f} s; checkpoint {res['checkpoint']}"
          + (f"; validation MSE {res['validation_mse']:.4g} (MIND-SSC of the noisy crops: {res['mind_noise_mse']:.4g})"
             if res["validation_mse"] is not None else ""))
    return 0


def _args_register(s: argparse.ArgumentParser) -> None:
    s.add_argument("fixed")
    s.add_argument("moving")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("--method", default=DEFAULT_METHOD, help=f"registration method (default {DEFAULT_METHOD}; see 'deeplungreg methods')")
    s.add_argument("--fixed-mask", default="auto", help="lung mask file, 'auto' (default) or 'none'")
    s.add_argument("--moving-mask", default="auto", help="lung mask file, 'auto' (default) or 'none'")
    s.add_argument("--fixed-landmarks")
    s.add_argument("--moving-landmarks")
    s.add_argument("--spacing", type=float, nargs=3, metavar=("SX", "SY", "SZ"), help="voxel spacing of DIR-Lab landmark files")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    s.add_argument("--config", help="JSON file with method options")
    s.add_argument("--option", "-O", action="append", metavar="NAME=VALUE", help="method option, e.g. -O regularisation=2")
    s.add_argument("--finetune", action=_Removed, use="-O refine_iterations=N")  # version 1's, for the network methods
    s.add_argument("--overwrite", action="store_true", help="replace earlier results in the output folder")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _args_batch(s: argparse.ArgumentParser) -> None:
    s.add_argument("cohort", help="CSV with id,fixed,moving[,fixed_mask,moving_mask,fixed_landmarks,moving_landmarks]")
    s.add_argument("-o", "--output", required=True, help="output folder: one register folder per id, results.csv, results.md")
    s.add_argument("--method", default=DEFAULT_METHOD, help=f"registration method (default {DEFAULT_METHOD}; see 'deeplungreg methods')")
    s.add_argument("--option", "-O", action="append", metavar="NAME=VALUE", help="method option, the same for every pair")
    s.add_argument("--config", help="JSON file with method options")
    s.add_argument("--workers", type=int, help="local Dask worker processes (default: the cores divided by the threads of one registration)")
    s.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler (e.g. tcp://host:8786) instead of a local cluster")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda (one worker per GPU)")
    s.add_argument("--retry-failed", action="store_true", help="run the pairs again that failed in an earlier run")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def cmd_review(args) -> int:
    """Serve the review page of a registration output folder until interrupted."""
    from .browser.app import serve

    def ready(url: str, page) -> None:
        extra = "" if page.review is not None else " (no landmarks: the review panel is hidden)"
        print(f"review: {args.folder} at {url}{extra}; ready in {page.startup_s:.1f} s; Ctrl+C stops", flush=True)

    serve(args.folder, port=args.port, host=args.host, open_browser=args.open, fixed=args.fixed, moving=args.moving, ready=ready,
          allow_remote=args.allow_remote, warn=lambda line: print(line, file=sys.stderr, flush=True))
    return 0


def _args_review(s: argparse.ArgumentParser) -> None:
    s.add_argument("folder", help="an output folder of 'deeplungreg register'")
    s.add_argument("--port", type=int, default=8080, help="port to serve on (default 8080)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer only; "
                   "another needs --allow-remote)")
    s.add_argument("--allow-remote", action="store_true", help="allow a --host that other computers can reach (anyone with "
                   "the printed URL, which holds the page's token, can then see and export the review)")
    s.add_argument("--open", action="store_true", help="open the page in the default browser")
    s.add_argument("--fixed", help="the fixed image, when metrics.json's path to it is no longer right")
    s.add_argument("--moving", help="the moving image, likewise")


def _args_worker(s: argparse.ArgumentParser) -> None:
    s.add_argument("request", help="request.json: the job (fixed, moving, method, options, device, masks, landmarks), output, "
                   "report, overwrite")


def _args_simulate(s: argparse.ArgumentParser) -> None:
    s.add_argument("ct")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--amplitude", default="small", help="small, large (the presets) or the mean lung displacement in mm, e.g. 12 (default small)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--noise", type=float, default=20.0, help="noise SD in HU (default 20)")
    s.add_argument("--landmarks", type=int, default=300)
    s.add_argument("--spacing", type=float, help="resample the CT to this isotropic spacing (mm) first")
    s.add_argument("--reverse", action="store_true", help="write the pair the other way round: the simulated exhale fixed, the CT moving")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("-q", "--quiet", action="store_true")


def _args_sequence(s: argparse.ArgumentParser) -> None:
    s.add_argument("input", help="the 4D-CT: a folder of phase volumes (natural name order), a folder of DICOM phase "
                   "folders, a folder holding a DICOM series of several phases, or a 4D NRRD")
    s.add_argument("-o", "--output", required=True, help="output folder: phase_XX/ per phase, sequence.json, volume_curve.csv")
    s.add_argument("--reference", type=int, help="index of the reference phase (default: the smallest lung volume, end-exhale)")
    s.add_argument("--method", default=DEFAULT_METHOD, help=f"registration method (default {DEFAULT_METHOD}; see 'deeplungreg methods')")
    s.add_argument("--option", "-O", action="append", metavar="NAME=VALUE", help="method option, the same for every phase")
    s.add_argument("--config", help="JSON file with method options")
    s.add_argument("--landmarks", metavar="DIR", help="a folder of landmark files, one per phase (named after the phases, "
                   "or numbered like POPI's 00-Landmarks.pts ... 90-Landmarks.pts): TRE per phase")
    s.add_argument("--spacing", type=float, nargs=3, metavar=("SX", "SY", "SZ"), help="voxel spacing of DIR-Lab landmark files")
    s.add_argument("--start", choices=("reference", "neighbour"), default="reference",
                   help="reference: each phase registered from scratch (default); neighbour: outward from the reference, "
                   "each phase starting from the field of its neighbour nearer the reference")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    s.add_argument("--report", action="store_true", help="also write report.html (volume curve, TRE per phase, landmark "
                   "trajectories) and each phase's report.html (needs matplotlib)")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier run's results in the output folder")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _args_evaluate(s: argparse.ArgumentParser) -> None:
    s.add_argument("pair")
    s.add_argument("displacement")
    s.add_argument("--json", action="store_true")


def _args_tre(s: argparse.ArgumentParser) -> None:
    s.add_argument("fixed_points")
    s.add_argument("moving_points")
    s.add_argument("--field", help="displacement field to apply to the fixed points")
    s.add_argument("--spacing", type=float, nargs=3, metavar=("SX", "SY", "SZ"), help="voxel spacing for DIR-Lab files")
    s.add_argument("--json", action="store_true")


def _args_demo(s: argparse.ArgumentParser) -> None:
    s.add_argument("-o", "--output", default="deeplungreg-demo")
    s.add_argument("--method", default=DEFAULT_METHOD, help=f"registration method (default {DEFAULT_METHOD}; see 'deeplungreg methods')")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sample", help="another CT instead of the bundled sample")
    s.add_argument("--device", default="auto")
    s.add_argument("-q", "--quiet", action="store_true")


def _args_benchmark(s: argparse.ArgumentParser) -> None:
    s.add_argument("--methods", default="all",
                   help="comma-separated registered methods, or 'all' (default); a variant with options is NAME:OPT=V[:OPT=V], e.g. mlvirnet:refine_iterations=30")
    s.add_argument("--baselines", default="", help="comma-separated: convexadam (its default setting), convexadam-best (lung masks, grid 4, half-width 6), elastix (pip install 'DeepLungRegLib[bench]')")
    src = s.add_argument_group("pairs (exactly one)")
    src.add_argument("--simulated", nargs="+", metavar="CT", help="simulate pairs from these CT files")
    src.add_argument("--pairs", nargs="+", metavar="PAIRDIR", help="simulated pair folders from 'deeplungreg simulate'")
    src.add_argument("--dirlab", metavar="ROOT", help="DIR-Lab 4D-CT folder holding CaseNPack/")
    src.add_argument("--copd", metavar="ROOT", help="DIR-Lab COPDgene folder holding copdN/")
    s.add_argument("--amplitudes", default="small,large", help="for --simulated (default small,large)")
    s.add_argument("--seeds", default="1", help="for --simulated, comma-separated (default 1)")
    s.add_argument("--directions", default="inhale,exhale",
                   help="for --simulated: which image is fixed, comma-separated: inhale (the CT), exhale (the simulated "
                        "exhale: the same pair the other way round); default both")
    s.add_argument("--spacing", type=float, default=2.0, help="for --simulated: resample the CT to this spacing in mm (default 2)")
    s.add_argument("--cases", help="for --dirlab/--copd: comma-separated case numbers (default: all found)")
    s.add_argument("--fixed", default="inhale", choices=["inhale", "exhale"], help="for --dirlab/--copd: which phase is fixed")
    s.add_argument("--quick", action="store_true", help="one pair only (the first CT, amplitude, seed or case)")
    s.add_argument("--device", default="auto")
    s.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per run (default 3600)")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--resume", action="store_true",
                   help="reuse the measurements an earlier, interrupted run into OUTPUT finished (same pair and method)")
    s.add_argument("-q", "--quiet", action="store_true")


def _args_tune(s: argparse.ArgumentParser) -> None:
    s.add_argument("pairs", nargs="+", metavar="PAIRDIR", help="simulated pair folders from 'deeplungreg simulate'")
    s.add_argument("--method", default="convex")
    s.add_argument("--grid", "-G", action="append", metavar="NAME=[V1,V2,...]",
                   help="values to try for one option (repeatable; default: the method's own small grid)")
    s.add_argument("--option", "-O", action="append", metavar="NAME=VALUE", help="option fixed for every candidate")
    s.add_argument("--config", help="JSON file of options fixed for every candidate")
    s.add_argument("--max-candidates", type=int, default=12, help="at most this many candidates (a seeded subset; default 12)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("-o", "--output", required=True, help="config file to write (.json)")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("-q", "--quiet", action="store_true")


def _args_train(s: argparse.ArgumentParser) -> None:
    s.add_argument("--method", required=True, help="a network method (deeplungreg methods lists them): lindef, mlvirnet, labeldriven, ...")
    s.add_argument("--ct", nargs="+", metavar="CT", help="training CTs (inhale); pairs are simulated from them on the fly")
    s.add_argument("--val-ct", nargs="+", metavar="CT", help="held-out CTs for the validation TRE (a small and a large pair each)")
    s.add_argument("--pairs", nargs="+", metavar="PAIRDIR", help="real (or stored) pairs to mix in, folders as written by 'simulate'")
    s.add_argument("--steps", type=int, default=None, help="training steps (default 1000, or the sum of --level-steps)")
    s.add_argument("--level-steps", metavar="N1,N2,...", help="mlvirnet: steps per level, coarsest first (default: an equal share of --steps)")
    s.add_argument("--spacing", type=float, default=4.0, help="network grid spacing in mm (default 4; 2 on a GPU)")
    s.add_argument("--shape", default="64,64,64", help="network grid Z,Y,X, multiples of 16 (default 64,64,64)")
    s.add_argument("--option", "-O", action="append", metavar="NAME=VALUE", help="network option: width, levels, alpha, beta, ngf_eps, learning_rate, similarity (lindef: mse, ncc or ngf), "
                   "supervision (weight of the end-point error against the simulated field; 0: the paper's loss only), "
                   "coarse_jitter (mlvirnet: scale the frozen coarser levels' field by a random factor in [1-j, 1+j] while a finer level trains)")
    s.add_argument("--pool", type=int, default=8, help="simulated pairs kept in memory (default 8)")
    s.add_argument("--refresh-every", type=int, default=25, help="steps between two new simulated pairs (default 25)")
    s.add_argument("--validate-every", type=int, default=100, help="steps between validations and checkpoints (default 100)")
    s.add_argument("--spatial-augment", action="store_true",
                   help="a new anatomy for every simulated pair: random rotation, scaling and left-right mirroring of the CT")
    s.add_argument("--amplitude-range", metavar="LOW,HIGH",
                   help="draw every simulated pair's mean lung displacement uniformly from LOW-HIGH mm instead of the small/large presets")
    s.add_argument("--reverse-fraction", type=float, default=0.0, metavar="F",
                   help="share of the simulated pairs made the other way round, the exhale image fixed (default 0; see docs/networks.md)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--resume", action="store_true", help="continue OUTPUT/checkpoint.pt")
    s.add_argument("--init", metavar="WEIGHTS", help="start from trained weights (fine-tuning; e.g. DeepLungRegLib/data/weights/M.pt with its -O width/levels); "
                   "mlvirnet then allows 0 in --level-steps")
    s.add_argument("-o", "--output", required=True, help="run folder: checkpoint.pt, log.csv, log.json, loss.png")
    s.add_argument("-q", "--quiet", action="store_true")


def _args_train_features(s: argparse.ArgumentParser) -> None:
    s.add_argument("--ct", nargs="+", required=True, metavar="CT", help="training CTs")
    s.add_argument("--val-ct", nargs="+", metavar="CT", help="held-out CTs for the validation error")
    s.add_argument("--steps", type=int, default=3000)
    s.add_argument("--spacing", type=float, default=2.0, help="grid spacing in mm (embed's feature_spacing_mm, default 2)")
    s.add_argument("--crop", type=int, default=48, help="crop size in voxels (default 48)")
    s.add_argument("--batch", type=int, default=2, help="crops per step (default 2)")
    s.add_argument("--base", type=int, default=8, help="filters of the first U-Net level (default 8)")
    s.add_argument("--learning-rate", type=float, default=3e-3)
    s.add_argument("--validate-every", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--resume", action="store_true", help="continue OUTPUT/checkpoint.pt")
    s.add_argument("-o", "--output", required=True, help="run folder: checkpoint.pt, log.csv, log.json, loss.png")
    s.add_argument("-q", "--quiet", action="store_true")


def _args_methods(s: argparse.ArgumentParser) -> None:
    s.add_argument("--options", action="store_true", help="also list each method's options, defaults and meaning")


#: Every command: its help, the function that runs it, the function that declares its arguments.
COMMANDS = {
    "register": ("register MOVING to FIXED and write field, warped image, maps, metrics and report", cmd_register, _args_register),
    "batch": ("register every pair of a cohort CSV on a local Dask cluster or a scheduler's workers, resumably", cmd_batch,
              _args_batch),
    "sequence": ("register every phase of a 4D-CT to a reference phase (default end-exhale): fields, lung volume curve, "
                 "TRE per phase", cmd_sequence, _args_sequence),
    "simulate": ("make a semi-synthetic inhale/exhale pair from one CT", cmd_simulate, _args_simulate),
    "evaluate": ("score a displacement field against a simulated pair", cmd_evaluate, _args_evaluate),
    "tre": ("target registration error of two landmark files", cmd_tre, _args_tre),
    "demo": ("simulate a pair from the bundled sample, register it and write the report", cmd_demo, _args_demo),
    "benchmark": ("compare methods and baselines on simulated or DIR-Lab pairs", cmd_benchmark, _args_benchmark),
    "tune": ("search a method's options on simulated pairs and write the best config (rank-based)", cmd_tune, _args_tune),
    "train": ("train a network method on pairs simulated on the fly from CTs (and real pairs)", cmd_train, _args_train),
    "train-features": ("train embed's feature CNN (paper 000) to predict MIND-SSC from CT crops", cmd_train_features, _args_train_features),
    "worker": ("run one registration request (JSON) with progress as JSON lines (DeepLungRegLib.worker's child process)",
               cmd_worker, _args_worker),
    "review": ("review a registration output in the browser: overlay, grid, maps and the landmark review "
               "(pip install 'DeepLungRegLib[review]')", cmd_review, _args_review),
    "methods": ("list the registration methods", cmd_methods, _args_methods),
}


#: Commands that run but are not listed in ``deeplungreg --help``.
HIDDEN_COMMANDS = frozenset({"worker"})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deeplungreg", description="Lung CT registration (DeepLungReg).")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    shown = ",".join(name for name in COMMANDS if name not in HIDDEN_COMMANDS)
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + shown + "}")
    for name, (help_text, run, declare) in COMMANDS.items():
        # 'worker' is the Slicer module's own process: it runs, but is not listed in --help
        s = sub.add_parser(name, help=help_text) if name not in HIDDEN_COMMANDS else sub.add_parser(name)
        declare(s)
        s.set_defaults(func=run)
    return p


def _on_sigterm(signum, frame) -> None:
    raise Terminated(signum)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"deeplungreg: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="deeplungreg: %(levelname)s: %(message)s")
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a scheduler's or a task manager's stop) unwinds like Ctrl-C: staged outputs are removed
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with warnings.catch_warnings():
            # what the library deprecates (an old option name in a saved file) is told to the user in one line:
            # Python hides a DeprecationWarning outside __main__, which is where the installed command runs
            warnings.filterwarnings("default", category=DeprecationWarning, module=r"DeepLungRegLib(\.|$)")
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except DeepLungRegError as exc:
        print(f"deeplungreg: error: {exc}", file=sys.stderr)
        return 2
    except RegistrationCancelled:
        print("deeplungreg: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("deeplungreg: interrupted; no partial outputs were left", file=sys.stderr)
        return 130
    except Terminated:
        print("deeplungreg: terminated (SIGTERM); no partial outputs were left", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
