//! Plain-Rust CPU references for every kernel family, in f64: what `pigment selftest` and the
//! tests compare the kernels against. Written for clarity, not speed (small shapes only).

use super::elementwise::Activation;

/// erf by Simpson's rule on a fine grid (no series-specific approximation to share errors with
/// the kernels' Abramowitz-Stegun erf).
pub fn erf(x: f64) -> f64 {
    let n = 2000;
    let h = x / n as f64;
    let f = |t: f64| (-t * t).exp();
    let mut s = f(0.0) + f(x);
    for i in 1..n {
        s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
}

pub fn activation(act: Activation, v: f64) -> f64 {
    match act {
        Activation::Identity => v,
        Activation::Silu => v / (1.0 + (-v).exp()),
        Activation::Gelu => 0.5 * v * (1.0 + erf(v / 2f64.sqrt())),
        Activation::GeluTanh => 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh()),
        Activation::QuickGelu => v / (1.0 + (-1.702 * v).exp()),
        Activation::Relu => v.max(0.0),
        Activation::Tanh => v.tanh(),
        Activation::LeakyRelu => if v >= 0.0 { v } else { 0.2 * v },
        Activation::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        Activation::Elu => if v > 0.0 { v } else { v.exp() - 1.0 },
        Activation::Hardswish => v * (v + 3.0).clamp(0.0, 6.0) / 6.0,
        Activation::LeakyRelu001 => if v >= 0.0 { v } else { 0.01 * v },
    }
}

/// A GEMM problem as `ops::gemm::matmul` sees it: A [batch, M, K] (or [batch, K, M] with
/// `trans_a`), B [K, N] shared or [batch, K, N] (or N, K with `trans_b`).
#[derive(Clone, Copy, Debug)]
pub struct GemmShape {
    pub batch: usize,
    pub b_batched: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

/// `act(alpha * op(A)·op(B) + bias) + residual`.
pub fn gemm(s: &GemmShape, a: &[f32], b: &[f32], alpha: f32, bias: Option<&[f32]>, act: Activation, res: Option<&[f32]>) -> Vec<f32> {
    let GemmShape { batch, b_batched, m, n, k, trans_a, trans_b } = *s;
    let mut out = vec![0f32; batch * m * n];
    for bi in 0..batch {
        let bo = if b_batched { bi * k * n } else { 0 };
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f64;
                for kk in 0..k {
                    let av = if trans_a { a[bi * m * k + kk * m + i] } else { a[bi * m * k + i * k + kk] };
                    let bv = if trans_b { b[bo + j * k + kk] } else { b[bo + kk * n + j] };
                    acc += av as f64 * bv as f64;
                }
                let v = activation(act, alpha as f64 * acc + bias.map_or(0.0, |bb| bb[j] as f64));
                let idx = bi * m * n + i * n + j;
                out[idx] = (v + res.map_or(0.0, |r| r[idx] as f64)) as f32;
            }
        }
    }
    out
}

/// A conv2d problem: x [n, cin, h, w], weight [cout, cin, k, k].
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvShape {
    pub fn out_hw(&self) -> (usize, usize) {
        ((self.h + 2 * self.pad - self.k) / self.stride + 1, (self.w + 2 * self.pad - self.k) / self.stride + 1)
    }
}

/// Conv2d with bias and residual. Returns the outputs and, per output, the sum of |terms| (the
/// scale the rounding error of any summation order is relative to).
pub fn conv2d(c: &ConvShape, x: &[f32], wt: &[f32], bias: Option<&[f32]>, res: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    let (ho, wo) = c.out_hw();
    let mut out = vec![0f32; c.n * c.cout * ho * wo];
    let mut mag = vec![0f32; out.len()];
    for n in 0..c.n {
        for co in 0..c.cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let (mut s, mut a) = (0f64, 0f64);
                    for ci in 0..c.cin {
                        for ky in 0..c.k {
                            let iy = (oy * c.stride + ky) as isize - c.pad as isize;
                            if iy < 0 || iy >= c.h as isize {
                                continue;
                            }
                            for kx in 0..c.k {
                                let ix = (ox * c.stride + kx) as isize - c.pad as isize;
                                if ix < 0 || ix >= c.w as isize {
                                    continue;
                                }
                                let xv = x[((n * c.cin + ci) * c.h + iy as usize) * c.w + ix as usize] as f64;
                                let wv = wt[((co * c.cin + ci) * c.k + ky) * c.k + kx] as f64;
                                s += xv * wv;
                                a += (xv * wv).abs();
                            }
                        }
                    }
                    let i = ((n * c.cout + co) * ho + oy) * wo + ox;
                    for extra in [bias.map(|b| b[co]), res.map(|r| r[i])].into_iter().flatten() {
                        s += extra as f64;
                        a += (extra as f64).abs();
                    }
                    out[i] = s as f32;
                    mag[i] = a as f32;
                }
            }
        }
    }
    (out, mag)
}

/// Attention: q [B, Lq, H*D], k/v [B, Lk, H*D]; causal = key j visible to query i iff j <= i.
#[allow(clippy::too_many_arguments)]
pub fn attention(q: &[f32], k: &[f32], v: &[f32], b: usize, lq: usize, lk: usize, h: usize, d: usize, scale: f32, causal: bool) -> Vec<f32> {
    let w = h * d;
    let mut out = vec![0f32; b * lq * w];
    let mut s = vec![0f64; lk];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..lq {
                let qr = &q[(bi * lq + i) * w + hi * d..][..d];
                let mut mx = f64::NEG_INFINITY;
                for j in 0..lk {
                    if causal && j > i {
                        s[j] = f64::NEG_INFINITY;
                        continue;
                    }
                    let kr = &k[(bi * lk + j) * w + hi * d..][..d];
                    s[j] = qr.iter().zip(kr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale as f64;
                    mx = mx.max(s[j]);
                }
                let mut l = 0.0;
                for x in s.iter_mut() {
                    *x = (*x - mx).exp();
                    l += *x;
                }
                for c in 0..d {
                    let acc: f64 = (0..lk).map(|j| s[j] * v[(bi * lk + j) * w + hi * d + c] as f64).sum();
                    out[(bi * lq + i) * w + hi * d + c] = (acc / l) as f32;
                }
            }
        }
    }
    out
}

/// Group norm over [n, c, hw] with `g` groups (+ SiLU).
#[allow(clippy::too_many_arguments)]
pub fn group_norm(x: &[f32], n: usize, c: usize, hw: usize, g: usize, w: &[f32], b: &[f32], eps: f64, silu: bool) -> Vec<f32> {
    let cpg = c / g;
    let gl = cpg * hw;
    let mut y = vec![0.0; x.len()];
    for gi in 0..n * g {
        let s = &x[gi * gl..(gi + 1) * gl];
        let mean = s.iter().map(|&v| v as f64).sum::<f64>() / gl as f64;
        let var = s.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / gl as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for (i, &v) in s.iter().enumerate() {
            let ch = (gi % g) * cpg + i / hw;
            let o = (v as f64 - mean) * rstd * w[ch] as f64 + b[ch] as f64;
            y[gi * gl + i] = if silu { activation(Activation::Silu, o) } else { o } as f32;
        }
    }
    y
}

/// Layer norm over rows of `d`.
pub fn layer_norm(x: &[f32], d: usize, w: &[f32], b: &[f32], eps: f64) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for (s, o) in x.chunks(d).zip(y.chunks_mut(d)) {
        let mean = s.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = s.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        for i in 0..d {
            o[i] = ((s[i] as f64 - mean) / (var + eps).sqrt() * w[i] as f64 + b[i] as f64) as f32;
        }
    }
    y
}

/// softmax(scale * x) over rows of `n`.
pub fn softmax(x: &[f32], n: usize, scale: f32) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for (xr, yr) in x.chunks(n).zip(y.chunks_mut(n)) {
        let s: Vec<f64> = xr.iter().map(|&v| v as f64 * scale as f64).collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let l: f64 = s.iter().map(|v| (v - m).exp()).sum();
        for (o, v) in yr.iter_mut().zip(&s) {
            *o = ((v - m).exp() / l) as f32;
        }
    }
    y
}

/// GEGLU: hidden * gelu_erf(gate) with (hidden, gate) = chunk(2, -1), rows of `2 * f`.
pub fn geglu(x: &[f32], f: usize) -> Vec<f32> {
    let mut y = vec![];
    for r in x.chunks(2 * f) {
        for c in 0..f {
            y.push((r[c] as f64 * activation(Activation::Gelu, r[f + c] as f64)) as f32);
        }
    }
    y
}

/// `act(alpha * x + beta)` elementwise.
pub fn unary(act: Activation, x: &[f32], alpha: f32, beta: f32) -> Vec<f32> {
    x.iter().map(|&v| activation(act, alpha as f64 * v as f64 + beta as f64) as f32).collect()
}

/// `alpha * (a OP b[(i / inner) % b.len()])`; `mul` selects multiplication over addition.
pub fn binary_broadcast(mul: bool, a: &[f32], b: &[f32], inner: usize, alpha: f32) -> Vec<f32> {
    a.iter()
        .enumerate()
        .map(|(i, &x)| {
            let y = b[(i / inner) % b.len()] as f64;
            (alpha as f64 * if mul { x as f64 * y } else { x as f64 + y }) as f32
        })
        .collect()
}

/// Rows `table[id] (+ positions[t])` for token t.
pub fn embedding_lookup(table: &[f32], d: usize, ids: &[u32], positions: Option<&[f32]>) -> Vec<f32> {
    let mut out = vec![0f32; ids.len() * d];
    for (t, &id) in ids.iter().enumerate() {
        for c in 0..d {
            let p = positions.map_or(0.0, |p| p[t * d + c] as f64);
            out[t * d + c] = (table[id as usize * d + c] as f64 + p) as f32;
        }
    }
    out
}

/// Nearest 2x upsampling of [nc, h, w].
pub fn upsample_nearest2x(x: &[f32], nc: usize, h: usize, w: usize) -> Vec<f32> {
    resize_nearest(x, nc, (h, w), (2 * h, 2 * w))
}

/// torch's `interpolate(size=(ho, wo), mode="nearest")`: source index floor(dst · in / out),
/// in f64 as torch does with its float scale.
pub fn resize_nearest(x: &[f32], nc: usize, (h, w): (usize, usize), (ho, wo): (usize, usize)) -> Vec<f32> {
    let mut y = vec![0.0; nc * ho * wo];
    for p in 0..nc {
        for oy in 0..ho {
            let sy = ((oy as f64) * (h as f64 / ho as f64)).floor() as usize;
            for ox in 0..wo {
                let sx = ((ox as f64) * (w as f64 / wo as f64)).floor() as usize;
                y[(p * ho + oy) * wo + ox] = x[(p * h + sy.min(h - 1)) * w + sx.min(w - 1)];
            }
        }
    }
    y
}

/// [n, ca, hw] ++ [n, cb, hw] along channels.
pub fn concat_channels(a: &[f32], b: &[f32], n: usize, ca: usize, cb: usize, hw: usize) -> Vec<f32> {
    let mut y = Vec::with_capacity(a.len() + b.len());
    for i in 0..n {
        y.extend_from_slice(&a[i * ca * hw..(i + 1) * ca * hw]);
        y.extend_from_slice(&b[i * cb * hw..(i + 1) * cb * hw]);
    }
    y
}

/// [b, m, n] -> [b, n, m].
pub fn transpose_last2(x: &[f32], b: usize, m: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for z in 0..b {
        for i in 0..m {
            for j in 0..n {
                y[z * m * n + j * m + i] = x[z * m * n + i * n + j];
            }
        }
    }
    y
}

/// Max over elements of `|got - want| - (atol + rtol * |want|)` as (index, excess, |got - want|);
/// `excess <= 0` passes. NaN counts as infinitely wrong.
pub fn worst_excess(got: &[f32], want: &[f32], atol: f32, rtol: f32) -> (usize, f32, f32) {
    let mut worst = (0usize, f32::NEG_INFINITY, 0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = if g.is_nan() { f32::INFINITY } else { (g - w).abs() };
        let excess = err - (atol + rtol * w.abs());
        if excess > worst.1 || (g.is_nan() && worst.1.is_finite()) {
            worst = (i, excess, err);
        }
    }
    if got.len() != want.len() {
        worst = (got.len().min(want.len()), f32::INFINITY, f32::INFINITY);
    }
    worst
}

/// torch's `F.pixel_unshuffle(x, r)` on `[N, C, H, W]`: output channel `c*r*r + i*r + j` holds
/// the pixels at row offset `i`, column offset `j` of each r x r block.
pub fn pixel_unshuffle(x: &[f32], n: usize, c: usize, h: usize, w: usize, r: usize) -> Vec<f32> {
    let (ho, wo) = (h / r, w / r);
    let mut y = Vec::with_capacity(x.len());
    for b in 0..n {
        for ci in 0..c {
            for i in 0..r {
                for j in 0..r {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            y.push(x[((b * c + ci) * h + oy * r + i) * w + ox * r + j]);
                        }
                    }
                }
            }
        }
    }
    y
}

// ---- Input gradients (ops::grad): dL/dx given dL/dy, by the chain rule written out directly.

/// dL/dx of [`conv2d`] (no bias): every product x·w of the forward scatters dy·w back to x.
pub fn conv2d_input_grad(c: &ConvShape, dy: &[f32], wt: &[f32]) -> Vec<f32> {
    let (ho, wo) = c.out_hw();
    let mut dx = vec![0f64; c.n * c.cin * c.h * c.w];
    for n in 0..c.n {
        for co in 0..c.cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let g = dy[((n * c.cout + co) * ho + oy) * wo + ox] as f64;
                    for ci in 0..c.cin {
                        for ky in 0..c.k {
                            for kx in 0..c.k {
                                let iy = (oy * c.stride + ky) as isize - c.pad as isize;
                                let ix = (ox * c.stride + kx) as isize - c.pad as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < c.h && (ix as usize) < c.w {
                                    dx[((n * c.cin + ci) * c.h + iy as usize) * c.w + ix as usize] += g * wt[((co * c.cin + ci) * c.k + ky) * c.k + kx] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    dx.into_iter().map(|v| v as f32).collect()
}

/// dL/dx of [`group_norm`]: per group, with xhat = (x - mean) * rstd and h = dL/dxhat =
/// dy * act'(a) * gamma, dx = rstd * (h - mean(h) - xhat * mean(h * xhat)).
#[allow(clippy::too_many_arguments)]
pub fn group_norm_grad(x: &[f32], dy: &[f32], n: usize, c: usize, hw: usize, g: usize, w: &[f32], b: &[f32], eps: f64, silu: bool) -> Vec<f32> {
    let cpg = c / g;
    let gl = cpg * hw;
    let mut dx = vec![0f32; x.len()];
    for gi in 0..n * g {
        let s = &x[gi * gl..(gi + 1) * gl];
        let mean = s.iter().map(|&v| v as f64).sum::<f64>() / gl as f64;
        let var = s.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / gl as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        let mut xhat = vec![0f64; gl];
        let mut h = vec![0f64; gl];
        for i in 0..gl {
            let ch = (gi % g) * cpg + i / hw;
            xhat[i] = (s[i] as f64 - mean) * rstd;
            let a = xhat[i] * w[ch] as f64 + b[ch] as f64;
            let sig = 1.0 / (1.0 + (-a).exp());
            let act = if silu { sig * (1.0 + a * (1.0 - sig)) } else { 1.0 };
            h[i] = dy[gi * gl + i] as f64 * act * w[ch] as f64;
        }
        let mh = h.iter().sum::<f64>() / gl as f64;
        let mhx = h.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / gl as f64;
        for i in 0..gl {
            dx[gi * gl + i] = (rstd * (h[i] - mh - xhat[i] * mhx)) as f32;
        }
    }
    dx
}

/// dL/dx of [`layer_norm`]: a row of `d` is one group of `d` one-element channels.
pub fn layer_norm_grad(x: &[f32], dy: &[f32], d: usize, w: &[f32], b: &[f32], eps: f64) -> Vec<f32> {
    group_norm_grad(x, dy, x.len() / d, d, 1, 1, w, b, eps, false)
}

/// dL/dx of [`geglu`]: d hidden = dy * gelu(gate), d gate = dy * hidden * gelu'(gate) with
/// gelu'(g) = Phi(g) + g * phi(g).
pub fn geglu_grad(x: &[f32], dy: &[f32], f: usize) -> Vec<f32> {
    let mut dx = vec![0f32; x.len()];
    for (r, (xr, gr)) in x.chunks(2 * f).zip(dy.chunks(f)).enumerate() {
        for c in 0..f {
            let (h, g, d) = (xr[c] as f64, xr[f + c] as f64, gr[c] as f64);
            let cdf = 0.5 * (1.0 + erf(g / 2f64.sqrt()));
            let pdf = (-0.5 * g * g).exp() / (2.0 * std::f64::consts::PI).sqrt();
            dx[r * 2 * f + c] = (d * g * cdf) as f32;
            dx[r * 2 * f + f + c] = (d * h * (cdf + g * pdf)) as f32;
        }
    }
    dx
}

/// dL/ds of p = softmax(s) over rows of `n`: p * (dp - sum_j p_j dp_j).
pub fn softmax_grad(p: &[f32], dp: &[f32], n: usize) -> Vec<f32> {
    let mut ds = vec![0f32; p.len()];
    for ((pr, gr), or) in p.chunks(n).zip(dp.chunks(n)).zip(ds.chunks_mut(n)) {
        let dot: f64 = pr.iter().zip(gr).map(|(&a, &b)| a as f64 * b as f64).sum();
        for i in 0..n {
            or[i] = (pr[i] as f64 * (gr[i] as f64 - dot)) as f32;
        }
    }
    ds
}

/// dL/dx of [`upsample_nearest2x`] of [nc, h, w]: dy [nc, 2h, 2w] summed over 2x2 blocks.
pub fn upsample_nearest2x_grad(dy: &[f32], nc: usize, h: usize, w: usize) -> Vec<f32> {
    let mut dx = vec![0f64; nc * h * w];
    for p in 0..nc {
        for y in 0..2 * h {
            for x in 0..2 * w {
                dx[(p * h + y / 2) * w + x / 2] += dy[(p * 2 * h + y) * 2 * w + x] as f64;
            }
        }
    }
    dx.into_iter().map(|v| v as f32).collect()
}

/// diffusers' `head_to_batch_dim` of columns `col0..` of `[b, l, row_stride]`: `[b*heads, l, d]`.
pub fn split_heads(x: &[f32], b: usize, l: usize, row_stride: usize, col0: usize, heads: usize, d: usize) -> Vec<f32> {
    let mut y = Vec::with_capacity(b * heads * l * d);
    for bi in 0..b {
        for h in 0..heads {
            for t in 0..l {
                let at = (bi * l + t) * row_stride + col0 + h * d;
                y.extend_from_slice(&x[at..at + d]);
            }
        }
    }
    y
}

/// `batch_to_head_dim` of each part `[b*heads, l, d]`, side by side: `[b, l, parts*heads*d]`.
pub fn merge_heads(parts: &[&[f32]], b: usize, l: usize, heads: usize, d: usize) -> Vec<f32> {
    let w = parts.len() * heads * d;
    let mut y = vec![0f32; b * l * w];
    for (pi, p) in parts.iter().enumerate() {
        for bi in 0..b {
            for h in 0..heads {
                for t in 0..l {
                    let src = ((bi * heads + h) * l + t) * d;
                    let dst = (bi * l + t) * w + pi * heads * d + h * d;
                    y[dst..dst + d].copy_from_slice(&p[src..src + d]);
                }
            }
        }
    }
    y
}
