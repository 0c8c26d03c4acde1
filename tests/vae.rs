//! The AutoencoderKL decoder and encoder against diffusers 0.39 (CPU, f32) goldens for both tiny
//! variants (`tests/fixtures/golden/<variant>/vae.safetensors`, `txt2img.safetensors`), loaded
//! from the diffusers folder and from the single-file checkpoint (with the folder's config).
//!
//! Tolerance (f32): max |got - want| ≤ 1e-4 · max|want| per tensor. Both sides compute in f32
//! with the same formulas and differ only in summation order (tiled GEMM/conv, online softmax,
//! group-norm reductions): ~1e-7 relative per op over ~40 ops. 1e-4 leaves two orders of
//! magnitude of headroom over the measured error (printed by each test), while real mistakes
//! are far larger: the symmetric-padding downsampler in place of diffusers' (0,1,0,1) pad moves
//! the encoder output by O(0.1-1) of its scale (`symmetric_downsample_padding_is_detected`).
//!
//! Measured on lavapipe (llvmpipe, LLVM 15): worst 1.4e-6 (decode) / 1.3e-6 (encode) over both
//! variants, folder and single file, flash and matmul attention, 8 KiB bindings (70× headroom).
//! A 1 % error in the attention scale alone fails at 4.4e-3 (checked once by hand).
//!
//! f16 storage (weights and every activation rounded to 11 significant bits, ~40 stores deep,
//! re-amplified by each group norm): measured worst 2.7e-3; tolerance 2e-2.
//!
//! The uint8 image (`txt2img.safetensors` `vae_in` → `image_u8`) must match with mean abs
//! difference ≤ 1 level and max ≤ 8 (in practice it is exact or off by one level where a value
//! sits on a rounding boundary).

mod common;

use common::*;
use pigment::models::vae::{image_to_u8, AttentionMode, Conv2d, Trace, Vae, VaeConfig};
use pigment::weights::Weights;
use pigment::{DType, Tensor};
use std::sync::Mutex;

const VARIANTS: [&str; 2] = ["sd15-tiny", "sd21-tiny"];
const TOL_F32: f32 = 1e-4;
const TOL_F16: f32 = 2e-2;

/// Tests that lower the context's binding limit must not run beside the others.
static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}


fn load(w: &Weights, dtype: DType) -> Vae {
    Vae::load(ctx(), w.vae().unwrap(), dtype).unwrap()
}

fn err_of(got: &Tensor, want: &(Vec<f32>, Vec<usize>), what: &str) -> f32 {
    assert_eq!(got.shape(), want.1.as_slice(), "{what}: shape");
    rel_err(&got.to_vec(ctx()).unwrap(), &want.0)
}

fn check(got: &Tensor, want: &(Vec<f32>, Vec<usize>), tol: f32, what: &str) -> f32 {
    let e = err_of(got, want, what);
    assert!(e <= tol, "{what}: max error {e:.3e} of the tensor's scale exceeds {tol:.1e}");
    e
}

fn traced<'a>(trace: &'a Trace, name: &str, what: &str) -> &'a Tensor {
    &trace.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{what}: no trace of {name}")).1
}

/// `decode_in` → `decode_out` with every `dbg.decode.*` intermediate; returns the worst error.
fn check_decode(vae: &Vae, variant: &str, dtype: DType, tol: f32, what: &str) -> f32 {
    let g = Golden::load(variant, "vae.safetensors");
    let mut trace = Trace::new();
    let out = vae.decode_traced(ctx(), &g.upload("decode_in", dtype), Some(&mut trace)).unwrap();
    let mut worst = 0f32;
    for name in ["post_quant_conv", "decoder.conv_in", "decoder.mid_block", "decoder.up_blocks.0", "decoder.conv_norm_out"] {
        worst = worst.max(check(traced(&trace, name, what), &g.f32(&format!("dbg.decode.{name}")), tol, &format!("{what} dbg.decode.{name}")));
    }
    worst.max(check(&out, &g.f32("decode_out"), tol, &format!("{what} decode_out")))
}

/// `encode_in` → `encode_mean`, `encode_logvar`, `encode_std` with the `dbg.encode.*`
/// intermediates; returns the worst error.
fn check_encode(vae: &Vae, variant: &str, dtype: DType, tol: f32, what: &str) -> f32 {
    let g = Golden::load(variant, "vae.safetensors");
    let mut trace = Trace::new();
    let (mean, logvar, std) = vae.encode_traced(ctx(), &g.upload("encode_in", dtype), Some(&mut trace)).unwrap();
    let mut worst = 0f32;
    for name in ["encoder.conv_in", "encoder.down_blocks.0", "encoder.mid_block", "encoder.conv_out", "quant_conv"] {
        worst = worst.max(check(traced(&trace, name, what), &g.f32(&format!("dbg.encode.{name}")), tol, &format!("{what} dbg.encode.{name}")));
    }
    worst = worst.max(check(&mean, &g.f32("encode_mean"), tol, &format!("{what} encode_mean")));
    worst = worst.max(check(&logvar, &g.f32("encode_logvar"), tol, &format!("{what} encode_logvar")));
    worst.max(check(&std, &g.f32("encode_std"), tol, &format!("{what} encode_std")))
}

#[test]
fn config_from_json() {
    let w = Weights::open(fixtures().join("sd15-tiny")).unwrap();
    let cfg = VaeConfig::for_component(w.vae().unwrap()).unwrap();
    assert_eq!(cfg.block_out_channels, vec![8, 16, 16, 16]);
    assert_eq!((cfg.layers_per_block, cfg.norm_num_groups, cfg.latent_channels), (2, 4, 4));
    assert_eq!(cfg.scaling_factor, 0.18215);
    assert_eq!(cfg.scale_factor(), 8);
    assert!(cfg.mid_block_add_attention && cfg.use_quant_conv && cfg.use_post_quant_conv);
}

/// A single file without a config: SD defaults with channels, levels and layers from the tensors
/// (the tiny model's 4 norm groups cannot be inferred; loading it so needs its config folder).
#[test]
fn config_inferred_from_single_file() {
    let w = Weights::open(single_file("sd15-tiny")).unwrap();
    let cfg = VaeConfig::for_component(w.vae().unwrap()).unwrap();
    assert_eq!(cfg.block_out_channels, vec![8, 16, 16, 16]);
    assert_eq!((cfg.layers_per_block, cfg.latent_channels, cfg.in_channels, cfg.out_channels), (2, 4, 3, 3));
    assert_eq!(cfg.norm_num_groups, 32);
    assert!(cfg.mid_block_add_attention && cfg.use_quant_conv && cfg.use_post_quant_conv);
}

#[test]
fn decode_and_encode_f32_match_diffusers() {
    let _g = lock();
    for variant in VARIANTS {
        for (src, w) in sources(variant) {
            let what = format!("{variant} {src} f32");
            let vae = load(&w, DType::F32);
            let d = check_decode(&vae, variant, DType::F32, TOL_F32, &what);
            let e = check_encode(&vae, variant, DType::F32, TOL_F32, &what);
            eprintln!("{what}: decode worst {d:.2e}, encode worst {e:.2e}");
        }
    }
}

/// The GEMM + softmax attention (what real SD's C = 512 runs), forced on the tiny model, with
/// the query rows chunked (64 tokens in chunks of 16) and a batch of two.
#[test]
fn matmul_attention_path_matches() {
    let _g = lock();
    let c = ctx();
    for variant in VARIANTS {
        let w = Weights::open(fixtures().join(variant)).unwrap();
        let mut vae = load(&w, DType::F32);
        vae.attention_mode = AttentionMode::Matmul;
        for rows in [None, Some(16)] {
            vae.attention_max_rows = rows;
            let what = format!("{variant} matmul attention (rows {rows:?})");
            let d = check_decode(&vae, variant, DType::F32, TOL_F32, &what);
            let e = check_encode(&vae, variant, DType::F32, TOL_F32, &what);
            eprintln!("{what}: decode worst {d:.2e}, encode worst {e:.2e}");
        }
        // Batch of two: both entries must equal the golden.
        let g = Golden::load(variant, "vae.safetensors");
        let (z, _) = g.f32("decode_in");
        let z2: Vec<f32> = z.iter().chain(z.iter()).copied().collect();
        let out = vae.decode(c, &Tensor::from_f32(c, &z2, &[2, 4, 8, 8], DType::F32).unwrap()).unwrap();
        assert_eq!(out.shape(), &[2, 3, 64, 64]);
        let got = out.to_vec(c).unwrap();
        let (want, _) = g.f32("decode_out");
        for b in 0..2 {
            let e = rel_err(&got[b * want.len()..(b + 1) * want.len()], &want);
            assert!(e <= TOL_F32, "{variant} batch entry {b}: {e:.3e}");
        }
    }
}

/// Every op split over many small bindings (8 KiB: convolutions by channels and rows, the
/// attention scores by query rows) gives the same result.
#[test]
fn small_binding_limit_matches() {
    let _g = lock();
    let c = ctx();
    let variant = "sd15-tiny";
    let w = Weights::open(fixtures().join(variant)).unwrap();
    let mut vae = load(&w, DType::F32);
    vae.attention_mode = AttentionMode::Matmul;
    c.set_max_binding_for_tests(8 << 10);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let d = check_decode(&vae, variant, DType::F32, TOL_F32, "8 KiB bindings");
        let e = check_encode(&vae, variant, DType::F32, TOL_F32, "8 KiB bindings");
        eprintln!("8 KiB bindings: decode worst {d:.2e}, encode worst {e:.2e}");
    }));
    c.set_max_binding_for_tests(0);
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

/// The final image of the txt2img golden: `vae_in` → decode → uint8, and the same from the
/// sampler's last latents through `latents_to_image_u8` (/ scaling_factor on the GPU).
#[test]
fn image_u8_matches_txt2img() {
    let _g = lock();
    let c = ctx();
    for variant in VARIANTS {
        let w = Weights::open(fixtures().join(variant)).unwrap();
        let vae = load(&w, DType::F32);
        let g = Golden::load(variant, "txt2img.safetensors");
        let want = g.u8("image_u8");
        let out = vae.decode(c, &g.upload("vae_in", DType::F32)).unwrap();
        check(&out, &g.f32("vae_out"), TOL_F32, &format!("{variant} vae_out"));
        let v = out.to_vec(c).unwrap();
        let img = image_to_u8(&v, 1, 3, 64, 64);
        let (latents, s) = g.f32("latents");
        let n: usize = s[1..].iter().product();
        let last = Tensor::from_f32(c, &latents[latents.len() - n..], &s[1..], DType::F32).unwrap();
        let img2 = vae.latents_to_image_u8(c, &last).unwrap();
        for (how, got) in [("vae_in", &img), ("latents_to_image_u8", &img2)] {
            assert_eq!(got.len(), want.len());
            let diffs: Vec<i32> = got.iter().zip(&want).map(|(&a, &b)| (a as i32 - b as i32).abs()).collect();
            let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
            let max = *diffs.iter().max().unwrap();
            let off = diffs.iter().filter(|&&d| d > 0).count();
            eprintln!("{variant} {how}: image_u8 mean abs diff {mean:.4}, max {max}, {off} of {} differ", diffs.len());
            assert!(mean <= 1.0 && max <= 8, "{variant} {how}: mean {mean}, max {max}");
        }
    }
}

/// Replacing the (0,1,0,1)-padded downsampler by a plain symmetric-padding 3x3 stride-2 conv
/// (a tempting shortcut) must fail the encoder golden by far more than the tolerance.
#[test]
fn symmetric_downsample_padding_is_detected() {
    let _g = lock();
    let c = ctx();
    let variant = "sd15-tiny";
    let w = Weights::open(fixtures().join(variant)).unwrap();
    let comp = w.vae().unwrap();
    let mut vae = load(&w, DType::F32);
    let enc = vae.encoder.as_mut().unwrap();
    for (i, blk) in enc.down_blocks.iter_mut().enumerate() {
        if blk.downsampler.is_some() {
            let p = format!("encoder.down_blocks.{i}.downsamplers.0.conv");
            blk.downsampler = Some(Conv2d {
                weight: pigment::ops::conv::ConvWeight::new(comp.get(&format!("{p}.weight")).unwrap().upload(c, DType::F32).unwrap()),
                bias: comp.get(&format!("{p}.bias")).unwrap().upload(c, DType::F32).unwrap(),
                stride: 2,
                padding: 1,
            });
        }
    }
    let g = Golden::load(variant, "vae.safetensors");
    let (mean, _) = vae.encode(c, &g.upload("encode_in", DType::F32)).unwrap();
    let e = err_of(&mean, &g.f32("encode_mean"), "symmetric padding");
    eprintln!("symmetric downsample padding: encode_mean error {e:.3e}");
    assert!(e > 100.0 * TOL_F32, "symmetric padding should be detected, error only {e:.3e}");
}

/// Tiled decoding: one tile covering everything equals the plain decode; small tiles (4 latent
/// px, overlap 0.25 → step 3, blend 8 px, crop 24 px) give diffusers' stitching: the top-left
/// 24×24 is tile (0,0) alone, and the first blended rows follow `a·(1-y/8) + b·(y/8)`.
#[test]
fn tiled_decode_stitches_like_diffusers() {
    let _g = lock();
    let c = ctx();
    let variant = "sd15-tiny";
    let w = Weights::open(fixtures().join(variant)).unwrap();
    let vae = load(&w, DType::F32);
    let g = Golden::load(variant, "vae.safetensors");
    let (z, _) = g.f32("decode_in");
    let zt = Tensor::from_f32(c, &z, &[1, 4, 8, 8], DType::F32).unwrap();
    let full = vae.decode(c, &zt).unwrap().to_vec(c).unwrap();
    let one = vae.decode_tiled(c, &zt, 12, 0.25).unwrap().to_vec(c).unwrap();
    assert!(rel_err(&one, &full) <= 1e-6, "single tile differs from the plain decode");

    let tiled = vae.decode_tiled(c, &zt, 4, 0.25).unwrap();
    assert_eq!(tiled.shape(), &[1, 3, 64, 64]);
    let tiled = tiled.to_vec(c).unwrap();
    // Latent tiles start at 0, 3, 6 (sizes 4, 4, 2).
    let tile = |i: usize, j: usize| -> (Vec<f32>, usize, usize) {
        let (th, tw) = (4.min(8 - i), 4.min(8 - j));
        let mut t = Vec::new();
        for ch in 0..4 {
            for y in 0..th {
                let s = ch * 64 + (i + y) * 8 + j;
                t.extend_from_slice(&z[s..s + tw]);
            }
        }
        let d = vae.decode(c, &Tensor::from_f32(c, &t, &[1, 4, th, tw], DType::F32).unwrap()).unwrap();
        (d.to_vec(c).unwrap(), th * 8, tw * 8)
    };
    let (t00, h00, w00) = tile(0, 0);
    for ch in 0..3 {
        for y in 0..24 {
            for x in 0..24 {
                let (a, b) = (tiled[ch * 4096 + y * 64 + x], t00[ch * h00 * w00 + y * w00 + x]);
                assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "tile (0,0) at ({ch},{y},{x}): {a} vs {b}");
            }
        }
    }
    // Rows 24..32, columns 0..16 (left of any horizontal blend into tile (1,0)... tile (1,0)
    // starts at column 0 and its own columns 0..24 are unblended horizontally): vertical blend
    // of tile (0,0)'s rows 24..32 into tile (1,0)'s rows 0..8.
    let (t10, h10, w10) = tile(3, 0);
    for ch in 0..3 {
        for y in 0..8 {
            let t = y as f64 / 8.0;
            for x in 0..16 {
                let a = t00[ch * h00 * w00 + (24 + y) * w00 + x];
                let b = t10[ch * h10 * w10 + y * w10 + x];
                let want = a * (1.0 - t) as f32 + b * t as f32;
                let got = tiled[ch * 4096 + (24 + y) * 64 + x];
                assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "blend at ({ch},{},{x}): {got} vs {want}", 24 + y);
            }
        }
    }
}

/// f16 storage (where the adapter has SHADER_F16): weights and every activation stored in f16.
#[test]
fn decode_and_encode_f16_close() {
    if !ctx().f16 {
        eprintln!("no SHADER_F16 on this adapter: skipped");
        return;
    }
    let _g = lock();
    for variant in VARIANTS {
        let w = Weights::open(fixtures().join(variant)).unwrap();
        let vae = load(&w, DType::F16);
        let what = format!("{variant} f16");
        let d = check_decode(&vae, variant, DType::F16, TOL_F16, &what);
        let e = check_encode(&vae, variant, DType::F16, TOL_F16, &what);
        eprintln!("{what}: decode worst {d:.2e}, encode worst {e:.2e}");
        // The pipeline hands over f32 latents: converted to the model's dtype first.
        let g = Golden::load(variant, "txt2img.safetensors");
        let (latents, s) = g.f32("latents");
        let n: usize = s[1..].iter().product();
        let last = Tensor::from_f32(ctx(), &latents[latents.len() - n..], &s[1..], DType::F32).unwrap();
        let img = vae.latents_to_image_u8(ctx(), &last).unwrap();
        let want = g.u8("image_u8");
        let diffs: Vec<i32> = img.iter().zip(&want).map(|(&a, &b)| (a as i32 - b as i32).abs()).collect();
        let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
        let max = *diffs.iter().max().unwrap();
        eprintln!("{what}: image_u8 mean abs diff {mean:.4}, max {max}");
        assert!(mean <= 1.0 && max <= 8, "{what}: image mean {mean}, max {max}");
    }
}

/// `attention_matmul` at real SD's width (C = 512, beyond the flash kernel's head dims) against
/// a CPU reference, f64 accumulation: two images, 60 tokens (not a multiple of 4: the scalar
/// GEMM for the scores) and 64 tokens (vec4 GEMMs), whole and chunked by 16 query rows.
#[test]
fn attention_matmul_c512_matches_cpu() {
    let _g = lock();
    let c = ctx();
    let (b, ch) = (2usize, 512usize);
    for l in [60usize, 64] {
        let q = common::rand_vec(b * l * ch, 1);
        let k = common::rand_vec(b * l * ch, 2);
        let v = common::rand_vec(b * l * ch, 3);
        let scale = (ch as f32).powf(-0.5);
        // Kᵀ [B, C, L]
        let mut kt = vec![0f32; b * ch * l];
        for bi in 0..b {
            for t in 0..l {
                for d in 0..ch {
                    kt[(bi * ch + d) * l + t] = k[(bi * l + t) * ch + d];
                }
            }
        }
        let mut want = vec![0f32; b * l * ch];
        for bi in 0..b {
            for i in 0..l {
                let s: Vec<f64> = (0..l)
                    .map(|j| (0..ch).map(|d| q[(bi * l + i) * ch + d] as f64 * k[(bi * l + j) * ch + d] as f64).sum::<f64>() * scale as f64)
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..ch {
                    want[(bi * l + i) * ch + d] = ((0..l).map(|j| e[j] * v[(bi * l + j) * ch + d] as f64).sum::<f64>() / z) as f32;
                }
            }
        }
        let up = |x: &[f32], shape: &[usize]| Tensor::from_f32(c, x, shape, DType::F32).unwrap();
        for rows in [None, Some(16)] {
            let out = pigment::models::vae::attention_matmul(c, &up(&q, &[b, l, ch]), &up(&kt, &[b, ch, l]), &up(&v, &[b, l, ch]), scale, rows).unwrap();
            assert_eq!(out.shape(), &[b, l, ch]);
            let e = rel_err(&out.to_vec(c).unwrap(), &want);
            eprintln!("attention_matmul C=512 L={l} rows {rows:?}: {e:.2e}");
            assert!(e <= TOL_F32, "L={l} rows {rows:?}: {e:.3e}");
        }
    }
}
