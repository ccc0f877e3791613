"""Registering a cohort on Dask distributed: a local cluster or a scheduler's workers, resumably.

Each pair is one task that runs :func:`DeepLungRegLib.pipeline.run_registration` into
``OUTDIR/<id>/`` in a worker process (:class:`DeepLungRegLib.worker.WorkerProcess`), with the threads
it is meant to have; the Dask worker only waits on it. Each Dask worker keeps its worker process
resident between pairs (it imports torch and the library once, and its caches stay warm, as in a plain
loop); a process that crashed is replaced for the next pair. A pair whose folder already
holds a whole ``register`` output is not run again, and a pair that failed in an earlier run only
with ``retry_failed``. A task whose process crashes is retried once; a task whose Dask worker dies
(its process then ends too) is rescheduled on another worker; a pair that fails twice is recorded
as failed and the others go on.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from ..errors import DeepLungRegError
from ..io.outputs import (_STAGING_PREFIX, FolderLock, check_output_path, clean_leftovers, replace_problems,
                          wait_for_unlock)
from ..io.runs import RunFolder
from ..options import DEFAULT_METHOD
from ..worker import ORPHAN_GRACE_S, WorkerProcess
from .cohort import CohortRow, cohort_rows, read_cohort
from .results import (BATCH_KEY, BATCH_RECORD, RESULT_FILES, batch_records, failed_row, read_results, result_row,
                      write_results)

log = logging.getLogger(__name__)

#: At most this many threads per registration on the default local cluster (more gain little on the
#: CPU: the work is split in slabs and small convolutions); the cores are shared among the workers.
MAX_THREADS_PER_REGISTRATION = 4


def default_workers(cores: int | None = None) -> int:
    """Workers of the local cluster: the cores divided by the threads one registration uses."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // min(MAX_THREADS_PER_REGISTRATION, cores))


def cluster_plan(device: str, workers: int | None, cores: int | None = None, cuda_devices: int | None = None) -> dict:
    """How the local cluster is laid out and what each task asks for.

    On CUDA there is one worker per GPU, each holding the Dask resource ``GPU=1``, and every task
    asks for ``GPU=1``, so that a task never lands on a worker without a GPU (also on a remote
    scheduler whose CPU-only workers were started without ``--resources GPU=1``).

    Returns:
        ``{"workers", "threads", "worker_resources", "task_resources", "device"}``.
    """
    cores = cores or os.cpu_count() or 1
    if cuda_devices is None:
        import torch

        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpu = device.startswith("cuda") or (device == "auto" and cuda_devices > 0)
    if gpu:
        if cuda_devices == 0:
            raise DeepLungRegError("batch: --device cuda was requested but torch reports no CUDA GPU; use --device cpu or auto")
        n = workers or cuda_devices
        return {"workers": n, "threads": max(1, cores // n), "worker_resources": {"GPU": 1}, "task_resources": {"GPU": 1},
                "device": "cuda"}
    n = workers or default_workers(cores)
    if n < 1:
        raise DeepLungRegError(f"batch: --workers must be at least 1, got {n}")
    return {"workers": n, "threads": max(1, cores // n), "worker_resources": None, "task_resources": None, "device": "cpu"}


def register_pair(row: CohortRow, outdir: str, method: str, options: dict, device: str, threads: int | dict) -> dict:
    """One pair, on a worker: register into ``outdir/<id>/`` in this Dask worker's resident worker process
    (:class:`DeepLungRegLib.worker.WorkerProcess`, which this task waits on) and return its ``results.csv`` row.

    ``threads``: the threads of the registration, or a map from worker address to threads (:func:`_plan_for`),
    given to the worker process explicitly (a Dask nanny sets ``OMP_NUM_THREADS=1`` in its
    workers, which a child would inherit). The worker process is this Dask worker's resident one
    (:func:`_resident_process`); it ends with the Dask worker, killed or not.

    A problem with the pair's inputs (the worker's ``{"error"}`` line) is its result, a failed row; anything
    else (out of memory, a crash) is raised, so that Dask retries the pair once.
    """
    worker = _worker_name()
    if device == "cuda":
        import torch

        if torch.cuda.device_count() > 1:
            device = f"cuda:{_worker_index() % torch.cuda.device_count()}"  # one GPU per worker
    folder = Path(outdir) / row.id
    request = {"job": row.job(method, options, device), "output": str(folder), "report": True, "overwrite": True,
               "extra_metrics": {BATCH_KEY: {"id": row.id, "worker": worker}}}
    t0 = time.perf_counter()
    # a killed earlier attempt's process may still be unwinding in this folder: only a run of this batch writes there
    wait_for_unlock(folder, ORPHAN_GRACE_S + 15.0)
    key = (_task_threads(threads), tuple(sorted(_nanny_environment_undone().items())))
    proc = _resident_process(key)
    with tempfile.TemporaryDirectory(prefix="deeplungreg-pair-") as tmp:
        try:
            proc.send(request, tmp)
            proc.wait(interval=0.1)
        except DeepLungRegError as exc:
            return failed_row(row.id, str(exc), now=True, seconds=time.perf_counter() - t0, worker=worker)
        finally:
            _keep_resident(proc, key)
    run = RunFolder.read(folder, "batch")
    # the time is known only now: add it to the pair's own record, so that a later run can rebuild the row
    run.update(**{BATCH_KEY: {**run.metrics[BATCH_KEY], "seconds": round(time.perf_counter() - t0, 1)}})
    return result_row(row.id, run.metrics, now=True)


#: This Dask worker's resident worker processes that are free, by (threads, environment changes).
_RESIDENT: dict[tuple, list[WorkerProcess]] = {}
_RESIDENT_LOCK = threading.Lock()


def _resident_process(key: tuple) -> WorkerProcess:
    """A free resident worker process of this Dask worker for ``key`` (its threads, and its environment changes as
    sorted items), or a new one (a Dask worker with several task threads has one per task running at once). It
    ends with the Dask worker."""
    with _RESIDENT_LOCK:
        free = _RESIDENT.get(key, [])
        while free:
            proc = free.pop()
            if proc.alive:
                return proc
    threads, env = key
    return WorkerProcess(None, tempfile.gettempdir(), threads=threads, env=dict(env), serve=True, log_reported_errors=False)


def _keep_resident(proc: WorkerProcess, key: tuple) -> None:
    """Take back a resident process after its request: kept when it lives and answered, else ended."""
    if proc.state == "running":
        proc.cancel()
    elif proc.alive:
        with _RESIDENT_LOCK:
            _RESIDENT.setdefault(key, []).append(proc)


def close_residents() -> int:
    """End this Dask worker's free resident worker processes (run on every worker when a batch ends, so that
    none outlives the batch on a long-lived cluster, holding memory and the library's code of its time);
    returns how many."""
    with _RESIDENT_LOCK:
        procs = [p for free in _RESIDENT.values() for p in free]
        _RESIDENT.clear()
    for proc in procs:
        proc.close()
    return len(procs)


def _nanny_environment_undone() -> dict[str, None]:
    """The variables that a Dask nanny set in this worker process (``distributed.nanny.pre-spawn-environ``), to be
    removed from the registration's environment: besides the thread counts (which the registration gets
    explicitly), ``MALLOC_TRIM_THRESHOLD_``, which turns off glibc's dynamic mmap threshold, so that every large
    temporary tensor is mapped and zeroed afresh (a loop of 3D convolutions and grid samples ran 25-30 % slower
    with it on this project's CPU)."""
    try:
        import dask

        spawned = {**(dask.config.get("distributed.nanny.environ", default=None) or {}),
                   **(dask.config.get("distributed.nanny.pre-spawn-environ", default=None) or {})}
    except ImportError:
        return {}
    return {key: None for key, value in spawned.items() if os.environ.get(key) == str(value)}


def _task_threads(threads: int | dict) -> int:
    """The threads of this task's registration: ``threads``, or this worker's entry of a map by worker
    address (a worker missing from it: its host's cores divided by its own task threads)."""
    if isinstance(threads, int) and threads > 0:
        return threads
    try:
        from distributed import get_worker

        w = get_worker()
        address, slots = w.address, int(w.state.nthreads)
    except (ImportError, ValueError, AttributeError):
        address, slots = None, 1
    if isinstance(threads, dict) and threads.get(address):
        return int(threads[address])
    return max(1, (os.cpu_count() or 1) // max(1, slots))


def _worker_name() -> str:
    try:
        from distributed import get_worker

        w = get_worker()
        return str(w.name if w.name is not None else w.address)
    except (ImportError, ValueError):
        return "local"


def _worker_index() -> int:
    try:
        return int(_worker_name())
    except ValueError:
        return 0


def plan_pairs(rows: list[CohortRow], outdir: Path, retry_failed: bool) -> tuple[list[CohortRow], dict[str, dict]]:
    """Which pairs to run now, and the rows of the others (complete outputs, or failed earlier)."""
    earlier = read_results(outdir)
    todo, kept = [], {}
    for row in rows:
        done = RunFolder.find(outdir / row.id)  # a whole register output
        before = earlier.get(row.id)
        if done is not None:
            kept[row.id] = result_row(row.id, done.metrics, now=False)
        elif before is not None and before.get("status") == "failed" and not retry_failed:
            kept[row.id] = failed_row(row.id, before.get("error") or "", now=False, worker=before.get("worker") or None,
                                      seconds=float(before["seconds"]) if before.get("seconds") else None)
        else:
            todo.append(row)
    return todo, kept


def run_cohort(
    rows: str | Path | Iterable[CohortRow | dict],
    outdir: str | Path,
    *,
    method: str = DEFAULT_METHOD,
    options: dict | None = None,
    device: str = "auto",
    client=None,
    scheduler: str | None = None,
    workers: int | None = None,
    retry_failed: bool = False,
    progress: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Register every pair of a cohort with Dask and write ``results.csv``, ``results.md`` and ``tre_boxplot.png``.

    Args:
        rows: a cohort CSV file, or rows (:class:`CohortRow` or dicts with its fields).
        outdir: the output folder; each pair writes ``outdir/<id>/`` as ``deeplungreg register`` does.
        method, options: the method and its options, the same for every pair (checked before anything runs).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        client: a ``distributed.Client`` to use; otherwise one is made for ``scheduler`` (an address)
            or for a local cluster of ``workers`` processes (loopback only).
        retry_failed: run the pairs again that failed in an earlier run into this folder.
        progress: called with ``{"done", "failed", "running", "total", "dashboard"}`` as pairs end.

    Returns:
        The ``results.csv`` rows, in cohort order.
    """
    from ..methods import get_method

    cohort = read_cohort(rows) if isinstance(rows, (str, Path)) else cohort_rows(rows)
    options = dict(options or {})
    get_method(method).config_cls.from_dict(options)  # a bad option fails now, not in every task
    out = check_output_path(outdir, "batch")
    cohort_file = rows if isinstance(rows, (str, Path)) else None
    if out.exists():
        check_cohort_outputs(cohort, out, cohort_file, retry_failed)  # before any work
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeepLungRegError(f"batch: cannot create the output folder {out} ({exc.strerror or exc})") from exc
    with FolderLock(out, "batch"):
        todo, kept = check_cohort_outputs(cohort, out, cohort_file, retry_failed)  # again, now that no other batch writes here
        return _run_cohort(cohort, out, todo, kept, method, options, device, client, scheduler, workers, progress)


def check_cohort_outputs(cohort: list[CohortRow], out: Path, cohort_file: str | Path | None,
                         retry_failed: bool) -> tuple[list[CohortRow], dict[str, dict]]:
    """Refuse, in one line, a cohort whose outputs would land on a file that no run of ours wrote (or on an
    input): a pair's output name in ``OUTDIR/<id>/``, or ``results.csv``/``results.md``/``tre_boxplot.png``
    in ``OUTDIR`` (the cohort file among them). Returns :func:`plan_pairs`'s pairs to run and rows kept."""
    from ..pipeline import ALL_OUTPUT_FILES

    def inputs(row: CohortRow) -> list[str]:
        return [p for p in (row.fixed, row.moving, row.fixed_mask, row.moving_mask, row.fixed_landmarks, row.moving_landmarks) if p]

    everything = [str(cohort_file)] if cohort_file is not None else []
    for row in cohort:
        everything += inputs(row)
    problems, _ = replace_problems(out, RESULT_FILES, overwrite=True, records=batch_records(out), inputs=everything,
                                   record_file=BATCH_RECORD)
    todo, kept = ([], {}) if problems else plan_pairs(cohort, out, retry_failed)
    for row in todo:
        folder = out / row.id
        try:
            check_output_path(folder, "batch")
        except DeepLungRegError as exc:
            problems.append(str(exc).removeprefix("batch: "))
            continue
        if folder.is_dir():
            found, _ = replace_problems(folder, ALL_OUTPUT_FILES, overwrite=True, records=RunFolder.records_in(folder),
                                        inputs=inputs(row))
            problems += found
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DeepLungRegError(f"batch: {problems[0]}{more}; nothing was run")
    return todo, kept


def _run_cohort(cohort, out, todo, kept, method, options, device, client, scheduler, workers, progress) -> list[dict]:
    results: dict[str, dict] = dict(kept)
    state = {"done": sum(r["status"] == "ok" for r in kept.values()), "failed": sum(r["status"] == "failed" for r in kept.values()),
             "running": 0, "total": len(cohort), "dashboard": None}
    if todo:
        own = None
        try:
            if client is None:
                client, own = _make_client(scheduler, device, workers)
            plan = _plan_for(client, device)
            state["dashboard"] = _dashboard(client)
            results.update(_run_tasks(client, todo, out, method, options, plan, state, progress))
        finally:
            if own is not None:
                own()
            elif client is not None:
                try:
                    client.run(close_residents)  # a scheduler's workers outlive this batch: its processes do not
                except Exception as exc:  # noqa: BLE001 - a worker that has gone took its processes with it
                    log.debug("batch: closing the workers' processes: %s", exc)
        _remove_partial_folders(out, todo)
    elif progress:
        progress(dict(state))
    table = [results[r.id] for r in cohort]
    write_results(table, out, f"DeepLungReg batch: {method}")
    return table


def _make_client(scheduler: str | None, device: str, workers: int | None):
    """A client for ``scheduler``, or for a new local cluster; returns ``(client, close)``."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise DeepLungRegError("batch: Dask is not installed; pip install 'DeepLungRegLib[batch]'") from exc
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise DeepLungRegError(f"batch: cannot reach the Dask scheduler at {scheduler} ({exc})") from exc
        return client, client.close
    plan = cluster_plan(device, workers)
    # a pair whose worker dies is rescheduled once; the second death records it as failed
    with dask.config.set({"distributed.scheduler.allowed-failures": 1, "distributed.worker.daemon": False}):
        cluster = LocalCluster(n_workers=plan["workers"], threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", resources=plan["worker_resources"])  # loopback only
    client = Client(cluster)

    def close() -> None:
        client.close()
        cluster.close()

    return client, close


#: How long a cluster without workers is waited for (its workers may be starting or restarting).
WORKER_WAIT_S = 60.0


def _plan_for(client, device: str) -> dict:
    """What each task asks for on a running cluster: ``GPU=1`` where workers offer that resource
    (or CUDA is asked for), and the threads of one registration on each worker: its host's cores
    shared among the task threads of the workers on that host."""
    ws = client.scheduler_info(n_workers=-1).get("workers", {})
    if not ws:  # the client's copy may be stale, or workers (re)starting: wait for one before giving up
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except (TimeoutError, OSError):
            pass
        ws = client.scheduler_info(n_workers=-1).get("workers", {})
    if not ws:
        raise DeepLungRegError(f"batch: the Dask cluster has no workers (none came within {WORKER_WAIT_S:g} s)")
    gpu_workers = sum("GPU" in (w.get("resources") or {}) for w in ws.values())
    if device.startswith("cuda") and gpu_workers == 0:
        raise DeepLungRegError("batch: --device cuda needs workers that offer the Dask resource GPU "
                               "(start them with --resources GPU=1)")
    gpu = gpu_workers > 0 and device != "cpu"
    return {"workers": len(ws), "threads": _threads_per_worker(client, ws),
            "task_resources": {"GPU": 1} if gpu else None, "device": "cuda" if gpu else "cpu"}


def _threads_per_worker(client, ws: dict) -> dict[str, int]:
    """Worker address -> the threads of one registration there: its host's cores divided by the task
    threads of all the workers on that host (so that the pairs running at once do not oversubscribe it)."""
    try:
        cores = client.run(os.cpu_count)
    except Exception:  # noqa: BLE001 - a worker that cannot answer keeps the default
        cores = {}
    slots: dict[str, int] = {}
    for w in ws.values():
        slots[w.get("host", "")] = slots.get(w.get("host", ""), 0) + int(w.get("nthreads") or 1)
    return {addr: max(1, int(cores.get(addr) or os.cpu_count() or 1) // max(1, slots[w.get("host", "")])) for addr, w in ws.items()}


def _has_dashboard() -> bool:
    """Dask serves its dashboard only with bokeh installed."""
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def _dashboard(client) -> str | None:
    try:
        return client.dashboard_link if _has_dashboard() else None
    except Exception:  # noqa: BLE001 - no dashboard is not an error
        return None


def _run_tasks(client, todo: list[CohortRow], out: Path, method: str, options: dict, plan: dict, state: dict, progress) -> dict:
    from distributed import as_completed

    futures = {}
    for row in todo:
        fut = client.submit(register_pair, row, str(out), method, options, plan["device"], plan["threads"],
                            key=f"deeplungreg-{row.id}-{time.time_ns()}", retries=1, resources=plan["task_resources"],
                            pure=False)
        futures[fut] = row
    results = {}
    state["running"] = len(futures)
    if progress:
        progress(dict(state))
    for fut in as_completed(futures):
        row = futures[fut]
        try:
            res = fut.result()
        except Exception as exc:  # noqa: BLE001 - a pair's failure must not stop the others
            res = failed_row(row.id, f"{type(exc).__name__}: {exc}", now=True)
        results[row.id] = res
        state["running"] -= 1
        state["done" if res["status"] == "ok" else "failed"] += 1
        if progress:
            progress(dict(state))
    return results


def _remove_partial_folders(out: Path, rows: list[CohortRow]) -> None:
    """Staging folders that a killed worker left behind for these pairs (in a pair's folder, unless a
    live run holds its lock; beside it, where earlier versions staged)."""
    for row in rows:
        clean_leftovers(out / row.id, "batch")
        for p in out.glob(f"{_STAGING_PREFIX}{row.id}-*"):
            shutil.rmtree(p, ignore_errors=True)

