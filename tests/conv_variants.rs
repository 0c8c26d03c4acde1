//! Every conv2d variant (`direct`, each `igemm` tile, `gemm` where it applies) forced on this
//! adapter against the f64 CPU reference (`ops::reference::conv2d`) at awkward shapes: odd
//! Cin/Cout, K not a multiple of 4, stride 2, padding 0/1, 1x1 kernels, 1x1 and odd images,
//! bias and residual; and the choice falling back to `direct` when the binding limit forces a
//! split.
mod common;
use common::*;
use pigment::ops::conv::{self, ConvWeight};
use pigment::ops::conv_variants::{self, ConvKernel, ConvProblem};
use pigment::ops::reference::{self as r, ConvShape};
use pigment::DType;

fn variants() -> Vec<ConvKernel> {
    let mut v = vec![ConvKernel::Direct, ConvKernel::Gemm];
    v.extend(conv_variants::igemm_candidates().into_iter().map(ConvKernel::Igemm));
    v
}

fn problem(c: &ConvShape, dtype: DType) -> ConvProblem {
    ConvProblem { n: c.n, cin: c.cin, h: c.h, w: c.w, cout: c.cout, kh: c.k, kw: c.k, stride: c.stride, pad: c.pad, dtype }
}

/// Runs `c` with `kernel` (None: the op's choice); false when the variant cannot run it here.
/// Tolerance as tests/conv.rs: per output 1e-5 (f32) / 2e-3 (f16) of the sum of |terms|, which
/// any summation order meets and a missing or misplaced term (>= 1e-3 of it at K <= 1000) fails.
fn run(c: &ConvShape, dtype: DType, kernel: Option<ConvKernel>, with_bias: bool, with_res: bool, seed: u64) -> bool {
    if let Some(k) = kernel {
        if k.unsupported(ctx(), &problem(c, dtype)).is_some() {
            return false;
        }
    }
    let (ho, wo) = c.out_hw();
    let x = quantize(&rand_vec(c.n * c.cin * c.h * c.w, seed), dtype);
    let wt = quantize(&rand_vec(c.cout * c.cin * c.k * c.k, seed + 1), dtype);
    let b = quantize(&rand_vec(c.cout, seed + 2), dtype);
    let res = quantize(&rand_vec(c.n * c.cout * ho * wo, seed + 3), dtype);
    let w = ConvWeight::new(upload(&wt, &[c.cout, c.cin, c.k, c.k], dtype));
    let tb = upload(&b, &[c.cout], dtype);
    let tr = upload(&res, &[c.n, c.cout, ho, wo], dtype);
    let tx = upload(&x, &[c.n, c.cin, c.h, c.w], dtype);
    let name = kernel.map(|k| k.name()).unwrap_or("chosen".into());
    let what = format!("{name} n{} cin{} {}x{} cout{} k{} s{} p{} bias {with_bias} res {with_res} {dtype:?}", c.n, c.cin, c.h, c.w, c.cout, c.k, c.stride, c.pad);
    // Twice: the second call on a 1x1 image uses the centre tap packed by the first.
    for _ in 0..2 {
        let y = conv::conv2d_with(ctx(), &tx, &w, with_bias.then_some(&tb), c.stride, c.pad, with_res.then_some(&tr), kernel)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(y.shape(), &[c.n, c.cout, ho, wo], "{what}");
        let got = y.to_vec(ctx()).unwrap();
        let (want, mag) = r::conv2d(c, &x, &wt, with_bias.then_some(&b[..]), with_res.then_some(&res[..]));
        let rel = if dtype == DType::F32 { 1e-5 } else { 2e-3 };
        for i in 0..got.len() {
            let tol = rel * mag[i] + 1e-6;
            assert!((got[i] - want[i]).abs() <= tol, "{what}: element {i} got {} want {} (tol {tol})", got[i], want[i]);
        }
    }
    true
}

fn shapes() -> Vec<ConvShape> {
    let s = |n, cin, h, w, cout, k, stride, pad| ConvShape { n, cin, h, w, cout, k, stride, pad };
    vec![
        s(2, 5, 9, 7, 6, 3, 1, 1),     // odd everything, K = 45 (not a multiple of 4)
        s(1, 3, 11, 10, 5, 3, 2, 1),   // stride 2, Cin 3
        s(2, 4, 13, 11, 70, 3, 1, 0),  // padding 0, K = 36 (vec4 weights), Cout past a 64 block
        s(2, 16, 16, 16, 64, 3, 1, 1), // whole blocks, vec4 everywhere
        s(1, 12, 9, 8, 33, 4, 2, 1),   // the VAE encoder's 4x4 stride-2 downsampler form
        s(3, 7, 9, 8, 9, 1, 1, 0),     // 1x1 kernel: gemm, K and Cout odd
        s(2, 8, 4, 4, 12, 1, 1, 0),    // 1x1 kernel on 4x4: direct or igemm, not gemm
        s(2, 8, 8, 8, 12, 1, 1, 0),    // 1x1 kernel, vec4 gemm
        s(2, 8, 1, 1, 13, 3, 1, 1),    // 1x1 image: only the centre tap sees data (gemm)
        s(2, 9, 1, 1, 6, 1, 1, 0),     // 1x1 kernel on a 1x1 image
    ]
}

#[test]
fn every_variant_against_reference() {
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        for (i, c) in shapes().iter().enumerate() {
            let mut ran = vec![];
            for (j, k) in variants().into_iter().enumerate() {
                if run(c, dtype, Some(k), j % 2 == 0, i % 2 == 0, (i * 10 + j) as u64) {
                    ran.push(k.name());
                }
            }
            // What the op chooses, with both epilogue inputs.
            run(c, dtype, None, true, true, 99 + i as u64);
            let p = problem(c, dtype);
            assert!(ran.contains(&"direct".to_string()), "direct runs everything");
            assert_eq!(ConvKernel::Gemm.unsupported(ctx(), &p).is_none(), (p.pointwise() && p.h * p.w >= 64) || p.centre_only(), "{p:?}: gemm route");
            eprintln!("{dtype:?} {p:?}: {}", ran.join(", "));
        }
    }
}

/// Under a lowered binding limit the `gemm` and `igemm` routes (one binding per tensor) refuse
/// with a clear error, and the op's choice falls back to `direct`, which splits.
#[test]
fn split_falls_back_to_direct() {
    let _g = Lowered::new();
    for dtype in dtypes() {
        ctx().set_max_binding_for_tests(4 * 1024);
        for c in [ConvShape { n: 2, cin: 9, h: 20, w: 19, cout: 10, k: 1, stride: 1, pad: 0 }, ConvShape { n: 2, cin: 6, h: 21, w: 17, cout: 5, k: 3, stride: 1, pad: 1 }] {
            let p = problem(&c, dtype);
            assert!(ConvKernel::Gemm.unsupported(ctx(), &p).is_some());
            assert!(ConvKernel::Igemm(conv_variants::igemm_candidates()[0]).unsupported(ctx(), &p).is_some());
            let tx = upload(&rand_vec(c.n * c.cin * c.h * c.w, 1), &[c.n, c.cin, c.h, c.w], dtype);
            let w = ConvWeight::new(upload(&rand_vec(c.cout * c.cin * c.k * c.k, 2), &[c.cout, c.cin, c.k, c.k], dtype));
            let forced = if c.k == 1 { ConvKernel::Gemm } else { ConvKernel::Igemm(conv_variants::igemm_candidates()[0]) };
            let e = conv::conv2d_with(ctx(), &tx, &w, None, c.stride, c.pad, None, Some(forced)).err().expect("forced over the limit");
            assert!(e.to_string().contains("binding"), "{e}");
            assert!(run(&c, dtype, None, true, true, 7));
        }
    }
}

/// The problem keys that share gemm's choice map and disk cache.
#[test]
fn keys_and_names() {
    let p = ConvProblem { n: 2, cin: 320, h: 64, w: 64, cout: 320, kh: 3, kw: 3, stride: 1, pad: 1, dtype: DType::F32 };
    assert_eq!(conv_variants::problem_key(&p), "conv2d:f32:2x320x64x64:k3x3s1p1:320");
    for k in variants() {
        assert_eq!(ConvKernel::parse(&k.name()), Some(k));
    }
    assert!(!conv_variants::sd15_unet_convs(8, DType::F32).is_empty());
}
