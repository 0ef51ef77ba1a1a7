#!/usr/bin/env bash
# Train a list of sweep runs on a lent accelerator machine within a time limit, several
# processes at a time, and pack the finished work directories for the trip back.
#
#   bash experiments/device_sweep.sh TASKS WORKERS SECONDS
#
# TASKS: a file with one `python -m experiments.compare` argument line per run, e.g.
#   --workdir runs/gpu --datasets pneumoniamnist --models p4m_dgcnn --seeds 3
# Lines are taken in order by WORKERS processes; no line starts after SECONDS and a run
# still going then is stopped (its checkpoints let `experiments.compare` resume it).
# Data: $DGCNN_DATA_DIR (the MedMNIST .npz files). Wheels under .whl/ (grain and the
# pinned flax/optax/orbax/chex, for an image that lacks them) are installed first.
# Float32 convolutions and matmuls run at full precision (no TF32), as on a CPU.
# Output ($OUT or /tmp/dgcnn_sweep): runs.tgz (every workdir named in TASKS without
# checkpoints: what `experiments.compare --no-train` reads), checkpoints.tgz (the best
# checkpoint of each p4m_dgcnn seed-0 run, for the figures, and the latest one of each
# unfinished run, to resume it), logs.tgz (each worker's output), sweep.log. $PYTHON picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
tasks=$1 workers=$2 limit=$3 py=${PYTHON:-python3}
out="${OUT:-/tmp/dgcnn_sweep}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=/tmp/dgcnn_jax_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_DEFAULT_MATMUL_PRECISION=highest
"$py" -c "import jax, flax, grain, experiments.compare; print('jax', jax.__version__, \
'flax', flax.__version__, jax.devices())" || exit 1

queue=$(mktemp) lock=$(mktemp) logs=$(mktemp -d)
grep -v '^\s*\(#\|$\)' "$tasks" >"$queue"
log="$out/sweep.log"
worker() {
  while true; do
    local left=$((limit - SECONDS)) line
    ((left > 0)) || break
    line=$(flock "$lock" bash -c "head -n1 '$queue'; sed -i 1d '$queue'")
    [ -z "$line" ] && break
    echo "$(date +%T) worker $1 start: $line" >>"$log"
    # shellcheck disable=SC2086
    timeout "$left" "$py" -m experiments.compare --set progress=false $line \
      >>"$logs/worker$1.log" 2>&1
    echo "$(date +%T) worker $1 end rc=$?: $line" >>"$log"
  done
}
for w in $(seq 1 "$workers"); do worker "$w" & done
wait
echo "not started: $(wc -l <"$queue") runs" | tee -a "$log"
cat "$queue" >>"$log"
tar czf "$out/logs.tgz" -C "$logs" .
dirs=$(grep -o -- '--workdir [^ ]*' "$tasks" | awk '{print $2}' | sort -u)
keep=$(for d in $dirs; do
  find "$d" -path '*/p4m_dgcnn/seed0/checkpoints/best'
  for run in $(find "$d" -type d -name 'seed*'); do
    [ -f "$run/results.json" ] || echo "$run/checkpoints/latest"
  done
done)
# shellcheck disable=SC2086
tar czf "$out/runs.tgz" --exclude='*/checkpoints' $dirs
# shellcheck disable=SC2086
tar czf "$out/checkpoints.tgz" $keep
ls -la "$out"
grep -c "end rc=0" "$log"
