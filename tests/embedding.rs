mod common;
use common::*;
use pigment::ops::embedding;
use pigment::DType;

/// torch-like reference: the same f32 rounding steps as diffusers (exponent and frequency in
/// f32, argument t * freq in f32), then sin/cos in f64 of that f32 argument.
fn ts_ref_torchlike(t: &[f32], dim: usize, flip: bool, shift: f32, max_period: f32) -> Vec<f32> {
    let half = dim / 2;
    let neg_log = -(max_period as f64).ln() as f32;
    let denom = (half as f64 - shift as f64) as f32;
    let mut out = vec![0f32; t.len() * dim];
    for (b, &tv) in t.iter().enumerate() {
        for i in 0..half {
            let freq = ((neg_log * i as f32) / denom) as f64;
            let freq = freq.exp() as f32; // f32 exp, correctly rounded from f64
            let arg = (tv * freq) as f64;
            let (s, c) = (arg.sin() as f32, arg.cos() as f32);
            let (a, z) = if flip { (c, s) } else { (s, c) };
            out[b * dim + i] = a;
            out[b * dim + half + i] = z;
        }
    }
    out
}

/// Pure f64 reference of the formula.
fn ts_ref_f64(t: &[f32], dim: usize, flip: bool, shift: f32, max_period: f32) -> Vec<f32> {
    let half = dim / 2;
    let mut out = vec![0f32; t.len() * dim];
    for (b, &tv) in t.iter().enumerate() {
        for i in 0..half {
            let freq = (-(max_period as f64).ln() * i as f64 / (half as f64 - shift as f64)).exp();
            let arg = tv as f64 * freq;
            let (s, c) = (arg.sin() as f32, arg.cos() as f32);
            let (a, z) = if flip { (c, s) } else { (s, c) };
            out[b * dim + i] = a;
            out[b * dim + half + i] = z;
        }
    }
    out
}

#[test]
fn timestep_embedding_matches_diffusers_formula() {
    let ts = [0.0f32, 1.0, 999.0, 500.5, 981.0, 20.25];
    for dtype in dtypes() {
        for &(dim, flip, shift) in &[(320usize, true, 0.0f32), (33, false, 1.0), (8, true, 1.0)] {
            let got = embedding::timestep_embedding(ctx(), &ts, dim, flip, shift, 10000.0, dtype).unwrap();
            assert_eq!(got.shape(), &[ts.len(), dim]);
            let got = got.to_vec(ctx()).unwrap();
            let what = format!("timestep dim {dim} flip {flip} shift {shift} {dtype:?}");
            // Against torch's f32 steps: only the final sin/cos rounding differs (<= 1 ulp of
            // f32 on values <= 1 -> 1.2e-7; Rust's sinf/cosf are within 1 ulp) -> 3e-7. f16 output
            // rounding -> 2^-12 on values <= 1 -> 5e-4.
            let at = if dtype == DType::F32 { 3e-7 } else { 5e-4 };
            assert_close(&got, &ts_ref_torchlike(&ts, dim, flip, shift, 10000.0), at, 0.0, &what);
            // Against exact f64 maths: f32 rounding of the frequency (a few ulp, ~3e-7 relative)
            // times t <= 999 moves the argument by up to ~3e-4 rad, so sin/cos move by as much.
            assert_close(&got, &ts_ref_f64(&ts, dim, flip, shift, 10000.0), 5e-4, 0.0, &format!("{what} vs f64"));
            if dim % 2 == 1 {
                assert!(got.chunks(dim).all(|r| r[dim - 1] == 0.0), "{what}: odd dim pad");
            }
        }
    }
    // SD: t = 0 gives [cos 0 = 1 ..., sin 0 = 0 ...].
    let z = embedding::timestep_embedding(ctx(), &[0.0], 320, true, 0.0, 10000.0, DType::F32).unwrap().to_vec(ctx()).unwrap();
    assert!(z[..160].iter().all(|&v| v == 1.0) && z[160..].iter().all(|&v| v == 0.0));
}

fn check_lookup(v: usize, d: usize, l: usize, with_pos: bool, seed: u64) {
    for dtype in dtypes() {
        let table = quantize(&rand_vec(v * d, seed), dtype);
        let p = l + 3;
        let pos = quantize(&rand_vec(p * d, seed + 1), dtype);
        let mut ids: Vec<u32> = rand_vec(l, seed + 2).iter().map(|r| ((r + 1.0) / 2.0 * v as f32) as u32 % v as u32).collect();
        // The first and last rows, and a repeated id.
        ids[0] = 0;
        if l > 2 {
            ids[1] = v as u32 - 1;
            ids[2] = ids[0];
        }
        let tt = upload(&table, &[v, d], dtype);
        let tp = upload(&pos, &[p, d], dtype);
        let got = embedding::embedding_lookup(ctx(), &tt, &ids, if with_pos { Some(&tp) } else { None }).unwrap();
        assert_eq!(got.shape(), &[l, d]);
        let mut want = vec![0f32; l * d];
        for (t, &id) in ids.iter().enumerate() {
            for c in 0..d {
                let pv = if with_pos { pos[t * d + c] as f64 } else { 0.0 };
                want[t * d + c] = (table[id as usize * d + c] as f64 + pv) as f32;
            }
        }
        // A gather is exact; with positions, one f32 add (exact here up to its rounding, 6e-8
        // relative) and in f16 the stored sum's rounding (2^-11 relative on values <= 2).
        let (at, rt) = if dtype == DType::F32 { (0.0, 1.2e-7) } else { (1e-3, 1e-3) };
        assert_close(&got.to_vec(ctx()).unwrap(), &want, at, rt, &format!("lookup V{v} D{d} L{l} pos {with_pos} {dtype:?}"));
    }
}

#[test]
fn embedding_lookup_shapes() {
    let _g = LIMIT.read().unwrap_or_else(|e| e.into_inner());
    check_lookup(1000, 37, 77, true, 1);
    check_lookup(50, 768, 5, false, 2);
    check_lookup(3, 1, 1, true, 3);
}

#[test]
fn embedding_lookup_split_table() {
    let _g = Lowered::new();
    // 960 f32 per binding: 25 table rows of 37 per dispatch (40 table ranges), 25 tokens per
    // token range; and rows of 900 (one row per binding).
    ctx().set_max_binding_for_tests(4096);
    check_lookup(1000, 37, 77, true, 4);
    check_lookup(40, 900, 9, true, 5);
    check_lookup(40, 900, 9, false, 6);
    ctx().set_max_binding_for_tests(0);
}

#[test]
fn embedding_lookup_rejects_bad_input() {
    let _g = LIMIT.read().unwrap_or_else(|e| e.into_inner());
    let t = upload(&[0.0; 12], &[4, 3], DType::F32);
    let err = embedding::embedding_lookup(ctx(), &t, &[1, 4], None).unwrap_err().to_string();
    assert!(err.contains("out of range"), "{err}");
    let p = upload(&[0.0; 3], &[1, 3], DType::F32);
    assert!(embedding::embedding_lookup(ctx(), &t, &[1, 2], Some(&p)).is_err());
}
