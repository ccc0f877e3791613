"""Tests of DeepLungRegLib/memory.py: peak memory in megabytes, and the library where ``resource`` does not exist."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers_inputs import FAST_CFG, pair_dir


@pytest.mark.slow
def test_the_library_imports_and_registers_where_resource_does_not_exist(pair_dir):
    """As on Windows: ``import resource`` fails. Peak memory then comes from the portable call."""
    code = f"""
import sys
sys.modules['resource'] = None  # any 'import resource' now raises ImportError
import DeepLungRegLib
from DeepLungRegLib.methods import register
from DeepLungRegLib.simulation import read_pair
from DeepLungRegLib.memory import peak_rss_mb
p = read_pair({str(pair_dir)!r})
r = register(p.fixed, p.moving, 'adam', config={FAST_CFG!r}, device='cpu')
print(r.field.shape, peak_rss_mb())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    shape, peak = r.stdout.split(") ")
    assert peak.strip() == "None" or float(peak) > 50  # from /proc where there is one; never an error


def test_peak_memory_is_in_megabytes():
    code = """
import numpy as np
from DeepLungRegLib.memory import peak_rss_mb
before = peak_rss_mb()
block = np.ones(200 * 2**20 // 8)  # 200 MB touched
print(before, peak_rss_mb())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    before, after = map(float, r.stdout.split())
    assert 10 < before < 2000 and 150 < after - before < 260


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="only Linux can reset a process's peak (elsewhere a resident worker serves one request)")
def test_the_peak_starts_afresh_after_a_reset():
    code = """
import numpy as np
from DeepLungRegLib.memory import peak_rss_mb, release_memory, reset_peak_rss
block = np.ones(300 * 2**20 // 8)
del block
high = peak_rss_mb()
release_memory()
print(high, reset_peak_rss(), peak_rss_mb())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    high, reset, low = r.stdout.split()
    assert reset == "True" and float(high) - float(low) > 250
