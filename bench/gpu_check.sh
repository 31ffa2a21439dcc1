#!/usr/bin/env bash
# The one command to run on a GPU machine (H100/H200, no network, <= 8 minutes):
#
#   bash bench/gpu_check.sh                 # on the GPU machine, with .whl/ and bench_out/gpu_store.zarr carried
#   bash bench/gpu_check.sh --cpu-dry-run   # here, in .ci/run: tiny preset, a few steps, same code paths short of CUDA
#
# Before a GPU run, here: `bash scripts/gpu_wheels.sh` (wheels for Python 3.12 into .whl/, git-ignored)
# and `.venv/bin/python bench/gpu_check.py --build-store bench_out/gpu_store.zarr` (the small real store).
# On the device tool: carry [".whl", "bench_out/gpu_store.zarr"], command `bash bench/gpu_check.sh`.
#
# Writes under $OUT (default bench_out/gpu_check): summary.json (every section's numbers or its
# error), cuda_tests.log / cuda_tests.xml (pytest -m cuda), check.log, and the short training
# run's G1/G2 weights (fp16, split in <= 15 MiB parts: `cat g1g2_fp16.pt.part* > g1g2_fp16.pt`).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
[ "${1:-}" = "--cpu-dry-run" ] && MODE=cpu-dry-run
OUT=${OUT:-bench_out/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

if [ "$MODE" = gpu ]; then
  PY=${PYTHON:-python3}
  if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    # the image has torch, numpy, OpenCV, scikit-image, ... but not pydantic, zarr, numcodecs: carried wheels
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      >"$OUT/pip.log" 2>&1 || { echo "wheel install failed (see $OUT/pip.log)"; cat "$OUT/pip.log"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
  else
    export PYTHONPATH=$PWD
  fi
  STORE=${GPU_CHECK_STORE:-bench_out/gpu_store.zarr}
  PYTEST_FLAGS=""
else
  bash scripts/setup_venv.sh >/dev/null
  PY=.venv/bin/python
  export PYTHONPATH=$PWD OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  STORE=${GPU_CHECK_STORE:-$OUT/dry_store.zarr}
  # the GPU image lacks these: the dry run must not need them either
  export EDGEFILL_FORBID_MODULES=rasterio,prefect,geopandas,distributed,dask,kornia
  PYTEST_FLAGS="-p no:cacheprovider"
fi

echo "== gpu_check ($MODE) -> $OUT"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/check.log"

echo "== pytest -m cuda"
"$PY" -m pytest -m cuda -q $PYTEST_FLAGS --junitxml="$OUT/cuda_tests.xml" tests/test_cuda.py >"$OUT/cuda_tests.log" 2>&1
CUDA_RC=$?
tail -n 3 "$OUT/cuda_tests.log"
# without CUDA every test is skipped (rc 0); a failure on the GPU is recorded and the benchmarks still run
if [ $CUDA_RC -ne 0 ]; then echo "cuda tests failed (rc $CUDA_RC)"; fi
if [ "$MODE" = cpu-dry-run ] && [ $CUDA_RC -ne 0 ]; then exit 1; fi

echo "== benchmarks"
"$PY" bench/gpu_check.py --out "$OUT" --store "$STORE" --pytest-rc "$CUDA_RC" $( [ "$MODE" = cpu-dry-run ] && echo --cpu-dry-run ) \
  2>&1 | tee -a "$OUT/check.log"
exit "${PIPESTATUS[0]}"
