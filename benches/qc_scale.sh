#!/usr/bin/env bash
# qc on a cohort bigger than the tests' (issue 4, acceptance 2 beyond test scale): 40 stacks of
# 7x672x672 with the synth's planted defects → 2,520 patches of 224x224; tiny MAE, 3 epochs;
# then qc, and how many planted and clean patches it flags, by flag. Last, the 5-NN condition
# accuracy of these embeddings beside the same encoder at random initialisation (issue 3,
# acceptance 3, at this scale). ~10 min on 2 cores.
#
#   bash benches/qc_scale.sh [WORKDIR]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d /tmp/biodc-qc.XXXX)}
cd "$ROOT" && cargo build --release -q
B="$ROOT/target/release/biodc"
mkdir -p "$WORK" && cd "$WORK" && rm -rf cohort p && mkdir p
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
"$B" synth --out "$WORK/cohort" --stacks 40 --shape 7,672,672 --seed 0 >/dev/null
"$B" -C p init --patch 224 >/dev/null
"$B" -C p import "$WORK/cohort/images" --condition-from-dir | tail -1
"$B" -C p pretrain --epochs 3 --seed 0 | tail -1
"$B" -C p embed | tail -1
"$B" -C p qc | head -1
git --git-dir=p/.biodc/git show HEAD:qc.jsonl > qc.jsonl
python3 - "$WORK/cohort/manifest.json" qc.jsonl <<'PY'
import collections, json, sys
manifest = json.load(open(sys.argv[1]))
shape = manifest["params"]["shape"]
per_slice = (shape[1] // 224) * (shape[2] // 224)
total = len(manifest["stacks"]) * shape[0] * per_slice

def planted(patch):
    stack, z = patch.split("-")[0], int(patch.split("-")[1][1:])
    for d in manifest["defects"]:
        if d["stack"] == stack and d.get("z", z) == z:
            return d["kind"]

planted_patches = sum(shape[0] if "z" not in d else 1 for d in manifest["defects"]) * per_slice
found, clean = collections.defaultdict(set), collections.Counter()
flagged_clean = 0
for line in open(sys.argv[2]):
    j = json.loads(line)
    kind = planted(j["patch"])
    if kind:
        found[kind].add(j["patch"])
    else:
        flagged_clean += 1
        for f in j["flags"]:
            clean[f] += 1
for d in manifest["defects"]:
    n = (1 if "z" in d else shape[0]) * per_slice
    print(f"planted {d['kind']} in {d['stack']}: {len(found[d['kind']])}/{n} patches flagged")
n_clean = total - planted_patches
print(f"clean patches flagged: {flagged_clean} of {n_clean} ({100 * flagged_clean / n_clean:.1f} %): "
      + ", ".join(f"{k} {v}" for k, v in sorted(clean.items())))
PY
"$B" -C p pretrain --max-steps 0 --name random-init | tail -1
"$B" -C p embed --model random-init | tail -1
cd "$ROOT" && cargo bench -q --bench embedding_knn -- --project "$WORK/p" 2>/dev/null
