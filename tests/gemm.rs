mod common;
use common::*;
use pigment::ops::elementwise::Activation;
use pigment::ops::gemm::{matmul, matmul_tiled, GemmOpts, Tile};
use pigment::DType;

/// CPU reference in f64: act(alpha * op(A)·op(B) + bias) + residual, batched (B broadcast when
/// it has one batch).
#[allow(clippy::too_many_arguments)]
fn reference(a: &[f32], b: &[f32], batch: usize, b_batched: bool, m: usize, n: usize, k: usize, o: &GemmOpts, bias: Option<&[f32]>, res: Option<&[f32]>) -> Vec<f32> {
    let mut out = vec![0f32; batch * m * n];
    for bi in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for kk in 0..k {
                    let av = if o.trans_a { a[bi * m * k + kk * m + i] } else { a[bi * m * k + i * k + kk] };
                    let bo = if b_batched { bi * k * n } else { 0 };
                    let bv = if o.trans_b { b[bo + j * k + kk] } else { b[bo + kk * n + j] };
                    s += av as f64 * bv as f64;
                }
                let mut v = o.alpha as f64 * s + bias.map_or(0.0, |bb| bb[j] as f64);
                v = match o.act {
                    Activation::Silu => v / (1.0 + (-v).exp()),
                    Activation::QuickGelu => v / (1.0 + (-1.702 * v).exp()),
                    _ => v,
                };
                let idx = bi * m * n + i * n + j;
                out[idx] = (v + res.map_or(0.0, |r| r[idx] as f64)) as f32;
            }
        }
    }
    out
}

/// f32: the kernel sums K products in a different order than the f64 reference; with inputs in
/// [-1, 1] the error is a few ulps times sqrt(K), far under 1e-4 absolute for K <= 1000.
/// f16: inputs are quantised identically on both sides, products accumulate in f32, and only the
/// stored output is rounded (relative 2^-11), so 2e-3 relative plus a small absolute term.
fn check(batch: usize, b_batched: bool, m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool, with_bias: bool, act: Activation, with_res: bool, tile: Option<Tile>) {
    for dtype in dtypes() {
        let seed = (m * 31 + n * 7 + k) as u64;
        let av = quantize(&rand_vec(batch * m * k, seed), dtype);
        let nb = if b_batched { batch } else { 1 };
        let bv = quantize(&rand_vec(nb * k * n, seed + 1), dtype);
        let biasv = quantize(&rand_vec(n, seed + 2), dtype);
        let resv = quantize(&rand_vec(batch * m * n, seed + 3), dtype);
        let a_shape = if trans_a { [batch, k, m] } else { [batch, m, k] };
        let b_shape: Vec<usize> = if b_batched { vec![batch] } else { vec![] }.into_iter().chain(if trans_b { [n, k] } else { [k, n] }).collect();
        let ta = upload(&av, &a_shape, dtype);
        let tb = upload(&bv, &b_shape, dtype);
        let tbias = upload(&biasv, &[n], dtype);
        let tres = upload(&resv, &[batch, m, n], dtype);
        let o = GemmOpts {
            trans_a,
            trans_b,
            alpha: 0.75,
            bias: with_bias.then_some(&tbias),
            act,
            residual: with_res.then_some(&tres),
        };
        let got = matmul_tiled(ctx(), &ta, &tb, o, tile).unwrap();
        assert_eq!(got.shape(), &[batch, m, n]);
        let got = got.to_vec(ctx()).unwrap();
        let want = reference(&av, &bv, batch, b_batched, m, n, k, &o, with_bias.then_some(&biasv[..]), with_res.then_some(&resv[..]));
        let (at, rt) = match dtype {
            DType::F32 => (1e-4, 1e-5),
            DType::F16 => (4e-3, 2e-3),
        };
        assert_close(&got, &want, at, rt, &format!("gemm {batch}x{m}x{n}x{k} ta {trans_a} tb {trans_b} {dtype:?} {tile:?}"));
    }
}

#[test]
fn awkward_shapes_all_transposes() {
    for &(m, n, k) in &[(1, 1, 1), (37, 45, 29), (65, 130, 77), (3, 300, 5)] {
        for ta in [false, true] {
            for tb in [false, true] {
                check(2, true, m, n, k, ta, tb, false, Activation::Identity, false, None);
            }
        }
    }
}

#[test]
fn shared_weight_with_fused_epilogue() {
    check(3, false, 33, 70, 48, false, true, true, Activation::Silu, true, None);
    check(1, false, 130, 257, 64, false, false, true, Activation::QuickGelu, false, None);
    check(2, false, 9, 40, 16, true, false, true, Activation::Identity, true, None);
}

/// K and N multiples of 4 with row-major operands take the vec4 kernel.
#[test]
fn vectorised_path_at_odd_rows() {
    for tile in [Tile { tm: 8, tn: 8, wg: 64 }, Tile { tm: 3, tn: 4, wg: 16 }, Tile { tm: 16, tn: 16, wg: 8 }, Tile { tm: 32, tn: 8, wg: 8 }] {
        check(1, false, 67, 520, 36, false, false, true, Activation::Identity, true, Some(tile));
    }
    check(2, false, 37, 132, 44, false, false, true, Activation::Silu, true, None);
    check(3, true, 5, 12, 8, false, false, false, Activation::Identity, false, None);
}

#[test]
fn every_tile_shape_is_correct() {
    for tile in [Tile { tm: 8, tn: 1, wg: 64 }, Tile { tm: 16, tn: 4, wg: 64 }, Tile { tm: 4, tn: 8, wg: 32 }, Tile { tm: 1, tn: 1, wg: 16 }] {
        check(2, false, 51, 67, 35, false, false, true, Activation::Identity, false, Some(tile));
        check(1, true, 19, 300, 40, false, true, false, Activation::Identity, true, Some(tile));
    }
}

/// A shared-weight product whose A and C are larger than one 128 MiB binding: the op must split
/// it over rows. Checked on sampled rows (the full CPU reference would be slow).
#[test]
fn splits_over_rows_past_the_binding_limit() {
    let ctx = ctx();
    let (m, k, n) = (33_000, 1024, 8); // A = 135 MB f32
    let av = rand_vec(m * k, 9);
    let bv = rand_vec(k * n, 10);
    let ta = upload(&av, &[m, k], DType::F32);
    let tb = upload(&bv, &[k, n], DType::F32);
    assert!(ta.byte_len() > ctx.max_binding(), "test must exceed one binding");
    let got = matmul(ctx, &ta, &tb, GemmOpts::default()).unwrap().to_vec(ctx).unwrap();
    for &i in &[0, 1, 16383, 16384, 32767, 32768, m - 1] {
        for j in 0..n {
            let want: f64 = (0..k).map(|kk| av[i * k + kk] as f64 * bv[kk * n + j] as f64).sum();
            assert!((got[i * n + j] as f64 - want).abs() < 1e-3, "row {i} col {j}: {} vs {want}", got[i * n + j]);
        }
    }
}

#[test]
fn mismatched_inner_dims_are_an_error() {
    let a = upload(&[0.0; 6], &[2, 3], DType::F32);
    let b = upload(&[0.0; 8], &[4, 2], DType::F32);
    let e = matmul(ctx(), &a, &b, GemmOpts::default()).unwrap_err().to_string();
    assert!(e.contains("[2, 3]") && e.contains("[4, 2]"), "{e}");
}

/// Mesa 22's lavapipe silently ends an invocation's loops after 65535 iterations in total. The
/// vec4 kernel runs K/4 iterations and the scalar one K: both must sum every term up to their
/// bound, and past it the op must refuse rather than return a partial sum.
#[test]
fn long_reductions_are_complete() {
    let (m, n, k) = (3, 8, 59_996);
    // Small integers: every partial sum is exact in f32, so any skipped term shows exactly.
    let av: Vec<f32> = (0..m * k).map(|i| (i % 3) as f32).collect();
    let bv: Vec<f32> = (0..k * n).map(|i| (i % 2) as f32).collect();
    let want = reference(&av, &bv, 1, false, m, n, k, &GemmOpts::default(), None, None);
    for tile in [None, Some(Tile { tm: 8, tn: 1, wg: 64 })] {
        let ta = upload(&av, &[m, k], DType::F32);
        let tb = upload(&bv, &[k, n], DType::F32);
        let got = matmul_tiled(ctx(), &ta, &tb, GemmOpts::default(), tile).unwrap().to_vec(ctx()).unwrap();
        assert_close(&got, &want, 0.0, 0.0, &format!("k={k} {tile:?}"));
    }
    // The vec4 kernel goes 4x further.
    let k = 4 * 59_996;
    let av: Vec<f32> = (0..k).map(|i| (i % 3) as f32).collect();
    let bv: Vec<f32> = (0..k * 4).map(|i| (i % 2) as f32).collect();
    let want = reference(&av, &bv, 1, false, 1, 4, k, &GemmOpts::default(), None, None);
    let (ta, tb) = (upload(&av, &[1, k], DType::F32), upload(&bv, &[k, 4], DType::F32));
    let got = matmul(ctx(), &ta, &tb, GemmOpts::default()).unwrap().to_vec(ctx()).unwrap();
    assert_close(&got, &want, 0.0, 0.0, "vec4 long k");
    if ctx().info.device_type == wgpu::DeviceType::Cpu {
        let t = upload(&[1.0; 70_001], &[1, 70_001], DType::F32);
        let e = matmul(ctx(), &t, &upload(&[1.0; 70_001], &[70_001, 1], DType::F32), GemmOpts::default()).unwrap_err();
        assert!(e.to_string().contains("70001"), "{e}");
    }
}
