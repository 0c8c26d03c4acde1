//! The op profiler: one test binary of its own, since profiling is a switch on the shared context.
mod common;
use common::*;
use pigment::gpu::{ProfileRow, Work};
use pigment::models::unet::UNet2DConditionModel;
use pigment::ops::{attention, conv, gemm};
use pigment::weights::Weights;
use pigment::DType;

fn rows_of<'a>(rows: &'a [ProfileRow], family: &str) -> Vec<&'a ProfileRow> {
    rows.iter().filter(|r| r.family == family).collect()
}

/// Two described ops: one row each, with their call and dispatch counts, their FLOPs as
/// computed independently here, and a positive GPU time; then a whole UNet forward (the tiny
/// fixture) whose every dispatch belongs to a described op (no "(undescribed)" row) and whose
/// rows sum to the calls made. Profiling off: nothing is recorded.
#[test]
fn profiler_counts_ops_and_their_work() {
    let c = ctx();
    let dt = DType::F32;
    let x = upload(&rand_vec(2 * 16 * 5 * 7, 1), &[2, 16, 5, 7], dt);
    let w = upload(&rand_vec(24 * 16 * 9, 2), &[24, 16, 3, 3], dt);
    let a = upload(&rand_vec(3 * 40 * 64, 3), &[3, 40, 64], dt);
    let b = upload(&rand_vec(64 * 48, 4), &[64, 48], dt);

    c.set_profiling(true);
    c.profile_reset().unwrap();
    conv::conv2d(c, &x, &w, None, 1, 1).unwrap();
    conv::conv2d(c, &x, &w, None, 1, 1).unwrap();
    gemm::matmul(c, &a, &b, gemm::GemmOpts::default()).unwrap();
    let rows = c.profile_report().unwrap();
    let convs = rows_of(&rows, "conv2d");
    assert_eq!(convs.len(), 1, "{rows:?}");
    assert_eq!((convs[0].calls, convs[0].dispatches), (2, 2));
    // 2 FLOPs per multiply-add: N * Cout * Ho * Wo outputs of Cin * 9 terms, twice.
    let want = 2.0 * 2.0 * (2 * 24 * 5 * 7) as f64 * (16 * 9) as f64;
    assert!(matches!(convs[0].work, Some(Work::Flops(f)) if f == want), "{:?} vs {want}", convs[0].work);
    assert!(convs[0].ms > 0.0);
    let gemms = rows_of(&rows, "gemm");
    assert_eq!(gemms.len(), 1, "{rows:?}");
    assert!(matches!(gemms[0].work, Some(Work::Flops(f)) if f == 2.0 * (3 * 40 * 64 * 48) as f64), "{:?}", gemms[0].work);
    assert!(gemms[0].rate().is_some_and(|(r, u)| r > 0.0 && u == "GFLOP/s"));

    c.profile_reset().unwrap();
    let wts = Weights::open(fixtures().join("sd15-tiny")).unwrap();
    let unet = UNet2DConditionModel::load(c, wts.unet().unwrap(), dt).unwrap();
    let sample = upload(&rand_vec(2 * 4 * 8 * 8, 5), &[2, 4, 8, 8], dt);
    let text = upload(&rand_vec(2 * 77 * 32, 6), &[2, 77, 32], dt);
    unet.forward(c, &sample, 10.0, &text).unwrap();
    let rows = c.profile_report().unwrap();
    assert!(rows.iter().all(|r| r.shape != "(undescribed)" && r.calls > 0 && r.dispatches >= r.calls), "{rows:?}");
    for family in ["conv2d", "gemm", "attention", "norm"] {
        assert!(!rows_of(&rows, family).is_empty(), "no {family} rows in {rows:?}");
    }

    c.set_profiling(false);
    c.profile_reset().unwrap();
    conv::conv2d(c, &x, &w, None, 1, 1).unwrap();
    assert!(c.profile_report().unwrap().is_empty());
}

/// SD 1.5's full-size op shapes at small latents beside the 64x64 shapes `pigment bench` times,
/// warm, through the profiler: `cargo test --release --test profile -- --ignored --nocapture`.
/// (Prints rates; checks nothing: a measurement, not a test.)
#[test]
#[ignore]
fn sd15_low_level_shapes() {
    let c = ctx();
    let dt = DType::F32;
    let convs: &[(usize, usize, usize, usize, usize, bool)] = &[
        (1, 320, 64, 320, 3, false), (2, 1280, 2, 1280, 3, true), (2, 640, 4, 640, 3, true), (2, 1280, 1, 1280, 3, true),
        (2, 2560, 2, 1280, 3, false), (2, 320, 8, 320, 3, true), (2, 1280, 2, 1280, 1, true), (2, 320, 4, 640, 1, false), (2, 640, 8, 640, 3, false),
    ];
    let gemms: &[(usize, usize, usize)] = &[(4096, 320, 320), (8, 1280, 1280), (154, 2560, 768), (8, 3840, 1280), (8, 10240, 1280), (2, 1280, 1280), (32, 640, 640), (128, 2560, 320)];
    let attns: &[(usize, usize, usize, usize)] = &[(1, 4096, 4096, 40), (8, 4, 4, 160), (8, 4, 77, 160), (8, 16, 77, 80), (8, 64, 77, 40), (8, 1, 77, 160), (8, 64, 64, 40)];
    let mut ops: Vec<Box<dyn Fn()>> = vec![];
    for &(n, cin, hw, cout, k, res) in convs {
        let x = upload(&rand_vec(n * cin * hw * hw, 1), &[n, cin, hw, hw], dt);
        let w = upload(&rand_vec(cout * cin * k * k, 2), &[cout, cin, k, k], dt);
        let r = upload(&rand_vec(n * cout * hw * hw, 3), &[n, cout, hw, hw], dt);
        let b = upload(&rand_vec(cout, 4), &[cout], dt);
        ops.push(Box::new(move || {
            if res { conv::conv2d_residual(ctx(), &x, &w, Some(&b), 1, k / 2, &r).unwrap(); } else { conv::conv2d(ctx(), &x, &w, Some(&b), 1, k / 2).unwrap(); }
        }));
    }
    for &(m, n, k) in gemms {
        let a = upload(&rand_vec(m * k, 1), &[m, k], dt);
        let b = upload(&rand_vec(k * n, 2), &[k, n], dt);
        ops.push(Box::new(move || { gemm::matmul(ctx(), &a, &b, gemm::GemmOpts::default()).unwrap(); }));
    }
    for &(h, lq, lk, d) in attns {
        let bsz = if lq == 4096 { 1 } else { 2 };
        let q = upload(&rand_vec(bsz * lq * h * d, 1), &[bsz, lq, h * d], dt);
        let kv = upload(&rand_vec(bsz * lk * h * d, 2), &[bsz, lk, h * d], dt);
        ops.push(Box::new(move || { attention::attention(ctx(), &q, &kv, &kv, h, 0.1, false).unwrap(); }));
    }
    for f in &ops { f(); }
    c.sync().unwrap();
    c.set_profiling(true);
    c.profile_reset().unwrap();
    for _ in 0..2 { for f in &ops { f(); } }
    let rows = c.profile_report().unwrap();
    let mut rows = rows.clone();
    rows.sort_by(|a, b| a.family.cmp(b.family));
    for r in &rows {
        let (rate, u) = r.rate().unwrap();
        eprintln!("{:<10} {:<36} {:>3} {:>9.2} ms/call {:>8.2} {u}", r.family, r.shape, r.calls, r.ms / r.calls as f64, rate);
    }
}
