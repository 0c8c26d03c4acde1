//! Kernel microbenchmarks (`pigment bench`): SD-shaped problems, timed on the GPU, beside a CPU
//! baseline measured in the same run so the numbers read as ratios on any machine.

use crate::error::Result;
use crate::gpu::Context;
use crate::ops::gemm::{self, GemmOpts};
use crate::ops::attention::{self, AttnInput};
use crate::ops::{attention_variants, conv, norm};
use crate::{DType, Tensor};
use std::time::Instant;

pub mod tune;

/// One row of the table.
pub struct Row {
    pub kernel: String,
    pub shape: String,
    pub dtype: &'static str,
    pub ms: f64,
    /// GFLOP/s for compute kernels, GB/s for bandwidth-bound ones.
    pub rate: f64,
    pub unit: &'static str,
    /// The same problem on the CPU (gemm crate, all cores), in ms.
    pub cpu_ms: Option<f64>,
}

/// Median-free but robust enough: warm up once (pipeline compile), then repeat until at least
/// `min_secs` have passed (and at least 3 runs), and report the mean.
pub fn time_gpu(ctx: &Context, min_secs: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    ctx.sync()?;
    let start = Instant::now();
    let mut runs = 0;
    while runs < 3 || start.elapsed().as_secs_f64() < min_secs {
        f()?;
        ctx.sync()?;
        runs += 1;
    }
    Ok(start.elapsed().as_secs_f64() * 1e3 / runs as f64)
}

pub fn time_cpu(min_secs: f64, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut runs = 0;
    while runs < 3 || start.elapsed().as_secs_f64() < min_secs {
        f();
        runs += 1;
    }
    start.elapsed().as_secs_f64() * 1e3 / runs as f64
}

/// C[m×n] = A[m×k]·B[k×n] on the CPU with the `gemm` crate (row-major, all threads).
pub fn cpu_gemm(a: &[f32], b: &[f32], c: &mut [f32], m: usize, n: usize, k: usize) {
    // SAFETY: the slices hold m*k, k*n and m*n elements, matching the strides given.
    unsafe {
        ::gemm::gemm(
            m, n, k,
            c.as_mut_ptr(), 1, n as isize, false,
            a.as_ptr(), 1, k as isize,
            b.as_ptr(), 1, n as isize,
            0.0, 1.0, false, false, false,
            ::gemm::Parallelism::Rayon(0),
        );
    }
}

pub(crate) fn random(n: usize, seed: u64) -> Vec<f32> {
    // A small LCG: benchmarks need data, not statistics.
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// SD-shaped GEMMs: the UNet's 320-wide linear layers at 64×64 latents (4096 tokens).
pub fn gemm_rows(ctx: &Context, dtypes: &[DType], min_secs: f64) -> Result<Vec<Row>> {
    let mut rows = vec![];
    for &(m, n, k) in &[(4096usize, 320usize, 320usize), (4096, 1280, 320), (4096, 320, 1280)] {
        let a = random(m * k, 1);
        let b = random(k * n, 2);
        let mut c = vec![0f32; m * n];
        let cpu_ms = time_cpu(min_secs, || cpu_gemm(&a, &b, &mut c, m, n, k));
        for &dtype in dtypes {
            let ta = Tensor::from_f32(ctx, &a, &[m, k], dtype)?;
            let tb = Tensor::from_f32(ctx, &b, &[k, n], dtype)?;
            let ms = time_gpu(ctx, min_secs, || gemm::matmul(ctx, &ta, &tb, GemmOpts::default()).map(drop))?;
            rows.push(Row {
                kernel: "gemm".into(),
                shape: format!("{m}x{n}x{k}"),
                dtype: dtype.name(),
                ms,
                rate: gemm::flops(m, n, k) / ms / 1e6,
                unit: "GFLOP/s",
                cpu_ms: Some(cpu_ms),
            });
        }
    }
    Ok(rows)
}

/// How big the benchmark problems are. SD's real shapes take minutes per case on a software
/// rasteriser, so CPU adapters default to the same shapes at batch 1 (and one attention head);
/// `--full` forces the SD shapes everywhere.
#[derive(Clone, Copy)]
pub struct Scale {
    pub batch: usize,
    pub heads: usize,
}

impl Scale {
    pub fn for_adapter(ctx: &Context, full: bool) -> Scale {
        if full || ctx.info.device_type != wgpu::DeviceType::Cpu {
            Scale { batch: 2, heads: 8 }
        } else {
            Scale { batch: 1, heads: 1 }
        }
    }
}

/// SD UNet convolutions: 3x3 320->320 at 64x64 (level 1), 4->320 (conv_in), the level-1
/// downsampler (stride 2), a 1x1 shortcut 640->1280 at 16x16 and 3x3 2560->1280 on a 1x1 image
/// (the lowest level at latent 8, where only the centre tap sees data). Each runs the variant
/// the op chooses, and `direct` beside it where that is another one. The CPU baseline is the
/// same implicit GEMM (Cout x Ho*Wo x Cin*k*k, Cin alone where only the centre tap counts) in
/// the gemm crate, without its im2col.
pub fn conv_rows(ctx: &Context, dtypes: &[DType], min_secs: f64, scale: Scale) -> Result<Vec<Row>> {
    use crate::ops::conv_variants::{self, ConvKernel, ConvProblem};
    let mut rows = vec![];
    for &(cin, cout, hw, k, stride) in &[(320usize, 320usize, 64usize, 3usize, 1usize), (4, 320, 64, 3, 1), (320, 320, 64, 3, 2), (640, 1280, 16, 1, 1), (2560, 1280, 1, 3, 1)] {
        let n = scale.batch;
        let pad = k / 2;
        let ho = conv::conv_out_dim(hw, k, stride, pad);
        let centre = hw == 1 && k > 1;
        let x = random(n * cin * hw * hw, 3);
        let w = random(cout * cin * k * k, 4);
        let (m, nn, kk) = (cout, ho * ho, if centre { cin } else { cin * k * k });
        let cols = random(kk * nn, 5);
        let mut out = vec![0f32; m * nn];
        let cpu_ms = time_cpu(min_secs, || {
            for _ in 0..n {
                cpu_gemm(&w[..m * kk], &cols, &mut out, m, nn, kk)
            }
        });
        let flops = 2.0 * (n * m * nn * kk) as f64;
        for &dtype in dtypes {
            let tx = Tensor::from_f32(ctx, &x, &[n, cin, hw, hw], dtype)?;
            let tw = conv::ConvWeight::new(Tensor::from_f32(ctx, &w, &[cout, cin, k, k], dtype)?);
            let p = ConvProblem { n, cin, h: hw, w: hw, cout, kh: k, kw: k, stride, pad, dtype };
            let chosen = conv_variants::choose(ctx, &p, |v| conv::conv2d_with(ctx, &tx, &tw, None, stride, pad, None, Some(v)).map(drop));
            let mut variants = vec![chosen];
            if chosen != ConvKernel::Direct {
                variants.push(ConvKernel::Direct);
            }
            for v in variants {
                let ms = time_gpu(ctx, min_secs, || conv::conv2d_with(ctx, &tx, &tw, None, stride, pad, None, Some(v)).map(drop))?;
                rows.push(Row {
                    kernel: format!("conv2d {k}x{k} s{stride} {}", v.name()),
                    shape: format!("{n}x{cin}x{hw}x{hw}->{cout}"),
                    dtype: dtype.name(),
                    ms,
                    rate: flops / ms / 1e6,
                    unit: "GFLOP/s",
                    cpu_ms: Some(cpu_ms),
                });
            }
        }
    }
    Ok(rows)
}

/// Group norm (32 groups) with fused SiLU on [N,320,64,64]: bandwidth-bound, reported in GB/s;
/// the CPU baseline is a plain two-pass loop.
pub fn groupnorm_rows(ctx: &Context, dtypes: &[DType], min_secs: f64, scale: Scale) -> Result<Vec<Row>> {
    let (n, c, hw, groups) = (scale.batch, 320usize, 64usize, 32usize);
    let x = random(n * c * hw * hw, 6);
    let mut y = vec![0f32; x.len()];
    let group_len = c / groups * hw * hw;
    let cpu_ms = time_cpu(min_secs, || {
        for (xs, ys) in x.chunks(group_len).zip(y.chunks_mut(group_len)) {
            let mean = xs.iter().sum::<f32>() / group_len as f32;
            let var = xs.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / group_len as f32;
            let inv = 1.0 / (var + 1e-5).sqrt();
            for (o, v) in ys.iter_mut().zip(xs) {
                let t = (v - mean) * inv;
                *o = t / (1.0 + (-t).exp());
            }
        }
    });
    let mut rows = vec![];
    for &dtype in dtypes {
        let tx = Tensor::from_f32(ctx, &x, &[n, c, hw, hw], dtype)?;
        let tw = Tensor::from_f32(ctx, &vec![1.0; c], &[c], dtype)?;
        let tb = Tensor::from_f32(ctx, &vec![0.0; c], &[c], dtype)?;
        let problem = norm::NormProblem::Group { n, c, hw: hw * hw, groups, dtype };
        for kernel in norm::candidates(ctx, &problem) {
            let ms = time_gpu(ctx, min_secs, || norm::group_norm_with(ctx, &tx, groups, &tw, &tb, 1e-5, true, Some(kernel)).map(drop))?;
            rows.push(Row {
                kernel: format!("groupnorm+silu {}", kernel.name()),
                shape: format!("{n}x{c}x{hw}x{hw} g{groups}"),
                dtype: dtype.name(),
                ms,
                rate: norm::norm_bytes(x.len(), dtype) / ms / 1e6,
                unit: "GB/s",
                cpu_ms: Some(cpu_ms),
            });
        }
    }
    Ok(rows)
}

/// Self-attention at 64x64 latents (4096 tokens, head dim 40) and cross-attention to 77 text
/// tokens. FLOPs = 4*B*H*Lq*Lk*D (QK^T and PV); the CPU baseline is those two products per head
/// in the gemm crate (no softmax).
pub fn attention_rows(ctx: &Context, dtypes: &[DType], min_secs: f64, scale: Scale) -> Result<Vec<Row>> {
    let (b, h, d) = (scale.batch, scale.heads, 40usize);
    let mut rows = vec![];
    for &(lq, lk, what) in &[(4096usize, 4096usize, "self-attn"), (4096, 77, "cross-attn")] {
        let q = random(b * lq * h * d, 7);
        let k = random(b * lk * h * d, 8);
        let v = random(b * lk * h * d, 9);
        let (qh, kt, vh) = (random(lq * d, 10), random(d * lk, 11), random(lk * d, 12));
        let (mut s, mut o) = (vec![0f32; lq * lk], vec![0f32; lq * d]);
        let cpu_ms = time_cpu(min_secs, || {
            for _ in 0..b * h {
                cpu_gemm(&qh, &kt, &mut s, lq, lk, d);
                cpu_gemm(&s, &vh, &mut o, lq, d, lk);
            }
        });
        for &dtype in dtypes {
            let tq = Tensor::from_f32(ctx, &q, &[b, lq, h * d], dtype)?;
            let tk = Tensor::from_f32(ctx, &k, &[b, lk, h * d], dtype)?;
            let tv = Tensor::from_f32(ctx, &v, &[b, lk, h * d], dtype)?;
            let scale_qk = 1.0 / (d as f32).sqrt();
            // One row per variant this adapter can run here (the one `pigment tune` would pick
            // is the fastest).
            let problem = attention_variants::AttnProblem { batch: b, heads: h, lq, lk, head_dim: d, causal: false, dtype };
            for kernel in attention_variants::candidates(ctx, &problem) {
                let (qi, ki, vi) = (AttnInput::whole(&tq), AttnInput::whole(&tk), AttnInput::whole(&tv));
                let ms = time_gpu(ctx, min_secs, || attention::attention_strided_with(ctx, qi, ki, vi, h, d, scale_qk, false, Some(kernel)).map(drop))?;
                rows.push(Row {
                    kernel: format!("{what} {}", kernel.name()),
                    shape: format!("{b}x{h}h {lq}x{lk} d{d}"),
                    dtype: dtype.name(),
                    ms,
                    rate: 4.0 * (b * h * lq * lk * d) as f64 / ms / 1e6,
                    unit: "GFLOP/s",
                    cpu_ms: Some(cpu_ms),
                });
            }
        }
    }
    Ok(rows)
}

/// Which model `pigment bench unet|vae|clip` times.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ModelBench {
    Unet,
    /// [`crate::models::unet_grad`]: one cross-attention loss gradient (SD 1.x/2.x).
    UnetGrad,
    Vae,
    Clip,
}

/// Peak resident host memory of this process (VmHWM), in bytes; `None` where /proc is absent.
pub fn host_peak_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Time `f` as one model call: the mean of timed calls, or with `profile` a warm-up call and
/// then a single profiled call whose table is printed. (The warm-up matters on lavapipe, which
/// compiles a pipeline's machine code at its first dispatch, inside the timestamps.)
fn time_model(ctx: &Context, profile: bool, what: &str, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    if !profile {
        return time_gpu(ctx, 0.0, f);
    }
    f()?;
    let was = ctx.profiling();
    ctx.set_profiling(true);
    ctx.profile_reset()?;
    let start = Instant::now();
    f()?;
    ctx.sync()?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let rows = ctx.profile_report()?;
    println!("-- {what}");
    crate::gpu::print_profile(&rows, Some(ms));
    ctx.profile_reset()?;
    ctx.set_profiling(was);
    Ok(ms)
}

/// A UNet evaluation (batch 2, [uncond, cond], 77 text tokens), a VAE decode at
/// `latent`x`latent` latents, or a CLIP text encoding (batch 2 x 77 tokens), for the model at
/// `model` (a folder or `synthetic:NAME`; default `synthetic:sd15`, only the component timed;
/// an SDXL UNet gets random pooled text_embeds and 1024x1024 time ids). Reports ms per call and
/// the peak of GPU buffers Pigment holds (weights + activations) in MiB; prints the process's
/// host peak (VmHWM).
///
/// With `plan` nothing runs: the model is loaded and called once on a planning context
/// ([`Context::planner`]) twice, and the row is the exact GPU peak real calls would reach (0 ms).
pub fn model_rows(ctx: &Context, dtypes: &[DType], latent: usize, model: Option<&std::path::Path>, which: ModelBench, profile: bool, plan: bool) -> Result<Vec<Row>> {
    use crate::models::{clip::ClipTextModel, unet::UNet2DConditionModel, vae::Vae};
    use crate::weights::{synthetic::SyntheticModel, ComponentKind};
    let spec = model.map_or("synthetic:sd15".into(), |p| p.to_string_lossy().into_owned());
    let kind = match which {
        ModelBench::Unet | ModelBench::UnetGrad => ComponentKind::Unet,
        ModelBench::Vae => ComponentKind::Vae,
        ModelBench::Clip => ComponentKind::TextEncoder,
    };
    let w = match SyntheticModel::from_spec(&spec) {
        Some(m) => m?.weights_of(&[kind])?,
        None => crate::weights::Weights::open(&spec)?,
    };
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let mut rows = vec![];
    let planner = plan.then(|| ctx.planner());
    let ctx = planner.as_ref().unwrap_or(ctx);
    // A plan's single call (nothing to time).
    let time_model = |ctx: &Context, profile: bool, what: &str, mut f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        if plan {
            // Twice, as the steps of a generation: the second call should make no buffers.
            f()?;
            let made = ctx.pool_stats().created;
            f()?;
            println!("{what}: a repeated call made {} new buffers", ctx.pool_stats().created - made);
            return Ok(0.0);
        }
        time_model(ctx, profile, what, &mut f)
    };
    for &dtype in dtypes {
        ctx.trim_pool();
        ctx.reset_peak();
        let weights;
        let (kernel, shape, ms) = match which {
            ModelBench::Unet | ModelBench::UnetGrad => {
                let c = w.unet()?;
                let m = UNet2DConditionModel::load(ctx, c, dtype)?;
                weights = ctx.pool_stats().live;
                let ctx_dim = c.config_value("cross_attention_dim").and_then(|v| v.as_u64()).unwrap_or(768) as usize;
                let x = Tensor::from_f32(ctx, &random(2 * 4 * latent * latent, 1), &[2, 4, latent, latent], dtype)?;
                let text = Tensor::from_f32(ctx, &random(2 * 77 * ctx_dim, 2), &[2, 77, ctx_dim], dtype)?;
                // SDXL's added conditioning (pooled text_embeds and time ids, 1024x1024)
                let added = m.config.text_time.map(|(t, input)| crate::models::unet::AddedCond {
                    text_embeds: random(2 * (input - 6 * t), 4),
                    time_ids: [1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0].repeat(2),
                });
                let shape = format!("2x4x{latent}x{latent} ({}px)", latent * 8);
                let grad = which == ModelBench::UnetGrad;
                let step = time_model(ctx, profile && !grad, "unet step", &mut || m.forward_full(ctx, &x, &[500.0], &text, added.as_ref(), None, None).map(drop))?;
                if grad {
                    let edited = Tensor::from_f32(ctx, &random(2 * 77 * ctx_dim, 3), &[2, 77, ctx_dim], dtype)?;
                    let reference = m.forward_cross_maps(ctx, &x, 500.0, &text, added.as_ref())?.maps;
                    let ms = time_model(ctx, profile, "unet grad", &mut || m.cross_attention_loss_grad(ctx, &x, 500.0, &edited, added.as_ref(), &reference).map(drop))?;
                    println!("unet grad {}: {ms:.1} ms = {:.2} UNet steps ({step:.1} ms) of the same shape", dtype.name(), ms / step.max(1e-9));
                    ("unet grad", shape, ms)
                } else {
                    ("unet step", shape, step)
                }
            }
            ModelBench::Vae => {
                let v = Vae::load_decoder(ctx, w.vae()?, dtype)?;
                weights = ctx.pool_stats().live;
                let z = Tensor::from_f32(ctx, &random(4 * latent * latent, 3), &[1, 4, latent, latent], dtype)?;
                let ms = time_model(ctx, profile, "vae decode", &mut || v.decode(ctx, &z).map(drop))?;
                ("vae decode", format!("1x4x{latent}x{latent} -> {}px", latent * 8), ms)
            }
            ModelBench::Clip => {
                let m = ClipTextModel::load(ctx, w.text_encoder()?, dtype)?;
                weights = ctx.pool_stats().live;
                // Two prompts ([uncond, cond] as the pipeline encodes them): BOS, words, EOS padding.
                let ids: Vec<u32> = (0..2 * 77).map(|i| if i % 77 == 0 { 49406 } else if i % 77 < 20 { 320 + (i as u32 * 37) % 40000 } else { 49407 }).collect();
                let ms = time_model(ctx, profile, "clip encode", &mut || m.forward(ctx, &ids, 77, 0, false).map(drop))?;
                ("clip encode", "2x77 tokens".to_string(), ms)
            }
        };
        let s = ctx.pool_stats();
        rows.push(Row { kernel: kernel.into(), shape, dtype: dtype.name(), ms, rate: mib(s.peak_held), unit: "MiB peak", cpu_ms: None });
        let host = host_peak_bytes().map(|h| format!(", host RSS peak (VmHWM, whole process) {:.0} MiB", mib(h))).unwrap_or_default();
        println!(
            "{kernel} {}{}: GPU buffers peak {:.0} MiB held ({:.0} MiB live; weights {:.0} MiB){host}",
            dtype.name(),
            if plan { " (planned)" } else { "" },
            mib(s.peak_held),
            mib(s.peak_live),
            mib(weights)
        );
    }
    Ok(rows)
}

pub fn print_header(ctx: &Context) {
    println!("adapter: {}", ctx.describe());
    println!("{:<26} {:<24} {:<5} {:>10} {:>16} {:>10} {:>8}", "kernel", "shape", "dtype", "ms", "rate", "cpu ms", "gpu/cpu");
}

/// One line per row, printed as soon as a group finishes (slow adapters take minutes).
pub fn print_rows(rows: &[Row]) {
    for r in rows {
        let (cpu, ratio) = match r.cpu_ms {
            Some(c) => (format!("{c:.2}"), format!("{:.3}x", c / r.ms)),
            None => ("-".into(), "-".into()),
        };
        println!("{:<26} {:<24} {:<5} {:>10.2} {:>8.2} {:<7} {:>10} {:>8}", r.kernel, r.shape, r.dtype, r.ms, r.rate, r.unit, cpu, ratio);
    }
}
