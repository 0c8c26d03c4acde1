//! `pigment upscale`: one image through a Real-ESRGAN model.

use crate::gpu::Context;
use crate::imageio::{read_image, resize_rgb, write_png};
use crate::models::esrgan::RealEsrgan;
use crate::pipeline::upscale::{plan_tiles, upscale_by, DEFAULT_PAD};
use crate::DType;
use std::path::{Path, PathBuf};

pub fn run(ctx: &Context, input: &Path, model: &str, scale: Option<f32>, tile: usize, out: Option<&Path>) -> anyhow::Result<()> {
    let img = read_image(input, "input image")?;
    let dtype = if ctx.f16 { DType::F16 } else { DType::F32 };
    let start = std::time::Instant::now();
    let model = RealEsrgan::from_spec(ctx, model, dtype)?;
    let cfg = model.config;
    let by = scale.unwrap_or(cfg.scale as f32);
    let plan = plan_tiles(ctx, &model, img.width, img.height, tile, DEFAULT_PAD)?;
    if let Some(note) = &plan.note {
        eprintln!("note: {note}");
    }
    eprintln!(
        "RRDBNet x{} ({} blocks, {} features, {:?}): {}x{} in {}x{} tiles of {} px (+{} px padding); loaded in {:.1} s",
        cfg.scale,
        cfg.num_block,
        cfg.num_feat,
        dtype,
        img.width,
        img.height,
        plan.grid.0,
        plan.grid.1,
        plan.tile,
        plan.pad,
        start.elapsed().as_secs_f64()
    );
    let start = std::time::Instant::now();
    let result = upscale_by(ctx, &model, &img, by, plan.tile, resize_rgb)?;
    let out: PathBuf = out.map(Path::to_path_buf).unwrap_or_else(|| {
        let stem = input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
        input.with_file_name(format!("{stem}-x{by}.png"))
    });
    write_png(&out, &result, "")?;
    println!("wrote {} ({}x{}) in {:.1} s", out.display(), result.width, result.height, start.elapsed().as_secs_f64());
    Ok(())
}
