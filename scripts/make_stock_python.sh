#!/usr/bin/env bash
# A Python with only what the Slicer module's registration path may use in a stock Slicer:
# torch (Slicer's PyTorch extension), numpy, scipy and SimpleITK (bundled with Slicer), and a
# launcher beside it that runs that Python as a child process, as Slicer's PythonSlicer does.
# Testing/pytest/test_slicer_bridge_background_stock.py runs the module's background path with it; .ci/run builds it.
#
#   scripts/make_stock_python.sh [FOLDER]     (default: build/stock-python, ignored by git)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-${DEEPLUNGREG_STOCK_PYTHON_DIR:-build/stock-python}}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$DEST/venv/bin/python" ]; then
    "$PYTHON" -m venv "$DEST/venv"
fi
"$DEST/venv/bin/python" -m pip install -q --upgrade pip
"$DEST/venv/bin/python" -m pip install -q torch==2.13.0 numpy scipy SimpleITK
# The launcher: the real Python is its child, not an exec (PythonSlicer is a CTK launcher that
# starts Slicer's python-real as a child process); a signal to the launcher alone leaves the child running.
REAL="$(cd "$DEST/venv/bin" && pwd)/python"
cat > "$DEST/PythonSlicer" <<LAUNCHER
#!$REAL -I
import os, subprocess, sys
env = dict(os.environ, PYTHONNOUSERSITE="1")
sys.exit(subprocess.call(["$REAL", *sys.argv[1:]], env=env))
LAUNCHER
chmod +x "$DEST/PythonSlicer"
"$DEST/PythonSlicer" -c "import torch, numpy, scipy, SimpleITK; print('stock python:', torch.__version__)"
