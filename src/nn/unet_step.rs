//! The U-Net's forward and backward pass written out by hand on CPU: what `train` runs at every
//! step, and what `hunt` and `segment` run on CPU.
//!
//! Why by hand: through candle's autograd a training step spent most of its time outside the
//! matrix products — every gradient is accumulated into a freshly zeroed tensor, every
//! operation allocates, and the allocator hands large blocks back to the kernel, which zeroes
//! them again on the next touch (docs/BENCHMARKS.md has the profile). Here each layer's
//! gradient is computed once, straight into its buffer, from the same kernels the candle
//! operations use ([`super::conv3x3`], [`super::group_norm`]); the network, its parameters,
//! checkpoints and the optimiser stay candle's. The candle forward of [`UNet`] is the
//! reference: a test checks that both give the same logits and the same gradient for every
//! parameter. Every sum is taken in a fixed order, so results do not depend on the number of
//! threads.

use super::conv3x3;
use super::group_norm;
use super::unet::UNet;
use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Rows per parallel task of the 1×1 convolutions' matrix products.
const ROWS: usize = 2048;

/// `a (rows × k) · b (k × n)`, in parallel over blocks of rows.
fn matmul(a: &[f32], k: usize, b: &[f32], n: usize) -> Vec<f32> {
    let rows = a.len() / k.max(1);
    let mut out = take(rows * n);
    out.par_chunks_mut(ROWS * n)
        .zip(a.par_chunks(ROWS * k))
        .for_each(|(o, a)| conv3x3::matmul(a.len() / k, k, n, a, b, o, false));
    out
}

/// `aᵀ (k × rows) · b (rows × n)`: one partial product per block of rows, summed in order.
fn matmul_at(a: &[f32], k: usize, b: &[f32], n: usize) -> Vec<f32> {
    let parts: Vec<Vec<f32>> = a
        .par_chunks(ROWS * k)
        .zip(b.par_chunks(ROWS * n))
        .map(|(a, b)| {
            let rows = a.len() / k;
            let mut part = vec![0f32; k * n];
            // SAFETY: a holds rows×k, b rows×n and part k×n elements.
            unsafe {
                matrixmultiply::sgemm(
                    k,
                    rows,
                    n,
                    1.0,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    n as isize,
                    1,
                    0.0,
                    part.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
            part
        })
        .collect();
    sum_in_order(parts, k * n)
}

fn sum_in_order(parts: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut out = vec![0f32; len];
    for p in parts {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

fn add_bias(x: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    x.par_chunks_mut(ROWS * n).for_each(|rows| {
        for row in rows.chunks_exact_mut(n) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    });
}

/// Column sums of a (rows × n) matrix: the gradient of a bias.
fn column_sums(g: &[f32], n: usize) -> Vec<f32> {
    let parts: Vec<Vec<f32>> = g
        .par_chunks(ROWS * n)
        .map(|rows| {
            let mut s = vec![0f32; n];
            for row in rows.chunks_exact(n) {
                for (a, v) in s.iter_mut().zip(row) {
                    *a += v;
                }
            }
            s
        })
        .collect();
    sum_in_order(parts, n)
}

/// (b, h, w, c) → (b, h/2, w/2, 4c), channel ci·4 + dy·2 + dx (PyTorch's pixel_unshuffle).
fn space_to_depth(x: &[f32], (_, h, w, c): (usize, usize, usize, usize)) -> Vec<f32> {
    let (h2, w2) = (h / 2, w / 2);
    let mut out = take(x.len());
    out.par_chunks_mut(w2 * 4 * c)
        .enumerate()
        .for_each(|(row, o)| {
            let (bi, y) = (row / h2, row % h2);
            for x2 in 0..w2 {
                for dy in 0..2 {
                    for dx in 0..2 {
                        let src = ((bi * h + 2 * y + dy) * w + 2 * x2 + dx) * c;
                        for ci in 0..c {
                            o[x2 * 4 * c + ci * 4 + dy * 2 + dx] = x[src + ci];
                        }
                    }
                }
            }
        });
    out
}

/// The inverse of [`space_to_depth`]: (b, h, w, 4c) → (b, 2h, 2w, c).
fn depth_to_space(x: &[f32], (_, h, w, c4): (usize, usize, usize, usize)) -> Vec<f32> {
    let c = c4 / 4;
    let mut out = take(x.len());
    out.par_chunks_mut(2 * w * c)
        .enumerate()
        .for_each(|(row, o)| {
            let (bi, yy) = (row / (2 * h), row % (2 * h));
            let (y, dy) = (yy / 2, yy % 2);
            for xx in 0..2 * w {
                let (x2, dx) = (xx / 2, xx % 2);
                let src = ((bi * h + y) * w + x2) * c4;
                for ci in 0..c {
                    o[xx * c + ci] = x[src + ci * 4 + dy * 2 + dx];
                }
            }
        });
    out
}

/// Channels `[a | b]` of two images of the same pixels.
fn concat(a: &[f32], ca: usize, b: &[f32], cb: usize) -> Vec<f32> {
    let mut out = take(a.len() + b.len());
    out.par_chunks_mut(ROWS * (ca + cb))
        .zip(a.par_chunks(ROWS * ca).zip(b.par_chunks(ROWS * cb)))
        .for_each(|(o, (a, b))| {
            for ((o, a), b) in o
                .chunks_exact_mut(ca + cb)
                .zip(a.chunks_exact(ca))
                .zip(b.chunks_exact(cb))
            {
                o[..ca].copy_from_slice(a);
                o[ca..].copy_from_slice(b);
            }
        });
    out
}

/// The inverse of [`concat`].
fn split(x: &[f32], ca: usize, cb: usize) -> (Vec<f32>, Vec<f32>) {
    let pixels = x.len() / (ca + cb);
    let (mut a, mut b) = (take(pixels * ca), take(pixels * cb));
    a.par_chunks_mut(ROWS * ca)
        .zip(b.par_chunks_mut(ROWS * cb))
        .zip(x.par_chunks(ROWS * (ca + cb)))
        .for_each(|((a, b), x)| {
            for ((a, b), px) in a
                .chunks_exact_mut(ca)
                .zip(b.chunks_exact_mut(cb))
                .zip(x.chunks_exact(ca + cb))
            {
                a.copy_from_slice(&px[..ca]);
                b.copy_from_slice(&px[ca..]);
            }
        });
    (a, b)
}

fn add_into(acc: &mut [f32], v: &[f32]) {
    acc.par_chunks_mut(1 << 14)
        .zip(v.par_chunks(1 << 14))
        .for_each(|(a, v)| {
            for (a, v) in a.iter_mut().zip(v) {
                *a += v;
            }
        });
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// A 3×3 convolution + group norm + ReLU with its weights in matrix-product layout.
struct ConvNormW {
    /// (9·in, out), rows (ky, kx, in).
    wm: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    inp: usize,
    out: usize,
    groups: usize,
    names: [String; 3],
}

/// A 1×1 convolution (or a 2×2 stride-2 one over space-to-depth): (in, out) and bias.
struct LinearW {
    wt: Vec<f32>,
    bias: Vec<f32>,
    inp: usize,
    out: usize,
    names: [String; 2],
}

struct Weights {
    enc: Vec<[ConvNormW; 2]>,
    down: Vec<LinearW>,
    up: Vec<LinearW>,
    dec: Vec<[ConvNormW; 2]>,
    head: LinearW,
}

fn conv_norm(net: &UNet, name: &str) -> Result<ConvNormW> {
    let p = &net.params.vars;
    let get = |n: &str| {
        p.get(n)
            .ok_or_else(|| anyhow::anyhow!("the U-Net has no tensor {n}"))
    };
    let w = get(&format!("{name}.weight"))?;
    let (out, inp, _, _) = w.dims4()?;
    // (out, in, ky, kx) → (ky, kx, in, out).
    let wm = values(&w.permute((2, 3, 1, 0))?.contiguous()?)?;
    Ok(ConvNormW {
        wm,
        gamma: values(get(&format!("{name}.norm.weight"))?)?,
        beta: values(get(&format!("{name}.norm.bias"))?)?,
        inp,
        out,
        groups: super::unet::groups(out),
        names: [
            format!("{name}.weight"),
            format!("{name}.norm.weight"),
            format!("{name}.norm.bias"),
        ],
    })
}

fn linear(net: &UNet, name: &str) -> Result<LinearW> {
    let p = &net.params.vars;
    let w = p
        .get(&format!("{name}.weight"))
        .ok_or_else(|| anyhow::anyhow!("the U-Net has no tensor {name}.weight"))?;
    let (out, inp, _, _) = w.dims4()?;
    Ok(LinearW {
        wt: transpose(&values(w)?, out, inp),
        bias: values(&p[&format!("{name}.bias")])?,
        inp,
        out,
        names: [format!("{name}.weight"), format!("{name}.bias")],
    })
}

fn weights(net: &UNet) -> Result<Weights> {
    let levels = net.cfg.channels.len();
    let pair = |prefix: &str, l: usize| -> Result<[ConvNormW; 2]> {
        Ok([
            conv_norm(net, &format!("{prefix}.{l}.0"))?,
            conv_norm(net, &format!("{prefix}.{l}.1"))?,
        ])
    };
    Ok(Weights {
        enc: (0..levels).map(|l| pair("enc", l)).collect::<Result<_>>()?,
        down: (1..levels)
            .map(|l| linear(net, &format!("down.{l}")))
            .collect::<Result<_>>()?,
        up: (0..levels - 1)
            .rev()
            .map(|l| linear(net, &format!("up.{l}")))
            .collect::<Result<_>>()?,
        dec: (0..levels - 1)
            .rev()
            .map(|l| pair("dec", l))
            .collect::<Result<_>>()?,
        head: linear(net, "head")?,
    })
}

/// Conv + norm + ReLU forward of activation `x` of the arena (b, h, w, inp): pushes the
/// pre-norm and the output activations, returns the output's index.
fn conv_norm_forward(
    l: &ConvNormW,
    acts: &mut Vec<Vec<f32>>,
    x: usize,
    (b, h, w): (usize, usize, usize),
) -> usize {
    let mut pre = take(b * h * w * l.out);
    conv3x3::forward_into(&acts[x], (b, h, w, l.inp), &l.wm, l.out, &mut pre);
    let mut y = take(pre.len());
    group_norm::forward_into(&pre, h * w, l.out, &l.gamma, &l.beta, l.groups, &mut y);
    acts.push(pre);
    acts.push(y);
    acts.len() - 1
}

/// Backward of the conv-norm layer whose output is activation `y` (its pre-norm is `y − 1`,
/// its input `x`): the input gradient (unless `need_input` is false); the parameter gradients
/// (weight in (out, in, 3, 3) layout, γ, β) go to `grads`.
#[allow(clippy::too_many_arguments)]
fn conv_norm_backward(
    l: &ConvNormW,
    acts: &[Vec<f32>],
    x: usize,
    y: usize,
    dy: Vec<f32>,
    (b, h, w): (usize, usize, usize),
    need_input: bool,
    grads: &mut Vec<(String, Vec<f32>)>,
) -> Option<Vec<f32>> {
    let pre = &acts[y - 1];
    let mut dpre = take(pre.len());
    let dgb = group_norm::backward_into(
        pre,
        &acts[y],
        &dy,
        h * w,
        l.out,
        &l.gamma,
        l.groups,
        &mut dpre,
    );
    give(dy);
    let dwm = conv3x3::weight_grad(&acts[x], (b, h, w, l.inp), &dpre, l.out);
    // (ky, kx, in, out) → (out, in, ky, kx).
    let mut dw = vec![0f32; dwm.len()];
    for k in 0..9 {
        for ci in 0..l.inp {
            for co in 0..l.out {
                dw[(co * l.inp + ci) * 9 + k] = dwm[(k * l.inp + ci) * l.out + co];
            }
        }
    }
    grads.push((l.names[0].clone(), dw));
    grads.push((l.names[1].clone(), dgb[..l.out].to_vec()));
    grads.push((l.names[2].clone(), dgb[l.out..].to_vec()));
    let dx = need_input.then(|| {
        let flipped = conv3x3::flip(&l.wm, l.inp, l.out);
        let mut dx = take(b * h * w * l.inp);
        conv3x3::forward_into(&dpre, (b, h, w, l.out), &flipped, l.inp, &mut dx);
        dx
    });
    give(dpre);
    dx
}

fn linear_forward(l: &LinearW, x: &[f32]) -> Vec<f32> {
    let mut y = matmul(x, l.inp, &l.wt, l.out);
    add_bias(&mut y, &l.bias);
    y
}

/// Backward of [`linear_forward`]: the input gradient; the parameter gradients go to `grads`
/// (weight as (out, in, 1, 1)).
fn linear_backward(
    l: &LinearW,
    x: &[f32],
    dy: Vec<f32>,
    grads: &mut Vec<(String, Vec<f32>)>,
) -> Vec<f32> {
    let dwt = matmul_at(x, l.inp, &dy, l.out);
    grads.push((l.names[0].clone(), transpose(&dwt, l.inp, l.out)));
    grads.push((l.names[1].clone(), column_sums(&dy, l.out)));
    let dx = matmul(&dy, l.out, &transpose(&l.wt, l.inp, l.out), l.inp);
    give(dy);
    dx
}

/// Keep-masks of dropout with probability `p`, drawn as the candle forward draws them.
fn dropout_mask(n: usize, p: f32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    super::unet::dropout_mask(n, p, rng)
}

/// The activations of a forward pass and where each layer's are.
struct Tape {
    acts: Vec<Vec<f32>>,
    /// Per encoder level: (input, first output, second output).
    enc: Vec<(usize, usize, usize)>,
    /// Per level ≥ 1: the space-to-depth input of the downsampling.
    down_in: Vec<usize>,
    /// Per decoder step: (input of the up-convolution, concatenation, first output, output).
    dec: Vec<(usize, usize, usize, usize)>,
    head_in: usize,
    mask: Option<Vec<f32>>,
}

impl Tape {
    /// Hands every buffer back to the pool.
    fn recycle(self) {
        for a in self.acts {
            give(a);
        }
        if let Some(m) = self.mask {
            give(m);
        }
    }
}

/// The forward pass: logits (b, h, w) of channels-last inputs (b, h, w, inputs); with `rng`
/// the dropout site is on. Returns the logits and the tape of activations.
fn forward(
    net: &UNet,
    wts: &Weights,
    x: &[f32],
    (b, h, w): (usize, usize, usize),
    rng: Option<&mut ChaCha8Rng>,
) -> Result<(Vec<f32>, Tape)> {
    let m = net.cfg.multiple();
    if x.len() != b * h * w * net.cfg.inputs || h % m != 0 || w % m != 0 {
        bail!(
            "the U-Net takes (B, H, W, {}) with H and W multiples of {m}, got {b}×{h}×{w} and {} values",
            net.cfg.inputs,
            x.len()
        );
    }
    let levels = wts.enc.len();
    let dims = |l: usize| (b, h >> l, w >> l);
    let mut input = take(x.len());
    input.copy_from_slice(x);
    let mut tape = Tape {
        acts: vec![input],
        enc: Vec::new(),
        down_in: Vec::new(),
        dec: Vec::new(),
        head_in: 0,
        mask: None,
    };
    let mut y = 0;
    for (l, [c0, c1]) in wts.enc.iter().enumerate() {
        if l > 0 {
            let (_, hl, wl) = dims(l - 1);
            let s = space_to_depth(&tape.acts[y], (b, hl, wl, wts.enc[l - 1][1].out));
            let d = linear_forward(&wts.down[l - 1], &s);
            tape.acts.push(s);
            tape.down_in.push(tape.acts.len() - 1);
            tape.acts.push(d);
            y = tape.acts.len() - 1;
        }
        let a = conv_norm_forward(c0, &mut tape.acts, y, dims(l));
        let e = conv_norm_forward(c1, &mut tape.acts, a, dims(l));
        tape.enc.push((y, a, e));
        y = e;
    }
    for (k, (up, [c0, c1])) in wts.up.iter().zip(&wts.dec).enumerate() {
        let l = levels - 2 - k;
        let skip = tape.enc[l].2;
        let (_, hl1, wl1) = dims(l + 1);
        let t = linear_forward(up, &tape.acts[y]);
        let u = depth_to_space(&t, (b, hl1, wl1, up.out));
        give(t);
        let cat = concat(&u, up.out / 4, &tape.acts[skip], wts.enc[l][1].out);
        give(u);
        tape.acts.push(cat);
        let cat = tape.acts.len() - 1;
        let a = conv_norm_forward(c0, &mut tape.acts, cat, dims(l));
        let d = conv_norm_forward(c1, &mut tape.acts, a, dims(l));
        tape.dec.push((y, cat, a, d));
        y = d;
    }
    if let Some(rng) = rng {
        if net.cfg.dropout > 0.0 {
            let mask = dropout_mask(tape.acts[y].len(), net.cfg.dropout, rng);
            let mut dropped = take(mask.len());
            for ((o, v), m) in dropped.iter_mut().zip(&tape.acts[y]).zip(&mask) {
                *o = v * m;
            }
            tape.acts.push(dropped);
            y = tape.acts.len() - 1;
            tape.mask = Some(mask);
        }
    }
    tape.head_in = y;
    let z = linear_forward(&wts.head, &tape.acts[y]);
    Ok((z, tape))
}

/// The BCE + soft Dice loss of logits `z` against 0/1 targets `t` (as
/// [`super::loss::bce_dice`]) and its gradient.
fn loss_and_grad(z: &[f32], t: &[f32]) -> (f32, Vec<f32>) {
    let n = z.len() as f64;
    let p: Vec<f32> = z.iter().map(|&v| ((v * 0.5).tanh() + 1.0) * 0.5).collect();
    let (mut bce, mut inter, mut ps, mut ts) = (0f64, 0f64, 0f64, 0f64);
    for ((&z, &p), &t) in z.iter().zip(&p).zip(t) {
        bce += ((-z.abs()).exp() + 1.0).ln() as f64 + z.max(0.0) as f64 - (z * t) as f64;
        inter += (p * t) as f64;
        ps += p as f64;
        ts += t as f64;
    }
    let total = ps + ts + 1.0;
    let dice = (2.0 * inter + 1.0) / total;
    let loss = (bce / n + 1.0 - dice) as f32;
    let mut g = take(z.len());
    for ((g, &p), &t) in g.iter_mut().zip(&p).zip(t) {
        let d_bce = (p - t) as f64 / n;
        let d_dice_dp = -(2.0 * t as f64 * total - (2.0 * inter + 1.0)) / (total * total);
        *g = (d_bce + d_dice_dp * (p * (1.0 - p)) as f64) as f32;
    }
    (loss, g)
}

/// The backward pass from the logits' gradient `dz`.
fn backward(
    wts: &Weights,
    tape: &Tape,
    dz: Vec<f32>,
    (b, h, w): (usize, usize, usize),
) -> Vec<(String, Vec<f32>)> {
    let levels = wts.enc.len();
    let dims = |l: usize| (b, h >> l, w >> l);
    let acts = &tape.acts;
    let mut grads = Vec::new();
    let mut dy = linear_backward(&wts.head, &acts[tape.head_in], dz, &mut grads);
    if let Some(mask) = &tape.mask {
        for (g, m) in dy.iter_mut().zip(mask) {
            *g *= m;
        }
    }
    // Decoder, top level first; the gradients of the skips wait for the encoder.
    let mut dskip: Vec<Option<Vec<f32>>> = (0..levels).map(|_| None).collect();
    for k in (0..wts.dec.len()).rev() {
        let l = levels - 2 - k;
        let [c0, c1] = &wts.dec[k];
        let (up_in, cat, a, d) = tape.dec[k];
        let da = conv_norm_backward(c1, acts, a, d, dy, dims(l), true, &mut grads).unwrap();
        let dcat = conv_norm_backward(c0, acts, cat, a, da, dims(l), true, &mut grads).unwrap();
        let up = &wts.up[k];
        let (du, ds) = split(&dcat, up.out / 4, wts.enc[l][1].out);
        give(dcat);
        dskip[l] = Some(ds);
        let dt = space_to_depth(&du, (b, h >> l, w >> l, up.out / 4));
        dy = linear_backward(up, &acts[up_in], dt, &mut grads);
    }
    // Encoder, bottom level first: the gradient of each level's output is what came down
    // from the level below plus its skip's.
    for l in (0..levels).rev() {
        if let Some(ds) = dskip[l].take() {
            add_into(&mut dy, &ds);
            give(ds);
        }
        let [c0, c1] = &wts.enc[l];
        let (input, a, e) = tape.enc[l];
        let da = conv_norm_backward(c1, acts, a, e, dy, dims(l), true, &mut grads).unwrap();
        let din = conv_norm_backward(c0, acts, input, a, da, dims(l), l > 0, &mut grads);
        dy = Vec::new();
        if let Some(din) = din {
            let ds = linear_backward(
                &wts.down[l - 1],
                &acts[tape.down_in[l - 1]],
                din,
                &mut grads,
            );
            let (_, hl, wl) = dims(l);
            dy = depth_to_space(&ds, (b, hl, wl, wts.down[l - 1].inp));
            give(ds);
        }
    }
    grads
}

thread_local! {
    /// Buffers of finished passes, reused by the next: without it every step maps fresh
    /// memory that the kernel zeroes page by page (a fifth of a step's time, measured).
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer of `len` values (stale contents: callers overwrite every value).
fn take(len: usize) -> Vec<f32> {
    let reused = POOL.with(|p| {
        let mut p = p.borrow_mut();
        let best = p
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        best.map(|i| p.swap_remove(i))
    });
    match reused {
        Some(mut v) => {
            if v.len() >= len {
                v.truncate(len);
            } else {
                v.resize(len, 0.0);
            }
            v
        }
        None => vec![0f32; len],
    }
}

/// Returns a buffer to the pool (at most 96 are kept).
fn give(v: Vec<f32>) {
    if v.capacity() == 0 {
        return;
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < 96 {
            p.push(v);
        }
    });
}

/// One training step's loss and gradients (by parameter tensor, ready for
/// [`super::train::AdamW`]) on a batch of channels-last inputs `x` (b, h, w, inputs) with 0/1
/// targets `t` (b, h, w); dropout masks are drawn from `rng`.
pub fn loss_and_gradients(
    net: &UNet,
    x: &[f32],
    t: &[f32],
    dims: (usize, usize, usize),
    rng: &mut ChaCha8Rng,
) -> Result<(f32, GradStore)> {
    let wts = weights(net)?;
    let (z, tape) = forward(net, &wts, x, dims, Some(rng))?;
    if t.len() != z.len() {
        bail!("{} targets for {} pixels", t.len(), z.len());
    }
    let (loss, dz) = loss_and_grad(&z, t);
    give(z);
    let grads = backward(&wts, &tape, dz, dims);
    tape.recycle();
    let mut store = GradStore::default();
    for (name, g) in grads {
        let var = &net.params.vars[&name];
        store.insert(
            var.as_tensor(),
            Tensor::from_vec(g, var.shape(), var.device())?,
        );
    }
    Ok((loss, store))
}

/// Logits (b·h·w) of channels-last inputs; with `rng` the dropout site is on (one Monte-Carlo
/// dropout pass).
pub fn logits(
    net: &UNet,
    x: &[f32],
    dims: (usize, usize, usize),
    rng: Option<&mut ChaCha8Rng>,
) -> Result<Vec<f32>> {
    let wts = weights(net)?;
    let (z, tape) = forward(net, &wts, x, dims, rng)?;
    tape.recycle();
    Ok(z)
}

/// `passes` Monte-Carlo dropout passes: the logits of each (b·h·w values). The network runs
/// once up to its dropout site (the last decoder features); each pass draws a mask there and
/// applies the head, exactly as `passes` full forward passes with the same RNG would.
pub fn mc_logits(
    net: &UNet,
    x: &[f32],
    dims: (usize, usize, usize),
    passes: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Vec<f32>>> {
    let wts = weights(net)?;
    let (z, tape) = forward(net, &wts, x, dims, None)?;
    give(z);
    let features = &tape.acts[tape.head_in];
    let mut out = Vec::with_capacity(passes);
    for _ in 0..passes {
        if net.cfg.dropout > 0.0 {
            let mask = dropout_mask(features.len(), net.cfg.dropout, rng);
            let mut dropped = take(mask.len());
            for ((o, v), m) in dropped.iter_mut().zip(features).zip(&mask) {
                *o = v * m;
            }
            out.push(linear_forward(&wts.head, &dropped));
            give(dropped);
            give(mask);
        } else {
            out.push(linear_forward(&wts.head, features));
        }
    }
    tape.recycle();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::unet::UNetConfig;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    /// The hand-written pass against candle's autograd over the same network: same logits,
    /// same loss, same gradient for every parameter, dropout included.
    #[test]
    fn matches_candle_autograd() {
        let cfg = UNetConfig {
            inputs: 1,
            channels: vec![8, 16, 16],
            dropout: 0.2,
            window: 16,
        };
        let dev = Device::Cpu;
        let net = UNet::new(&cfg, 5, &dev).unwrap();
        let (b, h, w) = (2, 16, 12);
        let mut r = ChaCha8Rng::seed_from_u64(9);
        let x: Vec<f32> = (0..b * h * w).map(|_| r.random_range(-2.0..2.0)).collect();
        let t: Vec<f32> = (0..b * h * w)
            .map(|_| (r.random::<f32>() < 0.2) as u8 as f32)
            .collect();

        let xt = Tensor::from_vec(x.clone(), (b, h, w, 1), &dev).unwrap();
        let tt = Tensor::from_vec(t.clone(), (b, 1, h, w), &dev).unwrap();
        let mut r1 = ChaCha8Rng::seed_from_u64(3);
        let z = net.forward(&xt, Some(&mut r1)).unwrap();
        let loss = crate::nn::loss::bce_dice(&z, &tt).unwrap();
        let reference = loss.backward().unwrap();

        let mut r2 = ChaCha8Rng::seed_from_u64(3);
        let (ours, grads) = loss_and_gradients(&net, &x, &t, (b, h, w), &mut r2).unwrap();
        let l = loss.to_scalar::<f32>().unwrap();
        assert!((ours - l).abs() < 1e-5, "loss {ours} vs {l}");
        let mut r3 = ChaCha8Rng::seed_from_u64(3);
        let fast = logits(&net, &x, (b, h, w), Some(&mut r3)).unwrap();
        let slow = z.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let dz = fast
            .iter()
            .zip(&slow)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(dz < 1e-4, "logits differ by {dz}");
        // Monte-Carlo passes through the shared trunk = full passes with the same RNG.
        let (mut r4, mut r5) = (ChaCha8Rng::seed_from_u64(7), ChaCha8Rng::seed_from_u64(7));
        let mc = mc_logits(&net, &x, (b, h, w), 3, &mut r4).unwrap();
        for pass in mc {
            assert_eq!(pass, logits(&net, &x, (b, h, w), Some(&mut r5)).unwrap());
        }
        for (name, var) in &net.params.vars {
            let a = values(
                grads
                    .get(var)
                    .unwrap_or_else(|| panic!("no gradient for {name}")),
            )
            .unwrap();
            let e = values(reference.get(var).unwrap()).unwrap();
            let scale = e.iter().map(|v| v.abs()).fold(1e-3f32, f32::max);
            let diff = a
                .iter()
                .zip(&e)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                diff < 1e-3 * scale,
                "{name}: gradients differ by {diff} (scale {scale})"
            );
        }
    }
}
