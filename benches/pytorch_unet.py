#!/usr/bin/env python3
"""The baseline an ML engineer writes in an afternoon: a plain PyTorch U-Net trained on the
same annotated patches as biodc, for the same wall time, scored the same way.

Reads the patches biodc's real-vessel bench exported (PATCHES/images/<id>.tif, 224² uint16,
and PATCHES/masks/<id>.tif, 0/1 or 0/255) and the test images (TEST/{images,masks,fov}/<id>.tif
as written by ../shared/data/real-vessels/prepare.py). Prints one JSON line:
{"dice": [...per test image...], "mean": ..., "steps": ..., "seconds": ...}.

Network: 4 levels of (3×3 conv, BatchNorm, ReLU) × 2 with 16-32-64-128 channels, max pooling
down, 2×2 transposed convolutions up. Training: random 128² crops of the per-patch
standardised patches, the 8 flips/rotations, intensity gain/offset, BCE + soft Dice, Adam 1e-3,
batch 8, until --seconds have passed (or for exactly --steps steps: the same budget on a
loaded machine, where a wall-clock budget would measure the load). Inference: 224² windows overlapping by a quarter, each
standardised like a training patch, tent-blended, threshold 0.5; Dice inside the field of view.

    python benches/pytorch_unet.py --patches P --test T --seconds 300 --threads 2 --seed 0
    python benches/pytorch_unet.py --patches P --test T --steps 1744 --threads 2 --seed 0
    python benches/pytorch_unet.py --bench-steps 20 --threads 2   # seconds per step only
"""
import argparse, glob, json, os, time

import numpy as np
import tifffile
import torch
import torch.nn as nn
import torch.nn.functional as F


def standardise(a):
    a = a.astype(np.float64)
    s = a.std()
    return ((a - a.mean()) / s).astype(np.float32) if s > 1e-6 * max(abs(a.mean()), 1) else np.zeros(a.shape, np.float32)


class Double(nn.Sequential):
    def __init__(self, i, o):
        super().__init__(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                         nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class UNet(nn.Module):
    def __init__(self, ch=(16, 32, 64, 128)):
        super().__init__()
        self.enc = nn.ModuleList([Double(1 if i == 0 else ch[i - 1], c) for i, c in enumerate(ch)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2) for i in reversed(range(len(ch) - 1))])
        self.dec = nn.ModuleList([Double(2 * ch[i], ch[i]) for i in reversed(range(len(ch) - 1))])
        self.head = nn.Conv2d(ch[0], 1, 1)

    def forward(self, x):
        skips = []
        for i, e in enumerate(self.enc):
            if i:
                x = F.max_pool2d(x, 2)
            x = e(x)
            skips.append(x)
        skips.pop()
        for u, d in zip(self.up, self.dec):
            x = d(torch.cat([u(x), skips.pop()], 1))
        return self.head(x)


def loss_fn(z, y):
    p = torch.sigmoid(z)
    dice = (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
    return F.binary_cross_entropy_with_logits(z, y) + 1 - dice


def windows(n, s):
    step = s - s // 4
    w = list(range(0, n - s + 1, step))
    if w[-1] + s != n:
        w.append(n - s)
    return w


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--patches")
    a.add_argument("--test")
    a.add_argument("--bench-steps", type=int, default=0,
                   help="time this many steps on random crops and print seconds per step")
    a.add_argument("--seconds", type=float, default=600)
    a.add_argument("--steps", type=int, default=0,
                   help="train exactly this many steps instead of for --seconds")
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--crop", type=int, default=128)
    a.add_argument("--batch", type=int, default=8)
    o = a.parse_args()
    torch.set_num_threads(o.threads)
    torch.manual_seed(o.seed)
    rng = np.random.default_rng(o.seed)
    if o.bench_steps:
        net = UNet()
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        x = torch.from_numpy(rng.uniform(-2, 2, (o.batch, 1, o.crop, o.crop)).astype(np.float32))
        y = (x > 1).float()
        for i in range(o.bench_steps + 1):
            if i == 1:
                start = time.time()  # after one warm-up step
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()
        print(json.dumps({"seconds_per_step": (time.time() - start) / o.bench_steps,
                          "torch": torch.__version__}))
        return

    ims, ms = [], []
    for f in sorted(glob.glob(os.path.join(o.patches, "images", "*.tif"))):
        ims.append(standardise(tifffile.imread(f)))
        ms.append((tifffile.imread(os.path.join(o.patches, "masks", os.path.basename(f))) > 0).astype(np.float32))
    assert ims, f"no patches in {o.patches}/images"
    net = UNet()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    start, steps = time.time(), 0
    net.train()
    while (steps < o.steps) if o.steps else (time.time() - start < o.seconds):
        xs, ys = [], []
        for _ in range(o.batch):
            i = rng.integers(len(ims))
            s = ims[i].shape[0]
            y0, x0 = rng.integers(0, s - o.crop + 1, 2)
            x = ims[i][y0:y0 + o.crop, x0:x0 + o.crop]
            y = ms[i][y0:y0 + o.crop, x0:x0 + o.crop]
            k = rng.integers(4)
            x, y = np.rot90(x, k), np.rot90(y, k)
            if rng.random() < 0.5:
                x, y = x[:, ::-1], y[:, ::-1]
            x = x * rng.uniform(0.8, 1.2) + rng.uniform(-0.2, 0.2)
            xs.append(x.copy()), ys.append(y.copy())
        x = torch.from_numpy(np.stack(xs)[:, None])
        y = torch.from_numpy(np.stack(ys)[:, None])
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        steps += 1
    train_s = time.time() - start

    net.eval()
    s = ims[0].shape[0]
    tent = np.minimum(np.arange(s), np.arange(s)[::-1]).astype(np.float32) + 1
    tent = tent[:, None] * tent[None, :]
    dice = []
    with torch.no_grad():
        for f in sorted(glob.glob(os.path.join(o.test, "images", "*.tif"))):
            name = os.path.basename(f)
            img = tifffile.imread(f).astype(np.float32)
            gt = tifffile.imread(os.path.join(o.test, "masks", name)) > 0
            fov = tifffile.imread(os.path.join(o.test, "fov", name)) > 0
            h, w = img.shape
            acc, wt = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
            for y0 in windows(h, s):
                for x0 in windows(w, s):
                    x = standardise(img[y0:y0 + s, x0:x0 + s])
                    p = torch.sigmoid(net(torch.from_numpy(x)[None, None]))[0, 0].numpy()
                    acc[y0:y0 + s, x0:x0 + s] += tent * p
                    wt[y0:y0 + s, x0:x0 + s] += tent
            pred = (acc / wt) > 0.5
            inter = (pred & gt & fov).sum()
            dice.append(float(2 * inter / ((pred & fov).sum() + (gt & fov).sum())))
    print(json.dumps({"dice": dice, "mean": float(np.mean(dice)), "steps": steps,
                      "seconds": round(train_s, 1), "seed": o.seed}))


if __name__ == "__main__":
    main()
