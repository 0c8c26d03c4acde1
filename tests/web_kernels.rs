//! Kernels in the browser (wasm32 + WebGPU), against plain CPU loops. Run with
//! `web/test.sh` (wasm-bindgen-test in headless Chromium); compiles to nothing natively.
//!
//! Tolerance: f32 storage (SwiftShader has no shader-f16), so results differ from the CPU only by
//! summation order and the GPU's exp/rsqrt: relative ~1e-6 on K <= 300 terms. 1e-4 leaves margin,
//! while a wrong index, a dropped tile or a missing term is off by O(1) (inputs in [-1, 1]).
#![cfg(target_arch = "wasm32")]

use pigment::gpu::{AdapterChoice, Context};
use pigment::ops::{elementwise, gemm, norm, softmax};
use pigment::{DType, Tensor};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

async fn ctx() -> Context {
    let c = Context::new(&AdapterChoice::default()).await.expect("a WebGPU adapter (Chromium needs --enable-unsafe-webgpu)");
    web_sys::console::log_1(&format!("adapter: {} limits: buffer {} binding {}", c.describe(), c.limits.max_buffer_size, c.limits.max_storage_buffer_binding_size).into());
    c
}

/// Deterministic values in [-1, 1) (xorshift; no OS randomness needed in the browser).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}: element {i} got {g} want {w}");
    }
}

fn up(c: &Context, v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_f32(c, v, shape, DType::F32).unwrap()
}

#[wasm_bindgen_test]
async fn matmul_matches_cpu() {
    let c = ctx().await;
    for (m, k, n) in [(77, 48, 144), (64, 300, 33), (5, 7, 3)] {
        let (a, b) = (data(m * k, 1), data(k * n, 2));
        let got = gemm::matmul(&c, &up(&c, &a, &[m, k]), &up(&c, &b, &[k, n]), Default::default()).unwrap().to_f32(&c).await.unwrap();
        let mut want = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum::<f64>() as f32;
            }
        }
        assert_close(&got, &want, 1e-4, &format!("matmul {m}x{k}x{n}"));
    }
}

#[wasm_bindgen_test]
async fn softmax_matches_cpu() {
    let c = ctx().await;
    let (rows, n, scale) = (16, 77, 0.7f32);
    let x = data(rows * n, 3);
    let got = softmax::softmax(&c, &up(&c, &x, &[rows, n]), scale).unwrap().to_f32(&c).await.unwrap();
    let mut want = Vec::new();
    for r in x.chunks(n) {
        let m = r.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let e: Vec<f64> = r.iter().map(|&v| ((v as f64 - m) * scale as f64).exp()).collect();
        let s: f64 = e.iter().sum();
        want.extend(e.iter().map(|v| (v / s) as f32));
    }
    assert_close(&got, &want, 1e-4, "softmax");
}

#[wasm_bindgen_test]
async fn group_norm_silu_matches_cpu() {
    let c = ctx().await;
    let (ch, groups, hw, eps) = (16, 4, 64, 1e-5f32);
    let (x, w, b) = (data(ch * hw, 4), data(ch, 5), data(ch, 6));
    let got = norm::group_norm(&c, &up(&c, &x, &[1, ch, 8, 8]), groups, &up(&c, &w, &[ch]), &up(&c, &b, &[ch]), eps, true)
        .unwrap()
        .to_f32(&c)
        .await
        .unwrap();
    let per = ch / groups * hw;
    let mut want = vec![0f32; x.len()];
    for g in 0..groups {
        let xs = &x[g * per..(g + 1) * per];
        let mean = xs.iter().map(|&v| v as f64).sum::<f64>() / per as f64;
        let var = xs.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / per as f64;
        for i in 0..per {
            let chn = (g * per + i) / hw;
            let y = (xs[i] as f64 - mean) / (var + eps as f64).sqrt() * w[chn] as f64 + b[chn] as f64;
            want[g * per + i] = (y / (1.0 + (-y).exp())) as f32;
        }
    }
    assert_close(&got, &want, 1e-4, "group_norm + silu");
}

#[wasm_bindgen_test]
async fn add_and_gelu_match_cpu() {
    let c = ctx().await;
    let (a, b) = (data(1000, 7), data(1000, 8));
    let sum = elementwise::add(&c, &up(&c, &a, &[1000]), &up(&c, &b, &[1000])).unwrap();
    let got = elementwise::gelu(&c, &sum).unwrap().to_f32(&c).await.unwrap();
    // gelu(x) = x/2 (1 + erf(x / sqrt 2)); erf by Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7).
    let erf = |x: f64| {
        let t = 1.0 / (1.0 + 0.3275911 * x.abs());
        let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * (-x * x).exp();
        y.copysign(x)
    };
    let want: Vec<f32> = a.iter().zip(&b).map(|(&x, &y)| {
        let s = x as f64 + y as f64;
        (s / 2.0 * (1.0 + erf(s / 2f64.sqrt()))) as f32
    }).collect();
    assert_close(&got, &want, 1e-4, "add + gelu");
}
