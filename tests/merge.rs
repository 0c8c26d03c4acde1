//! `pigment merge` (src/weights/merge.rs) against A1111's formulas computed here, tensor by
//! tensor, from files read with the `safetensors` crate (not Pigment's reader): weighted sum and
//! add-difference, folders and single files, the inpainting channel rule, the copied VAE, and the
//! refusals. The merged folder must also load and generate.

mod common;

use half::f16;
use pigment::weights::merge::{merge, MergeOptions, Mode};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("merge").join(name);
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_file(&d);
    std::fs::create_dir_all(d.parent().unwrap()).unwrap();
    d
}

/// Every tensor of a file as (dtype, shape, f32 values; integers as raw bytes cast to f32).
fn read(path: &Path) -> HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<f32>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, t)| {
            let vals = match t.dtype() {
                safetensors::Dtype::F16 => t.data().chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                safetensors::Dtype::F32 => t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
                _ => vec![],
            };
            (n, (t.dtype(), t.shape().to_vec(), vals, t.data().to_vec()))
        })
        .collect()
}

/// A copy of `src` (a file) with every float tensor's values mapped by `f`, in F16.
fn perturbed_file(src: &Path, dst: &Path, f: impl Fn(f32) -> f32) {
    let tensors = read(src);
    let owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, (d, s, v, raw))| match d {
            safetensors::Dtype::F16 | safetensors::Dtype::F32 => (n, safetensors::Dtype::F16, s, v.iter().flat_map(|x| f16::from_f32(f(*x)).to_le_bytes()).collect()),
            _ => (n, d, s, raw),
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        owned.iter().map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    safetensors::serialize_to_file(views, None, dst).unwrap();
}

/// A copy of a diffusers folder whose text encoder and UNet values are mapped by `f`.
fn perturbed_folder(src: &Path, dst: &Path, f: impl Fn(f32) -> f32 + Copy) {
    common::copy_dir(src, dst);
    for file in ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors"] {
        perturbed_file(&src.join(file), &dst.join(file), f);
    }
}

fn f16r(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Every tensor of `got` is `want(name, a, b, c)` rounded to f16, exactly; tensors `copied(name)`
/// are A's bytes.
fn check(got: &Path, a: &Path, b: &Path, c: Option<&Path>, copied: impl Fn(&str) -> bool, want: impl Fn(f32, f32, f32) -> f32) -> usize {
    let (g, ta, tb) = (read(got), read(a), read(b));
    let tc = c.map(read);
    assert_eq!(g.len(), ta.len(), "{}: tensor count", got.display());
    let mut merged = 0;
    for (name, (d, shape, va, raw_a)) in &ta {
        let (gd, gs, gv, graw) = &g[name];
        assert_eq!((gd, gs), (d, shape), "{name}");
        if copied(name) || va.is_empty() {
            assert_eq!(graw, raw_a, "{name}: must be A's bytes");
            continue;
        }
        let vb = &tb[name].2;
        let vc = tc.as_ref().map(|t| &t[name].2);
        for i in 0..va.len() {
            let w = f16r(want(va[i], vb[i], vc.map_or(0.0, |c| c[i])));
            assert!(gv[i] == w, "{name}[{i}]: got {} want {w} (a {} b {})", gv[i], va[i], vb[i]);
        }
        merged += 1;
    }
    merged
}

fn opts(mode: Mode, alpha: f32) -> MergeOptions {
    MergeOptions { mode, alpha, fp16: false }
}

#[test]
fn weighted_sum_of_folders_is_a1111s_formula_and_copies_the_vae() {
    let a = common::fixtures().join("sd15-tiny");
    let b = tmp("b-folder");
    perturbed_folder(&a, &b, |x| -0.5 * x + 0.01);
    let out = tmp("weighted-folder");
    let r = merge(&a, &b, None, &out, &opts(Mode::Weighted, 0.3)).unwrap();
    let mut merged = 0;
    for f in ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors"] {
        merged += check(&out.join(f), &a.join(f), &b.join(f), None, |_| false, |a, b, _| (1.0 - 0.3) * a + 0.3 * b);
    }
    assert_eq!(merged, r.merged);
    assert!(r.merged > 100, "{r:?}");
    // VAE, configs, tokenizer and scheduler: A's bytes.
    for f in ["vae/diffusion_pytorch_model.safetensors", "vae/config.json", "unet/config.json", "model_index.json", "tokenizer/vocab.json", "scheduler/scheduler_config.json"] {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(a.join(f)).unwrap(), "{f}");
    }
    // The result is a model: it loads and makes a finite, non-flat image.
    let ctx = common::ctx();
    let sd = pigment::pipeline::StableDiffusion::load(ctx, &out, false).unwrap();
    let o = pigment::pipeline::GenerateOptions { prompt: "a cat".into(), width: 64, height: 64, steps: 2, seed: 1, ..Default::default() };
    let img = sd.generate(ctx, &o, |_, _| {}).unwrap();
    let (lo, hi) = img.rgb.iter().fold((255u8, 0u8), |(l, h), &p| (l.min(p), h.max(p)));
    assert!(hi > lo, "merged model made a flat image");
}

#[test]
fn add_difference_of_single_files_and_fp16_output() {
    let a = common::single_file("sd15-tiny");
    let b = tmp("b.safetensors");
    let c = tmp("c.safetensors");
    perturbed_file(&a, &b, |x| 1.5 * x - 0.02);
    perturbed_file(&a, &c, |x| 0.75 * x);
    let out = tmp("addiff.safetensors");
    let r = merge(&a, &b, Some(&c), &out, &MergeOptions { mode: Mode::AddDifference, alpha: 0.7, fp16: true }).unwrap();
    let vae = |n: &str| n.starts_with("first_stage_model.");
    let merged = check(&out, &a, &b, Some(&c), vae, |a, b, c| a + 0.7 * (b - c));
    assert_eq!(merged, r.merged);
    assert!(r.copied > 10, "the VAE is copied: {r:?}");
    // A1111's metadata.
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["format"], "pt");
    let recipe: serde_json::Value = serde_json::from_str(&meta["sd_merge_recipe"]).unwrap();
    assert_eq!(recipe["interp_method"], "Add difference");
    assert_eq!(recipe["save_as_half"], true);
    // And it loads as a single-file checkpoint (with the folder's configs, as the tiny models need).
    let w = pigment::weights::Weights::open_with(&out, &pigment::weights::OpenOptions { config_dir: Some(common::fixtures().join("sd15-tiny")) }).unwrap();
    assert!(w.unet().is_ok() && w.vae().is_ok() && w.text_encoder().is_ok());
}

#[test]
fn folder_a_takes_a_single_file_b_through_diffusers_names() {
    let a = common::fixtures().join("sd15-tiny");
    let b = common::single_file("sd15-tiny");
    let out = tmp("folder-plus-file");
    // Merging a model with itself changes nothing (beyond f16 rounding of an exact value).
    let r = merge(&a, &b, None, &out, &opts(Mode::Weighted, 0.5)).unwrap();
    assert!(r.merged > 100 && r.missing_in_other == 0, "{r:?}");
    let f = "unet/diffusion_pytorch_model.safetensors";
    check(&out.join(f), &a.join(f), &a.join(f), None, |_| false, |a, b, _| 0.5 * a + 0.5 * b);
}

#[test]
fn inpainting_a_keeps_its_extra_channels_and_the_reverse_is_refused() {
    let a = common::fixtures().join("sd15-tiny-inpaint");
    let b = common::fixtures().join("sd15-tiny");
    let out = tmp("inpaint");
    let r = merge(&a, &b, None, &out, &opts(Mode::Weighted, 0.25)).unwrap();
    assert_eq!(r.partial, 1, "{r:?}");
    let f = "unet/diffusion_pytorch_model.safetensors";
    let (g, ta, tb) = (read(&out.join(f)), read(&a.join(f)), read(&b.join(f)));
    let (_, shape, va, _) = &ta["conv_in.weight"];
    let (gv, vb) = (&g["conv_in.weight"].2, &tb["conv_in.weight"].2);
    let (cout, inner) = (shape[0], shape[2] * shape[3]);
    for o in 0..cout {
        for ch in 0..9 {
            for k in 0..inner {
                let i = (o * 9 + ch) * inner + k;
                let want = if ch < 4 { f16r(0.75 * va[i] + 0.25 * vb[(o * 4 + ch) * inner + k]) } else { va[i] };
                assert_eq!(gv[i], want, "conv_in.weight out {o} channel {ch}");
            }
        }
    }
    let e = merge(&b, &a, None, &tmp("inpaint-reversed"), &opts(Mode::Weighted, 0.25)).unwrap_err().to_string();
    assert!(e.contains("conv_in.weight") && e.contains("must be A"), "{e}");
}

#[test]
fn refusals_name_the_problem() {
    let a = common::fixtures().join("sd15-tiny");
    let msg = |r: Result<_, pigment::weights::WeightsError>| r.unwrap_err().to_string();
    // Different architectures: the first tensor whose shape differs is named.
    let e = msg(merge(&a, &common::fixtures().join("sd21-tiny"), None, &tmp("arch"), &opts(Mode::Weighted, 0.5)));
    assert!(e.contains("different architectures"), "{e}");
    // Never overwrite an input, never write into an existing output.
    let e = msg(merge(&a, &a, None, &a, &opts(Mode::Weighted, 0.5)));
    assert!(e.contains("overwrite") || e.contains("already exists"), "{e}");
    let e = msg(merge(&a, &a, None, &common::fixtures().join("sd15-tiny-inpaint"), &opts(Mode::Weighted, 0.5)));
    assert!(e.contains("already exists"), "{e}");
    // Add-difference without C, weighted with C, a missing file, a NaN multiplier.
    let e = msg(merge(&a, &a, None, &tmp("noc"), &opts(Mode::AddDifference, 0.5)));
    assert!(e.contains("third model"), "{e}");
    let e = msg(merge(&a, &a, Some(&a), &tmp("withc"), &opts(Mode::Weighted, 0.5)));
    assert!(e.contains("add-difference"), "{e}");
    let e = msg(merge(&a, Path::new("/nonexistent/model.safetensors"), None, &tmp("missing"), &opts(Mode::Weighted, 0.5)));
    assert!(e.contains("/nonexistent/model.safetensors"), "{e}");
    let e = msg(merge(&a, &a, None, &tmp("nan"), &opts(Mode::Weighted, f32::NAN)));
    assert!(e.contains("alpha"), "{e}");
    // A single-file A with a folder B.
    let e = msg(merge(&common::single_file("sd15-tiny"), &a, None, &tmp("mixed.safetensors"), &opts(Mode::Weighted, 0.5)));
    assert!(e.contains("single file"), "{e}");
}
