"""Tests of DeepLungRegLib/cli.py's hidden ``worker`` command and its progress output."""

from __future__ import annotations

import json

import pytest

from DeepLungRegLib.cli import main

from helpers_inputs import one_line


@pytest.mark.parametrize("field, value, says", [("fixed", 5, "'fixed' must be a file path (text), got 5"), ("options", "fast", "'options' must be an object"),
                                                ("landmark_labels", 3, "'landmark_labels' must be a list")])
def test_cli_worker_request_field_of_the_wrong_type(tmp_path, capsys, field, value, says):
    """A traceback, and no {"error"} line for the Slicer module to show."""
    request = {"job": {"fixed": str(tmp_path / "f.nrrd"), "moving": str(tmp_path / "m.nrrd"), field: value}, "output": str(tmp_path / "out")}
    (tmp_path / "request.json").write_text(json.dumps(request))
    out = one_line(capsys, main(["worker", str(tmp_path / "request.json")]), says)
    assert says in json.loads(out.strip().splitlines()[-1])["error"]


def test_progress_without_tqdm(monkeypatch, capsys):
    """The CLI's progress bar is optional: without tqdm (Slicer's Python) progress callbacks do nothing."""
    import builtins

    from DeepLungRegLib.cli import _Progress

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name == "tqdm" or name.startswith("tqdm."):
            raise ImportError("No module named 'tqdm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    with _Progress("register") as bar:
        bar("registering", 0.5)
    assert bar.bar is None and capsys.readouterr().err == ""


def test_worker_is_hidden_from_help(capsys):
    from DeepLungRegLib.cli import build_parser, main

    help_text = build_parser().format_help()
    assert "register" in help_text and "worker" not in help_text.replace("workers", "")
    with pytest.raises(SystemExit) as exc:
        main(["worker", "--help"])
    assert exc.value.code == 0 and "request" in capsys.readouterr().out
