//! Every norm variant forced on this adapter (lavapipe in CI) against the f64 CPU references:
//! odd group sizes, 1-element groups, fused SiLU, a big group, layer norm rows of odd widths,
//! and large values (mean 1e3, std ~1) that E[x^2] - E[x]^2 in f32 would cancel away.

mod common;
use common::*;
use pigment::ops::norm::{self, NormKernel};
use pigment::ops::reference as r;
use pigment::DType;

fn variants() -> Vec<NormKernel> {
    norm::ALL.into_iter().filter(|k| ctx().subgroups || *k != NormKernel::Subgroup).collect()
}

/// tests/norm.rs's tolerances (O(1) outputs; f32 summation, f16 output rounding), except for
/// inputs offset by `shift`: the input's own f32/f16 spacing at |x| ~ shift, divided by the
/// std (here ~1), bounds how well any implementation can know x - mean.
fn tol(dtype: DType, shift: f32) -> (f32, f32) {
    let ulp = match dtype {
        DType::F32 => shift * f32::EPSILON,
        DType::F16 => 0.0, // the reference sees the same f16 inputs exactly
    };
    match dtype {
        DType::F32 => (2e-5 + 8.0 * ulp, 1e-5),
        DType::F16 => (4e-3, 2e-3),
    }
}

#[allow(clippy::too_many_arguments)]
fn check_gn(kernel: NormKernel, dtype: DType, shape: &[usize], g: usize, silu: bool, shift: f32, spread: f32, seed: u64) {
    let (n, c) = (shape[0], shape[1]);
    let hw: usize = shape[2..].iter().product();
    let x = quantize(&rand_vec(n * c * hw, seed).iter().map(|v| v * spread + shift).collect::<Vec<_>>(), dtype);
    let w = quantize(&rand_vec(c, seed + 1), dtype);
    let b = quantize(&rand_vec(c, seed + 2), dtype);
    let what = format!("group_norm {} {shape:?} g{g} silu {silu} shift {shift} {dtype:?}", kernel.name());
    let y = norm::group_norm_with(ctx(), &upload(&x, shape, dtype), g, &upload(&w, &[c], dtype), &upload(&b, &[c], dtype), 1e-5, silu, Some(kernel))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let want = r::group_norm(&x, n, c, hw, g, &w, &b, 1e-5, silu);
    let (at, rt) = tol(dtype, shift);
    assert_close(&y.to_vec(ctx()).unwrap(), &want, at, rt, &what);
}

fn check_ln(kernel: NormKernel, dtype: DType, rows: usize, d: usize, shift: f32, seed: u64) {
    let x = quantize(&rand_vec(rows * d, seed).iter().map(|v| v * 3.0 + shift).collect::<Vec<_>>(), dtype);
    let w = quantize(&rand_vec(d, seed + 1), dtype);
    let b = quantize(&rand_vec(d, seed + 2), dtype);
    let what = format!("layer_norm {} {rows}x{d} shift {shift} {dtype:?}", kernel.name());
    let y = norm::layer_norm_with(ctx(), &upload(&x, &[rows, d], dtype), &upload(&w, &[d], dtype), &upload(&b, &[d], dtype), 1e-5, Some(kernel))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let (at, rt) = tol(dtype, shift);
    assert_close(&y.to_vec(ctx()).unwrap(), &r::layer_norm(&x, d, &w, &b, 1e-5), at, rt, &what);
}

#[test]
fn group_norm_variants() {
    let _g = LIMIT.read().unwrap();
    for kernel in variants() {
        for dtype in dtypes() {
            check_gn(kernel, dtype, &[2, 6, 5, 7], 3, true, 0.0, 2.0, 1);
            check_gn(kernel, dtype, &[1, 4, 1, 1], 4, false, 0.5, 2.0, 2); // 1-element groups
            check_gn(kernel, dtype, &[3, 10, 3, 3], 5, true, 0.0, 2.0, 3); // 18 elements per group
            check_gn(kernel, dtype, &[1, 64, 20, 32], 32, true, 1.0, 2.0, 4); // 1280: several rounds
            // SD-like: |mean| 1e3 with std ~1 over 40960-element groups (f32 only: f16 cannot
            // hold 1e3 +- 1 finely enough for a meaningful reference check).
            if dtype == DType::F32 {
                check_gn(kernel, dtype, &[1, 40, 64, 64], 4, false, 1000.0, 2.0, 5);
            }
        }
    }
}

#[test]
fn layer_norm_variants() {
    let _g = LIMIT.read().unwrap();
    for kernel in variants() {
        for dtype in dtypes() {
            check_ln(kernel, dtype, 5, 1, 0.0, 10);
            check_ln(kernel, dtype, 37, 77, 1.0, 11);
            check_ln(kernel, dtype, 3, 1283, 1.0, 12);
            if dtype == DType::F32 {
                check_ln(kernel, dtype, 4, 768, 1000.0, 13);
            }
        }
    }
}

/// The tree variants keep several groups (rows) per dispatch under a lowered binding limit, and
/// a group bigger than one binding is refused by them (the direct kernel splits it).
#[test]
fn tree_variants_split_at_lowered_limit() {
    let _g = LIMIT.write().unwrap();
    ctx().set_max_binding_for_tests(4096);
    for kernel in variants() {
        check_gn(kernel, DType::F32, &[2, 12, 5, 7], 6, true, 1.0, 2.0, 20);
        check_ln(kernel, DType::F32, 37, 77, 1.0, 21);
    }
    let x = upload(&rand_vec(2 * 8 * 23 * 29, 22), &[2, 8, 23, 29], DType::F32);
    let w = upload(&[1.0; 8], &[8], DType::F32);
    let err = norm::group_norm_with(ctx(), &x, 2, &w, &w, 1e-5, false, Some(NormKernel::Tree)).unwrap_err().to_string();
    ctx().set_max_binding_for_tests(0);
    assert!(err.contains("binding"), "{err}");
}

#[test]
fn tree_variants_validate_with_naga() {
    for dtype in [DType::F32, DType::F16] {
        for (name, src) in norm::sources_for_validation(dtype) {
            let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
            let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
                .validate(&module)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
