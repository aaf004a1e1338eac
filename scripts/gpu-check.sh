#!/usr/bin/env bash
# One prepared check for a machine with an NVIDIA GPU and no network, given the binary
# scripts/build-cuda.sh built (at most ~8 minutes on an H100/H200):
#   1. inventory: GPU, driver, the CUDA libraries the binary resolves;
#   2. agreement: `reproduce --device cuda` of an embedding and of a segmenter computed on the
#      CPU (largest matrix/weight difference), and `segment` masks CPU vs GPU (pixels that
#      differ);
#   3. throughput of pretrain, embed, train and hunt for the tiny, small and base presets, and
#      MAE pretraining's model-FLOPs utilisation against the GPU's f32 and bf16 peaks;
# printed as tables. Needs python3 (standard library only) for the arithmetic.
#
#   bash scripts/gpu-check.sh [BINARY] [DEVICE]
#
# BINARY defaults to target/cuda-build/release/biodc, DEVICE to cuda:0. With DEVICE=cpu it runs
# the same steps on the CPU (to check the script itself; the figures then mean nothing).
# PEAK_F32_TFLOPS / PEAK_BF16_TFLOPS override the peaks (default: H100/H200 SXM, 67 and 989);
# PRESETS (default "tiny small base"), STACKS (64 stacks of 7×448×448 for the throughput
# cohort), STEPS (40 pretraining steps of 32) and TRAIN_STEPS (100 segmenter steps of 8)
# shrink the run.
#
# The MAE's gradient tests (every parameter gets a gradient; gradients match finite
# differences) run on the GPU when built with CUDA: `cargo test --release --features cuda
# --target-dir target/cuda-build --test nn` on the GPU machine (they print the device). Give
# that test binary as NN_TESTS=PATH and this script runs them first.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "${1:-$here/target/cuda-build/release/biodc}")
dev=${2:-cuda:0}
export LD_LIBRARY_PATH=$here/target/cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
b() { "$bin" "$@"; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }

echo "== inventory"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>/dev/null ||
    echo "nvidia-smi: not found"
ldd "$bin" | grep -Ei "cuda|cublas|curand|nvrtc" || true
b --version

if [ -n "${NN_TESTS:-}" ]; then
    echo "== gradient tests (tests/nn.rs) on the device the test binary finds"
    "$NN_TESTS" --test-threads 1 --nocapture every_parameter_gets_a_gradient \
        gradient_matches_finite_differences 2>&1 | grep -E "gradient tests on|test |result" || true
fi

echo "== agreement (device $dev vs cpu)"
b synth --out "$work/cohort" --stacks 8 --shape 3,448,448 --seed 0 --no-defects >/dev/null
mkdir "$work/p" && cd "$work/p"
b init --patch 224 >/dev/null
b import "$work/cohort/images" >/dev/null
b --device cpu pretrain --preset tiny --epochs 1 --max-steps 10 --seed 0 >/dev/null
b --device cpu embed >/dev/null
echo "embed, re-run on $dev: $(b --device "$dev" reproduce HEAD --json | field "['differences']" || true)"
b --device cpu coreset -k 6 >/dev/null
b expert --cohort "$work/cohort" --set coreset --to "$work/masks" >/dev/null
b annotate "$work/masks" --round core >/dev/null
b --device cpu train --name M0 --max-steps 20 --batch 4 --seed 0 >/dev/null
echo "train, re-run on $dev: $(b --device "$dev" reproduce HEAD --json | field "['differences']" || true)"
b --device cpu segment --model M0 --all --out "$work/seg-cpu" >/dev/null
b --device "$dev" segment --model M0 --all --out "$work/seg-dev" >/dev/null
for f in "$work"/seg-cpu/*.tif; do
    n=$(cmp -l "$f" "$work/seg-dev/$(basename "$f")" 2>/dev/null | wc -l || true)
    echo "segment $(basename "$f"): $n bytes differ between cpu and $dev"
done

echo "== throughput on $dev"
b synth --out "$work/big" --stacks "${STACKS:-64}" --shape 7,448,448 --seed 1 --no-defects >/dev/null
mkdir "$work/t" && cd "$work/t"
b init --patch 224 >/dev/null
b import "$work/big/images" >/dev/null
rows=()
for preset in ${PRESETS:-tiny small base}; do
    steps=${STEPS:-40}
    pre=$(b --device "$dev" pretrain --preset "$preset" --name "mae-$preset" --epochs 1 \
        --max-steps "$steps" --batch 32 --seed 0 --json | field "['patches_per_second']")
    emb=$(b --device "$dev" embed --model "mae-$preset" --json | field "['patches_per_second']")
    rows+=("$preset $pre $emb")
done
presets=${PRESETS:-tiny small base}
b coreset -k 16 --model "mae-${presets%% *}" >/dev/null
b expert --cohort "$work/big" --set coreset --to "$work/bigmasks" >/dev/null
b annotate "$work/bigmasks" --round core >/dev/null
trn=$(b --device "$dev" train --name M0 --max-steps "${TRAIN_STEPS:-100}" --batch 8 --seed 0 --json | field "['images_per_second']")
hnt=$(b --device "$dev" hunt --model M0 --sample 1000 --passes 10 --json | field "['patches_per_second']")
python3 - "$dev" "$trn" "$hnt" "${rows[@]}" <<'EOF'
import os, sys
dev, train, hunt, rows = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
# (width, depth) of encoder and decoder, biodc's presets (src/nn/vit.rs, src/nn/mae.rs).
arch = {"tiny": (192, 4, 128, 2), "small": (384, 12, 256, 4), "base": (768, 12, 512, 8)}
tokens, visible = 197, 1 + 49          # 224² in 16² patches; 75 % masked
def fwd(d, layers, t):                 # matmuls 24·d² per token per layer + attention 4·t²·d
    return layers * (24 * d * d * t + 4 * t * t * d)
f32 = float(os.environ.get("PEAK_F32_TFLOPS", 67)) * 1e12
bf16 = float(os.environ.get("PEAK_BF16_TFLOPS", 989)) * 1e12
print(f"{'preset':<6} {'pretrain patches/s':>18} {'embed patches/s':>15} {'GFLOP/patch':>11} {'MFU f32':>8} {'MFU bf16':>9}")
for r in rows:
    name, pre, emb = r.split()
    d, l, dd, dl = arch[name]
    flops = 3 * (fwd(d, l, visible) + fwd(dd, dl, tokens))   # forward + backward ≈ 3 forwards
    rate = float(pre) * flops
    print(f"{name:<6} {float(pre):>18.1f} {float(emb):>15.1f} {flops / 1e9:>11.1f} {rate / f32:>8.1%} {rate / bf16:>9.1%}")
print(f"segmenter (U-Net, 224², batch 8) train: {train:.1f} images/s; hunt (10 passes): {hunt:.1f} patches/s  [{dev}]")
print("MFU counts matmul and attention FLOPs of MAE training; biodc trains in f32, so the bf16 column is what mixed precision would be measured against.")
EOF
