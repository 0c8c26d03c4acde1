//! Every attention variant forced on this adapter (lavapipe in CI) against the f64 CPU
//! reference: awkward shapes (Lq/Lk not multiples of the tiles, Lk = 1 and 77, SD's head dims
//! and an odd one, causal, fused QKV read in place, batch x heads > 1). Tolerances as
//! tests/attention.rs (outputs are convex combinations of |v| <= 1: 2e-5 f32, 1e-3 f16).

mod common;
use common::*;
use pigment::ops::attention::{self, AttnInput};
use pigment::ops::attention_variants::{AttnKernel, ALL};
use pigment::DType;

fn atol(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 2e-5,
        DType::F16 => 1e-3,
    }
}

/// The variants this adapter can run (the subgroup ones need SUBGROUP), FA2 only: the direct
/// kernel has tests/attention.rs.
fn fa2_variants() -> Vec<AttnKernel> {
    let c = ctx();
    ALL.into_iter().filter(|k| *k != AttnKernel::Direct && (c.subgroups || !matches!(k, AttnKernel::Fa2 { subgroup: true, .. }))).collect()
}

#[allow(clippy::too_many_arguments)]
fn check(kernel: AttnKernel, dtype: DType, b: usize, lq: usize, lk: usize, h: usize, d: usize, causal: bool, fused: bool, seed: u64) {
    let w = h * d;
    let scale = 2.0 / (d as f32).sqrt();
    let what = format!("{} B{b} Lq{lq} Lk{lk} H{h} D{d} causal {causal} fused {fused} {dtype:?}", kernel.name());
    let (got, want) = if fused {
        assert_eq!(lq, lk);
        let qkv = quantize(&rand_vec(b * lq * 3 * w, seed), dtype);
        let part = |i: usize| -> Vec<f32> { (0..b * lq).flat_map(|r| qkv[r * 3 * w + i * w..][..w].to_vec()).collect() };
        let t = upload(&qkv, &[b, lq, 3 * w], dtype);
        let got = attention::attention_strided_with(ctx(), AttnInput::cols(&t, 0), AttnInput::cols(&t, w), AttnInput::cols(&t, 2 * w), h, d, scale, causal, Some(kernel));
        (got, pigment::ops::reference::attention(&part(0), &part(1), &part(2), b, lq, lk, h, d, scale, causal))
    } else {
        let q = quantize(&rand_vec(b * lq * w, seed), dtype);
        let k = quantize(&rand_vec(b * lk * w, seed + 1), dtype);
        let v = quantize(&rand_vec(b * lk * w, seed + 2), dtype);
        let (tq, tk, tv) = (upload(&q, &[b, lq, w], dtype), upload(&k, &[b, lk, w], dtype), upload(&v, &[b, lk, w], dtype));
        let got = attention::attention_strided_with(ctx(), AttnInput::whole(&tq), AttnInput::whole(&tk), AttnInput::whole(&tv), h, d, scale, causal, Some(kernel));
        (got, pigment::ops::reference::attention(&q, &k, &v, b, lq, lk, h, d, scale, causal))
    };
    let got = got.unwrap_or_else(|e| panic!("{what}: {e}")).to_vec(ctx()).unwrap();
    assert_close(&got, &want, atol(dtype), 0.0, &what);
}

#[test]
fn fa2_awkward_shapes() {
    let kernels = fa2_variants();
    assert!(kernels.len() >= 2, "workgroup-reduction FA2 variants must run everywhere");
    for &kernel in &kernels {
        for dtype in dtypes() {
            // (B, Lq, Lk, H, D, causal, fused qkv)
            for (i, &(b, lq, lk, h, d, causal, fused)) in [
                (2, 37, 77, 3, 40, false, false),
                (1, 5, 1, 2, 64, false, false),
                (1, 70, 70, 2, 64, true, true),
                (2, 19, 45, 1, 80, false, false),
                (1, 9, 33, 1, 160, false, false),
                (1, 41, 41, 2, 33, true, false),
                (2, 3, 77, 2, 160, false, false),
            ]
            .iter()
            .enumerate()
            {
                check(kernel, dtype, b, lq, lk, h, d, causal, fused, 100 + i as u64);
            }
        }
    }
}

/// The forced variant's splits over the storage binding limit (rows chunked by whole
/// workgroups, causal offsets across chunks).
#[test]
fn fa2_splits_over_the_binding_limit() {
    let small = pigment::Context::new_blocking(&pigment::gpu::AdapterChoice::from_env()).unwrap();
    small.set_max_binding_for_tests(16 * 1024);
    let (b, lq, lk, h, d) = (2, 150, 60, 2, 20);
    let w = h * d;
    let (q, k, v) = (rand_vec(b * lq * w, 50), rand_vec(b * lk * w, 51), rand_vec(b * lk * w, 52));
    let up = |x: &[f32], s: &[usize]| pigment::Tensor::from_f32(&small, x, s, DType::F32).unwrap();
    let (tq, tk, tv) = (up(&q, &[b, lq, w]), up(&k, &[b, lk, w]), up(&v, &[b, lk, w]));
    let kernel = AttnKernel::Fa2 { br: 16, subgroup: false };
    for causal in [false, true] {
        let got = attention::attention_strided_with(&small, AttnInput::whole(&tq), AttnInput::whole(&tk), AttnInput::whole(&tv), h, d, 0.5, causal, Some(kernel)).unwrap();
        let want = pigment::ops::reference::attention(&q, &k, &v, b, lq, lk, h, d, 0.5, causal);
        assert_close(&got.to_vec(&small).unwrap(), &want, atol(DType::F32), 0.0, &format!("fa2 split causal {causal}"));
    }
}

/// Without tuning the choice is the fixed ranking: the direct kernel on CPU adapters.
#[test]
fn cpu_adapters_default_to_the_direct_kernel() {
    if ctx().info.device_type == wgpu::DeviceType::Cpu {
        let p = pigment::ops::attention_variants::AttnProblem { batch: 2, heads: 8, lq: 4096, lk: 77, head_dim: 40, causal: false, dtype: DType::F32 };
        assert_eq!(pigment::ops::attention_variants::fixed(ctx(), &p), AttnKernel::Direct);
    }
}

/// Every FA2 specialisation (both reductions, SD's head dims and an odd one) parses,
/// validates and translates to SPIR-V with naga.
#[test]
fn fa2_validates_with_naga() {
    for dtype in [DType::F32, DType::F16] {
        for (name, src) in pigment::ops::attention_variants::sources_for_validation(ctx(), dtype) {
            let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
            let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
                .validate(&module)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
