mod common;
use common::*;
use pigment::ops::conv;
use pigment::DType;

struct Case {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

/// CPU reference in f64. Returns the outputs and, per output, the sum of |terms| (the scale the
/// f32 rounding error is relative to).
fn conv_ref(c: &Case, x: &[f32], wt: &[f32], bias: Option<&[f32]>, res: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    let s = pigment::ops::reference::ConvShape { n: c.n, cin: c.cin, h: c.h, w: c.w, cout: c.cout, k: c.k, stride: c.stride, pad: c.pad };
    pigment::ops::reference::conv2d(&s, x, wt, bias, res)
}

/// Tolerance, per output: the GPU sums the same terms in f32 in another order, so its error is
/// bounded by ~K * 2^-24 * sum|terms|; with K up to a few thousand and errors that mostly
/// cancel, 1e-5 * sum|terms| is loose enough for any order yet catches a missing or misplaced
/// term (whose size is ~sum|terms| / K >= 1e-4 * sum|terms| here). f16 storage: inputs are
/// quantised before the reference sees them, so only the output's rounding to f16 (relative
/// 2^-11 ≈ 4.9e-4 of the value, <= that of sum|terms|) and, for input-channel chunks of a split
/// conv, the f16 rounding of each partial sum are added: 2e-3 * sum|terms|.
fn check(got: &[f32], want: &[f32], mag: &[f32], dtype: DType, what: &str) {
    let rel = match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
    };
    assert_eq!(got.len(), want.len(), "{what}: length");
    for i in 0..got.len() {
        let tol = rel * mag[i] + 1e-6;
        assert!(
            (got[i] - want[i]).abs() <= tol,
            "{what}: element {i} got {} want {} (tol {tol})",
            got[i],
            want[i]
        );
    }
}

fn run_case(c: &Case, dtype: DType, with_bias: bool, with_res: bool, seed: u64) {
    let ho = (c.h + 2 * c.pad - c.k) / c.stride + 1;
    let wo = (c.w + 2 * c.pad - c.k) / c.stride + 1;
    let x = quantize(&rand_vec(c.n * c.cin * c.h * c.w, seed), dtype);
    let wt = quantize(&rand_vec(c.cout * c.cin * c.k * c.k, seed + 1), dtype);
    let b = quantize(&rand_vec(c.cout, seed + 2), dtype);
    let r = quantize(&rand_vec(c.n * c.cout * ho * wo, seed + 3), dtype);
    let tx = upload(&x, &[c.n, c.cin, c.h, c.w], dtype);
    let tw = upload(&wt, &[c.cout, c.cin, c.k, c.k], dtype);
    let tb = upload(&b, &[c.cout], dtype);
    let tr = upload(&r, &[c.n, c.cout, ho, wo], dtype);
    let bias = if with_bias { Some(&tb) } else { None };
    let y = if with_res {
        conv::conv2d_residual(ctx(), &tx, &tw, bias, c.stride, c.pad, &tr).unwrap()
    } else {
        conv::conv2d(ctx(), &tx, &tw, bias, c.stride, c.pad).unwrap()
    };
    assert_eq!(y.shape(), &[c.n, c.cout, ho, wo]);
    let got = y.to_vec(ctx()).unwrap();
    let (want, mag) = conv_ref(c, &x, &wt, with_bias.then_some(&b[..]), with_res.then_some(&r[..]));
    let what = format!(
        "conv n{} cin{} {}x{} cout{} k{} s{} p{} bias {with_bias} res {with_res} {dtype:?}",
        c.n, c.cin, c.h, c.w, c.cout, c.k, c.stride, c.pad
    );
    check(&got, &want, &mag, dtype, &what);
}

#[test]
fn conv3x3_awkward_shapes() {
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        // Odd sizes (not multiples of the 8x8 tile), batch > 1, Cin 3 and 4, Cout not a
        // multiple of 8, rows narrower than a tile.
        run_case(&Case { n: 2, cin: 3, h: 13, w: 11, cout: 5, k: 3, stride: 1, pad: 1 }, dtype, true, false, 1);
        run_case(&Case { n: 3, cin: 4, h: 9, w: 19, cout: 17, k: 3, stride: 1, pad: 1 }, dtype, true, true, 2);
        run_case(&Case { n: 1, cin: 20, h: 7, w: 5, cout: 9, k: 3, stride: 1, pad: 0 }, dtype, false, false, 3);
        run_case(&Case { n: 2, cin: 33, h: 17, w: 23, cout: 40, k: 3, stride: 1, pad: 1 }, dtype, true, true, 4);
    }
}

#[test]
fn conv3x3_stride2() {
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        // SD's downsamplers: 3x3, stride 2, padding 1; odd H/W and padding 0 too.
        run_case(&Case { n: 2, cin: 8, h: 15, w: 13, cout: 11, k: 3, stride: 2, pad: 1 }, dtype, true, false, 5);
        run_case(&Case { n: 1, cin: 5, h: 16, w: 17, cout: 8, k: 3, stride: 2, pad: 0 }, dtype, true, false, 6);
        run_case(&Case { n: 1, cin: 3, h: 33, w: 30, cout: 16, k: 3, stride: 2, pad: 1 }, dtype, false, true, 7);
    }
}

#[test]
fn conv1x1() {
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        run_case(&Case { n: 2, cin: 4, h: 9, w: 7, cout: 3, k: 1, stride: 1, pad: 0 }, dtype, true, false, 8);
        run_case(&Case { n: 1, cin: 64, h: 16, w: 21, cout: 24, k: 1, stride: 1, pad: 0 }, dtype, true, true, 9);
        run_case(&Case { n: 3, cin: 3, h: 5, w: 5, cout: 7, k: 1, stride: 2, pad: 0 }, dtype, false, false, 10);
    }
}

#[test]
fn conv_split_at_lowered_limit() {
    let _g = LIMIT.write().unwrap();
    for dtype in dtypes() {
        let es = dtype.size() as u64;
        // Planes of 40x37: a 6 KiB (f32) limit holds a few planes, so input channels, output
        // channels and batch are split, with partial sums accumulated across input chunks.
        ctx().set_max_binding_for_tests(6 * 1024 * es / 4);
        run_case(&Case { n: 2, cin: 9, h: 40, w: 37, cout: 10, k: 3, stride: 1, pad: 1 }, dtype, true, true, 11);
        run_case(&Case { n: 2, cin: 6, h: 41, w: 37, cout: 5, k: 3, stride: 2, pad: 1 }, dtype, true, false, 12);
        // A 2 KiB (f32) limit is smaller than one plane: bands of output rows with input halos.
        ctx().set_max_binding_for_tests(2 * 1024 * es / 4);
        run_case(&Case { n: 2, cin: 3, h: 40, w: 37, cout: 4, k: 3, stride: 1, pad: 1 }, dtype, true, true, 13);
        run_case(&Case { n: 1, cin: 2, h: 45, w: 33, cout: 3, k: 3, stride: 2, pad: 1 }, dtype, true, false, 14);
        run_case(&Case { n: 1, cin: 5, h: 31, w: 29, cout: 6, k: 1, stride: 1, pad: 0 }, dtype, false, true, 15);
        // Too small for one output row and its input halo: a clear error, not a panic.
        ctx().set_max_binding_for_tests(256);
        let x = upload(&vec![0.0; 2 * 40 * 40], &[1, 2, 40, 40], dtype);
        let w = upload(&vec![0.0; 2 * 2 * 9], &[2, 2, 3, 3], dtype);
        let err = conv::conv2d(ctx(), &x, &w, None, 1, 1).unwrap_err().to_string();
        assert!(err.contains("binding"), "{err}");
        ctx().set_max_binding_for_tests(0);
    }
}

/// A real tensor over the device's binding limit (128 MiB on lavapipe): [1, 64, 1100, 512] f32
/// = 144 MB input, reduced to 2 channels (input-channel split with accumulation), then the
/// reverse, 2 -> 64 channels, whose output is over the limit (output-channel split).
#[test]
fn conv_over_device_binding_limit() {
    let _g = LIMIT.read().unwrap();
    let dtype = DType::F32;
    let (h, w) = (1100, 512);
    let big = Case { n: 1, cin: 64, h, w, cout: 2, k: 3, stride: 1, pad: 1 };
    assert!((64 * h * w * 4) as u64 > ctx().max_binding());
    run_case(&big, dtype, true, false, 16);
    let big_out = Case { n: 1, cin: 2, h, w, cout: 64, k: 3, stride: 1, pad: 1 };
    run_case(&big_out, dtype, true, false, 17);
}

#[test]
fn conv_rejects_bad_shapes() {
    let _g = LIMIT.read().unwrap();
    let x = upload(&[0.0; 2 * 3 * 4 * 4], &[2, 3, 4, 4], DType::F32);
    let w = upload(&[0.0; 5 * 4 * 9], &[5, 4, 3, 3], DType::F32);
    let err = conv::conv2d(ctx(), &x, &w, None, 1, 1).unwrap_err().to_string();
    assert!(err.contains("channels"), "{err}");
}

/// `cargo test --release --test conv -- --ignored --nocapture bench`
#[test]
#[ignore]
fn bench_conv3x3_320() {
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        let c: usize = std::env::var("CONV_BENCH_C").ok().and_then(|v| v.parse().ok()).unwrap_or(320);
        let (n, hw) = (2, 64);
        let x = upload(&rand_vec(n * c * hw * hw, 1), &[n, c, hw, hw], dtype);
        let w = upload(&rand_vec(c * c * 9, 2).iter().map(|v| v * 0.05).collect::<Vec<_>>(), &[c, c, 3, 3], dtype);
        let b = upload(&rand_vec(c, 3), &[c], dtype);
        let flops = conv::conv2d_flops(x.shape(), w.shape(), 1, 1);
        let _ = conv::conv2d(ctx(), &x, &w, Some(&b), 1, 1).unwrap();
        ctx().sync().unwrap();
        let iters = 1;
        let t = std::time::Instant::now();
        for _ in 0..iters {
            let _ = conv::conv2d(ctx(), &x, &w, Some(&b), 1, 1).unwrap();
        }
        ctx().sync().unwrap();
        let s = t.elapsed().as_secs_f64() / iters as f64;
        eprintln!("conv3x3 {c}->{c} 64x64 batch 2 {dtype:?}: {:.1} ms, {:.1} GFLOP/s", s * 1e3, flops / s / 1e9);
    }
}


/// Small integers in -r..=r from a seed: products and sums of thousands of them are exact in f32.
fn small_ints(n: usize, r: i32, seed: u64) -> Vec<f32> {
    rand_vec(n, seed).iter().map(|v| ((v + 1.0) * (r as f32 + 0.5)).floor() - r as f32).collect()
}

/// Loop-budget audit: Mesa 22's lavapipe silently ends every loop of an invocation once 65535
/// loop iterations (all loops together) have run in it. SD's longest conv reduction is the UNet
/// up-block concat, Cin = 1280 + 1280 = 2560, at 3x3 (23040 taps) and 1x1; a 6x5 image keeps the
/// reference cheap while each invocation runs the full reduction. Integer data makes every sum
/// exact in f32, so f32 must match exactly: a truncated reduction would drop whole input channels.
/// Past any SD model: Cin = 8192 at 3x3 (73728 taps) and Cin = 70000 at 1x1, which truncated
/// (outputs wrong and unwritten) until conv2d capped the input channels per dispatch.
fn run_exact(c: &Case, dtype: DType, seed: u64) {
    let ho = (c.h + 2 * c.pad - c.k) / c.stride + 1;
    let wo = (c.w + 2 * c.pad - c.k) / c.stride + 1;
    let x = small_ints(c.n * c.cin * c.h * c.w, 2, seed);
    let wt = small_ints(c.cout * c.cin * c.k * c.k, 2, seed + 1);
    let b = small_ints(c.cout, 3, seed + 2);
    let y = conv::conv2d(
        ctx(),
        &upload(&x, &[c.n, c.cin, c.h, c.w], dtype),
        &upload(&wt, &[c.cout, c.cin, c.k, c.k], dtype),
        Some(&upload(&b, &[c.cout], dtype)),
        c.stride,
        c.pad,
    )
    .unwrap();
    assert_eq!(y.shape(), &[c.n, c.cout, ho, wo]);
    let got = y.to_vec(ctx()).unwrap();
    let (want, mag) = conv_ref(c, &x, &wt, Some(&b), None);
    let what = format!("exact conv cin{} k{} {}x{} cout{} {dtype:?}", c.cin, c.k, c.h, c.w, c.cout);
    if dtype == DType::F32 {
        assert_eq!(got, want, "{what}");
    } else {
        check(&got, &want, &mag, dtype, &what);
    }
}

#[test]
fn conv_full_sd_reduction_length() {
    let _g = LIMIT.read().unwrap_or_else(|e| e.into_inner());
    for dtype in dtypes() {
        run_exact(&Case { n: 1, cin: 2560, h: 6, w: 5, cout: 9, k: 3, stride: 1, pad: 1 }, dtype, 40);
        run_exact(&Case { n: 2, cin: 2560, h: 6, w: 5, cout: 9, k: 1, stride: 1, pad: 0 }, dtype, 41);
    }
    run_exact(&Case { n: 1, cin: 8192, h: 4, w: 3, cout: 3, k: 3, stride: 1, pad: 1 }, DType::F32, 42);
    run_exact(&Case { n: 1, cin: 70000, h: 2, w: 3, cout: 2, k: 1, stride: 1, pad: 0 }, DType::F32, 43);
}

/// Small images take the flattened-pixel entry point (`main_flat`): SD's lowest UNet levels at
/// small latents (1x1, 2x2, 4x4, batch 2) with deep reductions (Cin 1280 and 2560 at 3x3, as
/// the up blocks' concats), more output channels than one workgroup covers (520 > 512 at 1x1),
/// the 8x8 -> 4x4 downsampler, 1x1 shortcuts with residual, and a pixel count that is not a
/// multiple of the 8-pixel tile. Against the f64 reference.
#[test]
fn conv_small_spatial_flat() {
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        run_case(&Case { n: 2, cin: 1280, h: 1, w: 1, cout: 520, k: 3, stride: 1, pad: 1 }, dtype, true, true, 50);
        run_case(&Case { n: 2, cin: 2560, h: 2, w: 2, cout: 24, k: 3, stride: 1, pad: 1 }, dtype, true, false, 51);
        run_case(&Case { n: 2, cin: 64, h: 4, w: 4, cout: 70, k: 3, stride: 1, pad: 1 }, dtype, true, true, 52);
        run_case(&Case { n: 2, cin: 40, h: 8, w: 8, cout: 33, k: 3, stride: 2, pad: 1 }, dtype, true, false, 53);
        run_case(&Case { n: 2, cin: 96, h: 4, w: 4, cout: 17, k: 1, stride: 1, pad: 0 }, dtype, true, true, 54);
        run_case(&Case { n: 3, cin: 5, h: 3, w: 5, cout: 9, k: 3, stride: 1, pad: 1 }, dtype, false, false, 55);
    }
}

/// Images wide enough for the row kernel (`main`, whole tensors in one dispatch), beside the
/// flattened one above; 48x48 fills most of its workgroups.
#[test]
fn conv_row_kernel_whole() {
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        run_case(&Case { n: 2, cin: 8, h: 48, w: 45, cout: 12, k: 3, stride: 1, pad: 1 }, dtype, true, true, 56);
        run_case(&Case { n: 1, cin: 6, h: 50, w: 48, cout: 9, k: 1, stride: 1, pad: 0 }, dtype, true, false, 57);
    }
}

