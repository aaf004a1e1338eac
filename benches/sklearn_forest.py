"""scikit-learn's RandomForestClassifier on the feature matrix `cargo bench --bench rca` wrote,
with the same trees, depth and leaf size as biodc's forest, on all cores; prints its fit and
predict times and accuracy beside biodc's.

    python3 -m venv /tmp/skl && /tmp/skl/bin/pip install scikit-learn numpy
    cargo bench --bench rca && /tmp/skl/bin/python benches/sklearn_forest.py
"""
import json
import os
import time

import numpy as np
from sklearn.ensemble import RandomForestClassifier

d = os.path.join(os.path.dirname(__file__), "..", "target", "rca-bench")
meta = json.load(open(os.path.join(d, "meta.json")))
k = meta["features"]
xtr = np.fromfile(os.path.join(d, "xtr.f32"), dtype="<f4").reshape(-1, k)
xte = np.fromfile(os.path.join(d, "xte.f32"), dtype="<f4").reshape(-1, k)
ytr = np.fromfile(os.path.join(d, "ytr.u8"), dtype=np.uint8)
yte = np.fromfile(os.path.join(d, "yte.u8"), dtype=np.uint8)
rf = RandomForestClassifier(
    n_estimators=meta["trees"],
    max_depth=meta["max_depth"],
    min_samples_leaf=meta["min_leaf"],
    max_features="sqrt",
    n_jobs=-1,
    random_state=0,
)
t = time.perf_counter()
rf.fit(xtr, ytr)
fit = time.perf_counter() - t
t = time.perf_counter()
pred = rf.predict(xte)
predict = time.perf_counter() - t
acc = float((pred == yte).mean())
print(
    f"scikit-learn {__import__('sklearn').__version__}: fit {xtr.shape[0]}x{k} {fit:.2f} s, "
    f"predict {xte.shape[0]} {predict:.2f} s, accuracy {acc:.4f}"
)
print(
    f"biodc: fit {meta['biodc_fit_s']:.2f} s, predict {meta['biodc_predict_s']:.2f} s, "
    f"accuracy {meta['biodc_accuracy']:.4f}; time ratio sklearn/biodc fit "
    f"{fit / meta['biodc_fit_s']:.1f}x, predict {predict / meta['biodc_predict_s']:.1f}x"
)
