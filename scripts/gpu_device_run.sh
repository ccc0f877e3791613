#!/usr/bin/env bash
# The one command of a GPU session (issue 33), run from the repository root with $OUT set:
#   bash scripts/gpu_device_run.sh            (about 8 minutes in all; TOTAL_S=480 by default)
# 1. installs the wheels carried in .whl/ (SimpleITK, dask, distributed and their pure-Python
#    dependencies) into /tmp/site, without an index;
# 2. prints nvidia-smi and the versions;
# 3. runs the CUDA tests: those marked cuda and the device-parametrised ones on cuda
#    (DEEPLUNGREG_TEST_DEVICE=cuda), teeing to $OUT/pytest.log;
# 4. runs scripts/gpu_bench.py --device cuda with the time that is left (gpu_bench.jsonl, gpu_bench.md).
# Everything it prints also goes to $OUT/run.log. Four files in $OUT, no folders.
# A second run for what the first skipped: SKIP_TESTS=1 PARTS=c,d,b600 TOTAL_S=300 bash scripts/gpu_device_run.sh
set -u
OUT=${OUT:?set OUT to the output folder}
TOTAL_S=${TOTAL_S:-480}
PYTEST_S=${PYTEST_S:-170}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/run.log") 2>&1

echo "== gpu_device_run $(date -u +%FT%TZ) in $PWD"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "gpu_device_run: installing the wheels failed (see above)"
else
  echo "gpu_device_run: no wheels in .whl/; SimpleITK and dask must already be installed"
fi
export PYTHONPATH=/tmp/site:$PWD
echo "== setup done after ${SECONDS}s"

nvidia-smi || true
python3 - <<'EOF'
import importlib
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "devices", torch.cuda.device_count(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for name in ("numpy", "scipy", "SimpleITK", "dask", "distributed", "pytest"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as exc:  # noqa: BLE001
        print(name, "MISSING", exc)
EOF

if [ "${SKIP_TESTS:-0}" = 1 ]; then
  echo "== CUDA tests skipped (SKIP_TESTS=1)"
else
  echo "== CUDA tests (at most ${PYTEST_S}s)"
  TIMEOUT_OPT=""
  if python3 -c "import pytest_timeout" 2>/dev/null; then TIMEOUT_OPT="--timeout=150"; fi
  DEEPLUNGREG_TEST_DEVICE=cuda timeout -k 10 "$PYTEST_S" python3 -m pytest -v --tb=short -rfEs -p no:cacheprovider --durations=12 $TIMEOUT_OPT \
    -m "cuda or device" \
    Testing/pytest/test_device.py Testing/pytest/test_methods.py Testing/pytest/test_methods_convex.py \
    Testing/pytest/test_evaluation_tuning.py Testing/pytest/test_methods_embed.py Testing/pytest/test_transforms.py \
    Testing/pytest/test_networks*.py Testing/pytest/test_losses.py Testing/pytest/test_features_mind.py \
    Testing/pytest/test_ops_filters.py Testing/pytest/test_keypoints_foerstner.py Testing/pytest/test_training_features.py -s 2>&1 | tee "$OUT/pytest.log"
  echo "== pytest exit ${PIPESTATUS[0]} after ${SECONDS}s"
fi

LEFT=$(( TOTAL_S - SECONDS - 25 ))
if [ "$LEFT" -lt 60 ]; then LEFT=60; fi
PARTS=${PARTS:-a,b,c,d,b600}
echo "== gpu_bench (parts $PARTS) with a budget of ${LEFT}s"
timeout -k 10 $(( LEFT + 40 )) python3 scripts/gpu_bench.py --device cuda --out "$OUT" --budget "$LEFT" --parts "$PARTS"
echo "== gpu_bench exit $? ; all done after ${SECONDS}s"
