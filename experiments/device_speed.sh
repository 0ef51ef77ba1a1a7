#!/usr/bin/env bash
# Training speed on a lent accelerator machine, in one short call from the repository
# root there (its image has JAX for the accelerator, flax, optax; wheels under .whl/,
# from `make device-wheels`, are installed first: grain and what it needs).
#
#   bash experiments/device_speed.sh [SWEEP_SECONDS]
#
# Parts, each under its own time limit, results in $OUT (or /tmp/dgcnn_speed):
#   1. experiments.benchmark_dynamic at the benchmark shape (batch 64, 96x96, 16 fields,
#      K = 4): every dynamic-layer strategy against the static layer, at the precisions
#      highest and default (120 s);
#   2. the main job (default config, p4m_dgcnn on BreastMNIST, 30 epochs) with the device
#      pipeline and with the host pipeline: results.json has its images/s (120 s each);
#   3. with SWEEP_SECONDS > 0: 5 seeds of the 28 px family on PBC (30 epochs) trained
#      together per model by experiments.compare (--seeds-together yes), stopped after
#      SWEEP_SECONDS; the finished runs' results are kept.
# Data: $DGCNN_DATA_DIR (default ../shared/data/medmnist:../shared/data/pbc).
set -uo pipefail
cd "$(dirname "$0")/.."
sweep=${1:-0}
out="${OUT:-/tmp/dgcnn_speed}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export DGCNN_DATA_DIR="${DGCNN_DATA_DIR:-$PWD/../shared/data/medmnist:$PWD/../shared/data/pbc}"
python3 -c "import jax, flax, grain; print('JAX', jax.__version__, 'flax', flax.__version__, \
jax.devices())" | tee "$out/versions.txt" || exit 1

timeout 120 python3 -m experiments.benchmark_dynamic --batch 64 --size 96 --fields 16 \
  --repeats 20 --precisions highest default --output "$out/benchmark_dynamic.json" \
  > "$out/benchmark_dynamic.log" 2>&1
echo "benchmark_dynamic: exit $?"
for pipeline in device host; do
  timeout 120 python3 -m experiments.train --workdir "$out/job_$pipeline" \
    --set pipeline=$pipeline --set progress=false > "$out/job_$pipeline.log" 2>&1
  echo "main job ($pipeline pipeline): exit $?"
done
if [ "$sweep" -gt 0 ]; then
  timeout "$sweep" python3 -m experiments.compare --workdir "$out/pbc" --datasets pbc \
    --models cnn cnn_augment p4_gcnn p4m_gcnn p4m_dgcnn p4m_dgcnn_wide \
    --seeds 0 1 2 3 4 --seeds-together yes > "$out/sweep.log" 2>&1
  echo "PBC sweep: exit $? (124: stopped at $sweep s)"
  find "$out/pbc" -name checkpoints -type d -prune -exec rm -rf {} +
fi

python3 - "$out" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
bench = out / "benchmark_dynamic.json"
if bench.is_file():
    for r in json.loads(bench.read_text())["rows"]:
        print(f"{r['group']:4s} {r['precision']:8s} {r['layer']:17s} {r['impl']:8s} "
              f"{r['median_s'] * 1e3:8.2f} ms  x{r['ratio']:.2f}")
for pipeline in ("device", "host"):
    res = out / f"job_{pipeline}" / "results.json"
    if res.is_file():
        r = json.loads(res.read_text())
        print(f"main job, {pipeline} pipeline: {r['train_images_per_second']:.0f} images/s over "
              f"{r['epochs_run']} epochs ({r['train_seconds']:.1f} s with compilation), "
              f"test AUC {r['test']['auc']:.4f}")
done = sorted(out.glob("pbc/pbc/*/seed*/results.json"))
print(f"PBC sweep: {len(done)} runs finished")
for res in done:
    r = json.loads(res.read_text())
    print(f"  {res.parent.parent.name} seed {r['seed']}: test accuracy "
          f"{r['test']['accuracy']:.4f}, {r['train_seconds']:.0f} s")
EOF
