#!/usr/bin/env bash
# The one prepared script for a machine with an NVIDIA GPU (the `device` tool, a cluster node). In
# under 8 minutes of wall time on one GPU it runs, each step under its own time limit so that one
# failure never hides the others:
#   1. what the machine is (GPU, compute capability, native bf16 or not);
#   2. a server-gpu-torch-cuda latency table of the tiny space (CUDA events), validated end to end;
#   3. the ranking benchmark's ground truth on Fashion-MNIST, sized to fit: NETWORKS x SEEDS stand-alone
#      trainings, SHARDS at once on the one GPU, and the seed-vs-seed noise ceiling it prints;
#   4. the CUDA test that can fail (same seed trains and rates on CUDA and on the CPU, compared);
#   5. train (AMP, channels_last), rate and retrain through the CLI on a synthetic folder;
#   6. bench/scale.py's throughput on this GPU.
# Every log and result lands in OUT_DIR, and OUT_DIR/gpu_check.tar.gz holds them all.
# Run from the repository root with the project installed:  bash bench/gpu_check.sh [OUT_DIR]
# Fashion-MNIST: DNA_DEPLOY_FASHION_MNIST names its folder (Debian: apt-get install dataset-fashion-mnist).
set -uo pipefail
OUT=${1:-${OUT:-gpu_check}}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
DEV=${DEV:-cuda}           # DEV=cpu runs the same script without a GPU (a dry run of the script itself)
NETWORKS=${NETWORKS:-16}; SEEDS=${SEEDS:-3}; SHARDS=${SHARDS:-8}
TRAIN_IMAGES=${TRAIN_IMAGES:-30000}; EPOCHS=${EPOCHS:-4}; SCORE_IMAGES=${SCORE_IMAGES:-24000}
DNA="$PY -m dna_deploy"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
T_START=$(date +%s)

# step NAME LIMIT_S COMMAND...: runs it under `timeout`, its log in OUT/NAME.log, one summary line.
step() {
  local name=$1 limit=$2; shift 2
  local t0; t0=$(date +%s)
  echo "=== $name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local line="$name: rc=$rc in $(( $(date +%s) - t0 )) s"
  [ $rc -eq 124 ] && line="$line (TIMED OUT)"
  echo "$line" | tee -a "$SUMMARY"
  tail -n 6 "$OUT/$name.log"
  return 0
}

step machine 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; $PY - <<'EOF'
import torch
from dna_deploy.compute import native_amp_dtype
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'GPUs', torch.cuda.device_count())
if torch.cuda.is_available():
    d = torch.device('cuda', 0)
    print('gpu', torch.cuda.get_device_name(d), 'capability', torch.cuda.get_device_capability(d),
          'is_bf16_supported', torch.cuda.is_bf16_supported(), 'amp chosen', native_amp_dtype(d))
EOF"

# 2. the GPU latency table first, while nothing else runs on the GPU
TABLE="$OUT/server-gpu-torch-cuda__tiny.json"
step profile_cuda 150 $DNA profile -d server-gpu-torch-cuda -s tiny -o "$TABLE" --rounds 3 --runs 20 --max-extra-rounds 2 --warmup-s 0.05 -f json
step validate_cuda 120 $DNA profile validate -s tiny -t "$TABLE" -n 20 --rounds 3 --max-extra-rounds 2 --warmup-s 0.05 -f json

# 3. the ranking ground truth: SHARDS processes at once, then one that finds them all done and reports
RANK_ARGS=(--ceiling-only --device "$DEV" --networks "$NETWORKS" --seeds "$SEEDS" --train-images "$TRAIN_IMAGES"
           --epochs "$EPOCHS" --score-images "$SCORE_IMAGES" --work-dir "$OUT/ranking_work" --results-dir "$OUT")
ranking() {
  local RANK_ARGS=($RANK_ARGS_STR) pids=() i
  for i in $(seq 0 $((SHARDS - 1))); do
    $PY bench/ranking.py "${RANK_ARGS[@]}" --shard "$i/$SHARDS" > "$OUT/ranking_shard$i.log" 2>&1 &
    pids+=($!)
  done
  local failed=0
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  tail -n 3 "$OUT"/ranking_shard*.log
  $PY bench/ranking.py "${RANK_ARGS[@]}"
  return $failed
}
export -f ranking
export PY OUT SHARDS RANK_ARGS_STR="${RANK_ARGS[*]}"
( step ranking 330 bash -c ranking ) &
RANKING_PID=$!

# 4. the CUDA test that can fail (and the rest of the scale tests' CPU checks beside it)
step pytest_cuda 240 $PY -m pytest -q -p no:cacheprovider tests/distill/test_scale.py -k "cuda or device_choice" -rs

# 5. the CLI on a synthetic folder: train, rate, retrain on this device
cli_chain() {
  set -e
  $PY - "$OUT/images" <<'EOF'
import sys; sys.path.insert(0, "tests")
from pathlib import Path
from imagefolder import make_image_folder
make_image_folder(Path(sys.argv[1]), train_per_class=256, val_per_class=32)
EOF
  local S=tests/data/mbconv64.yaml
  $DNA teacher train -s $S --data "$OUT/images" -o "$OUT/teacher.pt" --epochs 4 --device $DEV -f json > "$OUT/teacher.json"
  $DNA train -s $S --data "$OUT/images" --teacher "$OUT/teacher.pt" -o "$OUT/sn1" --epochs 2 --device $DEV -f json > "$OUT/train.json"
  $DNA rate --supernet "$OUT/sn1" --teacher "$OUT/teacher.pt" -o "$OUT/ratings.json" --device $DEV -f json > "$OUT/rate.json"
  local arch
  arch=$($DNA search -r "$OUT/ratings.json" -f json | $PY -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["arch"])')
  $DNA retrain -s $S -a "$arch" --init-supernet "$OUT/sn1" -o "$OUT/retrain" --epochs 2 --device $DEV -f json > "$OUT/retrain.json"
  $PY -c "import json; r = json.load(open('$OUT/ratings.json')); print('rated on', r['compute'], 'blocks', len(r['blocks']))"
}
export -f cli_chain
export DNA DEV
step cli_chain 150 bash -c cli_chain

wait $RANKING_PID

# 6. throughput on this GPU, alone
step scale 90 $PY bench/scale.py --device "$DEV" --quick --output "$OUT/scale.json"

echo "total: $(( $(date +%s) - T_START )) s" | tee -a "$SUMMARY"
(cd "$OUT" && tar czf gpu_check.tar.gz --exclude=gpu_check.tar.gz --exclude=images --exclude='*.pt' --exclude=ranking_work \
   --exclude=sn1 --exclude=retrain . 2>/dev/null)
cat "$SUMMARY"
