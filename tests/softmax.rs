mod common;
use common::*;
use pigment::ops::softmax;
use pigment::DType;

/// f64 reference softmax(scale * x) over rows of `n`.
fn softmax_ref(x: &[f32], n: usize, scale: f32) -> Vec<f32> {
    pigment::ops::reference::softmax(x, n, scale)
}

/// Tolerances, relative per element (outputs are probabilities down to ~1e-7 for long rows).
/// f32: each output is one exp (a couple of ulp on lavapipe) times 1/sum, the sum accumulated in
/// f32 in runs of <= 4096 terms per invocation then merged pairwise: ~1e-6 relative in practice,
/// so 2e-5 has margin while a dropped element / segment, a wrong max or a stale partial is off by
/// far more (a dropped segment of a 3-segment row changes every output by ~50%). f16: the stored
/// output rounds to 11 bits (4.9e-4 relative) -> 1e-3, and tiny probabilities are f16 subnormals
/// (spacing 6e-8) -> atol 1e-7.
fn sm_tol(dtype: DType) -> (f32, f32) {
    match dtype {
        DType::F32 => (1e-10, 2e-5),
        DType::F16 => (1e-7, 1e-3),
    }
}

fn check(shape: &[usize], scale: f32, spread: f32, shift: f32, seed: u64) {
    for dtype in dtypes() {
        let n = *shape.last().unwrap();
        let numel: usize = shape.iter().product();
        let x = quantize(&rand_vec(numel, seed).iter().map(|v| v * spread + shift).collect::<Vec<_>>(), dtype);
        let y = softmax::softmax(ctx(), &upload(&x, shape, dtype), scale).unwrap();
        assert_eq!(y.shape(), shape);
        let want = softmax_ref(&x, n, scale);
        let (at, rt) = sm_tol(dtype);
        assert_close(&y.to_vec(ctx()).unwrap(), &want, at, rt, &format!("softmax {shape:?} scale {scale} {dtype:?}"));
    }
}

#[test]
fn softmax_short_and_medium_rows() {
    let _g = LIMIT.read().unwrap_or_else(|e| e.into_inner());
    // One invocation per row (n <= 256): CLIP's 77 keys, n = 1 (all ones), a single value.
    check(&[3, 5, 77], 1.7, 4.0, 0.0, 1);
    check(&[7, 1], 1.0, 1.0, 0.0, 2);
    check(&[2, 256], 0.125, 8.0, 0.0, 3);
    // One workgroup per row: awkward lengths, a large offset (stability: exp(1000) overflows).
    check(&[2, 3, 257], 1.0, 4.0, 1000.0, 4);
    check(&[4099], -2.0, 3.0, 0.0, 5);
    check(&[5, 4096], 1.0, 6.0, -50.0, 6);
}

#[test]
fn softmax_long_rows_in_segments() {
    let _g = LIMIT.read().unwrap_or_else(|e| e.into_inner());
    // Rows longer than SEG (262144) are reduced in segments: 3 segments, the last partial.
    let n = 2 * softmax::SEG + 12345;
    check(&[2, n], 1.0, 5.0, 3.0, 7);
}

#[test]
fn softmax_split_at_lowered_limit() {
    let _g = Lowered::new();
    // 4 KiB: (4096 - 256) / 4 = 960 f32 elements usable per binding (1920 f16).
    ctx().set_max_binding_for_tests(4096);
    check(&[100, 77], 1.0, 4.0, 0.0, 8); // short rows, 12 (f32) per dispatch
    check(&[37, 300], 1.3, 4.0, 0.0, 9); // workgroup rows, 3 per dispatch
    check(&[3, 5000], 1.0, 4.0, 1.0, 10); // rows over one binding: segments, one per dispatch
    ctx().set_max_binding_for_tests(16 * 1024);
    check(&[2, 9000], 0.5, 4.0, 0.0, 11); // several segments per dispatch
    ctx().set_max_binding_for_tests(0);
}

/// GEGLU reference in f64: hidden * gelu_erf(gate) with (hidden, gate) = chunk(2, -1).
fn geglu_ref(x: &[f32], f: usize) -> Vec<f32> {
    pigment::ops::reference::geglu(x, f)
}

fn check_geglu(shape: &[usize], seed: u64) {
    for dtype in dtypes() {
        let numel: usize = shape.iter().product();
        let f = shape.last().unwrap() / 2;
        let x = quantize(&rand_vec(numel, seed).iter().map(|v| v * 4.0).collect::<Vec<_>>(), dtype);
        let y = softmax::geglu(ctx(), &upload(&x, shape, dtype)).unwrap();
        let mut want_shape = shape.to_vec();
        *want_shape.last_mut().unwrap() = f;
        assert_eq!(y.shape(), &want_shape[..]);
        // f32: the kernel's erf is Abramowitz-Stegun 7.1.26 (1.5e-7 absolute), so
        // |hidden * gelu| <= 4 * (0.5 * 4 * 1.5e-7) ~ 1.2e-6 plus f32 rounding -> 3e-6 absolute.
        // f16: output rounding (values up to 16 -> 2^-11 relative) -> tol().
        let (at, rt) = tol(dtype, 3e-6);
        assert_close(&y.to_vec(ctx()).unwrap(), &geglu_ref(&x, f), at, rt, &format!("geglu {shape:?} {dtype:?}"));
    }
}

#[test]
fn geglu_shapes() {
    let _g = LIMIT.read().unwrap_or_else(|e| e.into_inner());
    check_geglu(&[2, 7, 2 * 37], 20);
    check_geglu(&[3, 2 * 1000], 21);
    check_geglu(&[1, 2], 22);
}

#[test]
fn geglu_split_at_lowered_limit() {
    let _g = Lowered::new();
    ctx().set_max_binding_for_tests(4096);
    check_geglu(&[33, 2 * 37], 23); // several rows per dispatch
    check_geglu(&[3, 2 * 1500], 24); // a row over one binding: column ranges
    ctx().set_max_binding_for_tests(0);
}

#[test]
fn rejects_bad_shapes() {
    let _g = LIMIT.read().unwrap_or_else(|e| e.into_inner());
    let x = upload(&[0.0; 6], &[2, 3], DType::F32);
    let err = softmax::geglu(ctx(), &x).unwrap_err().to_string();
    assert!(err.contains("even"), "{err}");
    let s = upload(&[1.0], &[], DType::F32);
    assert!(softmax::softmax(ctx(), &s, 1.0).is_err());
}
