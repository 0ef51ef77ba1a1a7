#!/usr/bin/env bash
# The benchmark on a lent accelerator machine, in one short call from the repository
# root there (its image has JAX with CUDA, flax and optax). Wheels under .whl/ are
# installed first (the image lacks grain: `make device-wheels` downloads grain and its
# dependencies for Python 3.12 into .whl/); without grain the model and main-job rows are
# skipped, the layer rows still run. The main-job rows need breastmnist.npz in
# $DGCNN_DATA_DIR (default ../shared/data/medmnist). Results go to $OUT (or
# /tmp/dgcnn_bench).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/dgcnn_bench}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" XLA_PYTHON_CLIENT_PREALLOCATE=false
export DGCNN_DATA_DIR="${DGCNN_DATA_DIR:-$PWD/../shared/data/medmnist}"
python3 -c "import jax; print(jax.__version__, jax.devices())"
extra=()
python3 -c "import grain" 2>/dev/null || extra+=(--skip-models)
python3 -m experiments.benchmark "${extra[@]}" "$@" --output "$out/benchmark_device.json" \
  2>&1 | tee "$out/benchmark_device.log"
