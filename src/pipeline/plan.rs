//! Memory plans: the GPU bytes a generation will hold, known before it runs.
//!
//! [`StableDiffusion::plan`] loads the same models on a planning context
//! ([`Context::planner`]: virtual buffers, dispatches dropped, readbacks zeros) and runs the
//! same generation there, so every allocation and free happens as in the real run and the
//! pool's accounting gives its exact peak per phase, in well under a second of GPU-free work
//! (plus the host-side weight conversions of loading).

use super::{GenerateOptions, StableDiffusion};
use crate::gpu::{Context, PhaseStats};
use crate::{Error, Result};

/// The predicted GPU bytes of one generation (tensor buffers; see [`Context::pool_stats`]).
#[derive(Clone, Debug)]
pub struct MemoryPlan {
    /// Weights resident after loading (text encoder, UNet, VAE decoder).
    pub weights: u64,
    /// Held bytes at the start of each phase and its peaks ("text encoder", "vae encode",
    /// "unet", "vae decode"); a phase name repeats for previews.
    pub phases: Vec<PhaseStats>,
    /// The largest bytes held at any point (live tensors + free buffers kept for reuse).
    pub peak_held: u64,
    pub peak_live: u64,
}

impl MemoryPlan {
    /// The largest peak of each distinct phase, in first-seen order.
    pub fn by_phase(&self) -> Vec<PhaseStats> {
        let mut out: Vec<PhaseStats> = vec![];
        for p in &self.phases {
            match out.iter_mut().find(|q| q.name == p.name) {
                Some(q) => {
                    q.peak_held = q.peak_held.max(p.peak_held);
                    q.peak_live = q.peak_live.max(p.peak_live);
                }
                None => out.push(p.clone()),
            }
        }
        out
    }

    /// Lines for the CLI and benchmarks.
    pub fn describe(&self) -> String {
        let mut s = format!("weights resident {}\n", mib(self.weights));
        for p in self.by_phase() {
            s.push_str(&format!(
                "{:<13} held at start {}, peak {} (activations +{}; live peak {})\n",
                p.name,
                mib(p.start_held),
                mib(p.peak_held),
                mib(p.peak_held.saturating_sub(p.start_held)),
                mib(p.peak_live)
            ));
        }
        s.push_str(&format!("peak GPU buffers {} ({:.2} GB)", mib(self.peak_held), self.peak_held as f64 / 1e9));
        s
    }
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
}

/// A byte size as `2300M`, `2.3G`, `2.3GB`, `2GiB` or plain bytes (K/M/G are powers of 1024,
/// as GPU memory is quoted; `GB` / `MB` are powers of 1000).
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || Error::Unsupported(format!("memory size '{s}': use a number with K, M, G (KiB/MiB/GiB) or KB, MB, GB, e.g. 2300M or 2.3GB"));
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        _ => return Err(bad()),
    };
    if !(v >= 0.0) {
        return Err(bad());
    }
    Ok((v * scale) as u64)
}

impl StableDiffusion {
    /// The GPU memory plan of `generate(o)` on a fresh context: the same models loaded from the
    /// base weights and the same generation, on a planning context (or, when `ctx` is one and
    /// `self` was loaded on it, this model's generation there). Errors a real run would
    /// meet before any kernel runs (a tensor over the adapter's buffer limit) come out here.
    /// ControlNet and LoRA rebuilds are not in the plan (a LoRA-merged model has the base's
    /// sizes).
    pub async fn plan_async(&self, ctx: &Context, o: &GenerateOptions) -> Result<MemoryPlan> {
        let o = GenerateOptions { control: None, ..o.clone() };
        if ctx.planning() {
            // Loaded on a planning context already (the CLI's `generate --plan`): run it there.
            ctx.trim_pool();
            let weights = ctx.pool_stats().held;
            ctx.reset_peak();
            self.generate_with_previews_async(ctx, &o, None, |_, _| {}).await?;
            let stats = ctx.pool_stats();
            return Ok(MemoryPlan { weights, phases: ctx.phases(), peak_held: stats.peak_held, peak_live: stats.peak_live });
        }
        let p = ctx.planner();
        let dtype = self.unet.dtype;
        let planning = |e: Error| Error::Unsupported(format!("planning this model's memory: {e}"));
        let mut sd = Self::from_weights(&p, self.weights.clone(), self.tokenizer.clone(), self.scheduler_config.clone(), self.name.clone(), dtype).map_err(planning)?;
        if let Some(x) = &self.sdxl {
            let mut parts = super::SdxlParts::load(&p, &self.weights, None, dtype).map_err(planning)?.ok_or_else(|| planning(Error::Unsupported("no text_encoder_2".into())))?;
            parts.tokenizer_2 = x.tokenizer_2.clone();
            parts.force_zeros_for_empty_prompt = x.force_zeros_for_empty_prompt;
            sd.sdxl = Some(parts);
        }
        if self.clip.is_streamed() {
            sd.stream_text_encoders(&p);
        }
        let weights = p.pool_stats().held;
        p.reset_peak();
        sd.generate_with_previews_async(&p, &o, None, |_, _| {}).await?;
        let stats = p.pool_stats();
        Ok(MemoryPlan { weights, phases: p.phases(), peak_held: stats.peak_held, peak_live: stats.peak_live })
    }

    /// Blocking [`StableDiffusion::plan_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn plan(&self, ctx: &Context, o: &GenerateOptions) -> Result<MemoryPlan> {
        pollster::block_on(self.plan_async(ctx, o))
    }

    /// [`StableDiffusion::plan`], refused when its peak exceeds `max_bytes`: the error names the
    /// size, the predicted peak and the limit, with the phase that reaches it.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn check_memory(&self, ctx: &Context, o: &GenerateOptions, max_bytes: u64) -> Result<MemoryPlan> {
        let plan = self.plan(ctx, o)?;
        if plan.peak_held > max_bytes {
            let worst = plan.by_phase().into_iter().max_by_key(|p| p.peak_held).map(|p| p.name).unwrap_or_default();
            return Err(Error::Unsupported(format!(
                "{}x{} needs {:.1} MiB of GPU memory at its peak ({worst}), over the limit of {:.1} MiB (--max-vram / PIGMENT_MAX_VRAM): use a smaller size, f16, or raise the limit if the GPU has more",
                o.width,
                o.height,
                plan.peak_held as f64 / (1u64 << 20) as f64,
                max_bytes as f64 / (1u64 << 20) as f64
            )));
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;
    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("2300M").unwrap(), 2300 << 20);
        assert_eq!(parse_bytes("2.3GB").unwrap(), 2_300_000_000);
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("lots").is_err() && parse_bytes("2 TB").is_err() && parse_bytes("-1G").is_err());
    }
}
