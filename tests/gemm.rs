mod common;
use common::*;
use pigment::ops::elementwise::Activation;
use pigment::ops::gemm::{matmul, matmul_tiled, matmul_with, GemmOpts, Kernel, Tile};
use pigment::ops::gemm_variants::Blocking;
use pigment::ops::reference::GemmShape;
use pigment::DType;

/// The library's f64 CPU reference (`ops::reference::gemm`, also what `pigment selftest` uses).
#[allow(clippy::too_many_arguments)]
fn reference(a: &[f32], b: &[f32], batch: usize, b_batched: bool, m: usize, n: usize, k: usize, o: &GemmOpts, bias: Option<&[f32]>, res: Option<&[f32]>) -> Vec<f32> {
    let s = GemmShape { batch, b_batched, m, n, k, trans_a: o.trans_a, trans_b: o.trans_b };
    pigment::ops::reference::gemm(&s, a, b, o.alpha, bias, o.act, res)
}

/// f32: the kernel sums K products in a different order than the f64 reference; with inputs in
/// [-1, 1] the error is a few ulps times sqrt(K), far under 1e-4 absolute for K <= 1000.
/// f16: inputs are quantised identically on both sides, products accumulate in f32, and only the
/// stored output is rounded (relative 2^-11), so 2e-3 relative plus a small absolute term.
fn check(batch: usize, b_batched: bool, m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool, with_bias: bool, act: Activation, with_res: bool, tile: Option<Tile>) {
    check_kernel(batch, b_batched, m, n, k, trans_a, trans_b, with_bias, act, with_res, tile.map(Kernel::Register));
}

#[allow(clippy::too_many_arguments)]
fn check_kernel(batch: usize, b_batched: bool, m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool, with_bias: bool, act: Activation, with_res: bool, kernel: Option<Kernel>) {
    // Another test lowers the binding limit (variants_split_at_lowered_limit): not while this runs.
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        let seed = (m * 31 + n * 7 + k) as u64;
        let av = quantize(&rand_vec(batch * m * k, seed), dtype);
        let nb = if b_batched { batch } else { 1 };
        let bv = quantize(&rand_vec(nb * k * n, seed + 1), dtype);
        let biasv = quantize(&rand_vec(n, seed + 2), dtype);
        let resv = quantize(&rand_vec(batch * m * n, seed + 3), dtype);
        let a_shape = if trans_a { [batch, k, m] } else { [batch, m, k] };
        let b_shape: Vec<usize> = if b_batched { vec![batch] } else { vec![] }.into_iter().chain(if trans_b { [n, k] } else { [k, n] }).collect();
        let ta = upload(&av, &a_shape, dtype);
        let tb = upload(&bv, &b_shape, dtype);
        let tbias = upload(&biasv, &[n], dtype);
        let tres = upload(&resv, &[batch, m, n], dtype);
        let o = GemmOpts {
            trans_a,
            trans_b,
            alpha: 0.75,
            bias: with_bias.then_some(&tbias),
            act,
            residual: with_res.then_some(&tres),
        };
        let got = matmul_with(ctx(), &ta, &tb, o, kernel).unwrap();
        assert_eq!(got.shape(), &[batch, m, n]);
        let got = got.to_vec(ctx()).unwrap();
        let want = reference(&av, &bv, batch, b_batched, m, n, k, &o, with_bias.then_some(&biasv[..]), with_res.then_some(&resv[..]));
        let (at, rt) = match dtype {
            DType::F32 => (1e-4, 1e-5),
            DType::F16 => (4e-3, 2e-3),
        };
        assert_close(&got, &want, at, rt, &format!("gemm {batch}x{m}x{n}x{k} ta {trans_a} tb {trans_b} {dtype:?} {kernel:?}"));
    }
}

#[test]
fn awkward_shapes_all_transposes() {
    for &(m, n, k) in &[(1, 1, 1), (37, 45, 29), (65, 130, 77), (3, 300, 5)] {
        for ta in [false, true] {
            for tb in [false, true] {
                check(2, true, m, n, k, ta, tb, false, Activation::Identity, false, None);
            }
        }
    }
}

#[test]
fn shared_weight_with_fused_epilogue() {
    check(3, false, 33, 70, 48, false, true, true, Activation::Silu, true, None);
    check(1, false, 130, 257, 64, false, false, true, Activation::QuickGelu, false, None);
    check(2, false, 9, 40, 16, true, false, true, Activation::Identity, true, None);
}

/// K and N multiples of 4 with row-major operands take the vec4 kernel.
#[test]
fn vectorised_path_at_odd_rows() {
    for tile in [Tile { tm: 8, tn: 8, wg: 64 }, Tile { tm: 3, tn: 4, wg: 16 }, Tile { tm: 16, tn: 16, wg: 8 }, Tile { tm: 32, tn: 8, wg: 8 }] {
        check(1, false, 67, 520, 36, false, false, true, Activation::Identity, true, Some(tile));
    }
    check(2, false, 37, 132, 44, false, false, true, Activation::Silu, true, None);
    check(3, true, 5, 12, 8, false, false, false, Activation::Identity, false, None);
}

#[test]
fn every_tile_shape_is_correct() {
    for tile in [Tile { tm: 8, tn: 1, wg: 64 }, Tile { tm: 16, tn: 4, wg: 64 }, Tile { tm: 4, tn: 8, wg: 32 }, Tile { tm: 1, tn: 1, wg: 16 }] {
        check(2, false, 51, 67, 35, false, false, true, Activation::Identity, false, Some(tile));
        check(1, true, 19, 300, 40, false, true, false, Activation::Identity, true, Some(tile));
    }
}

/// A shared-weight product whose A and C are larger than one 128 MiB binding: the op must split
/// it over rows. Checked on sampled rows (the full CPU reference would be slow).
#[test]
fn splits_over_rows_past_the_binding_limit() {
    let _g = LIMIT.read().unwrap();
    let ctx = ctx();
    let (m, k, n) = (33_000, 1024, 8); // A = 135 MB f32
    let av = rand_vec(m * k, 9);
    let bv = rand_vec(k * n, 10);
    let ta = upload(&av, &[m, k], DType::F32);
    let tb = upload(&bv, &[k, n], DType::F32);
    assert!(ta.byte_len() > ctx.max_binding(), "test must exceed one binding");
    let got = matmul(ctx, &ta, &tb, GemmOpts::default()).unwrap().to_vec(ctx).unwrap();
    for &i in &[0, 1, 16383, 16384, 32767, 32768, m - 1] {
        for j in 0..n {
            let want: f64 = (0..k).map(|kk| av[i * k + kk] as f64 * bv[kk * n + j] as f64).sum();
            assert!((got[i * n + j] as f64 - want).abs() < 1e-3, "row {i} col {j}: {} vs {want}", got[i * n + j]);
        }
    }
}

#[test]
fn mismatched_inner_dims_are_an_error() {
    let _g = LIMIT.read().unwrap();
    let a = upload(&[0.0; 6], &[2, 3], DType::F32);
    let b = upload(&[0.0; 8], &[4, 2], DType::F32);
    let e = matmul(ctx(), &a, &b, GemmOpts::default()).unwrap_err().to_string();
    assert!(e.contains("[2, 3]") && e.contains("[4, 2]"), "{e}");
}

/// Mesa 22's lavapipe silently ends an invocation's loops after 65535 iterations in total. The
/// vec4 kernel runs K/4 iterations and the scalar one K: both must sum every term up to their
/// bound, and past it the op must refuse rather than return a partial sum.
#[test]
fn long_reductions_are_complete() {
    let _g = LIMIT.read().unwrap();
    let (m, n, k) = (3, 8, 59_996);
    // Small integers: every partial sum is exact in f32, so any skipped term shows exactly.
    let av: Vec<f32> = (0..m * k).map(|i| (i % 3) as f32).collect();
    let bv: Vec<f32> = (0..k * n).map(|i| (i % 2) as f32).collect();
    let want = reference(&av, &bv, 1, false, m, n, k, &GemmOpts::default(), None, None);
    for tile in [None, Some(Tile { tm: 8, tn: 1, wg: 64 })] {
        let ta = upload(&av, &[m, k], DType::F32);
        let tb = upload(&bv, &[k, n], DType::F32);
        let got = matmul_tiled(ctx(), &ta, &tb, GemmOpts::default(), tile).unwrap().to_vec(ctx()).unwrap();
        assert_close(&got, &want, 0.0, 0.0, &format!("k={k} {tile:?}"));
    }
    // The vec4 kernel goes 4x further.
    let k = 4 * 59_996;
    let av: Vec<f32> = (0..k).map(|i| (i % 3) as f32).collect();
    let bv: Vec<f32> = (0..k * 4).map(|i| (i % 2) as f32).collect();
    let want = reference(&av, &bv, 1, false, 1, 4, k, &GemmOpts::default(), None, None);
    let (ta, tb) = (upload(&av, &[1, k], DType::F32), upload(&bv, &[k, 4], DType::F32));
    let got = matmul(ctx(), &ta, &tb, GemmOpts::default()).unwrap().to_vec(ctx()).unwrap();
    assert_close(&got, &want, 0.0, 0.0, "vec4 long k");
    if ctx().info.device_type == wgpu::DeviceType::Cpu {
        let t = upload(&[1.0; 70_001], &[1, 70_001], DType::F32);
        let e = matmul(ctx(), &t, &upload(&[1.0; 70_001], &[70_001, 1], DType::F32), GemmOpts::default()).unwrap_err();
        assert!(e.to_string().contains("70001"), "{e}");
    }
}

/// Every GPU-class variant the adapter can run, forced, at awkward shapes (odd M/N/K, K not a
/// multiple of 4 or of BK, 1-row, sizes just over a block edge), every layout, with the fused
/// epilogue. On lavapipe: the tiled kernels and the subgroup kernel (subgroups of 8).
#[test]
fn every_variant_matches_the_reference() {
    let mut kernels: Vec<Kernel> = pigment::ops::gemm_variants::TILED_CANDIDATES.iter().map(|b| Kernel::Tiled(*b)).collect();
    kernels.push(Kernel::Tiled(Blocking { bm: 32, bn: 16, bk: 8, tm: 2, tn: 4 }));
    if ctx().subgroups {
        kernels.extend(pigment::ops::gemm_variants::SUBGROUP_CANDIDATES.iter().map(|t| Kernel::Subgroup(*t)));
    } else {
        eprintln!("no SUBGROUP on this adapter: subgroup variant not run");
    }
    if ctx().coopmat {
        kernels.push(Kernel::CoopMat);
    }
    for kernel in kernels {
        for &(m, n, k) in &[(1, 1, 1), (37, 45, 29), (65, 130, 77), (129, 68, 36)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                if kernel == Kernel::CoopMat && !ctx().f16 {
                    continue;
                }
                check_kernel(2, true, m, n, k, ta, tb, true, Activation::Silu, true, Some(kernel));
            }
        }
        check_kernel(3, false, 70, 132, 44, false, false, true, Activation::QuickGelu, true, Some(kernel));
    }
}

/// The variants split over rows past a lowered binding limit like the register kernel.
#[test]
fn variants_split_at_lowered_limit() {
    let _g = Lowered::new();
    let (m, k, n) = (1000, 64, 36);
    let av = rand_vec(m * k, 21);
    let bv = rand_vec(k * n, 22);
    let want = reference(&av, &bv, 1, false, m, n, k, &GemmOpts::default(), None, None);
    let ta = upload(&av, &[m, k], DType::F32);
    let tb = upload(&bv, &[k, n], DType::F32);
    ctx().set_max_binding_for_tests(64 * 1024);
    let mut kernels = vec![Kernel::Tiled(Blocking { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 })];
    if ctx().subgroups {
        kernels.push(Kernel::Subgroup(Tile { tm: 4, tn: 4, wg: 64 }));
    }
    for kernel in kernels {
        let got = matmul_with(ctx(), &ta, &tb, GemmOpts::default(), Some(kernel)).unwrap().to_vec(ctx()).unwrap();
        assert_close(&got, &want, 1e-4, 1e-5, &format!("split {kernel:?}"));
    }
}

/// Long reductions on the tiled and subgroup kernels: exact integer sums up to the loop budget
/// they declare, and a clear refusal past it on a CPU adapter.
#[test]
fn variants_long_reductions_are_complete() {
    let _g = LIMIT.read().unwrap();
    let tiled = Kernel::Tiled(Blocking { bm: 64, bn: 64, bk: 32, tm: 4, tn: 4 });
    let mut kernels = vec![tiled];
    if ctx().subgroups {
        kernels.push(Kernel::Subgroup(Tile { tm: 4, tn: 4, wg: 64 }));
    }
    let cpu = ctx().info.device_type == wgpu::DeviceType::Cpu;
    for kernel in kernels {
        let (m, n) = (3, 8);
        // The longest K under the budget (every K on a GPU: take 3000).
        let mut k = if cpu { 32 } else { 3000 };
        if cpu {
            while kernel.loop_iters(&problem(m, n, k + 32)) <= pigment::ops::gemm::LAVAPIPE_MAX_LOOP {
                k += 32;
            }
        }
        let av: Vec<f32> = (0..m * k).map(|i| (i % 3) as f32).collect();
        let bv: Vec<f32> = (0..k * n).map(|i| (i % 2) as f32).collect();
        let want = reference(&av, &bv, 1, false, m, n, k, &GemmOpts::default(), None, None);
        let (ta, tb) = (upload(&av, &[m, k], DType::F32), upload(&bv, &[k, n], DType::F32));
        let got = matmul_with(ctx(), &ta, &tb, GemmOpts::default(), Some(kernel)).unwrap().to_vec(ctx()).unwrap();
        assert_close(&got, &want, 0.0, 0.0, &format!("k={k} {kernel:?}"));
        if cpu {
            let k = k + 4096;
            let (ta, tb) = (upload(&vec![1.0; k], &[1, k], DType::F32), upload(&vec![1.0; k], &[k, 1], DType::F32));
            let e = matmul_with(ctx(), &ta, &tb, GemmOpts::default(), Some(kernel)).unwrap_err().to_string();
            assert!(e.contains(&k.to_string()) && e.contains("loop iterations"), "{e}");
        }
    }
}

fn problem(m: usize, n: usize, k: usize) -> pigment::ops::gemm::Problem {
    pigment::ops::gemm::Problem { batch: 1, m, n, k, trans_a: false, trans_b: false, dtype: DType::F32 }
}

/// Every variant's WGSL (the cooperative-matrix one included, which lavapipe cannot run)
/// parses, validates and translates to SPIR-V with naga, the compiler wgpu uses.
#[test]
fn every_variant_validates_with_naga() {
    for dtype in [DType::F32, DType::F16] {
        let mut sources = pigment::ops::gemm_variants::sources_for_validation(dtype);
        assert!(sources.iter().any(|(n, _)| n.starts_with("coopmat")) == (dtype == DType::F16));
        // conv2d's implicit GEMM is built on the tiled core.
        sources.extend(pigment::ops::conv_variants::sources_for_validation(dtype));
        for (name, src) in sources {
            let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
            let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
                .validate(&module)
                .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
            naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
