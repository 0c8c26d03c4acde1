//! `pigment selftest`: every kernel variant this adapter can run, checked against the CPU
//! references of [`crate::ops::reference`] at awkward shapes, in f32 and (where the adapter has
//! SHADER_F16) f16. Pigment's test-backend-ops: the first thing to run on a new GPU.
//!
//! A [`Case`] is one problem of one variant of one kernel family; its `run` computes the GPU
//! result and the reference with the tolerance that applies. Families add cases in
//! [`cases`]; a new variant only needs to add its cases there.

mod cases;
mod grad_cases;

use crate::gpu::Context;
use crate::DType;

/// How close a result must be: `|got - want| <= atol + rtol * |want|`, or a bound per element
/// (for sums whose rounding scales with the sum of |terms|, as conv2d).
pub enum Tolerance {
    AbsRel(f32, f32),
    PerElement(Vec<f32>),
}

/// A GPU result beside its reference.
pub struct Outcome {
    pub got: Vec<f32>,
    pub want: Vec<f32>,
    pub tol: Tolerance,
}

type RunFn = Box<dyn Fn(&Context, DType) -> crate::Result<Outcome>>;

pub struct Case {
    /// Kernel family (`gemm`, `conv2d`, ...), as in kernels/ and src/ops/.
    pub family: &'static str,
    /// Variant within the family (`tiled:64x64x16:4x4`; `default` where there is one).
    pub variant: String,
    /// The problem, for the report (`2x37x45x29 tn`).
    pub shape: String,
    /// Which storage dtypes the case runs in (some variants are f16-only).
    pub dtypes: Vec<DType>,
    pub run: RunFn,
}

/// The checks of one variant in one dtype: the worst case over its shapes.
#[derive(Debug, Clone)]
pub struct Line {
    pub family: &'static str,
    pub variant: String,
    pub dtype: DType,
    pub shapes: usize,
    /// Largest |got - want| over every shape.
    pub max_err: f32,
    /// The tolerance at the element with the largest error / tolerance ratio, that ratio, and
    /// its shape.
    pub worst_tol: f32,
    pub worst_ratio: f32,
    pub worst_shape: String,
    /// Errors returned by the op (a variant that fails to compile or run).
    pub failures: Vec<String>,
}

impl Line {
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.worst_ratio <= 1.0
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{:<4} {:<10} {:<24} {:<3} {:>3} shapes  max err {:>9.3e}  worst {:>5.2} of tol {:>9.3e} ({})",
            if self.ok() { "ok" } else { "FAIL" },
            self.family,
            self.variant,
            self.dtype.name(),
            self.shapes,
            self.max_err,
            self.worst_ratio,
            self.worst_tol,
            self.worst_shape
        )?;
        for e in &self.failures {
            write!(f, "\n       error: {e}")?;
        }
        Ok(())
    }
}

/// Compare one outcome: (max |err|, worst err/tol ratio, the tolerance there). NaN, infinities
/// and length mismatches count as infinitely wrong.
pub fn evaluate(o: &Outcome) -> (f32, f32, f32) {
    if o.got.len() != o.want.len() {
        return (f32::INFINITY, f32::INFINITY, 0.0);
    }
    let (mut max_err, mut ratio, mut at) = (0f32, 0f32, 0f32);
    for (i, (&g, &w)) in o.got.iter().zip(&o.want).enumerate() {
        let err = if g.is_finite() { (g - w).abs() } else { f32::INFINITY };
        let tol = match &o.tol {
            Tolerance::AbsRel(a, r) => a + r * w.abs(),
            Tolerance::PerElement(t) => t[i],
        };
        let r = if err == 0.0 { 0.0 } else if tol > 0.0 { err / tol } else { f32::INFINITY };
        max_err = max_err.max(err);
        if r > ratio || i == 0 {
            (ratio, at) = (r.max(ratio), tol);
        }
    }
    (max_err, ratio, at)
}

/// Options: `quick` runs fewer shapes (about a minute on a GPU); `family` keeps one family.
#[derive(Clone, Default)]
pub struct Options {
    pub quick: bool,
    pub family: Option<String>,
}

/// Run every case this adapter can run, calling `line` for each finished variant x dtype.
pub fn run(ctx: &Context, opts: &Options, mut line: impl FnMut(&Line)) -> Vec<Line> {
    let dtypes: Vec<DType> = if ctx.f16 { vec![DType::F32, DType::F16] } else { vec![DType::F32] };
    let mut all = cases::all(ctx, opts.quick);
    if let Some(f) = &opts.family {
        all.retain(|c| c.family == f.as_str());
    }
    let mut lines: Vec<Line> = vec![];
    // Group consecutive cases of one variant (cases lists them variant by variant).
    let mut i = 0;
    while i < all.len() {
        let j = (i..all.len()).find(|&j| all[j].family != all[i].family || all[j].variant != all[i].variant).unwrap_or(all.len());
        for &dtype in &dtypes {
            let group: Vec<&Case> = all[i..j].iter().filter(|c| c.dtypes.contains(&dtype)).collect();
            if group.is_empty() {
                continue;
            }
            let mut l = Line {
                family: all[i].family,
                variant: all[i].variant.clone(),
                dtype,
                shapes: 0,
                max_err: 0.0,
                worst_tol: 0.0,
                worst_ratio: 0.0,
                worst_shape: String::new(),
                failures: vec![],
            };
            for c in group {
                l.shapes += 1;
                match (c.run)(ctx, dtype) {
                    Ok(o) => {
                        let (err, ratio, tol) = evaluate(&o);
                        l.max_err = l.max_err.max(err);
                        if ratio >= l.worst_ratio || l.worst_shape.is_empty() {
                            (l.worst_ratio, l.worst_tol, l.worst_shape) = (ratio, tol, c.shape.clone());
                        }
                    }
                    Err(e) => l.failures.push(format!("{}: {e}", c.shape)),
                }
            }
            line(&l);
            lines.push(l);
        }
        i = j;
    }
    lines
}

/// Uniform values in [-1, 1) from a seed (a small LCG: checks need data, not statistics),
/// rounded through f16 when the storage is f16 so the reference sees the stored inputs.
pub fn data(n: usize, seed: u64, dtype: DType) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let v = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            match dtype {
                DType::F32 => v,
                DType::F16 => half::f16::from_f32(v).to_f32(),
            }
        })
        .collect()
}
