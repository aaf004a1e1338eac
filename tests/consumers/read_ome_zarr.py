"""Opens biodc's OME-Zarr exports with the `ome-zarr` package's reader (the one
napari-ome-zarr wraps) and checks that each image comes with the label images biodc says it
wrote, of the image's shape, with the image's scale.

    python read_ome_zarr.py EXPORT.json
EXPORT.json: the output of `biodc export --ome-zarr --json`.
"""
import json
import sys

import numpy as np
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader

exported = json.load(open(sys.argv[1]))
assert exported, "nothing exported"
for image in exported:
    nodes = list(Reader(parse_url(image["path"]))())
    pixels = [n for n in nodes if n.load(Multiscales) and not n.load(Label)]
    labels = {n.metadata.get("name"): n for n in nodes if n.load(Label)}
    assert len(pixels) == 1, f"{image['path']}: {len(pixels)} images"
    data = np.asarray(pixels[0].data[0])
    assert sorted(labels) == sorted(image["labels"]), (image["path"], sorted(labels), image["labels"])
    for name, node in labels.items():
        label = np.asarray(node.data[0])
        assert label.shape == data.shape, (name, label.shape, data.shape)
        assert set(np.unique(label)) <= {0, 1}, (name, np.unique(label))
        scale = node.metadata["coordinateTransformations"][0][0]["scale"]
        want = pixels[0].metadata["coordinateTransformations"][0][0]["scale"]
        assert scale == want, (name, scale, want)
    print(f"{image['path']}: image {data.shape} {data.dtype}, labels {sorted(labels)}")
