"""Tests of DeepLungRegLib/cli.py: a mistake on the command line is one line, not a traceback; SIGTERM leaves nothing."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from DeepLungRegLib import Geometry, Image, write_image
from DeepLungRegLib.cli import main

from helpers_inputs import cut, one_line, one_line_error, pair_dir, register_args, run_cli, tiny, write_sitk
from helpers_outputs import listing


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGTERM")
def test_sigterm_ends_with_a_message_and_leaves_nothing(pair_dir, tmp_path):
    out = tmp_path / "out"
    args = register_args(pair_dir, out)
    i = args.index("-O")
    args = args[:i]  # adam with its default, slower settings: time to be stopped
    # -v: without a terminal the CLI logs each stage; the signal comes once the method's levels run ("affine 8 mm")
    proc = subprocess.Popen([sys.executable, "-m", "DeepLungRegLib.cli", "-v", *args], stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True)
    reader.start()
    deadline, seen = time.time() + 300, []
    in_method = re.compile(r"register \(adam\): \w+ [\d.]+ mm \(")
    while time.time() < deadline and not any(in_method.search(line) for line in seen):
        try:
            seen.append(lines.get(timeout=1.0))
        except queue.Empty:
            assert proc.poll() is None, "".join(seen)
    assert any(in_method.search(line) for line in seen), "".join(seen)
    assert any(p.name.startswith(".deeplungreg-partial-") for p in out.iterdir())  # outputs staged, none in place yet
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, "".join(seen)
    reader.join(timeout=60)  # it ends at the end of the process's stderr
    assert not reader.is_alive()
    while not lines.empty():
        seen.append(lines.get_nowait())
    said = [line for line in seen if "deeplungreg: INFO:" not in line and line.strip()]
    assert len(said) == 1 and "terminated (SIGTERM)" in said[0], said
    assert not out.exists() and not list(tmp_path.iterdir())


# ------------------------------------------------------ the smaller mistakes
@pytest.mark.slow
def test_a_tiny_image_gives_one_line(tmp_path):
    g = Geometry((3, 3, 3), (1.0, 1.0, 1.0))
    arr = np.random.default_rng(0).normal(-500, 300, g.shape).astype(np.int16)
    write_image(Image(arr, g), tmp_path / "tiny.nii.gz")
    one_line_error(run_cli("register", tmp_path / "tiny.nii.gz", tmp_path / "tiny.nii.gz", "-o", tmp_path / "o", "-q"), "too small")


@pytest.mark.slow
def test_simulate_refuses_a_zero_spacing(sample_path, tmp_path):
    one_line_error(run_cli("simulate", sample_path, "-o", tmp_path / "p", "--spacing", "0"), "--spacing must be between")
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
def test_whole_number_options_refuse_fractions(pair_dir, tmp_path):
    one_line_error(run_cli("register", pair_dir / "fixed.nii.gz", pair_dir / "moving.nii.gz", "-o", tmp_path / "o",
                           "--method", "adam", "-O", "refine_iterations=2.5"), "refine_iterations must be a whole number")
    one_line_error(run_cli("register", pair_dir / "fixed.nii.gz", pair_dir / "moving.nii.gz", "-o", tmp_path / "o",
                           "-O", "regularisation=strong"), "regularisation must be a number")


def test_cli_a_truncated_mha(tmp_path, capsys):
    """'No such file or directory', after ITK's own two lines on stderr."""
    fixed = write_sitk(tmp_path, "fixed.mha")
    moving = cut(write_sitk(tmp_path, "moving.mha"), 100)
    code = main(["register", str(fixed), str(moving), "-o", str(tmp_path / "out"), "-q"])
    one_line(capsys, code, f"read_image: moving image {moving} is truncated or its header is wrong")


def test_cli_a_config_whose_config_entry_is_not_an_object(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"config": 5}')
    code = main(["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "-o", str(tmp_path / "out"), "--config", str(cfg)])
    one_line(capsys, code, 'must hold a JSON object of options; its "config" entry is 5')


def test_cli_simulate_with_a_negative_seed(tmp_path, capsys):
    ct = tmp_path / "ct.nii.gz"
    write_image(tiny(), ct)
    code = main(["simulate", str(ct), "-o", str(tmp_path / "pair"), "--seed", "-1", "-q"])
    one_line(capsys, code, "simulate: the seed must be a whole number >= 0, got -1")


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_demo_refuses_a_foreign_output_before_any_work(tmp_path):
    """deeplungreg demo -o OUT where OUT holds a user's report.html: one line, at once (before the simulation), OUT as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("my notes")
    before = listing(tmp_path)
    r = subprocess.run([sys.executable, "-m", "DeepLungRegLib.cli", "demo", "-o", str(out), "-q"], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "was not written by a run of ours" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "simulated exhale" not in r.stdout and listing(tmp_path) == before
