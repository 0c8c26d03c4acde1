//! The op profiler: one test binary of its own, since profiling is a switch on the shared context.
mod common;
use common::*;
use pigment::gpu::{ProfileRow, Work};
use pigment::models::unet::UNet2DConditionModel;
use pigment::ops::{conv, gemm};
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
    let text = upload(&rand_vec(2 * 77 * 48, 6), &[2, 77, 48], dt);
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
