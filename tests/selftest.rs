mod common;
use common::*;
use pigment::selftest::{self, evaluate, Options, Outcome, Tolerance};

/// The selftest machinery on this adapter (lavapipe in CI): every case passes, and every GEMM
/// variant family the adapter can run is forced (register and tiled everywhere, subgroup where
/// SUBGROUP is offered, coopmat where cooperative matrices are), in every dtype it offers.
#[test]
fn selftest_quick_passes_and_forces_every_variant() {
    // Write: the conv2d cases lower the binding limit for their split shape.
    let _g = Lowered::new();
    let lines = selftest::run(ctx(), &Options { quick: true, family: None }, |l| eprintln!("{l}"));
    let failed: Vec<String> = lines.iter().filter(|l| !l.ok()).map(|l| l.to_string()).collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    let mut want = vec!["register", "tiled"];
    if ctx().subgroups {
        want.push("subgroup");
    }
    if ctx().coopmat {
        want.push("coopmat");
    }
    for family in want {
        for dtype in dtypes() {
            assert!(
                lines.iter().any(|l| l.family == "gemm" && l.variant.starts_with(family) && l.dtype == dtype),
                "gemm {family} {dtype:?} not checked"
            );
        }
    }
    // Attention and norm variants: the workgroup-memory ones everywhere, subgroup ones where offered.
    let mut want = vec![("attention", "direct"), ("attention", "fa2:wg"), ("group_norm", "direct"), ("group_norm", "tree"), ("layer_norm", "direct"), ("layer_norm", "tree")];
    if ctx().subgroups {
        want.extend([("attention", "fa2:subgroup"), ("group_norm", "subgroup"), ("layer_norm", "subgroup")]);
    }
    for (family, variant) in want {
        for dtype in dtypes() {
            assert!(lines.iter().any(|l| l.family == family && l.variant.starts_with(variant) && l.dtype == dtype), "{family} {variant} {dtype:?} not checked");
        }
    }
    // conv2d: direct, gemm and at least one igemm tile (the small-K shapes fit lavapipe's loops).
    for variant in ["direct", "gemm", "igemm"] {
        for dtype in dtypes() {
            assert!(lines.iter().any(|l| l.family == "conv2d" && l.variant.starts_with(variant) && l.dtype == dtype), "conv2d {variant} {dtype:?} not checked");
        }
    }
    for family in ["conv2d", "attention", "group_norm", "layer_norm", "softmax", "geglu", "elementwise", "embedding", "resample", "pixel_shuffle", "grad"] {
        assert!(lines.iter().any(|l| l.family == family), "{family} not checked");
    }
}

/// The comparison flags what it must: one element over its tolerance, NaN, a length mismatch.
#[test]
fn evaluate_catches_errors() {
    let want = vec![1.0, -2.0, 0.5];
    let ok = Outcome { got: vec![1.0 + 1e-6, -2.0, 0.5], want: want.clone(), tol: Tolerance::AbsRel(1e-5, 0.0) };
    assert!(evaluate(&ok).1 <= 1.0);
    let off = Outcome { got: vec![1.0, -2.0 + 1e-3, 0.5], want: want.clone(), tol: Tolerance::AbsRel(1e-5, 1e-4) };
    let (err, ratio, tol) = evaluate(&off);
    assert!(ratio > 1.0 && (err - 1e-3).abs() < 1e-6 && (tol - 2.1e-4).abs() < 1e-6, "{err} {ratio} {tol}");
    let nan = Outcome { got: vec![1.0, f32::NAN, 0.5], want: want.clone(), tol: Tolerance::PerElement(vec![1.0; 3]) };
    assert!(evaluate(&nan).1.is_infinite());
    let short = Outcome { got: vec![1.0], want, tol: Tolerance::AbsRel(1.0, 1.0) };
    assert!(evaluate(&short).1.is_infinite());
}
