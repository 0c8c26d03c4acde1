//! LyCORIS weight deltas (LoHa, LoKr) and DoRA's weight decomposition, as the LyCORIS
//! reference (`lycoris.functional`) and A1111's `extensions-builtin/Lora` compute them. Every
//! weight is seen as a matrix `[out, inner]` (inner = in · kh · kw for convolutions), the
//! layout both the checkpoint and the factors flatten to.

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
