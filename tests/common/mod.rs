//! Shared test helpers: one GPU context per test binary, seeded random data, tolerant compares.
#![allow(dead_code)]

use pigment::gpu::{AdapterChoice, Context};
use pigment::{DType, Tensor};
use rand::{Rng, SeedableRng};
use std::sync::OnceLock;

pub fn ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        let ctx = Context::new_blocking(&AdapterChoice::from_env()).expect("a wgpu adapter (install mesa-vulkan-drivers)");
        eprintln!("adapter: {}", ctx.describe());
        ctx
    })
}

/// The storage dtypes this adapter can run: f32 always, f16 where SHADER_F16 is offered.
pub fn dtypes() -> Vec<DType> {
    if ctx().f16 { vec![DType::F32, DType::F16] } else { vec![DType::F32] }
}

pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Round through f16 the way an f16 upload does, so CPU references see the same inputs.
pub fn quantize(v: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => v.to_vec(),
        DType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
    }
}

pub fn upload(v: &[f32], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_f32(ctx(), v, shape, dtype).unwrap()
}

/// Max |got - want| must be under `atol + rtol * |want|` elementwise; reports the worst index.
pub fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if !(excess <= worst.1) || g.is_nan() {
            worst = (i, if g.is_nan() { f32::INFINITY } else { excess });
        }
    }
    assert!(
        worst.1 <= 0.0,
        "{what}: element {} got {} want {} (atol {atol}, rtol {rtol})",
        worst.0,
        got[worst.0],
        want[worst.0]
    );
}

/// Tolerance for outputs stored in `dtype`: f32 results differ from the CPU only by summation
/// order; f16 storage rounds each output to 11 significant bits (relative 2^-11 ≈ 4.9e-4).
pub fn tol(dtype: DType, f32_tol: f32) -> (f32, f32) {
    match dtype {
        DType::F32 => (f32_tol, f32_tol),
        DType::F16 => (2e-3_f32.max(f32_tol), 2e-3_f32.max(f32_tol)),
    }
}
