//! A1111's hires-fix fields of `/sdapi/v1/txt2img` (`enable_hr`, `hr_scale`, `hr_upscaler`,
//! `hr_second_pass_steps`, `denoising_strength`, `hr_resize_x`/`hr_resize_y`) onto
//! [`GenerateOptions::hires`]. `hr_upscaler` is a built-in (Latent, Latent (nearest), Lanczos) or
//! the name of a Real-ESRGAN file under `--upscaler-dir` (as `/sdapi/v1/upscalers` lists it).

use super::errors::{ApiError, ApiResult};
use super::request::Fields;
use super::Shared;
use crate::pipeline::{GenerateOptions, HiresOptions, HiresUpscaler};

/// The upscaler a client names, or a 422 listing what there is.
pub fn upscaler(shared: &Shared, name: &str) -> ApiResult<HiresUpscaler> {
    if let Some(b) = HiresUpscaler::builtin(name) {
        return Ok(b);
    }
    let models = super::catalog::upscalers(shared.opts.upscaler_dir.as_deref());
    if let Some(m) = models.iter().find(|m| m.name == name.trim()) {
        return Ok(HiresUpscaler::Model { name: m.name.clone(), path: m.path.clone() });
    }
    let mut have = vec!["Latent".to_string(), "Latent (nearest)".into(), "Lanczos".into()];
    have.extend(models.into_iter().map(|m| m.name));
    Err(ApiError::field("hr_upscaler", format!("no hires upscaler '{name}'; Pigment has {} (models come from --upscaler-dir)", have.join(", "))))
}

/// A1111's `hr_upscale_to_x/y` for `hr_resize_x`/`hr_resize_y` (one of them 0 keeps the aspect;
/// both set covers the box, which A1111 then crops: refused unless nothing would be cropped).
fn resize_target(w: usize, h: usize, rx: usize, ry: usize) -> ApiResult<(usize, usize)> {
    let t = match (rx, ry) {
        (0, y) => (y * w / h, y),
        (x, 0) => (x, x * h / w),
        (x, y) => {
            let t = if (w as f64 / h as f64) < (x as f64 / y as f64) { (x, x * h / w) } else { (y * w / h, y) };
            if t != (x, y) {
                return Err(ApiError::field("hr_resize_x", format!("{x}x{y} is not the {w}x{h} image's aspect ratio (A1111 would crop to it): give one of hr_resize_x / hr_resize_y, or {}x{}", t.0, t.1)));
            }
            t
        }
    };
    Ok(t)
}

/// Fill `o.hires` from the request (`enable_hr` is true); the second pass is checked here so a
/// bad combination is a 422, not a failed job.
pub fn fields(shared: &Shared, f: &Fields, o: &mut GenerateOptions) -> ApiResult<()> {
    for k in ["hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt"] {
        let v = f.string(k, "")?;
        let same = match k {
            "hr_prompt" => v == o.prompt,
            "hr_negative_prompt" => v == o.negative_prompt,
            "hr_sampler_name" => v.eq_ignore_ascii_case(o.sampler.a1111_name()) || v == "Use same sampler",
            "hr_scheduler" => v.eq_ignore_ascii_case("Use same scheduler"),
            _ => v == "Use same checkpoint",
        };
        if !v.is_empty() && !same {
            return Err(ApiError::field(k, "Pigment's second pass uses the first pass's model, sampler, schedule and prompts; leave it empty"));
        }
    }
    if f.int("firstphase_width", 0)? > 0 || f.int("firstphase_height", 0)? > 0 {
        return Err(ApiError::field("firstphase_width", "the old first-phase size is not supported; send width/height and hr_scale or hr_resize_x/y"));
    }
    let up = upscaler(shared, &f.string("hr_upscaler", "Latent")?)?;
    let steps = f.ranged("hr_second_pass_steps", 0, 0, super::request::MAX_STEPS as i64)? as usize;
    let denoise = f.float("denoising_strength", 0.7)? as f32;
    if !(denoise > 0.0 && denoise <= 1.0) {
        return Err(ApiError::field("denoising_strength", format!("{denoise} is outside (0, 1] (the hires pass's strength)")));
    }
    let side = super::request::MAX_SIDE as i64;
    let (rx, ry) = (f.ranged("hr_resize_x", 0, 0, side)? as usize, f.ranged("hr_resize_y", 0, 0, side)? as usize);
    let scale = if rx == 0 && ry == 0 {
        f.float("hr_scale", 2.0)? as f32
    } else {
        let (tx, ty) = resize_target(o.width, o.height, rx, ry)?;
        let s = tx as f32 / o.width as f32;
        let got = HiresOptions { scale: s, ..Default::default() }.target(o.width, o.height);
        if got != (tx, ty) {
            return Err(ApiError::field(if rx > 0 { "hr_resize_x" } else { "hr_resize_y" }, format!("{tx}x{ty} is not {}x{} scaled to multiples of 8; try {}x{}", o.width, o.height, got.0, got.1)));
        }
        s
    };
    let h = HiresOptions { scale, steps, denoise, upscaler: up };
    h.check(o).map_err(|e| ApiError::field(if scale.is_finite() && scale > 0.0 && scale <= 8.0 { "enable_hr" } else { "hr_scale" }, e.to_string()))?;
    let (tw, th) = h.target(o.width, o.height);
    if tw > super::request::MAX_SIDE || th > super::request::MAX_SIDE {
        return Err(ApiError::field("hr_scale", format!("the hires size {tw}x{th} is over {} a side", super::request::MAX_SIDE)));
    }
    o.hires = Some(h);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::resize_target;

    #[test]
    fn a1111_resize_targets() {
        assert_eq!(resize_target(512, 768, 1024, 0).unwrap(), (1024, 1536));
        assert_eq!(resize_target(512, 768, 0, 1152).unwrap(), (768, 1152));
        assert_eq!(resize_target(64, 64, 96, 96).unwrap(), (96, 96));
        assert!(resize_target(64, 64, 96, 128).is_err());
    }
}
