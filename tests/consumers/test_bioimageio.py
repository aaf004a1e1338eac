"""Runs bioimageio.core's model test on a package `biodc export --bioimageio` wrote: the spec
validation and onnxruntime reproducing biodc's test output from its test input.

    python test_bioimageio.py PACKAGE/rdf.yaml
"""
import sys

from bioimageio.core import test_model

summary = test_model(sys.argv[1])
summary.display()
assert summary.status == "passed", summary.status
print(f"{sys.argv[1]}: bioimageio.core test {summary.status}")
