#!/usr/bin/env bash
# The GPU checks of docs/scale.md in one script, sized to finish inside 10 minutes on one large GPU
# (measured plan on an H200: ~1 min of benchmarks, ~1 min of tokenising, one full-data epoch of e5-small).
#
#   bash scripts/gpu_study.sh                 # on a CUDA machine, from the repository root
#   bash scripts/gpu_study.sh --dry-run       # the same stages at tiny sizes on the CPU (what CI runs)
#
# Stages (each writes JSON; a failing stage is reported and the next one still runs):
#   1. scripts/bench_gpu.py: bf16 vs fp32, e5-small vs a BERT-base-shaped random encoder: samples/s, peak memory
#   2. scripts/bench_loop.py: the Trainer against a hand-written loop on the GPU
#   3. mtl-train experiment=tianchi_baseline for one epoch of the full data: average dev macro-F1, samples/s
# Results: $STUDY_OUT (default outputs/bench/gpu_study/), one file per stage plus summary.json.
# Needs MTL_DATA_DIR (or data.root) pointing at the Tianchi files for stage 3; stages 1-2 need no data.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
OUT_DIR="${STUDY_OUT:-outputs/bench/gpu_study}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
status=()

stage() {  # stage NAME TIMEOUT_S CMD...
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  local t0=$SECONDS
  if timeout "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"; then rc=${PIPESTATUS[0]}; else rc=${PIPESTATUS[0]}; fi
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  status+=("\"$name\": {\"exit\": $rc, \"seconds\": $((SECONDS - t0))}")
}

if [[ $DRY == 1 ]]; then
  stage bench_gpu 300 python scripts/bench_gpu.py --device cpu --out "$OUT_DIR/bench_gpu.json"
  stage bench_loop 300 python scripts/bench_loop.py --device cpu --encoder tiny_random --steps 4 --reps 1 \
    --warmup-steps 1 --train-per-task 64 --batch-size 8 --out "$OUT_DIR/bench_loop.json"
  stage tianchi_epoch 300 mtl-train experiment=tianchi_baseline encoder=tiny_random trainer.max_epochs=null \
    trainer.max_steps=4 trainer.eval_every=4 data.max_train_per_task=64 data.max_dev_per_task=32 \
    trainer.device=cpu trainer.progress=false "hydra.run.dir=$OUT_DIR/tianchi_epoch"
else
  stage bench_gpu 150 python scripts/bench_gpu.py --steps 30 --warmup-steps 5 --out "$OUT_DIR/bench_gpu.json"
  stage bench_loop 120 python scripts/bench_loop.py --device cuda --steps 40 --reps 3 --out "$OUT_DIR/bench_loop.json"
  # one epoch of all the data, bf16, length buckets (kernels reused), evaluation at the end
  stage tianchi_epoch 330 mtl-train experiment=tianchi_baseline trainer.max_epochs=1 trainer.eval_every=100000 \
    trainer.early_stopping_patience=null trainer.checkpoint_every=0 data.batch_size=64 \
    "data.length_buckets=[32,64,96,128]" trainer.progress=false "hydra.run.dir=$OUT_DIR/tianchi_epoch"
fi

metrics="$OUT_DIR/tianchi_epoch/metrics.json"
python - "$OUT_DIR" "$metrics" "${status[*]}" <<'EOF'
import json, sys
from pathlib import Path
out, metrics, status = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
summary = {"stages": json.loads("{" + status.replace("} \"", "}, \"") + "}")}
if metrics.is_file():
    m = json.loads(metrics.read_text())
    summary["tianchi_epoch"] = {k: m.get(k) for k in ("avg_macro_f1", "steps", "samples_per_second", "wall_seconds")}
    summary["tianchi_epoch"]["tasks"] = {t: s["macro_f1"] for t, s in m.get("tasks", {}).items()}
for name in ("bench_gpu", "bench_loop"):
    p = out / f"{name}.json"
    if p.is_file():
        summary[name] = json.loads(p.read_text())
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary.get("tianchi_epoch", {}), indent=2))
print("summary:", out / "summary.json")
EOF
