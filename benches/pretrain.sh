#!/usr/bin/env bash
# Pretraining and embedding throughput on this CPU (issue 3, acceptance 5), beside the same
# architecture in PyTorch when TORCH_PYTHON points at a python with torch installed:
#   TORCH_PYTHON=/tmp/torchvenv/bin/python bash benches/pretrain.sh [WORKDIR]
# 16 synthetic stacks of 2x448x448 → 128 patches of 224x224; for each preset: 30 MAE training
# steps of batch 8 (mask ratio 0.75) and one embedding pass over all patches. biodc's training
# rate is given end to end (process start to commit) and over steps 4–30; PyTorch's over 30
# steps after 3 warm-up steps.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d /tmp/biodc-nn.XXXX)}
cd "$ROOT" && cargo build --release -q
B="$ROOT/target/release/biodc"
mkdir -p "$WORK" && cd "$WORK" && rm -rf cohort p
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
"$B" synth --out cohort --stacks 16 --shape 2,448,448 --seed 1 >/dev/null
mkdir p && cd p && "$B" init >/dev/null && "$B" import ../cohort/images >/dev/null
echo "| preset | biodc train/s, end to end | biodc train/s, steps 4–30 | PyTorch train/s, steps 4–33 | biodc embed/s | PyTorch embed/s |"
echo "|---|---|---|---|---|---|"
for preset in tiny small; do
  read -r T TS < <("$B" pretrain --preset $preset --name $preset --max-steps 30 --batch 8 --json | python3 -c 'import json,sys; r = json.load(sys.stdin); print("%.1f %.1f" % (r["patches_per_second"], r["steady_patches_per_second"]))')
  E=$("$B" embed --model $preset --json | python3 -c 'import json,sys; print("%.1f" % json.load(sys.stdin)["patches_per_second"])')
  PT="-"; PE="-"
  if [ -n "${TORCH_PYTHON:-}" ]; then
    read -r PT PE < <("$TORCH_PYTHON" "$ROOT/benches/pytorch_mae.py" $preset 30 | sed -E 's/.*train ([0-9.]+).*embed ([0-9.]+).*/\1 \2/')
  fi
  echo "| $preset | $T | $TS | $PT | $E | $PE |"
done
