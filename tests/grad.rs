//! Input-gradient kernels (ops::grad) against the CPU references, and the references themselves
//! against central finite differences of the forward CPU references (computed another way).
mod common;
use common::*;
use pigment::ops::attention::AttnInput;
use pigment::ops::grad;
use pigment::ops::reference::{self as r, ConvShape};
use pigment::{DType, Error};

/// Elementwise `|got - want| <= tol * (max|want| + |want|)`: f32 kernels differ from the f64
/// reference by summation order only; f16 outputs round to 11 bits. Prints the worst errors.
fn check(got: &[f32], want: &[f32], dtype: DType, what: &str) {
    let t = if dtype == DType::F32 { 1e-5 } else { 2e-3 };
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let err = got.iter().zip(want).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    eprintln!("{what}: max |err| {err:.2e}, relative to max |want| {:.2e}", err / scale);
    assert_close(got, want, t * scale, t, what);
}

fn vals(n: usize, seed: u64, dtype: DType) -> Vec<f32> {
    quantize(&rand_vec(n, seed), dtype)
}

/// Per-channel affine around 1 (gamma) and 0 (beta).
fn affine(c: usize, seed: u64, dtype: DType) -> (Vec<f32>, Vec<f32>) {
    let g = rand_vec(c, seed).iter().map(|v| 1.0 + 0.5 * v).collect::<Vec<_>>();
    (quantize(&g, dtype), vals(c, seed + 1, dtype))
}

/// Central differences of `L(x) = sum(dy * fwd(x))` against `grad` at every element of x.
fn fd_check(x: &[f32], dy: &[f32], fwd: impl Fn(&[f32]) -> Vec<f32>, grad: &[f32], what: &str) {
    let loss = |x: &[f32]| fwd(x).iter().zip(dy).map(|(&y, &g)| y as f64 * g as f64).sum::<f64>();
    let mut worst = 0f64;
    for j in 0..x.len() {
        let (mut xp, mut xm) = (x.to_vec(), x.to_vec());
        xp[j] += 1e-2;
        xm[j] -= 1e-2;
        let fd = (loss(&xp) - loss(&xm)) / (xp[j] as f64 - xm[j] as f64);
        let err = (fd - grad[j] as f64).abs() / (1.0 + (grad[j] as f64).abs());
        assert!(err < 1e-3, "{what}: element {j}: finite difference {fd}, reference gradient {}", grad[j]);
        worst = worst.max(err);
    }
    eprintln!("{what}: reference vs finite differences, worst {worst:.2e}");
}

#[test]
fn references_match_finite_differences() {
    let f = DType::F32;
    for &(n, cin, h, w, cout, k, stride, pad) in &[(1, 2, 5, 4, 3, 3, 1, 1), (1, 2, 5, 5, 2, 3, 2, 1), (2, 3, 3, 3, 2, 1, 1, 0)] {
        let c = ConvShape { n, cin, h, w, cout, k, stride, pad };
        let (ho, wo) = c.out_hw();
        let (x, wt, dy) = (vals(n * cin * h * w, 1, f), vals(cout * cin * k * k, 2, f), vals(n * cout * ho * wo, 3, f));
        fd_check(&x, &dy, |x| r::conv2d(&c, x, &wt, None, None).0, &r::conv2d_input_grad(&c, &dy, &wt), &format!("conv {c:?}"));
    }
    for silu in [false, true] {
        let (n, ch, hw, g) = (2, 6, 5, 3);
        let x: Vec<f32> = vals(n * ch * hw, 4, f).iter().map(|v| 2.0 * v + 0.3).collect();
        let (gm, bt) = affine(ch, 5, f);
        let dy = vals(x.len(), 7, f);
        let want = r::group_norm_grad(&x, &dy, n, ch, hw, g, &gm, &bt, 1e-5, silu);
        fd_check(&x, &dy, |x| r::group_norm(x, n, ch, hw, g, &gm, &bt, 1e-5, silu), &want, &format!("group_norm silu={silu}"));
    }
    let (d, x) = (7, vals(21, 8, f));
    let (gm, bt) = affine(d, 9, f);
    let dy = vals(21, 10, f);
    fd_check(&x, &dy, |x| r::layer_norm(x, d, &gm, &bt, 1e-5), &r::layer_norm_grad(&x, &dy, d, &gm, &bt, 1e-5), "layer_norm");
    let x: Vec<f32> = vals(30, 11, f).iter().map(|v| 2.5 * v).collect();
    let dy = vals(15, 12, f);
    fd_check(&x, &dy, |x| r::geglu(x, 5), &r::geglu_grad(&x, &dy, 5), "geglu");
    let s: Vec<f32> = vals(24, 13, f).iter().map(|v| 3.0 * v).collect();
    let dp = vals(24, 14, f);
    fd_check(&s, &dp, |s| r::softmax(s, 8, 1.0), &r::softmax_grad(&r::softmax(&s, 8, 1.0), &dp, 8), "softmax");
    let (x, dy) = (vals(2 * 3 * 5, 15, f), vals(2 * 6 * 10, 16, f));
    fd_check(&x, &dy, |x| r::upsample_nearest2x(x, 2, 3, 5), &r::upsample_nearest2x_grad(&dy, 2, 3, 5), "upsample_nearest2x");
}

fn run_conv(dtype: DType, (n, cin, h, w, cout, k, stride, pad): (usize, usize, usize, usize, usize, usize, usize, usize), seed: u64) {
    let c = ConvShape { n, cin, h, w, cout, k, stride, pad };
    let (ho, wo) = c.out_hw();
    let (wt, dy) = (vals(cout * cin * k * k, seed, dtype), vals(n * cout * ho * wo, seed + 1, dtype));
    let (dyt, wtt) = (upload(&dy, &[n, cout, ho, wo], dtype), upload(&wt, &[cout, cin, k, k], dtype));
    let want = r::conv2d_input_grad(&c, &dy, &wt);
    // The public op (stride 1: the forward conv2d of the flipped weight) and the direct kernel.
    for (name, got) in [("", grad::conv2d_input_grad(ctx(), &dyt, &wtt, stride, pad, (h, w))), (" direct", grad::conv2d_input_grad_direct(ctx(), &dyt, &wtt, stride, pad, (h, w)))] {
        let got = got.unwrap();
        assert_eq!(got.shape(), &[n, cin, h, w]);
        check(&got.to_vec(ctx()).unwrap(), &want, dtype, &format!("conv2d_input_grad{name} {c:?} {dtype:?}"));
    }
}

#[test]
fn conv2d_input_grad_matches_cpu() {
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        run_conv(dtype, (2, 3, 7, 5, 6, 3, 1, 1), 20); // 3x3 s1 p1
        run_conv(dtype, (1, 5, 6, 7, 3, 1, 1, 0), 22); // 1x1
        run_conv(dtype, (2, 4, 9, 7, 6, 3, 2, 1), 24); // downsampler, odd input
        run_conv(dtype, (1, 6, 8, 10, 5, 3, 2, 1), 26); // downsampler, even input
        run_conv(dtype, (1, 4, 8, 6, 12, 3, 1, 1), 28); // conv_in shape
        run_conv(dtype, (1, 12, 6, 8, 4, 3, 1, 1), 30); // conv_out shape
        run_conv(dtype, (1, 8, 4, 5, 1280, 3, 1, 1), 32); // Cout 1280: 11.5K loop iterations
    }
    let bad = grad::conv2d_input_grad(ctx(), &upload(&[0.0; 16], &[1, 1, 4, 4], DType::F32), &upload(&[0.0; 9], &[1, 1, 3, 3], DType::F32), 1, 1, (5, 4));
    assert!(matches!(bad, Err(Error::Shape { .. })), "{bad:?}");
}

fn run_gn(dtype: DType, (n, c, h, w, g): (usize, usize, usize, usize, usize), silu: bool, seed: u64) {
    let hw = h * w;
    let x: Vec<f32> = quantize(&vals(n * c * hw, seed, DType::F32).iter().map(|v| 2.0 * v + 0.5).collect::<Vec<_>>(), dtype);
    let dy = vals(x.len(), seed + 1, dtype);
    let (gm, bt) = affine(c, seed + 2, dtype);
    let shape = [n, c, h, w];
    let got = grad::group_norm_grad(ctx(), &upload(&x, &shape, dtype), &upload(&dy, &shape, dtype), g, &upload(&gm, &[c], dtype), &upload(&bt, &[c], dtype), 1e-5, silu).unwrap();
    let want = r::group_norm_grad(&x, &dy, n, c, hw, g, &gm, &bt, 1e-5, silu);
    check(&got.to_vec(ctx()).unwrap(), &want, dtype, &format!("group_norm_grad {shape:?} g{g} silu={silu} {dtype:?}"));
}

fn run_ln(dtype: DType, rows: usize, d: usize, seed: u64) {
    let x = vals(rows * d, seed, dtype);
    let dy = vals(x.len(), seed + 1, dtype);
    let (gm, bt) = affine(d, seed + 2, dtype);
    let got = grad::layer_norm_grad(ctx(), &upload(&x, &[rows, d], dtype), &upload(&dy, &[rows, d], dtype), &upload(&gm, &[d], dtype), &upload(&bt, &[d], dtype), 1e-5).unwrap();
    check(&got.to_vec(ctx()).unwrap(), &r::layer_norm_grad(&x, &dy, d, &gm, &bt, 1e-5), dtype, &format!("layer_norm_grad {rows}x{d} {dtype:?}"));
}

#[test]
fn norm_grads_match_cpu() {
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        for silu in [false, true] {
            run_gn(dtype, (2, 6, 5, 3, 3), silu, 40);
            run_gn(dtype, (1, 10, 7, 9, 5), silu, 43);
            run_gn(dtype, (1, 4, 33, 17, 2), silu, 46); // 1122-element groups: the 256-wide kernel
            run_gn(dtype, (2, 320, 4, 4, 32), silu, 48); // the UNet's 32 groups
        }
        run_ln(dtype, 7, 40, 50);
        run_ln(dtype, 3, 1030, 53);
        run_ln(dtype, 5, 3, 56);
    }
}

fn run_geglu(dtype: DType, rows: usize, f: usize, seed: u64) {
    let x: Vec<f32> = quantize(&rand_vec(rows * 2 * f, seed).iter().map(|v| 3.0 * v).collect::<Vec<_>>(), dtype);
    let dy = vals(rows * f, seed + 1, dtype);
    let got = grad::geglu_grad(ctx(), &upload(&x, &[1, rows, 2 * f], dtype), &upload(&dy, &[1, rows, f], dtype)).unwrap();
    assert_eq!(got.shape(), &[1, rows, 2 * f]);
    check(&got.to_vec(ctx()).unwrap(), &r::geglu_grad(&x, &dy, f), dtype, &format!("geglu_grad {rows}x{f} {dtype:?}"));
}

fn run_softmax(dtype: DType, rows: usize, n: usize, seed: u64) {
    let s: Vec<f32> = rand_vec(rows * n, seed).iter().map(|v| 4.0 * v).collect();
    let p = quantize(&r::softmax(&s, n, 1.0), dtype);
    let dp = vals(rows * n, seed + 1, dtype);
    let got = grad::softmax_grad(ctx(), &upload(&p, &[rows, n], dtype), &upload(&dp, &[rows, n], dtype)).unwrap();
    check(&got.to_vec(ctx()).unwrap(), &r::softmax_grad(&p, &dp, n), dtype, &format!("softmax_grad {rows}x{n} {dtype:?}"));
}

fn run_up2(dtype: DType, (n, c, h, w): (usize, usize, usize, usize), seed: u64) {
    let dy = vals(n * c * 4 * h * w, seed, dtype);
    let got = grad::upsample_nearest2x_grad(ctx(), &upload(&dy, &[n, c, 2 * h, 2 * w], dtype)).unwrap();
    assert_eq!(got.shape(), &[n, c, h, w]);
    check(&got.to_vec(ctx()).unwrap(), &r::upsample_nearest2x_grad(&dy, n * c, h, w), dtype, &format!("upsample_nearest2x_grad {n}x{c}x{h}x{w} {dtype:?}"));
}

#[test]
fn elementwise_grads_match_cpu() {
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        run_geglu(dtype, 7, 13, 60);
        run_geglu(dtype, 33, 40, 62);
        run_softmax(dtype, 5, 7, 64);
        run_softmax(dtype, 3, 77, 66);
        run_softmax(dtype, 2, 3000, 68); // the 256-wide kernel
        run_up2(dtype, (2, 3, 5, 7), 70);
        run_up2(dtype, (1, 1, 1, 1), 72);
    }
}

fn run_split(dtype: DType, (n, c, h, w, ca): (usize, usize, usize, usize, usize), seed: u64) {
    let x = vals(n * c * h * w, seed, dtype);
    let (a, b) = grad::split_channels(ctx(), &upload(&x, &[n, c, h, w], dtype), ca).unwrap();
    assert_eq!((a.shape(), b.shape()), (&[n, ca, h, w][..], &[n, c - ca, h, w][..]));
    // concat_channels' reference must give x back from the two parts.
    let back = r::concat_channels(&a.to_vec(ctx()).unwrap(), &b.to_vec(ctx()).unwrap(), n, ca, c - ca, h * w);
    assert_close(&back, &x, 0.0, 0.0, &format!("split_channels {n}x{c}x{h}x{w} at {ca} {dtype:?}"));
}

fn run_heads(dtype: DType, (b, l, heads, d, parts): (usize, usize, usize, usize, usize), seed: u64) {
    let rs = parts * heads * d;
    let x = vals(b * l * rs, seed, dtype);
    let xt = upload(&x, &[b, l, rs], dtype);
    let mut split = vec![];
    for p in 0..parts {
        let t = grad::split_heads(ctx(), AttnInput::cols(&xt, p * heads * d), heads, d).unwrap();
        assert_eq!(t.shape(), &[b * heads, l, d]);
        let got = t.to_vec(ctx()).unwrap();
        assert_close(&got, &r::split_heads(&x, b, l, rs, p * heads * d, heads, d), 0.0, 0.0, &format!("split_heads part {p} {b}x{l}x{rs} h{heads} d{d} {dtype:?}"));
        split.push(t);
    }
    let refs: Vec<&pigment::Tensor> = split.iter().collect();
    let merged = grad::merge_heads(ctx(), &refs, heads).unwrap();
    assert_eq!(merged.shape(), &[b, l, rs]);
    let host: Vec<Vec<f32>> = split.iter().map(|t| t.to_vec(ctx()).unwrap()).collect();
    let host_refs: Vec<&[f32]> = host.iter().map(|v| v.as_slice()).collect();
    let got = merged.to_vec(ctx()).unwrap();
    assert_close(&got, &r::merge_heads(&host_refs, b, l, heads, d), 0.0, 0.0, &format!("merge_heads {parts} parts {dtype:?}"));
    assert_close(&got, &x, 0.0, 0.0, "merge_heads(split_heads(x)) == x");
}

#[test]
fn data_movement_matches_cpu() {
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        run_split(dtype, (2, 7, 3, 5, 3), 80);
        run_split(dtype, (1, 5, 4, 4, 4), 81);
        run_heads(dtype, (2, 5, 3, 8, 3), 82); // a fused q|k|v
        run_heads(dtype, (1, 7, 2, 16, 1), 83);
        run_heads(dtype, (2, 3, 2, 40, 2), 84);
    }
}

/// Every op at a 2048-byte binding: split into several dispatches (the convolution also over
/// output channels, accumulating), and a clear error where one batch entry cannot fit.
#[test]
fn split_at_lowered_limit() {
    let _g = Lowered::new();
    ctx().set_max_binding_for_tests(2048);
    for dtype in dtypes() {
        run_conv(dtype, (3, 5, 7, 5, 24, 3, 1, 1), 90);
        run_conv(dtype, (3, 2, 7, 5, 6, 3, 1, 1), 89); // flipped weight in one binding, conv2d splits
        run_conv(dtype, (2, 4, 7, 9, 30, 3, 2, 1), 91);
        run_gn(dtype, (3, 8, 6, 5, 2), true, 92);
        run_ln(dtype, 40, 33, 93);
        run_geglu(dtype, 40, 20, 94);
        run_softmax(dtype, 30, 50, 95);
        run_up2(dtype, (3, 4, 7, 9), 96);
        run_split(dtype, (3, 9, 7, 5, 4), 97);
        run_heads(dtype, (5, 5, 2, 8, 3), 98);
    }
    let dy = upload(&[0.0; 2 * 64], &[1, 2, 8, 8], DType::F32);
    let w = upload(&[0.0; 4 * 2 * 9], &[2, 4, 3, 3], DType::F32);
    let e = grad::conv2d_input_grad(ctx(), &dy, &w, 2, 1, (16, 16));
    assert!(matches!(&e, Err(Error::BindingTooLarge { what, .. }) if what.contains("conv2d_input_grad")), "{e:?}");
    eprintln!("over the binding: {}", e.unwrap_err());
}
