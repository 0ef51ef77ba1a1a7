#!/usr/bin/env bash
# The accelerator check, in one short call from the repository root of a GPU or TPU
# machine (its image has JAX for the accelerator, flax, optax, chex, pytest with xdist):
#   1. the equivariance core of the test suite (groups, filter banks, ops, layers, dynamic
#      layers, execution paths, batch norm, the testing helpers, models), unchanged;
#   2. experiments.exactness: the invariance error of every registered model on real
#      BreastMNIST images under every group element, and its forward+backward time, at
#      the precisions highest (the library's default) and default (the backend's, TF32
#      on NVIDIA GPUs); rows are written as they are measured;
#   3. the same for the p4m models in {filter bank, orbit} x {float32, bfloat16} at both
#      precisions: whether the orbit execution is exact at TF32 and in bfloat16, and
#      what it costs against the filter bank at highest.
# Needs breastmnist.npz in $DGCNN_DATA_DIR (or ../shared/data/medmnist). Without grain
# the few tests that build a training state are deselected. Each part has a time limit
# (150, 150 and 120 s, about 7 minutes in all); results and logs go to $OUT (or
# /tmp/dgcnn_device_test). Checked here on the CPU for its mechanics only (both parts
# run past their limits on 2 CPU cores).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/dgcnn_device_test}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" XLA_PYTHON_CLIENT_PREALLOCATE=false
export DGCNN_DATA_DIR="${DGCNN_DATA_DIR:-$PWD/../shared/data/medmnist}"
python3 -c "import jax, flax; print('JAX', jax.__version__, 'flax', flax.__version__, jax.devices())" \
  | tee "$out/versions.txt"
deselect=()
python3 -c "import grain" 2>/dev/null || deselect=(-k "not configured_precision")
workers=$(( $(nproc) < 8 ? $(nproc) : 8 ))
timeout 150 python3 -m pytest -q -n "$workers" -p no:cacheprovider "${deselect[@]}" \
  tests/test_groups.py tests/test_filters.py tests/test_ops.py tests/test_nn.py \
  tests/test_dynamic.py tests/test_execution.py tests/test_norm.py tests/test_testing.py \
  tests/test_models.py tests/test_orbit.py > "$out/pytest.log" 2>&1
tests_rc=$?
timeout 150 python3 -m experiments.exactness --repeats 5 --precisions highest default \
  --output "$out/exactness.json" > "$out/exactness.log" 2>&1
exact_rc=$?
timeout 120 python3 -m experiments.exactness --repeats 5 --precisions highest default \
  --impls auto orbit --dtypes float32 bfloat16 --models p4m_gcnn p4m_dgcnn cnn \
  --output "$out/exactness_orbit.json" > "$out/exactness_orbit.log" 2>&1
orbit_rc=$?
echo "== summary ($(cat "$out/versions.txt"))"
echo "tests (rc $tests_rc):"; tail -n 15 "$out/pytest.log"
echo "exactness (rc $exact_rc; 124: stopped at the time limit, the rows so far):"
grep -E "invariance error|within" "$out/exactness.log"
echo "orbit and bfloat16 (rc $orbit_rc):"
grep -E "invariance error|within" "$out/exactness_orbit.log"
[ "$tests_rc" -eq 0 ] && [ "$exact_rc" -eq 0 ] && [ "$orbit_rc" -eq 0 ]
