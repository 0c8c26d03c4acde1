mod common;
use common::*;
use pigment::ops::resample;
use pigment::DType;

// Both ops only move values, so results must be bit-exact in either dtype (tolerance 0).

fn up_ref(x: &[f32], n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    pigment::ops::reference::upsample_nearest2x(x, n * c, h, w)
}

fn check_up(dtype: DType, n: usize, c: usize, h: usize, w: usize, seed: u64) {
    let x = quantize(&rand_vec(n * c * h * w, seed), dtype);
    let y = resample::upsample_nearest2x(ctx(), &upload(&x, &[n, c, h, w], dtype)).unwrap();
    assert_eq!(y.shape(), &[n, c, 2 * h, 2 * w]);
    assert_close(&y.to_vec(ctx()).unwrap(), &up_ref(&x, n, c, h, w), 0.0, 0.0, &format!("up2 {n}x{c}x{h}x{w} {dtype:?}"));
}

fn check_cat(dtype: DType, n: usize, ca: usize, cb: usize, h: usize, w: usize, seed: u64) {
    let a = quantize(&rand_vec(n * ca * h * w, seed), dtype);
    let b = quantize(&rand_vec(n * cb * h * w, seed + 1), dtype);
    let y = resample::concat_channels(ctx(), &upload(&a, &[n, ca, h, w], dtype), &upload(&b, &[n, cb, h, w], dtype)).unwrap();
    assert_eq!(y.shape(), &[n, ca + cb, h, w]);
    let hw = h * w;
    let mut want = vec![];
    for i in 0..n {
        want.extend_from_slice(&a[i * ca * hw..(i + 1) * ca * hw]);
        want.extend_from_slice(&b[i * cb * hw..(i + 1) * cb * hw]);
    }
    assert_close(&y.to_vec(ctx()).unwrap(), &want, 0.0, 0.0, &format!("concat {n}x({ca}+{cb})x{h}x{w} {dtype:?}"));
}

#[test]
fn upsample_awkward_shapes() {
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        check_up(dtype, 2, 3, 5, 7, 1);
        check_up(dtype, 1, 4, 1, 1, 2);
        check_up(dtype, 3, 5, 9, 13, 3);
    }
}

#[test]
fn concat_awkward_shapes() {
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        check_cat(dtype, 2, 3, 5, 7, 9, 4);
        check_cat(dtype, 1, 1, 1, 3, 3, 5);
        check_cat(dtype, 3, 7, 2, 5, 11, 6);
    }
}

#[test]
fn split_at_lowered_limit() {
    let _g = LIMIT.write().unwrap();
    for dtype in dtypes() {
        ctx().set_max_binding_for_tests(2048);
        check_up(dtype, 2, 3, 17, 19, 7);
        check_cat(dtype, 3, 5, 4, 13, 11, 8);
        ctx().set_max_binding_for_tests(0);
    }
}

/// Over the device's real limit: [1, 16, 1100, 512] f32 (36 MB) upsampled to 144 MB.
#[test]
fn upsample_over_device_binding_limit() {
    let _g = LIMIT.read().unwrap();
    check_up(DType::F32, 1, 16, 1100, 512, 9);
}

#[test]
fn transpose_last2_matches_cpu() {
    use pigment::ops::resample::transpose_last2;
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        for &(b, m, n) in &[(1usize, 1usize, 1usize), (3, 17, 33), (2, 64, 5), (1, 300, 257)] {
            let x = quantize(&rand_vec(b * m * n, (m * n) as u64), dtype);
            let y = transpose_last2(ctx(), &upload(&x, &[b, m, n], dtype)).unwrap();
            assert_eq!(y.shape(), &[b, n, m]);
            let got = y.to_vec(ctx()).unwrap();
            for z in 0..b {
                for i in 0..m {
                    for j in 0..n {
                        assert_eq!(got[z * m * n + j * m + i], x[z * m * n + i * n + j], "{b}x{m}x{n} ({z},{i},{j}) {dtype:?}");
                    }
                }
            }
        }
    }
}

/// torch's `interpolate(size=(ho, wo), mode="nearest")`: source index floor(dst · in / out),
/// computed here in f64 as torch does with its float scale (equal to the kernel's integer
/// division at these sizes).
fn resize_ref(x: &[f32], nc: usize, (h, w): (usize, usize), (ho, wo): (usize, usize)) -> Vec<f32> {
    pigment::ops::reference::resize_nearest(x, nc, (h, w), (ho, wo))
}

#[test]
fn resize_nearest_awkward_shapes() {
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        // 2H − 1 (the UNet's odd skips), plain 2x, a shrink and an uneven stretch
        for (i, (n, c, h, w, ho, wo)) in [(2, 3, 5, 4, 9, 7), (1, 4, 3, 3, 6, 6), (2, 2, 9, 13, 5, 7), (1, 3, 4, 5, 11, 3)].into_iter().enumerate() {
            let x = quantize(&rand_vec(n * c * h * w, 10 + i as u64), dtype);
            let y = resample::resize_nearest(ctx(), &upload(&x, &[n, c, h, w], dtype), ho, wo).unwrap();
            assert_eq!(y.shape(), &[n, c, ho, wo]);
            let want = resize_ref(&x, n * c, (h, w), (ho, wo));
            assert_close(&y.to_vec(ctx()).unwrap(), &want, 0.0, 0.0, &format!("resize {n}x{c}x{h}x{w} -> {ho}x{wo} {dtype:?}"));
        }
    }
}
