//! The selftest's cases, family by family. Tolerances are those of the family's tests in
//! tests/ (where each is justified); shapes are the awkward ones: odd sizes, K not a multiple
//! of 4, one row, sizes just past a tile or block edge.

use super::{data, Case, Outcome, Tolerance};
use crate::gpu::Context;
use crate::ops::elementwise::{self, Activation, BinaryOp};
use crate::ops::gemm::{self, GemmOpts, Kernel, Problem, Tile};
use crate::ops::attention::{self, AttnInput};
use crate::ops::norm::{self, NormKernel};
use crate::ops::{attention_variants, conv, conv_variants, embedding, gemm_variants, reference as r, resample, softmax};
use crate::{DType, Tensor};

fn up(ctx: &Context, v: &[f32], shape: &[usize], dtype: DType) -> crate::Result<Tensor> {
    Tensor::from_f32(ctx, v, shape, dtype)
}

/// f32: summation order only (few ulps x sqrt(K) on inputs in [-1, 1]); f16: the stored
/// output's rounding (2^-11 relative) on inputs both sides quantise alike.
fn tol(dtype: DType, f32_atol: f32, f32_rtol: f32, f16_atol: f32, f16_rtol: f32) -> Tolerance {
    match dtype {
        DType::F32 => Tolerance::AbsRel(f32_atol, f32_rtol),
        DType::F16 => Tolerance::AbsRel(f16_atol, f16_rtol),
    }
}

fn case(family: &'static str, variant: &str, shape: String, dtypes: &[DType], run: impl Fn(&Context, DType) -> crate::Result<Outcome> + 'static) -> Case {
    Case { family, variant: variant.to_string(), shape, dtypes: dtypes.to_vec(), run: Box::new(run) }
}

pub(super) fn all(ctx: &Context, quick: bool) -> Vec<Case> {
    let mut v = gemm_cases(ctx, quick);
    v.extend(conv_cases(ctx, quick));
    v.extend(attention_cases(ctx, quick));
    v.extend(norm_cases(ctx));
    v.extend(softmax_cases());
    v.extend(elementwise_cases());
    v.extend(embedding_cases());
    v.extend(resample_cases());
    v.extend(grad_cases());
    v
}

/// Every GEMM variant the adapter can run, forced.
pub fn gemm_variants(ctx: &Context) -> Vec<Kernel> {
    let mut ks: Vec<Kernel> = [Tile { tm: 16, tn: 16, wg: 8 }, Tile { tm: 8, tn: 8, wg: 64 }, Tile { tm: 16, tn: 4, wg: 64 }, Tile { tm: 8, tn: 1, wg: 64 }]
        .map(Kernel::Register)
        .to_vec();
    ks.extend(gemm_variants::TILED_CANDIDATES.iter().map(|b| Kernel::Tiled(*b)));
    ks.extend(gemm_variants::SUBGROUP_CANDIDATES.iter().map(|t| Kernel::Subgroup(*t)));
    ks.push(Kernel::CoopMat);
    let probe = Problem { batch: 1, m: 64, n: 64, k: 64, trans_a: false, trans_b: false, dtype: DType::F16 };
    ks.retain(|k| match k.unsupported(ctx, &probe) {
        None => true,
        // f32-only adapters still run every variant but coopmat in f32.
        Some(_) => k.unsupported(ctx, &Problem { dtype: DType::F32, ..probe }).is_none(),
    });
    ks
}

fn gemm_cases(ctx: &Context, quick: bool) -> Vec<Case> {
    // (batch, B batched, M, N, K, trans_a, trans_b)
    let mut shapes = vec![(2, true, 37, 45, 29, false, false), (1, false, 1, 300, 5, false, false), (2, true, 65, 130, 77, true, true), (1, false, 129, 68, 36, false, false)];
    if !quick {
        shapes.extend([(1, false, 1, 1, 1, false, false), (2, true, 33, 70, 48, false, true), (3, false, 9, 40, 16, true, false), (1, false, 200, 132, 260, false, false), (2, true, 130, 257, 64, false, false)]);
    }
    let mut v = vec![];
    for kernel in gemm_variants(ctx) {
        let dtypes: &[DType] = if kernel == Kernel::CoopMat { &[DType::F16] } else { &[DType::F32, DType::F16] };
        for &(batch, b_batched, m, n, k, ta, tb) in &shapes {
            let s = r::GemmShape { batch, b_batched, m, n, k, trans_a: ta, trans_b: tb };
            let t = |x: bool| if x { 't' } else { 'n' };
            let shape = format!("{batch}x{m}x{n}x{k} {}{}{}", t(ta), t(tb), if b_batched { " batched B" } else { "" });
            v.push(case("gemm", &kernel.name(), shape, dtypes, move |ctx, dtype| {
                let seed = (m * 31 + n * 7 + k) as u64;
                let a = data(batch * m * k, seed, dtype);
                let nb = if b_batched { batch } else { 1 };
                let b = data(nb * k * n, seed + 1, dtype);
                let bias = data(n, seed + 2, dtype);
                let res = data(batch * m * n, seed + 3, dtype);
                let a_shape = if ta { [batch, k, m] } else { [batch, m, k] };
                let mut b_shape = if b_batched { vec![batch] } else { vec![] };
                b_shape.extend(if tb { [n, k] } else { [k, n] });
                let (tbias, tres) = (up(ctx, &bias, &[n], dtype)?, up(ctx, &res, &[batch, m, n], dtype)?);
                let o = GemmOpts { trans_a: ta, trans_b: tb, alpha: 0.75, bias: Some(&tbias), act: Activation::Silu, residual: Some(&tres) };
                let got = gemm::matmul_with(ctx, &up(ctx, &a, &a_shape, dtype)?, &up(ctx, &b, &b_shape, dtype)?, o, Some(kernel))?.to_vec(ctx)?;
                let want = r::gemm(&s, &a, &b, 0.75, Some(&bias), Activation::Silu, Some(&res));
                // tests/gemm.rs: f32 1e-4 abs (K <= 300 terms in [-1, 1]); f16 4e-3 + 2e-3 rel.
                Ok(Outcome { got, want, tol: tol(dtype, 1e-4, 1e-5, 4e-3, 2e-3) })
            }));
        }
    }
    v
}

/// Every conv2d variant (`direct`, `gemm`, each `igemm` tile) on the shapes it can run here:
/// odd Cin/Cout, Cin not a multiple of 4, stride 2, padding 0/1, 1x1 kernels, 1x1 and odd
/// images, bias and residual; `direct` also under a lowered binding limit that splits it.
fn conv_cases(ctx: &Context, quick: bool) -> Vec<Case> {
    let s = |n, cin, h, w, cout, k, stride, pad| r::ConvShape { n, cin, h, w, cout, k, stride, pad };
    let mut shapes = vec![
        (s(2, 5, 9, 7, 6, 3, 1, 1), 0),
        (s(1, 3, 11, 10, 5, 3, 2, 1), 0),
        (s(2, 4, 13, 11, 70, 3, 1, 0), 0),
        (s(1, 7, 9, 8, 9, 1, 1, 0), 0),
        (s(2, 8, 1, 1, 13, 3, 1, 1), 0),
        (s(2, 9, 40, 37, 10, 3, 1, 1), 6 * 1024),
    ];
    if !quick {
        shapes.extend([(s(2, 33, 17, 13, 70, 3, 1, 1), 0), (s(2, 16, 16, 16, 64, 3, 1, 1), 0), (s(2, 9, 1, 1, 6, 1, 1, 0), 0), (s(1, 12, 9, 8, 33, 4, 2, 1), 0)]);
    }
    let mut variants = vec![conv_variants::ConvKernel::Direct, conv_variants::ConvKernel::Gemm];
    variants.extend(conv_variants::igemm_candidates().into_iter().map(conv_variants::ConvKernel::Igemm));
    let mut v = vec![];
    for kernel in variants {
        for &(c, limit) in &shapes {
            let p = conv_variants::ConvProblem { n: c.n, cin: c.cin, h: c.h, w: c.w, cout: c.cout, kh: c.k, kw: c.k, stride: c.stride, pad: c.pad, dtype: DType::F32 };
            // Only direct splits over the binding limit; the others refuse such problems.
            if (limit > 0 && kernel != conv_variants::ConvKernel::Direct) || kernel.unsupported(ctx, &p).is_some() {
                continue;
            }
            let split = if limit > 0 { format!(" split at {limit} B") } else { String::new() };
            let shape = format!("n{} cin{} {}x{} cout{} k{} s{} p{}{split}", c.n, c.cin, c.h, c.w, c.cout, c.k, c.stride, c.pad);
            v.push(case("conv2d", &kernel.name(), shape, &[DType::F32, DType::F16], move |ctx, dtype| {
                let (ho, wo) = c.out_hw();
                let x = data(c.n * c.cin * c.h * c.w, 1, dtype);
                let w = data(c.cout * c.cin * c.k * c.k, 2, dtype);
                let b = data(c.cout, 3, dtype);
                let res = data(c.n * c.cout * ho * wo, 4, dtype);
                let (tx, tw) = (up(ctx, &x, &[c.n, c.cin, c.h, c.w], dtype)?, conv::ConvWeight::new(up(ctx, &w, &[c.cout, c.cin, c.k, c.k], dtype)?));
                let (tb, tr) = (up(ctx, &b, &[c.cout], dtype)?, up(ctx, &res, &[c.n, c.cout, ho, wo], dtype)?);
                ctx.set_max_binding_for_tests(limit as u64 * dtype.size() as u64 / 4);
                let y = conv::conv2d_with(ctx, &tx, &tw, Some(&tb), c.stride, c.pad, Some(&tr), Some(kernel)).and_then(|y| y.to_vec(ctx));
                ctx.set_max_binding_for_tests(0);
                let (want, mag) = r::conv2d(&c, &x, &w, Some(&b), Some(&res));
                // tests/conv.rs: 1e-5 (f32) / 2e-3 (f16) of the sum of |terms|.
                let rel = if dtype == DType::F32 { 1e-5 } else { 2e-3 };
                Ok(Outcome { got: y?, want, tol: Tolerance::PerElement(mag.iter().map(|m| rel * m + 1e-6).collect()) })
            }));
        }
    }
    v
}

fn attention_cases(ctx: &Context, quick: bool) -> Vec<Case> {
    // (batch, Lq, Lk, heads, head dim, causal, fused QKV read in place): Lq/Lk off the tiles,
    // Lk = 1 and 77, SD's head dims and odd ones.
    let mut shapes = vec![(2, 37, 77, 2, 40, false, false), (1, 5, 1, 2, 64, false, false), (1, 33, 33, 2, 64, true, true), (1, 41, 41, 2, 33, true, false)];
    if !quick {
        shapes.extend([
            (1, 1, 5, 1, 8, false, false),
            (2, 19, 45, 1, 80, false, false),
            (1, 9, 33, 1, 160, false, false),
            (2, 130, 77, 3, 80, false, false),
            (1, 300, 300, 1, 160, false, false),
            (2, 70, 70, 3, 40, true, true),
        ]);
    }
    let mut v = vec![];
    for kernel in attention_variants::ALL {
        for &(b, lq, lk, h, d, causal, fused) in &shapes {
            let problem = attention_variants::AttnProblem { batch: b, heads: h, lq, lk, head_dim: d, causal, dtype: DType::F32 };
            if kernel.unsupported(ctx, &problem).is_some() {
                continue;
            }
            let shape = format!("B{b} Lq{lq} Lk{lk} H{h} D{d}{}{}", if causal { " causal" } else { "" }, if fused { " qkv" } else { "" });
            v.push(case("attention", &kernel.name(), shape, &[DType::F32, DType::F16], move |ctx, dtype| {
                let w = h * d;
                let scale = 2.0 / (d as f32).sqrt();
                let (y, want) = if fused {
                    let qkv = data(b * lq * 3 * w, 5, dtype);
                    let part = |i: usize| -> Vec<f32> { (0..b * lq).flat_map(|r| qkv[r * 3 * w + i * w..][..w].to_vec()).collect() };
                    let t = up(ctx, &qkv, &[b, lq, 3 * w], dtype)?;
                    let y = attention::attention_strided_with(ctx, AttnInput::cols(&t, 0), AttnInput::cols(&t, w), AttnInput::cols(&t, 2 * w), h, d, scale, causal, Some(kernel))?;
                    (y, r::attention(&part(0), &part(1), &part(2), b, lq, lk, h, d, scale, causal))
                } else {
                    let (q, k, vv) = (data(b * lq * w, 5, dtype), data(b * lk * w, 6, dtype), data(b * lk * w, 7, dtype));
                    let (tq, tk, tv) = (up(ctx, &q, &[b, lq, w], dtype)?, up(ctx, &k, &[b, lk, w], dtype)?, up(ctx, &vv, &[b, lk, w], dtype)?);
                    let y = attention::attention_strided_with(ctx, AttnInput::whole(&tq), AttnInput::whole(&tk), AttnInput::whole(&tv), h, d, scale, causal, Some(kernel))?;
                    (y, r::attention(&q, &k, &vv, b, lq, lk, h, d, scale, causal))
                };
                // tests/attention.rs: outputs are convex combinations of |v| <= 1.
                Ok(Outcome { got: y.to_vec(ctx)?, want, tol: tol(dtype, 2e-5, 0.0, 1e-3, 0.0) })
            }));
        }
    }
    v
}

fn norm_cases(ctx: &Context) -> Vec<Case> {
    let mut v = vec![];
    let kernels: Vec<NormKernel> = norm::ALL.into_iter().filter(|k| ctx.subgroups || *k != NormKernel::Subgroup).collect();
    // (shape, groups, silu, mean offset): odd group sizes, 1-element groups, and |mean| 1e3 with
    // std ~1 (f32 only: f16 cannot hold it finely), where E[x^2] - E[x]^2 cancels.
    let gn = [(vec![2, 6, 5, 7], 3, true, 0.5), (vec![1, 32, 9, 9], 32, false, 0.5), (vec![1, 4, 1, 1], 4, true, 0.5), (vec![1, 40, 32, 32], 4, false, 1000.0)];
    for &kernel in &kernels {
        for (shape, g, silu, shift) in gn.clone() {
            let name = format!("{shape:?} g{g}{}{}", if silu { " silu" } else { "" }, if shift > 1.0 { " mean 1e3" } else { "" });
            let dtypes: &[DType] = if shift > 1.0 { &[DType::F32] } else { &[DType::F32, DType::F16] };
            v.push(case("group_norm", kernel.name(), name, dtypes, move |ctx, dtype| {
                let (n, c, hw) = (shape[0], shape[1], shape[2] * shape[3]);
                let x: Vec<f32> = data(n * c * hw, 8, dtype).iter().map(|x| x * 2.0 + shift).collect();
                let x = data_q(&x, dtype);
                let (w, b) = (data(c, 9, dtype), data(c, 10, dtype));
                let y = norm::group_norm_with(ctx, &up(ctx, &x, &shape, dtype)?, g, &up(ctx, &w, &[c], dtype)?, &up(ctx, &b, &[c], dtype)?, 1e-5, silu, Some(kernel))?;
                // tests/norm.rs: O(1) outputs; f16 output rounding dominates; at |mean| 1e3 the
                // inputs' own f32 spacing (8 ulps of 1e3 over std ~1) bounds any implementation.
                let f32_atol = 2e-5 + 8.0 * shift * f32::EPSILON;
                Ok(Outcome { got: y.to_vec(ctx)?, want: r::group_norm(&x, n, c, hw, g, &w, &b, 1e-5, silu), tol: tol(dtype, f32_atol, 1e-5, 4e-3, 2e-3) })
            }));
        }
        for (rows, d, shift) in [(3, 77, 1.0), (1, 768, 1.0), (5, 1, 1.0), (2, 1283, 1000.0)] {
            let dtypes: &[DType] = if shift > 1.0 { &[DType::F32] } else { &[DType::F32, DType::F16] };
            let name = format!("{rows}x{d}{}", if shift > 1.0 { " mean 1e3" } else { "" });
            v.push(case("layer_norm", kernel.name(), name, dtypes, move |ctx, dtype| {
                let x = data_q(&data(rows * d, 11, dtype).iter().map(|x| x * 3.0 + shift).collect::<Vec<_>>(), dtype);
                let (w, b) = (data(d, 12, dtype), data(d, 13, dtype));
                let y = norm::layer_norm_with(ctx, &up(ctx, &x, &[rows, d], dtype)?, &up(ctx, &w, &[d], dtype)?, &up(ctx, &b, &[d], dtype)?, 1e-5, Some(kernel))?;
                let f32_atol = 2e-5 + 8.0 * shift * f32::EPSILON;
                Ok(Outcome { got: y.to_vec(ctx)?, want: r::layer_norm(&x, d, &w, &b, 1e-5), tol: tol(dtype, f32_atol, 1e-5, 4e-3, 2e-3) })
            }));
        }
    }
    v
}

fn data_q(v: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => v.to_vec(),
        DType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
    }
}

fn softmax_cases() -> Vec<Case> {
    let mut v = vec![];
    for (rows, n) in [(3, 77), (2, 1), (1, 5000)] {
        v.push(case("softmax", "default", format!("{rows}x{n}"), &[DType::F32, DType::F16], move |ctx, dtype| {
            let x = data_q(&data(rows * n, 14, dtype).iter().map(|x| x * 4.0).collect::<Vec<_>>(), dtype);
            let y = softmax::softmax(ctx, &up(ctx, &x, &[rows, n], dtype)?, 0.7)?;
            // tests/softmax.rs: relative per element; f16 subnormal spacing as atol.
            Ok(Outcome { got: y.to_vec(ctx)?, want: r::softmax(&x, n, 0.7), tol: tol(dtype, 1e-10, 2e-5, 1e-7, 1e-3) })
        }));
    }
    for (rows, f) in [(3, 5), (2, 160)] {
        v.push(case("geglu", "default", format!("{rows}x{}", 2 * f), &[DType::F32, DType::F16], move |ctx, dtype| {
            let x = data_q(&data(rows * 2 * f, 15, dtype).iter().map(|x| x * 4.0).collect::<Vec<_>>(), dtype);
            let y = softmax::geglu(ctx, &up(ctx, &x, &[rows, 2 * f], dtype)?)?;
            // tests/softmax.rs: the kernel's erf is A&S 7.1.26 (1.5e-7) -> 3e-6 absolute.
            Ok(Outcome { got: y.to_vec(ctx)?, want: r::geglu(&x, f), tol: tol(dtype, 3e-6, 3e-6, 2e-3, 2e-3) })
        }));
    }
    v
}

fn elementwise_cases() -> Vec<Case> {
    let mut v = vec![];
    for act in [Activation::Identity, Activation::Silu, Activation::Gelu, Activation::GeluTanh, Activation::QuickGelu, Activation::Relu, Activation::Tanh, Activation::LeakyRelu, Activation::Sigmoid, Activation::Elu, Activation::Hardswish, Activation::LeakyRelu001] {
        v.push(case("elementwise", &format!("{act:?}").to_lowercase(), "4099".into(), &[DType::F32, DType::F16], move |ctx, dtype| {
            let x = data_q(&data(4099, 16, dtype).iter().map(|x| x * 6.0).collect::<Vec<_>>(), dtype);
            let y = elementwise::unary(ctx, act, &up(ctx, &x, &[4099], dtype)?, 1.5, -0.25)?;
            // tests/elementwise.rs: 2e-6 (f32), f16 output rounding.
            Ok(Outcome { got: y.to_vec(ctx)?, want: r::unary(act, &x, 1.5, -0.25), tol: tol(dtype, 2e-6, 2e-6, 2e-3, 2e-3) })
        }));
    }
    for (op, mul) in [(BinaryOp::Add, false), (BinaryOp::Mul, true)] {
        v.push(case("elementwise", &format!("{op:?}").to_lowercase(), "3x5x37 by 5".into(), &[DType::F32, DType::F16], move |ctx, dtype| {
            let (a, b) = (data(3 * 5 * 37, 17, dtype), data(5, 18, dtype));
            let y = elementwise::binary_broadcast(ctx, op, &up(ctx, &a, &[3, 5, 37], dtype)?, &up(ctx, &b, &[5], dtype)?, 37, 0.5)?;
            Ok(Outcome { got: y.to_vec(ctx)?, want: r::binary_broadcast(mul, &a, &b, 37, 0.5), tol: tol(dtype, 1e-6, 1e-6, 2e-3, 2e-3) })
        }));
    }
    v
}

fn embedding_cases() -> Vec<Case> {
    [(50, 33, 9, true), (7, 4, 1, false)]
        .into_iter()
        .map(|(vocab, d, l, pos)| {
            case("embedding", "lookup", format!("V{vocab} D{d} L{l}{}", if pos { " +pos" } else { "" }), &[DType::F32, DType::F16], move |ctx, dtype| {
                let table = data(vocab * d, 19, dtype);
                let positions = data(l * d, 20, dtype);
                let ids: Vec<u32> = (0..l as u32).map(|i| (i * 7 + 3) % vocab as u32).collect();
                let tp = up(ctx, &positions, &[l, d], dtype)?;
                let y = embedding::embedding_lookup(ctx, &up(ctx, &table, &[vocab, d], dtype)?, &ids, pos.then_some(&tp))?;
                let want = r::embedding_lookup(&table, d, &ids, pos.then_some(&positions[..]));
                // A gather is exact; with positions one add, rounded to the storage dtype.
                Ok(Outcome { got: y.to_vec(ctx)?, want, tol: tol(dtype, 0.0, 1.2e-7, 1e-3, 1e-3) })
            })
        })
        .collect()
}

fn resample_cases() -> Vec<Case> {
    // Data movement only: bit-exact in either dtype.
    let both = [DType::F32, DType::F16];
    vec![
        case("resample", "upsample_nearest2x", "2x3x5x4".into(), &both, |ctx, dtype| {
            let x = data(2 * 3 * 5 * 4, 21, dtype);
            let y = resample::upsample_nearest2x(ctx, &up(ctx, &x, &[2, 3, 5, 4], dtype)?)?;
            Ok(Outcome { got: y.to_vec(ctx)?, want: r::upsample_nearest2x(&x, 6, 5, 4), tol: Tolerance::AbsRel(0.0, 0.0) })
        }),
        case("resample", "resize_nearest", "2x3x5x4 -> 9x7".into(), &both, |ctx, dtype| {
            let x = data(2 * 3 * 5 * 4, 22, dtype);
            let y = resample::resize_nearest(ctx, &up(ctx, &x, &[2, 3, 5, 4], dtype)?, 9, 7)?;
            Ok(Outcome { got: y.to_vec(ctx)?, want: r::resize_nearest(&x, 6, (5, 4), (9, 7)), tol: Tolerance::AbsRel(0.0, 0.0) })
        }),
        case("resample", "concat_channels", "2x(3+5)x7x3".into(), &both, |ctx, dtype| {
            let (a, b) = (data(2 * 3 * 21, 23, dtype), data(2 * 5 * 21, 24, dtype));
            let y = resample::concat_channels(ctx, &up(ctx, &a, &[2, 3, 7, 3], dtype)?, &up(ctx, &b, &[2, 5, 7, 3], dtype)?)?;
            Ok(Outcome { got: y.to_vec(ctx)?, want: r::concat_channels(&a, &b, 2, 3, 5, 21), tol: Tolerance::AbsRel(0.0, 0.0) })
        }),
        case("resample", "transpose_last2", "3x17x33".into(), &both, |ctx, dtype| {
            let x = data(3 * 17 * 33, 25, dtype);
            let y = resample::transpose_last2(ctx, &up(ctx, &x, &[3, 17, 33], dtype)?)?;
            Ok(Outcome { got: y.to_vec(ctx)?, want: r::transpose_last2(&x, 3, 17, 33), tol: Tolerance::AbsRel(0.0, 0.0) })
        }),
        case("pixel_shuffle", "pixel_unshuffle", "2x3x8x6 r2".into(), &both, |ctx, dtype| {
            let x = data(2 * 3 * 8 * 6, 26, dtype);
            let y = crate::ops::pixel_shuffle::pixel_unshuffle(ctx, &up(ctx, &x, &[2, 3, 8, 6], dtype)?, 2)?;
            Ok(Outcome { got: y.to_vec(ctx)?, want: r::pixel_unshuffle(&x, 2, 3, 8, 6, 2), tol: Tolerance::AbsRel(0.0, 0.0) })
        }),
    ]
}

/// ops::grad (pix2pix-zero's backward pass), shapes and tolerances as tests/grad.rs: f32 by
/// summation order (relative to the largest output), f16 by the output's rounding.
fn grad_cases() -> Vec<Case> {
    use crate::ops::grad;
    let both = [DType::F32, DType::F16];
    vec![
        case("grad", "conv2d_input_grad", "2x6x5x4 <- w 6x4x3x3 s2 p1, 9x7".into(), &both, |ctx, dtype| {
            let c = r::ConvShape { n: 2, cin: 4, h: 9, w: 7, cout: 6, k: 3, stride: 2, pad: 1 };
            let (dy, w) = (data(2 * 6 * 5 * 4, 30, dtype), data(6 * 4 * 9, 31, dtype));
            let dx = grad::conv2d_input_grad(ctx, &up(ctx, &dy, &[2, 6, 5, 4], dtype)?, &up(ctx, &w, &[6, 4, 3, 3], dtype)?, 2, 1, (9, 7))?;
            Ok(Outcome { got: dx.to_vec(ctx)?, want: r::conv2d_input_grad(&c, &dy, &w), tol: tol(dtype, 2e-5, 1e-5, 1e-2, 2e-3) })
        }),
        case("grad", "group_norm_grad", "2x6x5x3 g3 silu".into(), &both, |ctx, dtype| {
            let x = data_q(&data(180, 32, dtype).iter().map(|x| x * 2.0 + 0.5).collect::<Vec<_>>(), dtype);
            let (dy, w, b) = (data(180, 33, dtype), data(6, 34, dtype), data(6, 35, dtype));
            let t = |v: &[f32], s: &[usize]| up(ctx, v, s, dtype);
            let dx = grad::group_norm_grad(ctx, &t(&x, &[2, 6, 5, 3])?, &t(&dy, &[2, 6, 5, 3])?, 3, &t(&w, &[6])?, &t(&b, &[6])?, 1e-5, true)?;
            Ok(Outcome { got: dx.to_vec(ctx)?, want: r::group_norm_grad(&x, &dy, 2, 6, 15, 3, &w, &b, 1e-5, true), tol: tol(dtype, 2e-5, 1e-5, 4e-3, 2e-3) })
        }),
        case("grad", "layer_norm_grad", "7x40".into(), &both, |ctx, dtype| {
            let (x, dy, w, b) = (data(280, 36, dtype), data(280, 37, dtype), data(40, 38, dtype), data(40, 39, dtype));
            let t = |v: &[f32], s: &[usize]| up(ctx, v, s, dtype);
            let dx = grad::layer_norm_grad(ctx, &t(&x, &[7, 40])?, &t(&dy, &[7, 40])?, &t(&w, &[40])?, &t(&b, &[40])?, 1e-5)?;
            Ok(Outcome { got: dx.to_vec(ctx)?, want: r::layer_norm_grad(&x, &dy, 40, &w, &b, 1e-5), tol: tol(dtype, 2e-5, 1e-5, 4e-3, 2e-3) })
        }),
        case("grad", "geglu_grad", "3x26".into(), &both, |ctx, dtype| {
            let x = data_q(&data(78, 40, dtype).iter().map(|x| x * 3.0).collect::<Vec<_>>(), dtype);
            let dy = data(39, 41, dtype);
            let dx = grad::geglu_grad(ctx, &up(ctx, &x, &[3, 26], dtype)?, &up(ctx, &dy, &[3, 13], dtype)?)?;
            Ok(Outcome { got: dx.to_vec(ctx)?, want: r::geglu_grad(&x, &dy, 13), tol: tol(dtype, 3e-6, 3e-6, 2e-3, 2e-3) })
        }),
        case("grad", "softmax_grad", "3x77".into(), &both, |ctx, dtype| {
            let p = data_q(&r::softmax(&data(231, 42, DType::F32), 77, 4.0), dtype);
            let dp = data(231, 43, dtype);
            let ds = grad::softmax_grad(ctx, &up(ctx, &p, &[3, 77], dtype)?, &up(ctx, &dp, &[3, 77], dtype)?)?;
            Ok(Outcome { got: ds.to_vec(ctx)?, want: r::softmax_grad(&p, &dp, 77), tol: tol(dtype, 1e-7, 1e-5, 1e-5, 2e-3) })
        }),
    ]
}
