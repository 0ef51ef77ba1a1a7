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
# Data: $DGCNN_DATA_DIR (the MedMNIST .npz files). Wheels under .whl/ are installed
# first: the packages the image lacks (on the H200 image used: grain 0.2.18,
# array_record, portpicker; its JAX 0.11.2 needs its own flax 0.12.10, the pinned
# flax 0.12.8 does not import there).
# Float32 convolutions and matmuls run at full precision (no TF32), as on a CPU.
# Output ($OUT or /tmp/dgcnn_sweep): runs.tgz (every workdir named in TASKS without
# checkpoints: what `experiments.compare --no-train` reads), checkpoints.tgz (the best
# checkpoint of each p4m_dgcnn seed-0 run, for the figures, and those of each unfinished
# run, to resume it; in 15 MB parts), logs.tgz (each worker's output), sweep.log and
# remaining.txt (the task lines not finished, to run again). $PYTHON picks the
# interpreter (default python3).
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
# A run stopped at the time limit exits cleanly (its checkpoints are saved), so the run
# directories, not the exit codes, say what finished: trained, tested and D4-scored.
"$py" - "$tasks" "$out/remaining.txt" <<'PY' | tee -a "$log"
import pathlib, shlex, sys
from experiments import compare
lines = [l for l in open(sys.argv[1]) if l.strip() and not l.lstrip().startswith("#")]
left = [l for l in lines if not all(compare.finished(run, scored=True)
                                    for run in compare.run_dirs(shlex.split(l)))]
pathlib.Path(sys.argv[2]).write_text("".join(left))
print(f"finished: {len(lines) - len(left)} of {len(lines)} task lines; the rest are in "
      "remaining.txt")
PY
tar czf "$out/logs.tgz" -C "$logs" .
dirs=$(grep -o -- '--workdir [^ ]*' "$tasks" | awk '{print $2}' | sort -u)
keep=$(for d in $dirs; do
  find "$d" -path '*/p4m_dgcnn/seed0/checkpoints/best'
  for run in $(find "$d" -type d -name 'seed*'); do
    [ -f "$run/eval_test.json" ] && continue
    for c in latest best; do [ -d "$run/checkpoints/$c" ] && echo "$run/checkpoints/$c"; done
  done
done)
# shellcheck disable=SC2086
tar czf "$out/runs.tgz" --exclude='*/checkpoints' $dirs
# in parts of at most 15 MB (the trip back takes files of up to 16 MB):
# cat checkpoints.tgz.part-* | tar xz
# shellcheck disable=SC2086
[ -n "$keep" ] && tar cz $keep | split -b 15M - "$out/checkpoints.tgz.part-"
ls -la "$out"
