//! LyCORIS weight deltas (LoHa, LoKr) and DoRA's weight decomposition, as the LyCORIS
//! reference (`lycoris.functional`) and A1111's `extensions-builtin/Lora` compute them. Every
//! weight is seen as a matrix `[out, inner]` (inner = in · kh · kw for convolutions), the
//! layout both the checkpoint and the factors flatten to.

use super::{check_fit, err, Factor, Kind, Lora, Pair};
use crate::error::Result;

/// `a [m, k] @ b [k, n]`.
pub(super) fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        let row = &mut out[i * n..(i + 1) * n];
        for p in 0..k {
            let x = a[i * k + p];
            if x != 0.0 {
                for (o, &y) in row.iter_mut().zip(&b[p * n..(p + 1) * n]) {
                    *o += x * y;
                }
            }
        }
    }
    out
}

/// LoHa: `(w1a @ w1b) ⊙ (w2a @ w2b)`, w1a `[out, r1]`, w1b `[r1, inner]`, w2a `[out, r2]`,
/// w2b `[r2, inner]`.
pub(super) fn loha(w1: (&[f32], &[f32]), w2: (&[f32], &[f32]), out: usize, inner: usize) -> Vec<f32> {
    let (r1, r2) = (w1.0.len() / out, w2.0.len() / out);
    let mut d = matmul(w1.0, w1.1, out, r1, inner);
    for (x, y) in d.iter_mut().zip(matmul(w2.0, w2.1, out, r2, inner)) {
        *x *= y;
    }
    d
}

/// LoKr: `kron(w1 [a, b], w2 [c, e])` = `[a·c, b·e]`, element `[i·c + k, j·e + l]` =
/// `w1[i, j] · w2[k, l]` (a convolution's `w2 [c, d, kh, kw]` flattens to `e = d·kh·kw`, and
/// the product flattens to the weight's `[out, in·kh·kw]`).
pub(super) fn kron(w1: &[f32], (a, b): (usize, usize), w2: &[f32], (c, e): (usize, usize)) -> Vec<f32> {
    let inner = b * e;
    let mut d = vec![0f32; a * c * inner];
    for i in 0..a {
        for j in 0..b {
            let s = w1[i * b + j];
            for k in 0..c {
                let row = (i * c + k) * inner + j * e;
                for (o, &y) in d[row..row + e].iter_mut().zip(&w2[k * e..(k + 1) * e]) {
                    *o = s * y;
                }
            }
        }
    }
    d
}

/// DoRA: `W ← W · (mult · (m / ‖W‖ − 1) + 1)`, where `W` already holds the merged weight
/// (base + scale·ΔW), the norms are per output row (`per_out`, LyCORIS `wd_on_out`) or per input
/// channel over (out, kh, kw), plus f32 epsilon as LyCORIS adds, and `m` is `dora_scale`.
pub(super) fn weight_decompose(w: &mut [f32], out: usize, in_ch: usize, m: &[f32], per_out: bool, mult: f32) {
    let spatial = w.len() / (out * in_ch);
    let inner = in_ch * spatial;
    let norms: Vec<f32> = if per_out {
        (0..out).map(|o| w[o * inner..(o + 1) * inner].iter().map(|x| x * x).sum::<f32>().sqrt()).collect()
    } else {
        let mut sq = vec![0f32; in_ch];
        for (i, x) in w.iter().enumerate() {
            sq[(i % inner) / spatial] += x * x;
        }
        sq.into_iter().map(f32::sqrt).collect()
    };
    for (i, x) in w.iter_mut().enumerate() {
        let c = if per_out { i / inner } else { (i % inner) / spatial };
        let scale = m[c] / (norms[c] + f32::EPSILON);
        *x *= mult * (scale - 1.0) + 1.0;
    }
}

/// The dense `[out, inner]` ΔW of a pair, unscaled (LoRA `up @ down` when DoRA needs it whole,
/// LoHa, LoKr); shapes were checked by [`check_pair`].
pub(super) fn dense_delta(lora: &Lora, p: &Pair, out: usize, inner: usize) -> Result<Vec<f32>> {
    let get = |k: &str| lora.file.get(k);
    let f32s = |k: &str| get(k).and_then(|t| t.to_f32());
    Ok(match &p.kind {
        Kind::Lora { down, up } => {
            let (d, u) = (f32s(down)?, f32s(up)?);
            matmul(&u, &d, out, u.len() / out, inner)
        }
        Kind::LoHa { w1a, w1b, w2a, w2b } => loha((&f32s(w1a)?, &f32s(w1b)?), (&f32s(w2a)?, &f32s(w2b)?), out, inner),
        Kind::LoKr { w1, w2 } => {
            let whole = |f: &Factor| -> Result<(Vec<f32>, usize)> {
                Ok(match f {
                    Factor::Full(n) => (f32s(n)?, get(n)?.shape[0]),
                    Factor::Pair(a, b) => {
                        let (ta, vb) = (get(a)?, f32s(b)?);
                        let (rows, r) = (ta.shape[0], ta.shape[1]);
                        (matmul(&ta.to_f32()?, &vb, rows, r, vb.len() / r), rows)
                    }
                })
            };
            let ((v1, a), (v2, c)) = (whole(w1)?, whole(w2)?);
            kron(&v1, (a, v1.len() / a), &v2, (c, v2.len() / c))
        }
    })}

/// Error unless the pair's tensors fit the target's shape `wshape`; returns the rank its
/// `alpha` divides by (`None`: a LoKr with no factored half, scale 1).
pub(super) fn check_pair(lora: &Lora, p: &Pair, target: &str, wshape: &[usize]) -> Result<Option<usize>> {
    let path = lora.path();
    let shape_of = |k: &str| lora.file.info(k).map(|(_, s)| s.to_vec()).unwrap_or_default();
    let (out, numel) = (wshape.first().copied().unwrap_or(0), wshape.iter().product::<usize>());
    let inner = if out > 0 { numel / out } else { 0 };
    // Saturating: a non-float tensor's dims are not bounded by the file; an overflowed size
    // (usize::MAX) never equals a real weight's, so it is a misfit, not a panic.
    let numel_of = |s: &[usize]| s.iter().fold(1usize, |a, &d| a.saturating_mul(d));
    let misfit = |names: Vec<&String>| -> crate::Error {
        let shapes: Vec<String> = names.iter().map(|n| format!("'{n}' {:?}", shape_of(n))).collect();
        err(path, format!("LyCORIS tensors {} do not fit the model's '{target}' {wshape:?} (a LoRA for another model architecture?)", shapes.join(", "))).into()
    };
    let rank = match &p.kind {
        Kind::Lora { down, up } => {
            let d = shape_of(down);
            check_fit(path, (down, &d), (up, &shape_of(up)), target, wshape)?;
            Some(d[0])
        }
        Kind::LoHa { w1a, w1b, w2a, w2b } => {
            let fits = |a: &String, b: &String| {
                let (sa, sb) = (shape_of(a), shape_of(b));
                sa.len() == 2 && sa[0] == out && sa[1] > 0 && sb.first() == Some(&sa[1]) && Some(numel_of(&sb)) == sa[1].checked_mul(inner)
            };
            if out == 0 || !fits(w1a, w1b) || !fits(w2a, w2b) {
                return Err(misfit(p.tensors()));
            }
            Some(shape_of(w1b)[0])
        }
        Kind::LoKr { w1, w2 } => {
            // (rows, columns, rank if factored) of each half.
            let dims = |f: &Factor| -> Option<(usize, usize, Option<usize>)> {
                match f {
                    Factor::Full(n) => {
                        let s = shape_of(n);
                        (s.len() >= 2 && s[0] > 0).then(|| (s[0], numel_of(&s) / s[0], None))
                    }
                    Factor::Pair(a, b) => {
                        let (sa, sb) = (shape_of(a), shape_of(b));
                        (sa.len() == 2 && sa[1] > 0 && sb.first() == Some(&sa[1])).then(|| (sa[0], numel_of(&sb) / sa[1], Some(sa[1])))
                    }
                }
            };
            match (dims(w1), dims(w2)) {
                (Some((a, b, r1)), Some((c, e, r2))) if a.checked_mul(c) == Some(out) && b.checked_mul(e) == Some(inner) && out > 0 => r1.or(r2),
                _ => return Err(misfit(p.tensors())),
            }
        }
    };
    if let Some(d) = &p.dora {
        let s = shape_of(d);
        let in_ch = wshape.get(1).copied().unwrap_or(0);
        let per_out = s.first() == Some(&out) && numel_of(&s) == out;
        let per_in = s.len() >= 2 && s[0] == 1 && s[1] == in_ch && numel_of(&s) == in_ch;
        if !per_out && !per_in {
            return Err(err(path, format!("DoRA '{d}' {s:?} fits neither the output rows ([{out}, 1, ..]) nor the input channels ([1, {in_ch}, ..]) of '{target}' {wshape:?}")).into());
        }
    }
    Ok(rank)
}

