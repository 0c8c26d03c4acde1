mod common;
use common::*;
use pigment::ops::pixel_shuffle::pixel_unshuffle;
use pigment::ops::reference;

// A pure permutation: bit-exact in either dtype.
#[test]
fn unshuffle_matches_torch_definition() {
    for dtype in dtypes() {
        for (n, c, h, w, r) in [(1, 3, 12, 10, 2), (2, 3, 8, 4, 4), (1, 5, 6, 9, 3), (1, 1, 2, 2, 1)] {
            let x = quantize(&rand_vec(n * c * h * w, 7), dtype);
            let y = pixel_unshuffle(ctx(), &upload(&x, &[n, c, h, w], dtype), r).unwrap();
            assert_eq!(y.shape(), &[n, c * r * r, h / r, w / r]);
            let want = reference::pixel_unshuffle(&x, n, c, h, w, r);
            assert_close(&y.to_vec(ctx()).unwrap(), &want, 0.0, 0.0, &format!("unshuffle {n}x{c}x{h}x{w} r{r} {dtype:?}"));
        }
    }
}

#[test]
fn unshuffle_rejects_indivisible_size() {
    let x = upload(&[0.0; 3 * 5 * 4], &[1, 3, 5, 4], pigment::DType::F32);
    let err = pixel_unshuffle(ctx(), &x, 2).unwrap_err().to_string();
    assert!(err.contains("multiples of 2"), "{err}");
}
