mod common;
use common::*;
use pigment::ops::norm;
use pigment::DType;

/// f64 reference group norm (+ SiLU).
fn gn_ref(x: &[f32], n: usize, c: usize, hw: usize, g: usize, w: &[f32], b: &[f32], eps: f64, silu: bool) -> Vec<f32> {
    pigment::ops::reference::group_norm(x, n, c, hw, g, w, b, eps, silu)
}

/// Tolerance: outputs are O(1) (normalised, |gamma|,|beta| <= 1, inputs offset by `shift` to
/// test the shifted sums). f32: mean/variance over up to ~10^6 terms in f32 carry relative
/// errors ~1e-6 even with pairwise merging, times |x - mean| * rstd <= ~4 -> 1e-5 absolute.
/// f16: the output's storage rounding (2^-11 relative, values up to ~5 -> 2.5e-3) dominates;
/// input quantisation is seen by the reference too.
fn gn_tol(dtype: DType) -> (f32, f32) {
    match dtype {
        DType::F32 => (2e-5, 1e-5),
        DType::F16 => (4e-3, 2e-3),
    }
}

fn check_gn(dtype: DType, shape: &[usize], g: usize, silu: bool, shift: f32, seed: u64) {
    let (n, c) = (shape[0], shape[1]);
    let hw: usize = shape[2..].iter().product();
    let x = quantize(&rand_vec(n * c * hw, seed).iter().map(|v| v * 2.0 + shift).collect::<Vec<_>>(), dtype);
    let w = quantize(&rand_vec(c, seed + 1), dtype);
    let b = quantize(&rand_vec(c, seed + 2), dtype);
    let y = norm::group_norm(ctx(), &upload(&x, shape, dtype), g, &upload(&w, &[c], dtype), &upload(&b, &[c], dtype), 1e-5, silu).unwrap();
    let want = gn_ref(&x, n, c, hw, g, &w, &b, 1e-5, silu);
    let (at, rt) = gn_tol(dtype);
    assert_close(&y.to_vec(ctx()).unwrap(), &want, at, rt, &format!("group_norm {shape:?} g{g} silu {silu} {dtype:?}"));
}

#[test]
fn group_norm_shapes() {
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        check_gn(dtype, &[2, 6, 5, 7], 3, false, 0.0, 1);
        check_gn(dtype, &[3, 8, 9, 11], 4, true, 0.5, 2);
        check_gn(dtype, &[1, 4, 3], 1, true, 0.0, 3);
        // SD: 32 groups over 320 channels of 64x64 (groups span several chunks), mean offset.
        check_gn(dtype, &[2, 320, 64, 64], 32, true, 3.0, 4);
    }
}

#[test]
fn group_norm_large_group_and_offset_mean() {
    let _g = LIMIT.read().unwrap();
    // 16 channels of 256x256 per group (SD's VAE), inputs with |mean| = 20 x std: shifted sums
    // must avoid E[x^2] - E[x]^2 cancellation.
    check_gn(DType::F32, &[1, 32, 256, 256], 2, false, 40.0, 5);
}

#[test]
fn norms_split_at_lowered_limit() {
    let _g = LIMIT.write().unwrap();
    for dtype in dtypes() {
        // Several groups per binding, then groups bigger than a binding (split into chunks).
        ctx().set_max_binding_for_tests(16 * 1024);
        check_gn(dtype, &[2, 12, 17, 19], 6, true, 1.0, 6);
        ctx().set_max_binding_for_tests(2048);
        check_gn(dtype, &[2, 8, 23, 29], 2, false, 0.0, 7);
        check_ln(dtype, 37, 77, 8);
        ctx().set_max_binding_for_tests(0);
    }
}

fn check_ln(dtype: DType, rows: usize, d: usize, seed: u64) {
    let x = quantize(&rand_vec(rows * d, seed).iter().map(|v| v * 3.0 + 1.0).collect::<Vec<_>>(), dtype);
    let w = quantize(&rand_vec(d, seed + 1), dtype);
    let b = quantize(&rand_vec(d, seed + 2), dtype);
    let y = norm::layer_norm(ctx(), &upload(&x, &[rows, d], dtype), &upload(&w, &[d], dtype), &upload(&b, &[d], dtype), 1e-5).unwrap();
    let mut want = vec![0.0; x.len()];
    for r in 0..rows {
        let s = &x[r * d..(r + 1) * d];
        let mean = s.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = s.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        for i in 0..d {
            want[r * d + i] = ((s[i] as f64 - mean) / (var + 1e-5).sqrt() * w[i] as f64 + b[i] as f64) as f32;
        }
    }
    let (at, rt) = gn_tol(dtype);
    assert_close(&y.to_vec(ctx()).unwrap(), &want, at, rt, &format!("layer_norm {rows}x{d} {dtype:?}"));
}

#[test]
fn layer_norm_shapes() {
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        check_ln(dtype, 5, 7, 10);
        check_ln(dtype, 77, 768, 11);
        check_ln(dtype, 130, 1283, 12);
    }
}

#[test]
fn group_norm_rejects_bad_groups() {
    let _g = LIMIT.read().unwrap();
    let x = upload(&[0.0; 2 * 6 * 4], &[2, 6, 4], DType::F32);
    let w = upload(&[1.0; 6], &[6], DType::F32);
    let err = norm::group_norm(ctx(), &x, 4, &w, &w, 1e-5, false).unwrap_err().to_string();
    assert!(err.contains("groups"), "{err}");
}

/// `cargo test --release --test norm -- --ignored --nocapture bench`
#[test]
#[ignore]
fn bench_group_norm() {
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        let shape = [2, 320, 64, 64];
        let numel: usize = shape.iter().product();
        let x = upload(&rand_vec(numel, 1), &shape, dtype);
        let w = upload(&rand_vec(320, 2), &[320], dtype);
        let _ = norm::group_norm(ctx(), &x, 32, &w, &w, 1e-5, true).unwrap();
        ctx().sync().unwrap();
        let iters = 10;
        let t = std::time::Instant::now();
        for _ in 0..iters {
            let _ = norm::group_norm(ctx(), &x, 32, &w, &w, 1e-5, true).unwrap();
        }
        ctx().sync().unwrap();
        let s = t.elapsed().as_secs_f64() / iters as f64;
        eprintln!("group_norm+silu {shape:?} {dtype:?}: {:.2} ms, {:.2} GB/s", s * 1e3, norm::norm_bytes(numel, dtype) / s / 1e9);
    }
}

/// Loop-budget audit (Mesa 22's lavapipe silently ends every loop of an invocation after 65535
/// iterations in total): SD's group shapes at full size, so any truncated reduction or merge
/// shows as wrong statistics. UNet: 32 groups of 20 channels x 64x64 (640 channels); VAE: 4
/// channels x 256x256 per group (here 16 channels in 4 groups); one huge group, 32 x 512x512 f32
/// (32 MiB, 1024 chunk partials merged by each apply workgroup; 64 x 512x512 takes ~2x as long); layer norm over D = 5120 (SD's
/// GEGLU width).
#[test]
fn norms_at_sd_extremes() {
    let _g = LIMIT.read().unwrap_or_else(|e| e.into_inner());
    for dtype in dtypes() {
        check_gn(dtype, &[1, 640, 64, 64], 32, true, 1.0, 30);
        check_gn(dtype, &[1, 16, 256, 256], 4, false, 2.0, 31);
        check_ln(dtype, 3, 5120, 32);
    }
    check_gn(DType::F32, &[1, 32, 512, 512], 1, false, 0.5, 33);
}
