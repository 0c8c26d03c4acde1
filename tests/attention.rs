mod common;
use common::*;
use pigment::ops::attention::{self, AttnInput};
use pigment::DType;

/// Reference attention in f64: q [B, Lq, H*D], k/v [B, Lk, H*D], causal = key j visible to
/// query i iff j <= i.
#[allow(clippy::too_many_arguments)]
fn attention_ref(q: &[f32], k: &[f32], v: &[f32], b: usize, lq: usize, lk: usize, h: usize, d: usize, scale: f32, causal: bool) -> Vec<f32> {
    pigment::ops::reference::attention(q, k, v, b, lq, lk, h, d, scale, causal)
}

// Tolerances. The output is a convex combination of v rows (|v| <= 1), so absolute error is the
// right measure. f32: the kernel differs from the f64 reference by f32 rounding of the dot
// products (D <= 160 terms), of the base-2 exponentials (the driver's exp2 is ~1 ulp) and of
// the running sums over <= 1000 keys: a few 1e-6 in practice, so 2e-5 leaves margin while a
// wrong mask, a dropped key block or a wrong rescale shows up as >= 1e-3. f16: inputs are
// quantised identically for the reference, and the output store rounds to 11 bits
// (|out| < 1 -> <= 2.4e-4 error) on top of the f32 error: 1e-3.
fn atol(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 2e-5,
        DType::F16 => 1e-3,
    }
}

fn check(b: usize, lq: usize, lk: usize, h: usize, d: usize, causal: bool, seed: u64) {
    for dtype in dtypes() {
        let w = h * d;
        // Scale 2/sqrt(D) makes the softmax peaky enough that the output is not just the mean of v.
        let scale = 2.0 / (d as f32).sqrt();
        let q = quantize(&rand_vec(b * lq * w, seed), dtype);
        let k = quantize(&rand_vec(b * lk * w, seed + 1), dtype);
        let v = quantize(&rand_vec(b * lk * w, seed + 2), dtype);
        let tq = upload(&q, &[b, lq, w], dtype);
        let tk = upload(&k, &[b, lk, w], dtype);
        let tv = upload(&v, &[b, lk, w], dtype);
        let got = attention::attention(ctx(), &tq, &tk, &tv, h, scale, causal).unwrap();
        assert_eq!(got.shape(), &[b, lq, w]);
        let got = got.to_vec(ctx()).unwrap();
        let want = attention_ref(&q, &k, &v, b, lq, lk, h, d, scale, causal);
        let what = format!("attention B{b} Lq{lq} Lk{lk} H{h} D{d} causal {causal} {dtype:?}");
        assert_close(&got, &want, atol(dtype), 0.0, &what);
    }
}

#[test]
fn cross_attention_awkward_shapes() {
    check(2, 37, 77, 3, 40, false, 10);
    check(1, 130, 77, 2, 80, false, 11);
    check(1, 65, 1000, 1, 160, false, 12);
}

#[test]
fn self_attention_head_dims() {
    check(2, 100, 100, 2, 64, false, 20);
    check(1, 129, 129, 2, 12, false, 21);
    check(3, 37, 37, 2, 33, false, 22);
    check(1, 70, 70, 1, 16, false, 23);
    check(1, 45, 45, 3, 32, false, 24);
}

/// SD's low-resolution levels at small latents: 1, 4, 16 and 64 queries per head (workgroups
/// narrower than 64), to 77 text tokens and to themselves, 8 heads of 40 and 20 of 64.
#[test]
fn short_queries_small_workgroups() {
    for lq in [1, 4, 16, 64] {
        check(2, lq, 77, 8, 40, false, 60 + lq as u64);
        check(2, lq, lq, 8, 40, false, 70 + lq as u64);
    }
    check(2, 3, 77, 20, 64, false, 80);
    check(1, 9, 9, 5, 160, true, 81);
}

#[test]
fn causal_self_attention() {
    check(2, 77, 77, 2, 64, true, 30);
    check(1, 200, 200, 2, 12, true, 31);
    check(2, 37, 37, 1, 33, true, 32);
    check(1, 77, 77, 1, 160, true, 33);
}

#[test]
fn fused_qkv_in_place() {
    for dtype in dtypes() {
        let (b, l, h, d) = (2, 53, 3, 40);
        let w = h * d;
        let qkv = quantize(&rand_vec(b * l * 3 * w, 40), dtype);
        let split = |part: usize| -> Vec<f32> {
            (0..b * l).flat_map(|r| qkv[r * 3 * w + part * w..][..w].to_vec()).collect()
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let t = upload(&qkv, &[b, l, 3 * w], dtype);
        let scale = 1.0 / (d as f32).sqrt();
        let got = attention::attention_qkv(ctx(), &t, h, scale, true).unwrap().to_vec(ctx()).unwrap();
        let want = attention_ref(&q, &k, &v, b, l, l, h, d, scale, true);
        assert_close(&got, &want, atol(dtype), 0.0, &format!("fused qkv {dtype:?}"));
        // Same through the general entry point with explicit column offsets.
        let got2 = attention::attention_strided(
            ctx(),
            AttnInput { tensor: &t, offset_cols: 0, row_stride: 3 * w },
            AttnInput::cols(&t, w),
            AttnInput::cols(&t, 2 * w),
            h,
            d,
            scale,
            true,
        )
        .unwrap()
        .to_vec(ctx())
        .unwrap();
        assert_eq!(got, got2);
    }
}

#[test]
fn splits_over_the_binding_limit() {
    // A private context with a tiny binding limit (the shared one is used by parallel tests).
    let small = pigment::Context::new_blocking(&pigment::gpu::AdapterChoice::from_env()).unwrap();
    small.set_max_binding_for_tests(16 * 1024);
    let up = |v: &[f32], s: &[usize]| pigment::Tensor::from_f32(&small, v, s, DType::F32).unwrap();
    // q/out per batch: 150 rows x 40 x 4 B = 24 KB > 16 KB -> split over query rows (3 batches);
    // k/v per batch: 60 x 40 x 4 = 9.6 KB. Causal across row chunks checks the row offset.
    let (b, lq, lk, h, d) = (3, 150, 60, 2, 20);
    let w = h * d;
    let q = rand_vec(b * lq * w, 50);
    let k = rand_vec(b * lk * w, 51);
    let v = rand_vec(b * lk * w, 52);
    let (tq, tk, tv) = (up(&q, &[b, lq, w]), up(&k, &[b, lk, w]), up(&v, &[b, lk, w]));
    for causal in [false, true] {
        let got = attention::attention(&small, &tq, &tk, &tv, h, 0.5, causal).unwrap().to_vec(&small).unwrap();
        let want = attention_ref(&q, &k, &v, b, lq, lk, h, d, 0.5, causal);
        assert_close(&got, &want, atol(DType::F32), 0.0, &format!("split causal {causal}"));
    }
    // Split over batches only: 30 rows x 40 x 4 = 4.8 KB per batch, 3 batches per dispatch.
    let (b, l) = (7, 30);
    let q = rand_vec(b * l * w, 53);
    let tq = up(&q, &[b, l, w]);
    let got = attention::attention(&small, &tq, &tq, &tq, h, 0.5, false).unwrap().to_vec(&small).unwrap();
    let want = attention_ref(&q, &q, &q, b, l, l, h, d, 0.5, false);
    assert_close(&got, &want, atol(DType::F32), 0.0, "split over batches");
    // One batch's keys alone over the limit: a clear error, not a validation panic.
    let big = up(&rand_vec(200 * w, 54), &[1, 200, w]);
    let err = attention::attention(&small, &big, &big, &big, h, 0.5, false).unwrap_err().to_string();
    assert!(err.contains("attention") && err.contains("200 rows"), "{err}");
}

#[test]
fn rejects_bad_shapes() {
    let t = upload(&[0.0; 2 * 5 * 12], &[2, 5, 12], DType::F32);
    let t2 = upload(&[0.0; 3 * 5 * 12], &[3, 5, 12], DType::F32);
    assert!(attention::attention(ctx(), &t, &t, &t, 5, 1.0, false).is_err());
    assert!(attention::attention(ctx(), &t, &t2, &t2, 2, 1.0, false).is_err());
    let wide = upload(&vec![0.0; 4 * 161], &[1, 2, 2 * 161], DType::F32);
    assert!(attention::attention(ctx(), &wide, &wide, &wide, 2, 1.0, false).is_err());
}

/// GFLOP/s (4 * B * H * Lq * Lk * D per call) at SD1.5 64x64-latent shapes:
/// `cargo test --release --test attention -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_attention() {
    for dtype in dtypes() {
        for (lq, lk) in [(4096, 4096), (4096, 77)] {
            let (b, h, d) = (2, 8, 40);
            let w = h * d;
            let tq = upload(&rand_vec(b * lq * w, 1), &[b, lq, w], dtype);
            let tk = upload(&rand_vec(b * lk * w, 2), &[b, lk, w], dtype);
            let tv = upload(&rand_vec(b * lk * w, 3), &[b, lk, w], dtype);
            let run = || attention::attention(ctx(), &tq, &tk, &tv, h, 0.158, false).unwrap();
            // Warm up (pipeline compile) on a small problem of the same kernel variant.
            let small = upload(&rand_vec(b * 64 * w, 4), &[b, 64, w], dtype);
            drop(attention::attention(ctx(), &small, &small, &small, h, 0.158, false).unwrap());
            ctx().sync().unwrap();
            let iters = if lk > 1000 { 1 } else { 5 };
            let t0 = std::time::Instant::now();
            for _ in 0..iters {
                drop(run());
            }
            ctx().sync().unwrap();
            let dt = t0.elapsed().as_secs_f64() / iters as f64;
            let flops = 4.0 * (b * h * lq * lk * d) as f64;
            eprintln!("attention {dtype:?} B{b} Lq{lq} Lk{lk} H{h} D{d}: {:.1} ms, {:.2} GFLOP/s", dt * 1e3, flops / dt / 1e9);
        }
    }
}


/// Loop-budget audit (Mesa 22's lavapipe silently ends every loop of an invocation after 65535
/// iterations in total; the kernel's loop is over key blocks): SD's longest key loops at full
/// length with few queries, so a truncated loop would drop keys and miss the reference. 4096 keys
/// at D = 160 (one key per block: 4096 iterations) and 9216 keys (96x96 latents) at D = 40.
#[test]
fn long_key_loops_at_sd_extremes() {
    check(1, 3, 4096, 1, 160, false, 60);
    check(1, 5, 9216, 2, 40, false, 61);
    check(1, 70, 9216, 1, 40, true, 62);
}

/// Key loops past the loop budget are refused, not silently truncated.
#[test]
fn rejects_key_loops_over_the_budget() {
    let (lk, d) = (60_001, 160);
    let q = upload(&vec![0.0; d], &[1, 1, d], DType::F32);
    let k = upload(&vec![0.0; lk * d], &[1, lk, d], DType::F32);
    let err = attention::attention(ctx(), &q, &k, &k, 1, 1.0, false).unwrap_err().to_string();
    assert!(err.contains("key blocks"), "{err}");
}
