#!/usr/bin/env bash
# Sharded `embed` beside one process on a synthetic cohort of >= 20,000 patches: wall time and
# peak RSS of the unsharded run and of each shard, the gather's time, and a check that both give
# the same embedding (docs/BENCHMARKS.md, "Sharded runs").
#
#   bash benches/shard.sh [STACKS] [SHARDS]
#
# Default: 180 stacks of 7x448x448 in 112x112 patches (20,160 patches), 2 shards run at once
# (as `xargs -P N` would on one machine). The encoder is an MAE tiny trained for 2 steps: the
# figures are about throughput, not about what the embedding captures.
set -euo pipefail
cd "$(dirname "$0")/.."
stacks=${1:-180}
shards=${2:-2}
cargo build --release -q
bin=$PWD/target/release/biodc
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
time_of() { /usr/bin/time -f "%e s, peak RSS %M kB" "$@" 2>&1 >/dev/null | tail -1; }

"$bin" synth --out "$work/cohort" --stacks "$stacks" --shape 7,448,448 --seed 0 --no-defects >/dev/null
mkdir "$work/one"
(cd "$work/one" && "$bin" init --patch 112 >/dev/null &&
    "$bin" import "$work/cohort/images" >/dev/null &&
    "$bin" pretrain --preset tiny --epochs 1 --max-steps 2 --seed 0 >/dev/null)
cp -a "$work/one" "$work/sharded"
patches=$("$bin" -C "$work/one" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["counts"]["patches"])')
echo "cohort: $stacks stacks, $patches patches of 112x112; $(nproc) cores"

echo "unsharded embed: $(time_of "$bin" -C "$work/one" embed)"
start=$(date +%s.%N)
for i in $(seq 0 $((shards - 1))); do
    (echo "shard $i/$shards: $(time_of "$bin" -C "$work/sharded" embed --shard "$i/$shards")") &
done
wait
end=$(date +%s.%N)
echo "all $shards shards, wall: $(python3 -c "print(f'{$end - $start:.1f} s')")"
echo "gather: $(time_of "$bin" -C "$work/sharded" gather)"

same=$(python3 - "$work" <<'EOF'
import json, subprocess, sys
w = sys.argv[1]
def emb(p):
    out = subprocess.run(["git", "--git-dir", f"{w}/{p}/.biodc/git", "show", "HEAD:embeddings/mae.json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["matrix"]
print("identical" if emb("one") == emb("sharded") else "DIFFERENT")
EOF
)
echo "embedding matrix, sharded vs one process: $same"
