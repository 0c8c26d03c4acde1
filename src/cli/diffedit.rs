//! `pigment diffedit`: DiffEdit, an image edited from a source caption to a target one inside an
//! estimated (or given) mask, everything outside kept from the DDIM inversion.

use crate::imageio::{read_image, write_png};
use crate::pipeline::diffedit::{DiffEditMask, DiffEditOptions, MaskOptions};
use crate::pipeline::StableDiffusion;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct DiffEditArgs {
    /// The image to edit (PNG, JPEG or WebP); the result has its size (a multiple of 8).
    input: PathBuf,
    /// What the image shows now, e.g. "a bowl of fruits".
    #[arg(long)]
    source: String,
    /// What it should show, e.g. "a basket of pears".
    #[arg(long)]
    target: String,
    /// An SD 1.x/2.x text-to-image model, as `generate --model` (default: SD 1.5).
    #[arg(long)]
    model: Option<String>,
    /// For a hub id: the weight files' variant (e.g. fp16).
    #[arg(long)]
    variant: Option<String>,
    /// The negative prompt of the mask estimate and the inversion.
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// The edit's negative prompt (default: the source, as diffusers' DiffEdit example).
    #[arg(long)]
    edit_negative_prompt: Option<String>,
    /// The share of the steps inverted and then edited, in (0, 1] (diffusers' inpaint_strength).
    #[arg(long, default_value_t = 0.8)]
    strength: f32,
    /// DDIM steps (the inversion and the edit run int(steps × strength) of them).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Guidance of all three stages; the mask estimate needs it above 1.
    #[arg(long, default_value_t = 7.5)]
    cfg: f32,
    /// Use this mask (the image's size, white = edit, binarised per 8×8 block) instead of
    /// estimating one.
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Write the mask used (the image's size, white = edited) to this PNG.
    #[arg(long)]
    save_mask: Option<PathBuf>,
    /// Noise draws the mask estimate averages (num_maps_per_mask).
    #[arg(long, default_value_t = 10)]
    mask_maps: usize,
    /// How far the image is noised for the mask estimate, in (0, 1] (mask_encode_strength).
    #[arg(long, default_value_t = 0.5)]
    mask_strength: f32,
    /// The mask's clamp at this multiple of the mean difference (mask_thresholding_ratio).
    #[arg(long, default_value_t = 3.0)]
    mask_threshold: f32,
    /// Random seed (a random one is chosen and printed when absent).
    #[arg(long)]
    seed: Option<u64>,
    /// Output PNG (default: IN-diffedit.png beside the input).
    #[arg(short, long, visible_alias = "output")]
    out: Option<PathBuf>,
}

pub fn run(cli: &super::Cli, a: &DiffEditArgs) -> anyhow::Result<()> {
    let image = read_image(&a.input, "image to edit")?;
    crate::pipeline::check_size(image.width, image.height).map_err(|e| {
        anyhow::anyhow!("{}: {e} (the edit keeps the image's {}x{} size: resize it first)", a.input.display(), image.width, image.height)
    })?;
    for (flag, v) in [("--source", &a.source), ("--target", &a.target)] {
        if v.trim().is_empty() {
            anyhow::bail!("{flag} is empty: DiffEdit needs what the image shows (--source) and what it should show (--target)");
        }
    }
    if !(a.strength > 0.0 && a.strength <= 1.0) {
        anyhow::bail!("--strength {} must be in (0, 1]", a.strength);
    }
    let mask = match &a.mask {
        Some(p) => Some(DiffEditMask::from_image(&read_image(p, "mask")?, image.width, image.height).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?),
        None => None,
    };
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64 % 4_294_967_296).unwrap_or(0)
    });
    let o = DiffEditOptions {
        mask: MaskOptions {
            source_prompt: a.source.clone(),
            target_prompt: a.target.clone(),
            negative_prompt: a.negative_prompt.clone(),
            maps: a.mask_maps,
            encode_strength: a.mask_strength,
            threshold_ratio: a.mask_threshold,
            steps: a.steps,
            guidance: a.cfg,
            seed,
        },
        strength: a.strength,
        edit_negative_prompt: a.edit_negative_prompt.clone(),
    };
    let path = super::resolve_model(a.model.as_deref(), a.variant.as_deref())?;
    let ctx = super::open(cli)?;
    eprintln!("adapter: {}", ctx.describe());
    let sd = StableDiffusion::load(&ctx, &path, !cli.no_f16)?;
    println!("seed: {seed}");
    let (mask, result) = sd.diffedit(&ctx, &image, &o, mask)?;
    for w in sd.take_warnings() {
        eprintln!("warning: {w}");
    }
    if let Some(p) = &a.save_mask {
        write_png(p, &mask.to_image(8), "")?;
        println!("wrote {} ({} of {} latent pixels edited)", p.display(), mask.mask.iter().filter(|&&v| v > 0.0).count(), mask.mask.len());
    }
    let out = a.out.clone().unwrap_or_else(|| {
        let stem = a.input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
        a.input.with_file_name(format!("{stem}-diffedit.png"))
    });
    let params = format!(
        "{}\nNegative prompt: {}\nSteps: {}, Sampler: DDIM, CFG scale: {}, Seed: {seed}, Size: {}x{}, Model: {}, Denoising strength: {}, DiffEdit source: {}",
        a.target,
        o.edit_negative_prompt.as_deref().unwrap_or(&a.source),
        a.steps,
        a.cfg,
        image.width,
        image.height,
        sd.name,
        a.strength,
        a.source
    );
    write_png(&out, &result, &params)?;
    println!("wrote {}", out.display());
    super::print_profile(&ctx)?;
    Ok(())
}
