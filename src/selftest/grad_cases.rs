//! The selftest's `grad` family (ops::grad, pix2pix-zero's reverse pass): each input-gradient
//! kernel against its f64 CPU reference (tests/grad.rs checks those against finite
//! differences). Tolerance as tests/grad.rs: `t · (max|want| + |want|)`, t = 1e-5 in f32 (the
//! summation order), 2e-3 in f16 (the output's rounding).

use super::{data, Case, Outcome, Tolerance};
use crate::ops::attention::AttnInput;
use crate::ops::grad;
use crate::ops::reference::{self as r, ConvShape};
use crate::{DType, Tensor};

fn outcome(got: Vec<f32>, want: Vec<f32>, dtype: DType) -> Outcome {
    let t = if dtype == DType::F32 { 1e-5 } else { 2e-3 };
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    Outcome { got, want, tol: Tolerance::AbsRel(t * scale, t) }
}

fn case(variant: &str, shape: String, run: impl Fn(&crate::gpu::Context, DType) -> crate::Result<Outcome> + 'static) -> Case {
    Case { family: "grad", variant: variant.into(), shape, dtypes: vec![DType::F32, DType::F16], run: Box::new(run) }
}

fn up(ctx: &crate::gpu::Context, v: &[f32], shape: &[usize], dtype: DType) -> crate::Result<Tensor> {
    Tensor::from_f32(ctx, v, shape, dtype)
}

pub(super) fn cases() -> Vec<Case> {
    let mut v = vec![];
    // 3x3 s1 (resnets), 1x1 (shortcuts, proj_out), 3x3 s2 on an odd input (downsamplers)
    for c in [
        ConvShape { n: 2, cin: 3, h: 7, w: 5, cout: 6, k: 3, stride: 1, pad: 1 },
        ConvShape { n: 1, cin: 5, h: 6, w: 7, cout: 3, k: 1, stride: 1, pad: 0 },
        ConvShape { n: 2, cin: 4, h: 9, w: 7, cout: 6, k: 3, stride: 2, pad: 1 },
    ] {
        v.push(case("conv2d_input", format!("{}x{}x{}x{} k{} s{}", c.n, c.cin, c.h, c.w, c.k, c.stride), move |ctx, dtype| {
            let (ho, wo) = c.out_hw();
            let (wt, dy) = (data(c.cout * c.cin * c.k * c.k, 60, dtype), data(c.n * c.cout * ho * wo, 61, dtype));
            let w = up(ctx, &wt, &[c.cout, c.cin, c.k, c.k], dtype)?;
            let got = grad::conv2d_input_grad(ctx, &up(ctx, &dy, &[c.n, c.cout, ho, wo], dtype)?, &w, c.stride, c.pad, (c.h, c.w))?;
            Ok(outcome(got.to_vec(ctx)?, r::conv2d_input_grad(&c, &dy, &wt), dtype))
        }));
    }
    for (shape, g, silu) in [([2usize, 6, 5, 3], 3usize, true), ([1, 4, 33, 17], 2, false)] {
        v.push(case("group_norm", format!("{shape:?} g{g}{}", if silu { " silu" } else { "" }), move |ctx, dtype| {
            let (n, c, hw) = (shape[0], shape[1], shape[2] * shape[3]);
            let x = data(n * c * hw, 62, dtype);
            let (dy, w, b) = (data(x.len(), 63, dtype), data(c, 64, dtype), data(c, 65, dtype));
            let got = grad::group_norm_grad(ctx, &up(ctx, &x, &shape, dtype)?, &up(ctx, &dy, &shape, dtype)?, g, &up(ctx, &w, &[c], dtype)?, &up(ctx, &b, &[c], dtype)?, 1e-5, silu)?;
            Ok(outcome(got.to_vec(ctx)?, r::group_norm_grad(&x, &dy, n, c, hw, g, &w, &b, 1e-5, silu), dtype))
        }));
    }
    v.push(case("layer_norm", "7x40".into(), |ctx, dtype| {
        let (rows, d) = (7, 40);
        let (x, dy, w, b) = (data(rows * d, 66, dtype), data(rows * d, 67, dtype), data(d, 68, dtype), data(d, 69, dtype));
        let got = grad::layer_norm_grad(ctx, &up(ctx, &x, &[rows, d], dtype)?, &up(ctx, &dy, &[rows, d], dtype)?, &up(ctx, &w, &[d], dtype)?, &up(ctx, &b, &[d], dtype)?, 1e-5)?;
        Ok(outcome(got.to_vec(ctx)?, r::layer_norm_grad(&x, &dy, d, &w, &b, 1e-5), dtype))
    }));
    v.push(case("geglu", "3x10".into(), |ctx, dtype| {
        let (rows, f) = (3, 5);
        let (x, dy) = (data(rows * 2 * f, 70, dtype), data(rows * f, 71, dtype));
        let got = grad::geglu_grad(ctx, &up(ctx, &x, &[rows, 2 * f], dtype)?, &up(ctx, &dy, &[rows, f], dtype)?)?;
        Ok(outcome(got.to_vec(ctx)?, r::geglu_grad(&x, &dy, f), dtype))
    }));
    v.push(case("softmax", "3x77".into(), |ctx, dtype| {
        let (rows, n) = (3, 77);
        let p: Vec<f32> = r::softmax(&data(rows * n, 72, DType::F32), n, 4.0);
        let p = if dtype == DType::F16 { p.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect() } else { p };
        let dp = data(rows * n, 73, dtype);
        let got = grad::softmax_grad(ctx, &up(ctx, &p, &[rows, n], dtype)?, &up(ctx, &dp, &[rows, n], dtype)?)?;
        Ok(outcome(got.to_vec(ctx)?, r::softmax_grad(&p, &dp, n), dtype))
    }));
    v.push(case("upsample_nearest2x", "2x3x5x4".into(), |ctx, dtype| {
        let (n, c, h, w) = (2, 3, 5, 4);
        let dy = data(n * c * 4 * h * w, 74, dtype);
        let got = grad::upsample_nearest2x_grad(ctx, &up(ctx, &dy, &[n, c, 2 * h, 2 * w], dtype)?)?;
        Ok(outcome(got.to_vec(ctx)?, r::upsample_nearest2x_grad(&dy, n * c, h, w), dtype))
    }));
    v.push(case("heads", "2x9x3x8 h3 d8".into(), |ctx, dtype| {
        // split_heads of each third of a fused [B, L, 3·H·d] tensor, merged back: the identity
        let (b, l, heads, d) = (2, 9, 3, 8);
        let x = data(b * l * 3 * heads * d, 75, dtype);
        let t = up(ctx, &x, &[b, l, 3 * heads * d], dtype)?;
        let parts = (0..3).map(|p| grad::split_heads(ctx, AttnInput::cols(&t, p * heads * d), heads, d)).collect::<crate::Result<Vec<_>>>()?;
        let got = grad::merge_heads(ctx, &parts.iter().collect::<Vec<_>>(), heads)?;
        Ok(outcome(got.to_vec(ctx)?, x, dtype))
    }));
    v
}
