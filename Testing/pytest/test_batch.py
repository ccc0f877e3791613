"""``deeplungreg batch``: a cohort on a Dask LocalCluster (two worker processes, loopback only), resumably."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import threading
import time

import pytest

from DeepLungRegLib.batch import cluster_plan, default_workers, read_cohort, run_cohort
from DeepLungRegLib.batch.results import RESULT_COLUMNS
from DeepLungRegLib.cli import main
from DeepLungRegLib.errors import DeepLungRegError

distributed = pytest.importorskip("distributed", reason="deeplungreg batch needs Dask distributed (pip install '.[batch]')")
pytestmark = pytest.mark.dask

#: a fast affine registration: the batch machinery is under test, not the method
FAST = {"levels_mm": [8.0], "iterations": [30]}
#: long enough (tens of seconds) to kill its worker while it runs
SLOW = {"refine_levels_mm": [8.0, 4.0], "refine_iterations": [150, 150], "refine_learning_rates": [0.5, 0.25], "affine_init": False}


@pytest.fixture(scope="module")
def pair(sample_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch") / "pair"
    assert main(["simulate", str(sample_path), "-o", str(out), "--spacing", "4", "--seed", "3", "-q"]) == 0
    return out


def _cohort(folder, pair, ids, extra_rows=()):
    """A cohort CSV in ``folder`` whose pairs all point (by relative paths) at one simulated pair."""
    shutil.copytree(pair, folder / "pair", dirs_exist_ok=True)
    path = folder / "cohort.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "fixed", "moving", "fixed_mask", "moving_mask", "fixed_landmarks", "moving_landmarks"])
        for i in ids:
            w.writerow([i, "pair/fixed.nii.gz", "pair/moving.nii.gz", "pair/fixed_mask.nii.gz", "pair/moving_mask.nii.gz",
                        "pair/fixed_landmarks.csv", "pair/moving_landmarks.csv"])
        for r in extra_rows:
            w.writerow(r)
    return path


@pytest.fixture(scope="module")
def client():
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                           dashboard_address="127.0.0.1:0")
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.mark.slow
def test_a_bad_cohort_is_refused_at_once_with_line_numbers(tmp_path, pair):
    path = _cohort(tmp_path, pair, ["a", "b"], extra_rows=[
        ["a", "pair/fixed.nii.gz", "pair/moving.nii.gz", "", "", "", ""],          # line 4: repeats line 2
        ["c/d", "pair/fixed.nii.gz", "missing.nii.gz", "nomask.nii.gz", "", "pair/fixed_landmarks.csv", ""],  # line 5
    ])
    with pytest.raises(DeepLungRegError) as e:
        read_cohort(path)
    msg = str(e.value)
    assert "\n" not in msg and "2 bad row(s)" in msg
    assert "line 4: id 'a' repeats line 2" in msg
    for part in ("line 5:", "'c/d' is not a folder name", "moving image missing.nii.gz does not exist",
                 "fixed mask nomask.nii.gz does not exist", "give both fixed_landmarks and moving_landmarks"):
        assert part in msg
    (tmp_path / "cols.csv").write_text("id,fixed,moving,weight\n")
    with pytest.raises(DeepLungRegError, match="line 1: unknown column.s. weight"):
        read_cohort(tmp_path / "cols.csv")
    # nothing ran, nothing was written
    assert main(["batch", str(path), "-o", str(tmp_path / "o"), "-q"]) == 2 and not (tmp_path / "o").exists()
    (tmp_path / "ok").mkdir()
    rows = read_cohort(_cohort(tmp_path / "ok", pair, ["a"]))
    assert rows[0].fixed == str(tmp_path / "ok" / "pair" / "fixed.nii.gz") and rows[0].line == 2  # relative to the CSV's folder
    with pytest.raises(DeepLungRegError, match="regularisation"):
        run_cohort(rows, tmp_path / "o", options={"regularisation": -1})


def test_cluster_plan_gives_one_worker_per_gpu_and_gpu_tasks_only_to_gpu_workers():
    cpu = cluster_plan("cpu", None, cores=8, cuda_devices=2)
    assert (cpu["workers"], cpu["threads"], cpu["task_resources"], cpu["device"]) == (2, 4, None, "cpu")
    assert default_workers(2) == 1 and default_workers(16) == 4
    assert cluster_plan("cpu", 2, cores=2, cuda_devices=0)["threads"] == 1
    gpu = cluster_plan("auto", None, cores=16, cuda_devices=2)
    assert gpu["workers"] == 2 and gpu["worker_resources"] == gpu["task_resources"] == {"GPU": 1} and gpu["device"] == "cuda"
    assert cluster_plan("auto", None, cores=4, cuda_devices=0)["device"] == "cpu"
    with pytest.raises(DeepLungRegError, match="no CUDA"):
        cluster_plan("cuda", None, cores=4, cuda_devices=0)


@pytest.mark.slow
def test_a_cohort_registers_resumes_and_reruns_only_what_is_missing(tmp_path, pair, client):
    path = _cohort(tmp_path, pair, ["case1", "case2", "case3"])
    out = tmp_path / "out"
    seen = []
    rows = run_cohort(path, out, method="affine", options=FAST, client=client, progress=seen.append)
    assert [r["id"] for r in rows] == ["case1", "case2", "case3"]
    assert all(r["status"] == "ok" and r["registered_in_this_run"] for r in rows)
    assert all(r["tre_after_mm"] < r["tre_before_mm"] for r in rows) and {r["worker"] for r in rows} <= {"0", "1"}
    assert seen[-1]["done"] == 3 and seen[-1]["running"] == 0
    # the workers' resident processes ended with the batch (this cluster outlives it)
    kept = client.run(lambda: sum(len(v) for v in __import__("DeepLungRegLib.batch.run", fromlist=["_"])._RESIDENT.values()))
    assert set(kept.values()) == {0}, kept
    for i in ("case1", "case2", "case3"):
        assert (out / i / "displacement.nii.gz").is_file() and (out / i / "report.html").is_file()
    with open(out / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert tuple(table[0]) == RESULT_COLUMNS and [r["status"] for r in table] == ["ok"] * 3
    assert (out / "results.md").is_file() and (out / "tre_boxplot.png").is_file()
    # a rerun registers nothing and reports the same results
    again = run_cohort(path, out, method="affine", options=FAST, client=client)
    assert not any(r["registered_in_this_run"] for r in again)
    assert [r["tre_after_mm"] for r in again] == [r["tre_after_mm"] for r in rows]
    # a pair whose outputs are gone (or half gone) is registered again, and only that one
    shutil.rmtree(out / "case2")
    (out / "case3" / "warped.nii.gz").unlink()
    third = run_cohort(path, out, method="affine", options=FAST, client=client)
    assert [r["registered_in_this_run"] for r in third] == [False, True, True]
    assert all(r["status"] == "ok" for r in third) and (out / "case3" / "warped.nii.gz").is_file()


@pytest.mark.slow
def test_a_failing_pair_is_recorded_and_the_others_go_on(tmp_path, pair, client):
    path = _cohort(tmp_path, pair, ["good"], extra_rows=[["bad", "broken.nii.gz", "pair/moving.nii.gz", "", "", "", ""]])
    data = (tmp_path / "pair" / "fixed.nii.gz").read_bytes()
    (tmp_path / "broken.nii.gz").write_bytes(data[: len(data) // 2])  # a truncated download
    out = tmp_path / "out"
    rows = {r["id"]: r for r in run_cohort(path, out, method="affine", options=FAST, client=client)}
    assert rows["good"]["status"] == "ok"
    assert rows["bad"]["status"] == "failed" and "truncated" in rows["bad"]["error"] and not (out / "bad").exists()
    # a rerun does not retry it unless asked; once repaired, --retry-failed registers it
    assert not run_cohort(path, out, method="affine", options=FAST, client=client)[1]["registered_in_this_run"]
    (tmp_path / "broken.nii.gz").write_bytes(data)
    retried = run_cohort(path, out, method="affine", options=FAST, client=client, retry_failed=True)
    assert [(r["status"], r["registered_in_this_run"]) for r in retried] == [("ok", False), ("ok", True)]


@pytest.mark.slow
def test_a_pair_whose_worker_is_killed_still_completes(tmp_path, pair, client):
    path = _cohort(tmp_path, pair, ["victim"])
    out = tmp_path / "out"
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(rows=run_cohort(path, out, method="adam", options=SLOW, client=client)))
    t.start()
    deadline, killed = time.time() + 120, None
    while time.time() < deadline and killed is None:
        for addr, keys in client.processing().items():
            if any("victim" in str(k) for k in keys):
                pid = client.run(os.getpid, workers=[addr])[addr]
                # the pair's process has staged its outputs (it is in its registration): kill its Dask worker now
                while time.time() < deadline and not list((out / "victim").glob(".deeplungreg-partial-*")):
                    time.sleep(0.05)
                assert list((out / "victim").glob(".deeplungreg-partial-*")), "the pair never staged its outputs"
                os.kill(pid, signal.SIGKILL)
                killed = addr
        time.sleep(0.2)
    t.join(timeout=600)
    assert killed is not None, "the pair never started"
    rows = result["rows"]
    assert rows[0]["status"] == "ok" and rows[0]["registered_in_this_run"], rows[0]
    assert not [p for p in out.rglob(".deeplungreg-partial-*")]  # the killed attempt's staging is gone
    assert not (out / "victim" / ".deeplungreg-lock").exists()  # and its lock was taken over, then released


@pytest.mark.slow
def test_the_batch_command_runs_a_local_cluster(tmp_path, pair, capsys):
    path = _cohort(tmp_path, pair, ["one"])
    args = ["batch", str(path), "-o", str(tmp_path / "out"), "--method", "affine", "--workers", "1", "-q",
            "-O", "levels_mm=[8]", "-O", "iterations=[30]"]
    assert main(args) == 0
    assert "1 registered, 0 failed (1 run this time)" in capsys.readouterr().out
    assert main(args) == 0
    assert "(0 run this time)" in capsys.readouterr().out


def test_a_pairs_process_gets_its_threads_and_not_the_nannys_settings(client):
    """A Dask nanny sets OMP_NUM_THREADS=1 and MALLOC_TRIM_THRESHOLD_ in its workers (which made a pair 2-3 times
    slower there): a pair's process does not inherit them, and gets the host's cores shared among the workers."""
    from DeepLungRegLib.batch.run import _nanny_environment_undone, _plan_for, _task_threads

    for undone in client.run(_nanny_environment_undone).values():
        assert {"OMP_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_"} <= set(undone) and set(undone.values()) == {None}
    plan = _plan_for(client, "cpu")
    assert set(plan["threads"]) == set(client.scheduler_info()["workers"])
    assert client.submit(_task_threads, plan["threads"], pure=False).result() == max(1, (os.cpu_count() or 1) // 2)
