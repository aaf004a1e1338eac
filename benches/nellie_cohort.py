"""Writes a cohort of real 3D fluorescence stacks for `cargo bench --bench remote -- --images`.

The source is nellie 1.0.4's sample (CC BY 4.0): yeast mitochondria, T30 x Z17 x 192 x 279 u16,
stored uncompressed as the microscope wrote it. Its 30 time points are 30 real stacks (55 MB);
to reach a cohort of >= 1 GiB each is also written turned (the 8 rotations and mirrorings of
the plane) and rolled by 53 rows and 37 columns (wrapping around; primes, so the patch grid of
a rolled plane never falls on the original's). Every file has real pixels with their real
statistics (noise, dark background, bit depth), and no two files or tiles share bytes, so
neither biodc nor DVC stores anything once for two files (`biodc import --json` of 600 of them
in 96² patches: as many new objects as patches). Not a new z order: biodc's patches are 2D, so
a stack with its planes reversed would hold the same patches. Needs numpy and tifffile.

    python3 -m venv /tmp/realdata && /tmp/realdata/bin/pip install --no-deps nellie==1.0.4
    /tmp/realdata/bin/pip install numpy tifffile
    /tmp/realdata/bin/python benches/nellie_cohort.py \
        /tmp/realdata/lib/python3.*/site-packages/sample_data/yeast_3d_mitochondria.ome.tif \
        /tmp/nellie-cohort 600
"""

import itertools
import pathlib
import sys

import numpy as np
import tifffile


def variants(series):
    """Every (time point, turn, roll in y, roll in x) of the series, in a fixed order."""
    for dx, dy, turn, t in itertools.product((0, 37), (0, 53), range(8), range(len(series))):
        stack = series[t]
        if turn >= 4:
            stack = stack[:, :, ::-1]
        stack = np.rot90(stack, k=turn % 4, axes=(1, 2))
        stack = np.roll(stack, (dy, dx), axis=(1, 2))
        yield f"t{t:02d}_r{turn}_y{dy}_x{dx}", np.ascontiguousarray(stack)


def main():
    source, out, count = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3])
    series = tifffile.imread(source)
    if series.ndim != 4:
        sys.exit(f"{source}: expected T,Z,Y,X, found shape {series.shape}")
    if count > 32 * len(series):
        sys.exit(f"{source} gives at most {32 * len(series)} stacks")
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, stack in itertools.islice(variants(series), count):
        tifffile.imwrite(out / f"{name}.tif", stack)
        written += stack.nbytes
    print(f"{count} stacks, {written / 1e6:.0f} MB of pixels in {out}")


if __name__ == "__main__":
    main()
