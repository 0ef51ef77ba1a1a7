#!/usr/bin/env bash
# The benchmark on a lent accelerator machine, in one short call from the repository
# root there (its image has JAX with CUDA, flax and optax; without grain the model rows
# are skipped, the layer rows still run). Results go to $OUT (or /tmp/dgcnn_bench).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/dgcnn_bench}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" XLA_PYTHON_CLIENT_PREALLOCATE=false
python3 -c "import jax; print(jax.__version__, jax.devices())"
extra=()
python3 -c "import grain" 2>/dev/null || extra+=(--skip-models)
python3 -m experiments.benchmark "${extra[@]}" "$@" --output "$out/benchmark_device.json" \
  2>&1 | tee "$out/benchmark_device.log"
