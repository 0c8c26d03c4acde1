//! The NaN / black-image guards and the resource bounds (issue #16, items 3 and 4).
//!
//! * `finite_check` (the reduction kernel) against a host count, f32 and f16, split over a
//!   lowered binding limit: exact counts and min/max.
//! * sd15-tiny with its VAE's `decoder.conv_in` scaled so that its activations overflow f16
//!   (the weights themselves stay representable) but not f32: the f16 generation warns, is
//!   re-decoded in f32 and matches the f32 model's image; the same with the UNet's `conv_in`
//!   scaled is sampled again in f32 (with and without a LoRA) and matches the f32 model; a NaN
//!   weight fails in f32 naming the UNet. A zeroed `conv_out` gives a constant image:
//!   returned with a warning.
//! * A 1e6-token prompt and a 100000-pixel width are refused before anything is allocated.

mod common;
use common::{ctx, fixtures, rand_vec};
use pigment::ops::finite_check::{finite_stats_blocking, finite_stats_cpu};
use pigment::lora::{Lora, LoraUse};
use pigment::pipeline::{GenerateOptions, StableDiffusion};
use pigment::schedulers::SamplerKind;
use pigment::{DType, Tensor};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[test]
fn finite_check_counts_nan_and_inf_and_the_range() {
    // Its own context: the lowered binding limit must not reach the other tests' ops.
    let own = pigment::gpu::Context::new_blocking(&pigment::gpu::AdapterChoice::from_env()).unwrap();
    for dtype in common::dtypes() {
        // The last one splits into dispatches of 4 (f32) / 8 (f16) workgroups of 4096 elements.
        for (n, cap) in [(1usize, 0u64), (4095, 0), (10_007, 0), (70_001, 4 * 4096 * 4 + 256)] {
            let scaled: Vec<f32> = rand_vec(n, n as u64).iter().map(|x| x * 3.0).collect();
            let mut v = common::quantize(&scaled, dtype);
            for (k, i) in (0..n).step_by(997).enumerate() {
                v[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][k % 3];
            }
            let want = finite_stats_cpu(&v);
            own.set_max_binding_for_tests(cap);
            let t = Tensor::from_f32(&own, &v, &[n], dtype).unwrap();
            let got = finite_stats_blocking(&own, &t).unwrap();
            assert_eq!(got, want, "{} n={n} binding cap {cap}", dtype.name());
        }
        let clean = Tensor::from_f32(ctx(), &[0.25; 300], &[300], dtype).unwrap();
        let s = finite_stats_blocking(ctx(), &clean).unwrap();
        assert!(s.all_finite() && s.constant(0.0), "{s:?}");
    }
}

/// A copy of sd15-tiny (links to its parts) whose `part` safetensors file has `edit` applied
/// to the tensors `names` (f32 values, stored back in the file's dtype).
fn edited_model(tag: &str, part: &str, names: &[&str], edit: impl Fn(&mut [f32])) -> PathBuf {
    let src = fixtures().join("sd15-tiny");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("guards-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join(part)).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if e.file_name() != part {
            std::os::unix::fs::symlink(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    let file = "diffusion_pytorch_model.safetensors";
    std::fs::copy(src.join(part).join("config.json"), dir.join(part).join("config.json")).unwrap();
    let bytes = std::fs::read(src.join(part).join(file)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (n, t) in st.tensors() {
        let mut data = t.data().to_vec();
        if names.contains(&n.as_str()) {
            let mut v: Vec<f32> = match t.dtype() {
                safetensors::Dtype::F32 => bytemuck::pod_collect_to_vec(&data),
                safetensors::Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                d => panic!("{n}: {d:?}"),
            };
            edit(&mut v);
            data = match t.dtype() {
                safetensors::Dtype::F32 => bytemuck::cast_slice(&v).to_vec(),
                _ => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
            };
        }
        owned.push((n, t.dtype(), t.shape().to_vec(), data));
    }
    for name in names {
        assert!(owned.iter().any(|t| t.0 == *name), "{name} not in {part}");
    }
    let views: Vec<(&str, safetensors::tensor::TensorView)> =
        owned.iter().map(|(n, d, s, b)| (n.as_str(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(dir.join(part).join(file), safetensors::serialize(views, None).unwrap()).unwrap();
    dir
}

/// Scale so the largest weight becomes 60000 (still an f16), making the activations overflow.
fn overflow_scale(v: &mut [f32]) {
    let m = v.iter().fold(0f32, |a, x| a.max(x.abs()));
    v.iter_mut().for_each(|x| *x *= 60000.0 / m);
}

fn opts() -> GenerateOptions {
    GenerateOptions { prompt: "a red square".into(), seed: 7, width: 32, height: 32, steps: 2, sampler: SamplerKind::Euler, ..Default::default() }
}

fn mean_max_diff(a: &[u8], b: &[u8]) -> (f64, u8) {
    let sum: u64 = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y) as u64).sum();
    (sum as f64 / a.len() as f64, a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0))
}

#[test]
fn f16_vae_overflow_is_redecoded_in_f32() {
    if !ctx().f16 {
        eprintln!("skipped: no SHADER_F16 on this adapter");
        return;
    }
    let dir = edited_model("vae", "vae", &["decoder.conv_in.weight"], overflow_scale);
    let sd16 = StableDiffusion::load(ctx(), &dir, true).unwrap();
    let sd32 = StableDiffusion::load(ctx(), &dir, false).unwrap();
    assert_eq!(sd16.vae.dtype, DType::F16);
    // The fixture: the f16 decoder alone overflows, the f32 one does not.
    let z = Tensor::from_f32(ctx(), &rand_vec(4 * 4 * 4, 3), &[1, 4, 4, 4], DType::F16).unwrap();
    let img16 = pollster::block_on(sd16.vae.latents_to_image_async(ctx(), &z)).unwrap();
    let s16 = finite_stats_blocking(ctx(), &img16).unwrap();
    assert!(s16.nonfinite > 0, "the scaled VAE must overflow f16: {s16:?}");
    let z32 = Tensor::from_f32(ctx(), &rand_vec(4 * 4 * 4, 3), &[1, 4, 4, 4], DType::F32).unwrap();
    let s32 = finite_stats_blocking(ctx(), &pollster::block_on(sd32.vae.latents_to_image_async(ctx(), &z32)).unwrap()).unwrap();
    assert!(s32.all_finite() && !s32.constant(0.01), "and stay finite in f32: {s32:?}");

    let got = sd16.generate(ctx(), &opts(), |_, _| {}).unwrap();
    let w = sd16.take_warnings();
    assert!(w.iter().any(|w| w.contains("f16 VAE decode") && w.contains("f32")), "{w:?}");
    let want = sd32.generate(ctx(), &opts(), |_, _| {}).unwrap();
    assert!(sd32.take_warnings().is_empty());
    // f16 vs f32 UNet on the same weights: a few levels.
    let (mean, max) = mean_max_diff(&got.rgb, &want.rgb);
    eprintln!("f16 UNet + f32 re-decode vs f32 model: mean {mean:.3} max {max} levels");
    assert!(mean <= 2.0 && max <= 16, "mean {mean:.3} max {max}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn f16_unet_overflow_is_resampled_in_f32() {
    if !ctx().f16 {
        eprintln!("skipped: no SHADER_F16 on this adapter");
        return;
    }
    let dir = edited_model("unet", "unet", &["conv_in.weight"], overflow_scale);
    let mut sd16 = StableDiffusion::load(ctx(), &dir, true).unwrap();
    let mut sd32 = StableDiffusion::load(ctx(), &dir, false).unwrap();
    assert_eq!(sd16.unet.dtype, DType::F16);
    let lora = LoraUse::new(Arc::new(Lora::open(fixtures().join("lora/sd15-tiny-kohya.safetensors")).unwrap()), 0.8);
    // Plain, then with a LoRA: the f32 re-run must merge it as the f16 UNet had it.
    for uses in [vec![], vec![lora]] {
        sd16.set_loras(ctx(), &uses).unwrap();
        sd32.set_loras(ctx(), &uses).unwrap();
        let mut steps = Vec::new();
        let got = sd16.generate(ctx(), &opts(), |i, n| steps.push((i, n))).unwrap();
        let w = sd16.take_warnings();
        assert!(w.iter().any(|w| w.contains("f16 UNet") && w.contains("f32")), "{w:?}");
        // The f16 loop stopped at its first step, before reporting it; the f32 one ran whole.
        assert_eq!(steps, [(1, 2), (2, 2)]);
        let want = sd32.generate(ctx(), &opts(), |_, _| {}).unwrap();
        assert!(sd32.take_warnings().is_empty());
        // Only the text encoder and the VAE ran in f16: a few levels.
        let (mean, max) = mean_max_diff(&got.rgb, &want.rgb);
        eprintln!("f16 model resampled in f32 ({} LoRA) vs f32 model: mean {mean:.3} max {max} levels", uses.len());
        assert!(mean <= 2.0 && max <= 16, "mean {mean:.3} max {max}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_unet_non_finite_in_f32_fails_naming_the_stage() {
    let dir = edited_model("unet-nan", "unet", &["conv_in.weight"], |v| v[0] = f32::NAN);
    for f16 in [false, true] {
        let sd = StableDiffusion::load(ctx(), &dir, f16).unwrap();
        let e = sd.generate(ctx(), &opts(), |_, _| {}).unwrap_err().to_string();
        assert!(e.contains("UNet") && e.contains("NaN or infinite") && e.contains("in f32"), "f16 {f16}: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn constant_image_is_returned_with_a_warning() {
    let zero = |v: &mut [f32]| v.iter_mut().for_each(|x| *x = 0.0);
    let dir = edited_model("constant", "vae", &["decoder.conv_out.weight", "decoder.conv_out.bias"], zero);
    let sd = StableDiffusion::load(ctx(), &dir, false).unwrap();
    let img = sd.generate(ctx(), &opts(), |_, _| {}).unwrap();
    let w = sd.take_warnings();
    assert!(img.rgb.iter().all(|&x| x == img.rgb[0]), "the fixture makes a constant image");
    assert!(w.iter().any(|w| w.contains("single colour")), "{w:?}");
    // The unedited model: no warning.
    let base = StableDiffusion::load(ctx(), &fixtures().join("sd15-tiny"), false).unwrap();
    base.generate(ctx(), &opts(), |_, _| {}).unwrap();
    assert_eq!(base.take_warnings(), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dir);
}

fn tiny() -> &'static StableDiffusion {
    static SD: std::sync::OnceLock<StableDiffusion> = std::sync::OnceLock::new();
    SD.get_or_init(|| StableDiffusion::load(ctx(), &fixtures().join("sd15-tiny"), false).unwrap())
}

#[test]
fn huge_prompts_are_refused_before_allocating() {
    // Its own context, so that the other tests' allocations do not count.
    let own = pigment::gpu::Context::new_blocking(&pigment::gpu::AdapterChoice::from_env()).unwrap();
    let sd = StableDiffusion::load(&own, &fixtures().join("sd15-tiny"), false).unwrap();
    let before = own.pool_stats();
    let million = "a ".repeat(1_000_000);
    let e = sd.generate(&own, &GenerateOptions { prompt: million, ..opts() }, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("prompt") && e.contains("2000000 bytes") && e.contains("shorten"), "{e}");
    // Under the byte limit but over 64 chunks of tokens: counted, then refused.
    let many = "cat, ".repeat(6000);
    let e = sd.generate(&own, &GenerateOptions { negative_prompt: many, ..opts() }, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("negative prompt") && e.contains("tokens") && e.contains("64 chunks"), "{e}");
    let after = own.pool_stats();
    assert_eq!((after.created, after.live), (before.created, before.live), "nothing was allocated");
}

#[test]
fn a_width_past_the_device_limit_names_it() {
    let sd = tiny();
    // 100000² f32 RGB is 120 GB: past any adapter's max_buffer_size.
    assert!(ctx().limits.max_buffer_size < 120_000_000_000, "max_buffer_size {}", ctx().limits.max_buffer_size);
    let before = ctx().pool_stats();
    let e = sd.generate(ctx(), &GenerateOptions { width: 100_000, height: 100_000, ..opts() }, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("100000x100000") && e.contains("max_buffer_size") && e.contains("smaller size"), "{e}");
    assert_eq!(ctx().pool_stats().created, before.created);
    // The CLI says the same and exits non-zero.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pigment"))
        .args(["generate", "--model"])
        .arg(fixtures().join("sd15-tiny"))
        .args(["a cat", "--width", "100000", "--height", "100000", "--steps", "1", "--output"])
        .arg(Path::new(env!("CARGO_TARGET_TMPDIR")).join("never.png"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("max_buffer_size") && err.contains("100000x100000"), "{err}");
}

#[test]
fn a_size_whose_unet_activation_is_past_the_device_limit_names_it() {
    let sd = tiny();
    let limit = ctx().limits.max_buffer_size;
    // A height where the decoded image (12 bytes a pixel) fits one buffer but the UNet's
    // first-level GEGLU projection (batch 2 x 8·c0 channels x 4 bytes per latent pixel, 1/64 of
    // the image's) does not: that check, not the image's, must refuse it.
    let c0 = sd.unet.config.block_out_channels[0] as u64;
    let unet_per_px = 2 * 8 * c0 * 4 / 64;
    assert!(unet_per_px > 12, "the fixture's UNet must need more per pixel than the image");
    let width = 100_000u64;
    let height = (limit / (width * unet_per_px) + 64) / 8 * 8;
    assert!(width * height * 12 <= limit && width * height * unet_per_px > limit, "height {height}");
    let before = ctx().pool_stats();
    let o = GenerateOptions { width: width as usize, height: height as usize, ..opts() };
    let e = sd.generate(ctx(), &o, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains(&format!("100000x{height}")) && e.contains("GEGLU") && e.contains("max_buffer_size"), "{e}");
    assert_eq!(ctx().pool_stats().created, before.created, "refused before allocating");
}
