"""The same MAE as biodc's (src/nn/mae.rs) in PyTorch, for a CPU speed comparison.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy
    /tmp/torchvenv/bin/python benches/pytorch_mae.py [tiny|small] [steps]

Same shapes as `bash benches/pretrain.sh`: 224x224 single-channel patches, patch 16, batch 8,
mask ratio 0.75, norm_pix_loss, AdamW; embedding = mean of patch tokens, batch 32. Random
inputs (speed does not depend on pixel values). Prints patches/s for training and embedding.
"""
import sys
import time

import torch
import torch.nn as nn

PRESETS = {"tiny": (192, 4, 3, 128, 2, 4), "small": (384, 12, 6, 256, 4, 8)}


class Block(nn.Module):
    def __init__(self, dim, heads, dropout):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, h, need_weights=False)[0])
        return x + self.mlp(self.norm2(x))


class MAE(nn.Module):
    def __init__(self, dim, depth, heads, ddim, ddepth, dheads, size=224, patch=16):
        super().__init__()
        self.patch, self.n = patch, (size // patch) ** 2
        self.proj = nn.Linear(patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, self.n + 1, dim) * 0.02, requires_grad=False)
        self.blocks = nn.ModuleList([Block(dim, heads, 0.1) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.dembed = nn.Linear(dim, ddim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, ddim))
        self.dpos = nn.Parameter(torch.randn(1, self.n + 1, ddim) * 0.02, requires_grad=False)
        self.dblocks = nn.ModuleList([Block(ddim, dheads, 0.0) for _ in range(ddepth)])
        self.dnorm = nn.LayerNorm(ddim, eps=1e-6)
        self.pred = nn.Linear(ddim, patch * patch)

    def patchify(self, x):
        b, p = x.shape[0], self.patch
        g = x.shape[-1] // p
        return x.reshape(b, 1, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, p * p)

    def encode(self, tokens):
        x = torch.cat([(self.cls + self.pos[:, :1]).expand(tokens.shape[0], -1, -1), tokens], 1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def loss(self, x, ratio=0.75):
        b, n = x.shape[0], self.n
        target = self.patchify(x)
        t = self.proj(target) + self.pos[:, 1:]
        keep = int(round(n * (1 - ratio)))
        ids = torch.rand(b, n).argsort(1)
        restore = ids.argsort(1)
        vis = torch.gather(t, 1, ids[:, :keep, None].expand(-1, -1, t.shape[-1]))
        y = self.dembed(self.encode(vis))
        m = torch.cat([y[:, 1:], self.mask_token.expand(b, n - keep, -1)], 1)
        m = torch.gather(m, 1, restore[:, :, None].expand(-1, -1, m.shape[-1]))
        h = torch.cat([y[:, :1], m], 1) + self.dpos
        for blk in self.dblocks:
            h = blk(h)
        pred = self.pred(self.dnorm(h))[:, 1:]
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
        mask = torch.ones(b, n)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, restore)
        return (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()

    def embed(self, x):
        t = self.proj(self.patchify(x)) + self.pos[:, 1:]
        return nn.functional.normalize(self.encode(t)[:, 1:].mean(1), dim=-1)


def main():
    preset = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    torch.manual_seed(0)
    model = MAE(*PRESETS[preset])
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-3, betas=(0.9, 0.95), weight_decay=0.05)
    x = torch.randn(8, 1, 224, 224)
    model.train()
    for _ in range(3):
        opt.zero_grad(); model.loss(x).backward(); opt.step()
    t0 = time.time()
    for _ in range(steps):
        opt.zero_grad(); model.loss(x).backward(); opt.step()
    train = steps * 8 / (time.time() - t0)
    model.eval()
    xe = torch.randn(32, 1, 224, 224)
    with torch.no_grad():
        model.embed(xe)
        t0 = time.time()
        for _ in range(4):
            model.embed(xe)
        emb = 4 * 32 / (time.time() - t0)
    print(f"pytorch {torch.__version__} {preset}: threads {torch.get_num_threads()}, train {train:.1f} patches/s, embed {emb:.1f} patches/s")


if __name__ == "__main__":
    main()
