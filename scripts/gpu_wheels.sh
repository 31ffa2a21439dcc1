#!/usr/bin/env bash
# Download, for the GPU machine's Python 3.12 (manylinux x86_64), the wheels bench/gpu_check.sh
# installs there before importing the project: only what the check imports and the image lacks
# (its torch, numpy, OpenCV, scikit-image, tensorboard, matplotlib, typer, rich are used as they are).
# Into .whl/ (git-ignored); carry it with the device tool: carry [".whl", "bench_out/gpu_store.zarr"].
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
# pinned to the versions this project is tested with here (.venv)
want=$(.venv/bin/python - <<'PY'
from importlib.metadata import version
for name in ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "zarr", "numcodecs",
             "donfig", "google-crc32c", "typing-extensions"):
    print(f"{name}=={version(name)}")
PY
)
for spec in $want; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT -d .whl "$spec" \
    || python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl "$spec"
done
ls -la .whl
du -sh .whl
