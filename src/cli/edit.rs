//! `pigment edit`: InstructPix2Pix, an image edited by an instruction.

use crate::imageio::{read_image, write_png};
use crate::pipeline::{GenerateOptions, InstructOptions, StableDiffusion};
use crate::schedulers::{SamplerKind, SigmaSchedule};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct EditArgs {
    /// The image to edit (PNG, JPEG or WebP); the result has its size (a multiple of 8).
    input: PathBuf,
    /// The instruction, e.g. "make it snowy".
    instruction: String,
    /// An InstructPix2Pix model (UNet with 8 input channels): a diffusers folder, a single-file
    /// .safetensors checkpoint or a hub id such as timbrooks/instruct-pix2pix.
    #[arg(long)]
    model: String,
    /// For a hub id: the weight files' variant (e.g. fp16).
    #[arg(long)]
    variant: Option<String>,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Image guidance (diffusers' image_guidance_scale, at least 1): higher keeps closer to the input.
    #[arg(long, default_value_t = 1.5)]
    image_cfg: f32,
    /// Text guidance; <= 1 runs one batch without guidance (as diffusers).
    #[arg(long, default_value_t = 7.5)]
    cfg: f32,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// As `generate --sampler` (InstructPix2Pix ships Euler a).
    #[arg(long, default_value = "euler-a")]
    sampler: String,
    /// Sigma schedule: normal, karras or exponential (where the sampler has them).
    #[arg(long, default_value = "normal")]
    scheduler: String,
    /// Random seed (a random one is chosen and printed when absent).
    #[arg(long)]
    seed: Option<u64>,
    /// Output PNG (default: IN-edit.png beside the input).
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub fn run(cli: &super::Cli, a: &EditArgs) -> anyhow::Result<()> {
    let image = read_image(&a.input, "image to edit")?;
    crate::pipeline::check_size(image.width, image.height).map_err(|e| {
        anyhow::anyhow!("{}: {e} (the edit keeps the image's {}x{} size: resize it first)", a.input.display(), image.width, image.height)
    })?;
    let sampler = SamplerKind::parse(&a.sampler)?;
    let schedule = SigmaSchedule::parse(&a.scheduler)?;
    if !sampler.supports_schedule(schedule) {
        anyhow::bail!("--scheduler {} is not available for {} (it has a fixed schedule)", schedule.name(), sampler.name());
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64 % 4_294_967_296).unwrap_or(0)
    });
    let path = super::resolve_model(Some(&a.model), a.variant.as_deref())?;
    let ctx = super::open(cli)?;
    eprintln!("adapter: {}", ctx.describe());
    let sd = StableDiffusion::load(&ctx, &path, !cli.no_f16)?;
    let o = GenerateOptions {
        prompt: a.instruction.clone(),
        negative_prompt: a.negative_prompt.clone(),
        seed,
        width: image.width,
        height: image.height,
        steps: a.steps,
        guidance: a.cfg,
        sampler,
        schedule,
        instruct: Some(InstructOptions { image, image_guidance: a.image_cfg }),
        ..Default::default()
    };
    println!("seed: {seed}");
    let bar = indicatif::ProgressBar::new(0);
    let result = sd.generate(&ctx, &o, |i, total| {
        bar.set_length(total as u64);
        bar.set_position(i as u64);
    })?;
    bar.finish();
    for w in sd.take_warnings() {
        eprintln!("warning: {w}");
    }
    let out = a.output.clone().unwrap_or_else(|| {
        let stem = a.input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
        a.input.with_file_name(format!("{stem}-edit.png"))
    });
    let params = format!("{}, Image CFG scale: {}", crate::pipeline::a1111_parameters(&o, &sd.name), a.image_cfg);
    write_png(&out, &result, &params)?;
    println!("wrote {}", out.display());
    super::print_profile(&ctx)?;
    Ok(())
}
