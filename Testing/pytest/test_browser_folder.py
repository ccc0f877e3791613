"""Tests of DeepLungRegLib/browser/folder.py: a mistyped field of ``metrics.json`` is one line that names it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from DeepLungRegLib import DeepLungRegError
from DeepLungRegLib.browser import ReviewFolder

from helpers_review import _free_port, registered


# --------------------------------------------------------------------- metrics.json
def _set(path: str, value):
    """A change to metrics.json: set the field at ``path`` ("a.b.0") to ``value``."""
    def change(m: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            m = m[int(key)] if isinstance(m, list) else m[key]
        m[int(last) if isinstance(m, list) else last] = value
    return change


MISTYPED = {  # field named in the line: the change
    "text where a number is": ("tre_after.mean", _set("tre_after.mean", "1.4")),
    "text in a list of numbers": ("fixed_grid.spacing", _set("fixed_grid.spacing", ["6", "6", "6"])),
    "a list where an object is": ("job", lambda m: m.__setitem__("job", list(m["job"].values()))),
    "an older folder's inputs as a list": ("inputs", lambda m: (m.pop("job"), m.__setitem__("inputs", ["f.nii.gz", "m.nii.gz"]))),
    "an object where a list is": ("tre_per_landmark", _set("tre_per_landmark", {"P-1": {"before": 1.0, "after": 1.0}})),
    "null where an object is": ("jacobian", _set("jacobian", None)),
    "a number where text is": ("job.fixed", _set("job.fixed", 7)),
    "a point of two numbers": ("landmarks.fixed_lps", _set("landmarks.fixed_lps.0", [1.0, 2.0])),
    "an object where names are": ("landmarks.labels", _set("landmarks.labels", {"P-1": 0})),
    "text where points are": ("landmarks.fixed_lps", _set("landmarks.fixed_lps", "1,2,3")),
    "a list where the grid is": ("fixed_grid", _set("fixed_grid", [61, 49, 48])),
    "a number where the method is": ("method", _set("method", 5)),
}


def _damaged(out: Path, dest: Path, change) -> Path:
    shutil.copytree(out, dest)
    m = json.loads((dest / "metrics.json").read_text())
    change(m)
    (dest / "metrics.json").write_text(json.dumps(m))
    return dest


@pytest.mark.parametrize("case", list(MISTYPED))
def test_a_mistyped_metrics_field_is_one_line_that_names_it(registered, tmp_path, case):
    """Before: a traceback later on (AttributeError, TypeError, ValueError while building the page), a
    misleading line, or a page served from a wrong grid. After: one line naming the field."""
    field, change = MISTYPED[case]
    folder = _damaged(registered, tmp_path / "damaged", change)
    with pytest.raises(DeepLungRegError, match=re.escape(f"metrics.json is damaged: field '{field}' should be")) as err:
        ReviewFolder.open(folder)
    assert "\n" not in str(err.value)


def test_the_review_command_names_a_mistyped_field_in_one_line(registered, tmp_path, capsys):
    from DeepLungRegLib.cli import main as cli

    folder = _damaged(registered, tmp_path / "damaged", MISTYPED["null where an object is"][1])
    assert cli(["review", str(folder), "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "field 'jacobian' should be an object" in err[0]


def test_a_well_typed_output_still_opens(registered):
    assert ReviewFolder.open(registered).views["landmarks"]
