//! `pigment generate` with a DiT folder: class-conditional ImageNet images.

use crate::gpu::Context;
use crate::imageio::write_png;
use crate::pipeline::dit::{DitOptions, DitPipeline};
use crate::pipeline::imagenet;
use crate::schedulers::{SamplerKind, SigmaSchedule};
use std::path::Path;

/// What the generate flags give a DiT run.
pub struct Args<'a> {
    pub prompt: Option<&'a str>,
    pub class_label: Option<&'a str>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub steps: usize,
    pub cfg: Option<f32>,
    pub sampler: Option<&'a str>,
    pub schedule: SigmaSchedule,
    pub seed: u64,
    pub batch_count: usize,
    pub output: &'a Path,
    /// Flags DiT has no use for that were given (named in the error).
    pub unused: Vec<&'static str>,
}

pub fn run(ctx: &Context, path: &Path, a: Args, want_f16: bool, numbered: impl Fn(&Path, usize) -> std::path::PathBuf) -> anyhow::Result<()> {
    if !a.unused.is_empty() {
        anyhow::bail!("{} is a class-conditional DiT model: {} do not apply (give --class-label ID|NAME, --steps, --cfg, --sampler, --seed)", path.display(), a.unused.join(", "));
    }
    // The label: --class-label, else the prompt read as a label name (the prompt is then only
    // the PNG's text).
    let class_label = match (a.class_label, a.prompt) {
        (Some(l), _) | (None, Some(l)) => imagenet::labels().resolve(l)?,
        (None, None) => anyhow::bail!("no class: `pigment generate --model DIR --class-label 207` (an ImageNet id or name, e.g. \"golden retriever\")"),
    };
    let p = DitPipeline::load(ctx, path, want_f16)?;
    let size = p.image_size();
    for (what, v) in [("width", a.width), ("height", a.height)] {
        if let Some(v) = v.filter(|&v| v != size) {
            anyhow::bail!("--{what} {v}: this DiT makes {size}x{size} images only (its sample_size is fixed); leave out --width/--height");
        }
    }
    let sampler = match a.sampler {
        Some(s) => SamplerKind::parse(s)?,
        None => p.default_sampler,
    };
    let mut o = DitOptions { class_label, seed: a.seed, steps: a.steps, guidance: a.cfg.unwrap_or(4.0), sampler, schedule: a.schedule };
    eprintln!("class {class_label}: {}", imagenet::labels().name(class_label).unwrap_or("?"));
    for n in 0..a.batch_count.max(1) {
        o.seed = a.seed.wrapping_add(n as u64);
        println!("seed: {}", o.seed);
        let image = p.generate(ctx, &o, |i, total| eprint!("\rstep {i}/{total}"))?;
        eprintln!();
        let out = if a.batch_count > 1 { numbered(a.output, n + 1) } else { a.output.to_path_buf() };
        write_png(&out, &image, &p.parameters(&o))?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
