#!/usr/bin/env bash
# The one prepared script for a machine with NVIDIA GPUs (the `device` tool, a cluster node):
# exercises the CUDA and NCCL paths of train, rate and retrain and measures bench/scale.py there.
# Run from the repository root with the project installed: bash bench/gpu_check.sh [OUT_DIR]
set -euo pipefail
DEV=${DEV:-cuda}   # DEV=cpu runs the same script without a GPU (a dry run of the script itself)
OUT=${1:-${OUT:-gpu_check}}
mkdir -p "$OUT"
PY=${PYTHON:-python}
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
echo "GPUs: $GPUS"; if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpus.csv"; fi
# 1. the CUDA test behind the CPU tests (it is skipped where no GPU is visible)
$PY -m pytest -q -p no:cacheprovider tests/distill/test_scale.py 2>&1 | tee "$OUT/pytest.txt"
# 2. a synthetic folder through train (AMP, channels_last), rate and retrain on one GPU
$PY - "$OUT/images" <<'PYEOF'
import sys; sys.path.insert(0, "tests")
from pathlib import Path
from imagefolder import make_image_folder
make_image_folder(Path(sys.argv[1]), train_per_class=256, val_per_class=32)
PYEOF
S=tests/data/mbconv64.yaml
dna-deploy teacher train -s $S --data "$OUT/images" -o "$OUT/teacher.pt" --epochs 4 --device $DEV -f json | tee "$OUT/teacher.json"
dna-deploy train -s $S --data "$OUT/images" --teacher "$OUT/teacher.pt" -o "$OUT/sn1" --epochs 2 --device $DEV -f json | tee "$OUT/train_1gpu.json"
dna-deploy rate --supernet "$OUT/sn1" --teacher "$OUT/teacher.pt" -o "$OUT/r1.json" --device $DEV -f json > "$OUT/rate_1gpu.json"
# 3. one process per GPU (NCCL) when there are several: train, and rating sharded like one process
if [ "$GPUS" -gt 1 ]; then
  torchrun --nproc-per-node "$GPUS" -m dna_deploy train -s $S --data "$OUT/images" --teacher "$OUT/teacher.pt" -o "$OUT/snN" --epochs 2 -f json | tee "$OUT/train_ngpu.json"
  torchrun --nproc-per-node "$GPUS" -m dna_deploy rate --supernet "$OUT/sn1" --teacher "$OUT/teacher.pt" -o "$OUT/rN.json" -f json > /dev/null
  $PY - "$OUT/r1.json" "$OUT/rN.json" <<'PYEOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
d = max(abs(x["candidates"][k]["loss"] - y["candidates"][k]["loss"]) / abs(x["candidates"][k]["loss"])
        for x, y in zip(a["blocks"], b["blocks"]) for k in x["candidates"])
print(f"sharded rating over {b['compute']['world_size']} GPUs vs one: max relative difference {d:.2e}")
PYEOF
fi
dna-deploy retrain -s $S -a "$(dna-deploy search -r "$OUT/r1.json" -f json | $PY -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["arch"])')" \
  --init-supernet "$OUT/sn1" -o "$OUT/retrain" --epochs 2 --device $DEV -f json | tee "$OUT/retrain.json"
# 4. speed and the ImageNet estimate on this GPU
$PY bench/scale.py --device $DEV --quick --output "$OUT/scale.json" | tee "$OUT/scale.txt"
