#!/usr/bin/env bash
# Sharded `import`, `embed` and `hunt` beside one process on a synthetic cohort of >= 20,000
# patches: wall time and peak RSS of the unsharded run and of each shard, the gather's time,
# and a check that both give the same version (docs/BENCHMARKS.md, "Sharded runs").
#
#   bash benches/shard.sh [STACKS] [SHARDS] [HUNT_PASSES]
#
# Default: 180 stacks of 7x448x448 in 112x112 patches (20,160 patches), 2 shards run at once
# (as `xargs -P N` would on one machine), hunt with 4 dropout passes. The encoder is an MAE
# tiny trained for 2 steps and the segmenter is trained for 4 steps on 8 patches: the figures
# are about throughput, not about what the models capture. HUNT_PASSES=0 skips the hunt (for
# the gather and commit costs of a paper-sized cohort: `bash benches/shard.sh 800 2 0`).
set -euo pipefail
cd "$(dirname "$0")/.."
stacks=${1:-180}
shards=${2:-2}
passes=${3:-4}
cargo build --release -q
bin=$PWD/target/release/biodc
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
time_of() { /usr/bin/time -f "%e s, peak RSS %M kB" "$@" 2>&1 >/dev/null | tail -1; }
one=("$bin" -C "$work/one")
sharded=("$bin" -C "$work/sharded")
# Runs `biodc ARGS --shard i/N` for every i at once in the sharded project, then gathers.
in_shards() {
    local start end
    start=$(date +%s.%N)
    for i in $(seq 0 $((shards - 1))); do
        (echo "  $1 --shard $i/$shards: $(time_of "${sharded[@]}" "$@" --shard "$i/$shards")") &
    done
    wait
    end=$(date +%s.%N)
    echo "  all $shards shards at once, wall: $(python3 -c "print(f'{$end - $start:.1f} s')")"
    echo "  gather: $(time_of "${sharded[@]}" gather)"
}
# The same JSON value at HEAD:FILE (KEY, a Python subscript) in both projects? (Records name
# their commits, which differ between the two histories.)
same_json() {
    local a b
    a=$(git --git-dir "$work/one/.biodc/git" show "HEAD:$1" | python3 -c "import json,sys; print(json.dumps(json.load(sys.stdin)$2))")
    b=$(git --git-dir "$work/sharded/.biodc/git" show "HEAD:$1" | python3 -c "import json,sys; print(json.dumps(json.load(sys.stdin)$2))")
    if [ "$a" = "$b" ]; then echo "  $1 $2, sharded vs one process: identical"; else echo "  $1 $2: DIFFERENT"; exit 1; fi
}
# The same tree at HEAD:PATH in both projects?
same() {
    local a b
    a=$(git --git-dir "$work/one/.biodc/git" rev-parse "HEAD:$1")
    b=$(git --git-dir "$work/sharded/.biodc/git" rev-parse "HEAD:$1")
    if [ "$a" = "$b" ]; then echo "  $1, sharded vs one process: identical"; else echo "  $1: DIFFERENT"; exit 1; fi
}

"$bin" synth --out "$work/cohort" --stacks "$stacks" --shape 7,448,448 --seed 0 --no-defects >/dev/null
mkdir "$work/one"
(cd "$work/one" && "$bin" init --patch 112 >/dev/null)
cp -a "$work/one" "$work/sharded"
echo "cohort: $stacks stacks of 7x448x448, 112x112 patches; $(nproc) cores"

echo "import"
echo "  one process: $(time_of "${one[@]}" import "$work/cohort/images")"
in_shards import "$work/cohort/images"
same stacks
same patches
echo "  patches: $("${one[@]}" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["counts"]["patches"])')"

for p in one sharded; do "$bin" -C "$work/$p" pretrain --preset tiny --epochs 1 --max-steps 2 --seed 0 >/dev/null; done
echo "embed"
echo "  one process: $(time_of "${one[@]}" embed)"
in_shards embed
same embeddings

[ "$passes" -gt 0 ] || exit 0
for p in one sharded; do
    "$bin" -C "$work/$p" coreset -k 8 >/dev/null
    "$bin" -C "$work/$p" expert --cohort "$work/cohort" --set coreset --to "$work/masks-$p" >/dev/null
    "$bin" -C "$work/$p" annotate "$work/masks-$p" --round core >/dev/null
    "$bin" -C "$work/$p" train --name M0 --max-steps 4 --batch 4 --seed 0 >/dev/null
done
same_json models/M0.json '["checkpoint"]'
hunt=(hunt --model M0 --top 30 --passes "$passes" --batch-streams)
echo "hunt (${hunt[*]})"
echo "  one process: $(time_of "${one[@]}" "${hunt[@]}")"
in_shards "${hunt[@]}"
set=$(git --git-dir "$work/one/.biodc/git" ls-tree --name-only HEAD sets/ | grep -v coreset | head -1)
same_json "$set" '["patches"]'
same_json "$set" '["objects"]'
echo "  hunt record: $(git --git-dir "$work/sharded/.biodc/git" show HEAD:stage.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["summary"])')"
