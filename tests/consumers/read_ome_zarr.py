"""Opens biodc's OME-Zarr exports as napari would: with napari-ome-zarr's reader plugin
(headless: no window is opened) and with the `ome-zarr` package's reader, and checks that each
image comes with the label images biodc says it wrote, of the image's shape, with 0/1 values
and the image's scale.

    python read_ome_zarr.py EXPORT.json
EXPORT.json: the output of `biodc export --ome-zarr --json`.
"""
import json
import sys

import numpy as np
from napari_ome_zarr._reader import napari_get_reader
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader

exported = json.load(open(sys.argv[1]))
assert exported, "nothing exported"
for image in exported:
    path, want = image["path"], sorted(image["labels"])

    # napari-ome-zarr: the layers napari would add.
    layers = napari_get_reader(path)(path)
    kinds = [kind for _, _, kind in layers]
    assert kinds.count("image") == 1, (path, kinds)
    shape = np.asarray(next(d for d, _, k in layers if k == "image")[0]).shape
    names = sorted(meta["name"].rsplit("/", 1)[-1] for _, meta, k in layers if k == "labels")
    assert names == want, (path, names, want)
    for data, meta, kind in layers:
        if kind == "labels":
            assert np.asarray(data[0]).shape == shape, (path, meta["name"])

    # ome-zarr: the metadata, values and scale of each label image.
    nodes = list(Reader(parse_url(path))())
    pixels = [n for n in nodes if n.load(Multiscales) and not n.load(Label)]
    labels = {n.metadata.get("name"): n for n in nodes if n.load(Label)}
    assert len(pixels) == 1, f"{path}: {len(pixels)} images"
    data = np.asarray(pixels[0].data[0])
    assert sorted(labels) == want, (path, sorted(labels), want)
    for name, node in labels.items():
        label = np.asarray(node.data[0])
        assert label.shape == data.shape, (name, label.shape, data.shape)
        assert set(np.unique(label)) <= {0, 1}, (name, np.unique(label))
        scale = node.metadata["coordinateTransformations"][0][0]["scale"]
        assert scale == pixels[0].metadata["coordinateTransformations"][0][0]["scale"], name
    print(f"{path}: napari layers {kinds}; image {data.shape} {data.dtype}, labels {want}")
