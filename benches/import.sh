#!/usr/bin/env bash
# Import benchmark (issue 2, acceptance 7). Writes a table to stdout; docs/BENCHMARKS.md quotes it.
#
#   bash benches/import.sh [WORKDIR]
#
# Needs: git, git-lfs (Debian: apt-get install git-lfs), hyperfine (apt-get install hyperfine),
# DVC (pip install dvc; set DVC=/path/to/dvc if not on PATH), GNU time (/usr/bin/time).
# 1. synthesise a >= 1 GiB cohort (75 stacks of 7x1024x1024 u16 = 1.1 GiB of pixels)
# 2. biodc import of the cohort: MB/s and peak RSS
# 3. the same patch files (biodc export: 13,125 TIFFs of 224x224) versioned with biodc import,
#    plain git, git-lfs and dvc add: seconds, MB/s and store size, as ratios to biodc
# 4. a >= 90,000-patch repository (--patch 32): status, log and diff latency (hyperfine)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d /tmp/biodc-bench.XXXX)}
DVC=${DVC:-dvc}
cd "$ROOT" && cargo build --release -q
B="$ROOT/target/release/biodc"
mkdir -p "$WORK" && cd "$WORK"
rm -rf cohort patches p_biodc p_git p_lfs p_dvc p_small small
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB RAM, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"

"$B" synth --out cohort --stacks 75 --shape 7,1024,1024 --seed 1 >/dev/null
RAW=$(( 75 * 7 * 1024 * 1024 * 2 ))
mb() { awk -v b="$1" 'BEGIN{printf "%.0f", b/1e6}'; }
du_mb() { du -sb "$1" | awk '{printf "%.0f", $1/1e6}'; }
timed() { # timed LOGFILE CMD... → prints seconds; peak RSS in LOGFILE
  local log=$1; shift
  local t0=$(date +%s.%N)
  /usr/bin/time -v -o "$log" "$@" >/dev/null
  echo "$(date +%s.%N) - $t0" | bc
}
rss_mb() { awk '/Maximum resident/{printf "%.0f", $6/1024}' "$1"; }

mkdir p_biodc && (cd p_biodc && "$B" init >/dev/null)
S=$(timed rss.log "$B" -C p_biodc import ../cohort/images --condition-from-dir)
echo
echo "## import of the cohort ($(mb $RAW) MB of pixels, 75 stacks, 13,125 patches)"
echo "| tool | seconds | MB/s | peak RSS MB | store MB |"
echo "|---|---|---|---|---|"
printf "| biodc import | %.1f | %.0f | %s | %s |\n" "$S" "$(echo "$RAW/1000000/$S" | bc -l)" "$(rss_mb rss.log)" "$(du_mb p_biodc/.biodc)"

"$B" -C p_biodc export --set all --to ../patches >/dev/null
PB=$(du -sb patches | awk '{print $1}')
echo
echo "## the same $(ls patches | wc -l) patch files ($(mb $PB) MB) versioned by each tool"
echo "| tool | seconds | MB/s | store MB | time vs biodc |"
echo "|---|---|---|---|---|"
mkdir p_small && (cd p_small && "$B" init >/dev/null)
TB=$(timed t.log "$B" -C p_small import ../patches)
row() { printf "| %s | %.1f | %.0f | %s | %.1f× |\n" "$1" "$2" "$(echo "$PB/1000000/$2" | bc -l)" "$3" "$(echo "$2/$TB" | bc -l)"; }
row "biodc import" "$TB" "$(du_mb p_small/.biodc)"

mkdir p_git && cp -r patches p_git/ && cd p_git && git init -q && git config user.email b@b && git config user.name b
T=$(timed ../t.log bash -c 'git add -A && git commit -qm patches'); cd ..
row "git add + commit" "$T" "$(du_mb p_git/.git)"

mkdir p_lfs && cp -r patches p_lfs/ && cd p_lfs && git init -q && git config user.email b@b && git config user.name b && git lfs install --local >/dev/null && git lfs track '*.tif' >/dev/null
T=$(timed ../t.log bash -c 'git add -A && git commit -qm patches'); cd ..
row "git lfs add + commit" "$T" "$(du_mb p_lfs/.git)"

if command -v "$DVC" >/dev/null; then
  mkdir p_dvc && cp -r patches p_dvc/ && cd p_dvc && git init -q && "$DVC" init -q && "$DVC" config core.analytics false
  T=$(timed ../t.log "$DVC" add -q patches); cd ..
  row "dvc add" "$T" "$(du_mb p_dvc/.dvc/cache)"
else
  echo "| dvc add | (dvc not found: set DVC=) | | | |"
fi

echo
echo "## a >= 90,000-patch repository (--patch 32): latency of read verbs"
"$B" synth --out small --stacks 13 --shape 7,1024,1024 --seed 2 >/dev/null
mkdir -p p_big && (cd p_big && "$B" init --patch 32 >/dev/null && "$B" import ../small/images >/dev/null)
N=$("$B" -C p_big status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["counts"]["patches"])')
# A second version that changes one stack, so diff has work to do.
F=$(find small/images -name '*.tif' | sort | head -1)
python3 - "$F" <<'PY'
import sys
p = sys.argv[1]; b = bytearray(open(p, 'rb').read()); b[len(b) // 2] ^= 1; open(p, 'wb').write(b)  # a pixel, not the IFD at the end
PY
"$B" -C p_big import ../small/images >/dev/null
echo "patches: $N"
hyperfine -N --warmup 3 --export-markdown latency.md \
  "$B -C p_big status" "$B -C p_big log" "$B -C p_big diff HEAD~1 HEAD" >/dev/null
cat latency.md
