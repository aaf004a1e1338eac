#!/usr/bin/env bash
# Builds biodc with `--features cuda` for NVIDIA GPUs of compute capability 9.0 (H100/H200),
# on a machine without internet and without a GPU or driver: the CUDA 13.0 compiler, headers
# and libraries come from PyPI wheels (nvidia-cuda-nvcc and friends), unpacked under
# target/cuda (a CUDA root), and the driver library the linker asks for is a stub generated
# from the symbols cudarc declares (what the toolkit's own lib/stubs/libcuda.so is). Compiling
# needs no GPU; running the binary needs the real driver (libcuda.so.1) and these libraries:
#
#   bash scripts/build-cuda.sh            # → target/cuda-build/release/biodc
#   LD_LIBRARY_PATH=$PWD/target/cuda/lib target/cuda-build/release/biodc --help
#   bash scripts/build-cuda.sh --check-cpu   # also: its `--device cpu demo` vs the CPU build's
#
# --check-cpu runs `biodc demo` with the plain CPU build and with the CUDA build on the CPU (the
# driver stub standing in for a driver) and compares the two object stores file by file.
#
# CUDA_COMPUTE_CAP (default 90) selects the GPU generation the kernels are compiled for.
# Not part of .ci/run (CI has no GPU); README says how long it takes.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD/target/cuda
wheels=$PWD/target/cuda-wheels
cuda=13.0
mkdir -p "$root" "$wheels"

python=${PYTHON:-python3}
if [ ! -x "$root/bin/nvcc" ]; then
    echo "downloading the CUDA $cuda toolchain wheels from PyPI into $wheels"
    "$python" -m pip download -q --no-deps -d "$wheels" \
        "nvidia-cuda-nvcc==$cuda.*" "nvidia-nvvm==$cuda.*" "nvidia-cuda-crt==$cuda.*" \
        "nvidia-cuda-cccl==$cuda.*" "nvidia-cuda-runtime==$cuda.*" "nvidia-cuda-nvrtc==$cuda.*" \
        "nvidia-cublas==$cuda.*" "nvidia-curand==10.4.0.*"
    tmp=$(mktemp -d)
    for w in "$wheels"/*.whl; do "$python" -m zipfile -e "$w" "$tmp"; done
    cp -a "$tmp"/nvidia/cu13/. "$root"/
    rm -rf "$tmp"
    chmod +x "$root"/bin/* "$root"/nvvm/bin/*
fi
# The linker wants unversioned names.
for lib in "$root"/lib/lib*.so.*; do
    base=${lib%%.so.*}.so
    [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
done
# The driver API stub: every cu* function cudarc declares, each returning an error code; its
# soname is the driver's, so the real libcuda.so.1 is loaded at run time.
cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | tail -1)
if [ -z "$cudarc" ]; then
    cargo fetch -q
    cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | tail -1)
fi
mkdir -p "$root/lib/stubs"
grep -ho 'pub unsafe fn cu[A-Za-z0-9_]*' "$cudarc"/src/driver/sys/mod.rs | sort -u |
    sed 's/pub unsafe fn \(.*\)/int \1(void) { return 999; }/' >"$root/lib/stubs/libcuda.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$root/lib/stubs/libcuda.c"

export PATH=$root/bin:$PATH
export CUDA_ROOT=$root
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export LIBRARY_PATH=$root/lib:$root/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
start=$(date +%s)
cargo build --release --features cuda --target-dir target/cuda-build
echo "built target/cuda-build/release/biodc (CUDA $cuda, sm_$CUDA_COMPUTE_CAP) in $(( $(date +%s) - start )) s"
echo "run it with: LD_LIBRARY_PATH=$root/lib target/cuda-build/release/biodc …"

if [ "${1:-}" = "--check-cpu" ]; then
    cargo build --release -q
    ln -sf libcuda.so "$root/lib/stubs/libcuda.so.1"
    check=$(mktemp -d)
    target/release/biodc demo --dir "$check/cpu" >/dev/null 2>&1
    LD_LIBRARY_PATH=$root/lib:$root/lib/stubs target/cuda-build/release/biodc --device cpu \
        demo --dir "$check/cuda" >/dev/null 2>&1
    objects() { (cd "$1/project/.biodc/objects" && find . -type f | sort | xargs sha256sum); }
    if diff <(objects "$check/cpu") <(objects "$check/cuda") >/dev/null; then
        echo "--device cpu: the CUDA build's demo wrote the same $(objects "$check/cpu" | wc -l) objects, byte for byte, as the CPU build's"
    else
        echo "--device cpu: the CUDA build's demo objects DIFFER from the CPU build's"
        exit 1
    fi
    rm -rf "$check"
fi
