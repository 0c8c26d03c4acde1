//! `pigment upscale --model X4_FOLDER`: the Stable Diffusion x4 upscaler.

use crate::gpu::Context;
use crate::imageio::{read_image, write_png};
use crate::pipeline::sd_upscale::{SdUpscaleOptions, SdUpscaler};
use crate::schedulers::SamplerKind;
use std::path::{Path, PathBuf};

/// The x4 upscaler's flags of `pigment upscale` (ignored by Real-ESRGAN models).
#[derive(clap::Args, Clone, Debug)]
pub struct X4Args {
    /// x4 upscaler: what the image shows (guides the invented detail).
    #[arg(long, default_value = "")]
    pub prompt: String,
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// x4 upscaler: noise added to the input, 0..=350 (more: more invented detail).
    #[arg(long, default_value_t = 20)]
    pub noise_level: usize,
    /// x4 upscaler: sampling steps (diffusers' default is 75).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// x4 upscaler: classifier-free guidance scale.
    #[arg(long, default_value_t = 9.0)]
    pub cfg: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// x4 upscaler: sampler (the model's scheduler is ddim).
    #[arg(long, default_value = "ddim")]
    pub sampler: String,
}

pub fn run(ctx: &Context, input: &Path, model: &Path, a: &X4Args, scale: Option<f32>, tile: usize, out: Option<&Path>, want_f16: bool) -> anyhow::Result<()> {
    if scale.is_some_and(|s| s != 4.0) {
        anyhow::bail!("the x4 upscaler upscales by 4 only: drop --scale (or resize the result)");
    }
    let img = read_image(input, "input image")?;
    let start = std::time::Instant::now();
    let up = SdUpscaler::load(ctx, model, want_f16)?;
    eprintln!("x4 upscaler {} loaded in {:.1} s; {}x{} -> {}x{}", model.display(), start.elapsed().as_secs_f64(), img.width, img.height, 4 * img.width, 4 * img.height);
    let o = SdUpscaleOptions {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        noise_level: a.noise_level,
        steps: a.steps,
        guidance: a.cfg,
        seed: a.seed,
        sampler: SamplerKind::parse(&a.sampler)?,
        tile: (tile > 0).then_some(tile),
    };
    let start = std::time::Instant::now();
    let result = up.upscale(ctx, &img, &o, |i, n| eprint!("\rstep {i}/{n}"))?;
    eprintln!();
    for w in up.sd.take_warnings() {
        eprintln!("note: {w}");
    }
    let out: PathBuf = out.map(Path::to_path_buf).unwrap_or_else(|| {
        let stem = input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
        input.with_file_name(format!("{stem}-x4.png"))
    });
    let params = format!("{}\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Noise level: {}", o.prompt, o.steps, o.sampler.a1111_name(), o.guidance, o.seed, o.noise_level);
    write_png(&out, &result, &params)?;
    println!("wrote {} ({}x{}) in {:.1} s", out.display(), result.width, result.height, start.elapsed().as_secs_f64());
    Ok(())
}
