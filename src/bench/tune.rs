//! `pigment tune`: time every GEMM variant and tile that can run each of a model's GEMM
//! problems on this adapter, then every attention and norm variant on its attention and norm
//! problems, print the tables, and cache the winners (`ops::gemm_tune::disk`).

use crate::error::Result;
use crate::gpu::Context;
use crate::ops::conv_variants::{self, ConvProblem};
use crate::ops::gemm::{self, GemmOpts, Problem};
use crate::ops::attention::{self, AttnInput};
use crate::ops::attention_variants::{self, AttnKernel, AttnProblem};
use crate::ops::gemm_tune::{self, disk};
use crate::ops::norm::{self, NormKernel, NormProblem};
use crate::{DType, Tensor};

/// The problems to tune, per family (GEMM, attention, norms): SD 1.5's UNet at `latent`, or
/// those `model`'s UNet issues (learnt by running one evaluation with recording on).
pub fn problems(ctx: &Context, dtypes: &[DType], latent: usize, model: Option<&std::path::Path>) -> Result<(Vec<Problem>, Vec<AttnProblem>, Vec<NormProblem>)> {
    match model {
        None => Ok((
            dtypes.iter().flat_map(|&d| gemm_tune::sd15_unet_problems(latent, d)).collect(),
            dtypes.iter().flat_map(|&d| attention_variants::sd15_unet_problems(latent, d)).collect(),
            dtypes.iter().flat_map(|&d| norm::sd15_unet_problems(latent, d)).collect(),
        )),
        Some(dir) => {
            gemm_tune::set_recording(true);
            attention_variants::set_recording(true);
            norm::set_recording(true);
            conv_variants::set_recording(true);
            let run = super::model_rows(ctx, dtypes, latent, Some(dir), super::ModelBench::Unet, false, false);
            let seen = gemm_tune::set_recording(false);
            *RECORDED_CONVS.lock().unwrap() = conv_variants::set_recording(false);
            let (attn, norms) = (attention_variants::set_recording(false), norm::set_recording(false));
            run?;
            Ok((seen, attn, norms))
        }
    }
}

/// The conv problems `problems` recorded from a model (taken by [`conv_problems`]).
static RECORDED_CONVS: std::sync::Mutex<Vec<ConvProblem>> = std::sync::Mutex::new(vec![]);

/// The convolutions to tune (those not run as GEMMs): SD 1.5's UNet at `latent`, or those
/// the model run by [`problems`] issued.
pub fn conv_problems(ctx: &Context, dtypes: &[DType], latent: usize, model: Option<&std::path::Path>) -> Vec<ConvProblem> {
    let all = match model {
        None => dtypes.iter().flat_map(|&d| conv_variants::sd15_unet_convs(latent, d)).collect(),
        Some(_) => std::mem::take(&mut *RECORDED_CONVS.lock().unwrap()),
    };
    all.into_iter().filter(|p| conv_variants::candidates(ctx, p).len() > 1).collect()
}

pub fn run(ctx: &Context, dtypes: &[DType], latent: usize, model: Option<&std::path::Path>, secs: f64, save: bool, limit: Option<usize>) -> anyhow::Result<()> {
    let (mut problems, mut attn, mut norms) = problems(ctx, dtypes, latent, model)?;
    problems.truncate(limit.unwrap_or(usize::MAX));
    attn.truncate(limit.unwrap_or(usize::MAX));
    norms.truncate(limit.unwrap_or(usize::MAX));
    println!("tuning {} GEMM problems on {} (latent {latent}, {secs} s per candidate); per problem, candidates fastest first:", problems.len(), ctx.describe());
    let mut choices = std::collections::HashMap::new();
    for p in &problems {
        let (winner, line) = tune_one(ctx, p, secs)?;
        println!("{line}");
        choices.insert(gemm_tune::problem_key(p), winner.name());
        ctx.gemm_choices.lock().unwrap().insert(gemm_tune::problem_key(p), winner.name());
        // Saved as it goes, so a run cut short still keeps what it measured.
        if save {
            disk::save(ctx, &choices)?;
        }
    }
    println!("tuning {} attention and {} norm problems; per problem, variants fastest first:", attn.len(), norms.len());
    let mut pick = |key: String, winner: String, line: String| -> anyhow::Result<()> {
        println!("{line}");
        ctx.gemm_choices.lock().unwrap().insert(key.clone(), winner.clone());
        choices.insert(key, winner);
        if save {
            disk::save(ctx, &choices)?;
        }
        Ok(())
    };
    for p in &attn {
        let (w, line) = tune_attention(ctx, p, secs)?;
        pick(p.key(), w.name(), line)?;
    }
    for p in &norms {
        let (w, line) = tune_norm(ctx, p, secs)?;
        pick(p.key(), w.name().to_string(), line)?;
    }
    let convs = conv_problems(ctx, dtypes, latent, model);
    println!("tuning {} conv2d problems (1x1 and centre-tap convolutions run as GEMMs):", convs.len());
    for p in &convs {
        let (winner, line) = tune_conv(ctx, p, secs)?;
        println!("{line}");
        choices.insert(conv_variants::problem_key(p), winner.name());
        ctx.gemm_choices.lock().unwrap().insert(conv_variants::problem_key(p), winner.name());
        if save {
            disk::save(ctx, &choices)?;
        }
    }
    if save {
        let path = disk::save(ctx, &choices)?;
        println!("cached {} choices for '{}' in {}", choices.len(), disk::adapter_key(&ctx.info), path.display());
    }
    Ok(())
}

/// Time every candidate on random operands of `p`; the winner and a table line.
pub fn tune_one(ctx: &Context, p: &Problem, secs: f64) -> Result<(gemm::Kernel, String)> {
    let a_shape = if p.trans_a { [p.batch, p.k, p.m] } else { [p.batch, p.m, p.k] };
    let b_inner = if p.trans_b { [p.n, p.k] } else { [p.k, p.n] };
    let b_shape: Vec<usize> = if p.batch > 1 { vec![p.batch, b_inner[0], b_inner[1]] } else { b_inner.to_vec() };
    let a = Tensor::from_f32(ctx, &super::random(p.batch * p.m * p.k, 1), &a_shape, p.dtype)?;
    let b = Tensor::from_f32(ctx, &super::random(b_shape.iter().product(), 2), &b_shape, p.dtype)?;
    let o = GemmOpts { trans_a: p.trans_a, trans_b: p.trans_b, ..Default::default() };
    let flops = gemm::flops(p.m, p.n, p.k) * p.batch as f64;
    let mut timed = vec![];
    for k in gemm_tune::candidates(ctx, p) {
        match gemm_tune::time(ctx, 3, secs, || gemm::matmul_with(ctx, &a, &b, o, Some(k)).map(drop)) {
            Ok(ms) => timed.push((k, ms)),
            Err(e) => eprintln!("  {} {} failed: {e}", gemm_tune::problem_key(p), k.name()),
        }
    }
    timed.sort_by(|x, y| x.1.partial_cmp(&y.1).unwrap_or(std::cmp::Ordering::Greater));
    let winner = timed.first().map(|t| t.0).unwrap_or_else(|| gemm_tune::fixed(ctx, p));
    let cells: Vec<String> = timed.iter().map(|(k, ms)| format!("{} {:.3} ms {:.0} GF/s", k.name(), ms, flops / ms / 1e6)).collect();
    Ok((winner, format!("{:<28} {}", gemm_tune::problem_key(p), cells.join(" | "))))
}

/// Time named variants with `run`; the fastest (or `fallback` if none ran) and a table line
/// with `rate(ms)` beside each time.
#[allow(clippy::too_many_arguments)]
fn table<K: Copy>(ctx: &Context, key: &str, cands: Vec<K>, name: impl Fn(&K) -> String, secs: f64, rate: impl Fn(f64) -> String, fallback: K, mut run: impl FnMut(K) -> Result<()>) -> (K, String) {
    let mut timed = vec![];
    for k in cands {
        match gemm_tune::time(ctx, 3, secs, || run(k)) {
            Ok(ms) => timed.push((k, ms)),
            Err(e) => eprintln!("  {key} {} failed: {e}", name(&k)),
        }
    }
    timed.sort_by(|x, y| x.1.partial_cmp(&y.1).unwrap_or(std::cmp::Ordering::Greater));
    let winner = timed.first().map(|t| t.0).unwrap_or(fallback);
    let cells: Vec<String> = timed.iter().map(|(k, ms)| format!("{} {:.3} ms {}", name(k), ms, rate(*ms))).collect();
    (winner, format!("{key:<36} {}", cells.join(" | ")))
}

/// Time every attention variant that can run `p` on random operands.
pub fn tune_attention(ctx: &Context, p: &AttnProblem, secs: f64) -> Result<(AttnKernel, String)> {
    let w = p.heads * p.head_dim;
    let q = Tensor::from_f32(ctx, &super::random(p.batch * p.lq * w, 1), &[p.batch, p.lq, w], p.dtype)?;
    let k = Tensor::from_f32(ctx, &super::random(p.batch * p.lk * w, 2), &[p.batch, p.lk, w], p.dtype)?;
    let flops = 4.0 * (p.batch * p.heads * p.lq * p.lk * p.head_dim) as f64;
    let scale = 1.0 / (p.head_dim as f32).sqrt();
    Ok(table(ctx, &p.key(), attention_variants::candidates(ctx, p), |k| k.name(), secs, |ms| format!("{:.1} GF/s", flops / ms / 1e6), attention_variants::fixed(ctx, p), |kern| {
        let (qi, ki) = (AttnInput::whole(&q), AttnInput::whole(&k));
        attention::attention_strided_with(ctx, qi, ki, ki, p.heads, p.head_dim, scale, p.causal, Some(kern)).map(drop)
    }))
}

/// Time every norm variant that can run `p` on random data.
pub fn tune_norm(ctx: &Context, p: &NormProblem, secs: f64) -> Result<(NormKernel, String)> {
    let (shape, c, dtype) = match *p {
        NormProblem::Group { n, c, hw, dtype, .. } => (vec![n, c, hw], c, dtype),
        NormProblem::Layer { rows, d, dtype } => (vec![rows, d], d, dtype),
    };
    let numel: usize = shape.iter().product();
    let x = Tensor::from_f32(ctx, &super::random(numel, 3), &shape, dtype)?;
    let w = Tensor::from_f32(ctx, &super::random(c, 4), &[c], dtype)?;
    let bytes = norm::norm_bytes(numel, dtype);
    Ok(table(ctx, &p.key(), norm::candidates(ctx, p), |k| k.name().to_string(), secs, |ms| format!("{:.1} GB/s", bytes / ms / 1e6), norm::fixed(ctx, p), |kern| match *p {
        NormProblem::Group { groups, .. } => norm::group_norm_with(ctx, &x, groups, &w, &w, 1e-5, true, Some(kern)).map(drop),
        NormProblem::Layer { .. } => norm::layer_norm_with(ctx, &x, &w, &w, 1e-5, Some(kern)).map(drop),
    }))
}

/// Time every conv2d variant that can run `p`; the winner and a table line.
pub fn tune_conv(ctx: &Context, p: &ConvProblem, secs: f64) -> Result<(conv_variants::ConvKernel, String)> {
    use crate::ops::conv;
    let x = Tensor::from_f32(ctx, &super::random(p.n * p.cin * p.h * p.w, 1), &[p.n, p.cin, p.h, p.w], p.dtype)?;
    let w = conv::ConvWeight::new(Tensor::from_f32(ctx, &super::random(p.cout * p.k(), 2), &[p.cout, p.cin, p.kh, p.kw], p.dtype)?);
    let b = Tensor::from_f32(ctx, &super::random(p.cout, 3), &[p.cout], p.dtype)?;
    let flops = conv::conv2d_flops(x.shape(), w.tensor().shape(), p.stride, p.pad);
    let mut timed = vec![];
    for k in conv_variants::candidates(ctx, p) {
        match gemm_tune::time(ctx, 3, secs, || conv::conv2d_with(ctx, &x, &w, Some(&b), p.stride, p.pad, None, Some(k)).map(drop)) {
            Ok(ms) => timed.push((k, ms)),
            Err(e) => eprintln!("  {} {} failed: {e}", conv_variants::problem_key(p), k.name()),
        }
    }
    timed.sort_by(|x, y| x.1.partial_cmp(&y.1).unwrap_or(std::cmp::Ordering::Greater));
    let winner = timed.first().map(|t| t.0).unwrap_or_else(|| conv_variants::fixed(ctx, p));
    let cells: Vec<String> = timed.iter().map(|(k, ms)| format!("{} {:.3} ms {:.1} GF/s", k.name(), ms, flops / ms / 1e6)).collect();
    Ok((winner, format!("{:<40} {}", conv_variants::problem_key(p), cells.join(" | "))))
}

/// `pigment adapters`: the variants this build has and what `pigment tune` cached for `info`.
pub fn print_choices(info: &wgpu::AdapterInfo) {
    match disk::load_for(info) {
        Some(c) if !c.is_empty() => {
            // Keys are family-prefixed (`attention:`, `group_norm:`, `layer_norm:`), GEMM's are not.
            for family in ["gemm", "conv2d", "attention", "group_norm", "layer_norm"] {
                let of = |key: &str| match key.split_once(':') {
                    Some((f, _)) if ["attention", "group_norm", "layer_norm", "conv2d"].contains(&f) => f == family,
                    _ => family == "gemm",
                };
                let mut by_kernel: std::collections::BTreeMap<String, usize> = Default::default();
                for (_, k) in c.iter().filter(|(key, _)| of(key)) {
                    *by_kernel.entry(k.clone()).or_default() += 1;
                }
                let n: usize = by_kernel.values().sum();
                let list: Vec<String> = by_kernel.iter().map(|(k, n)| format!("{k} ({n})")).collect();
                if n > 0 {
                    println!("   {family} tuned for {n} problems: {}", list.join(", "));
                }
            }
            if std::env::var("PIGMENT_VERBOSE").is_ok_and(|v| v != "0") {
                let mut rows: Vec<_> = c.iter().collect();
                rows.sort();
                for (p, k) in rows {
                    println!("     {p:<28} {k}");
                }
            }
        }
        _ => println!("   gemm: not tuned (run `pigment tune`; until then first use measures on GPUs, fixed ranking on CPU adapters)"),
    }
}
