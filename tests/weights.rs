//! Weight loading: single-file checkpoints map to exactly the diffusers folder's tensors, and
//! broken inputs fail with errors that name the file and the tensor.

mod common;

use common::*;
use pigment::models::clip::{ClipConfig, ClipTextModel};
use pigment::ops::elementwise::Activation;
use pigment::weights::{ComponentKind, OpenOptions, SafetensorsFile, StoredDtype, TextEncoderKind, Weights};
use pigment::DType;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

const VARIANTS: [&str; 2] = ["sd15-tiny", "sd21-tiny"];

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pigment-weights-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn single_file_equals_folder() {
    for variant in VARIANTS {
        let folder = Weights::open(fixtures().join(variant)).unwrap();
        let single = Weights::open(single_file(variant)).unwrap();
        for kind in [ComponentKind::TextEncoder, ComponentKind::Unet, ComponentKind::Vae] {
            let pick = |w: &Weights| match kind {
                ComponentKind::TextEncoder => w.text_encoder().unwrap().clone(),
                ComponentKind::Unet => w.unet().unwrap().clone(),
                ComponentKind::Vae => w.vae().unwrap().clone(),
                ComponentKind::ControlNet | ComponentKind::TextEncoder2 => unreachable!(),
            };
            let (f, s) = (pick(&folder), pick(&single));
            assert!(!f.is_single_file() && s.is_single_file());
            let (fnames, snames) = (f.names(), s.names());
            let unmapped: Vec<_> = fnames.iter().filter(|n| !s.contains(n)).collect();
            assert!(unmapped.is_empty(), "{variant} {kind:?}: folder tensors with no single-file source: {unmapped:?}");
            let extra: Vec<_> = snames.iter().filter(|n| !f.contains(n)).collect();
            assert!(extra.is_empty(), "{variant} {kind:?}: mapped names the folder does not have: {extra:?}");
            for name in &fnames {
                let (a, b) = (f.get(name).unwrap(), s.get(name).unwrap());
                assert_eq!(a.shape, b.shape, "{variant} {kind:?} {name}: shape");
                assert_eq!(s.shape(name).unwrap(), a.shape, "{variant} {kind:?} {name}: Component::shape");
                assert_eq!(a.dtype, b.dtype, "{variant} {kind:?} {name}: dtype");
                assert!(a.data == b.data, "{variant} {kind:?} {name}: data differs");
            }
            eprintln!("{variant} {kind:?}: {} tensors identical", fnames.len());
        }
        let te = single.text_encoder().unwrap();
        let want = if variant == "sd15-tiny" { TextEncoderKind::Clip } else { TextEncoderKind::OpenClip };
        assert_eq!(te.text_kind, Some(want), "{variant}: text encoder kind");
    }
}

/// Without a config, a single file's text encoder is inferred from its tensors (heads =
/// width / 64, the rule for real CLIP towers, so the tiny widths need a config).
#[test]
fn text_config_inferred_from_single_file() {
    for variant in VARIANTS {
        let folder = Weights::open(fixtures().join(variant)).unwrap();
        let want = ClipConfig::for_component(folder.text_encoder().unwrap()).unwrap();
        let single = Weights::open(single_file(variant)).unwrap();
        let got = ClipConfig::for_component(single.text_encoder().unwrap());
        match variant {
            "sd15-tiny" => {
                // Width 32: not a multiple of 64.
                let e = got.unwrap_err().to_string();
                assert!(e.contains("32") && e.contains("config"), "{e}");
            }
            _ => {
                let got = got.unwrap();
                assert_eq!(got.heads, 1, "64 / 64");
                assert_eq!(ClipConfig { heads: want.heads, ..got }, want, "everything else inferred");
                assert_eq!(want.act, Activation::Gelu);
            }
        }
        let with_cfg = Weights::open_with(
            single_file(variant),
            &OpenOptions { config_dir: Some(fixtures().join(variant)) },
        )
        .unwrap();
        assert_eq!(ClipConfig::for_component(with_cfg.text_encoder().unwrap()).unwrap(), want);
    }
}

#[test]
fn f16_and_bf16_weights_load() {
    // A LayerNorm weight stored as F16 and BF16: values convert like half's rounding. (Random
    // f32 values: the fixtures' own are already f16-representable, so they would not round.)
    let name = "text_model.final_layer_norm.weight";
    let orig: Vec<f32> = rand_vec(48, 5).iter().map(|x| 1.0 + 0.1 * x).collect();
    for (dt, conv) in [
        (Dtype::F16, (|x: f32| half::f16::from_f32(x).to_f32()) as fn(f32) -> f32),
        (Dtype::BF16, |x: f32| half::bf16::from_f32(x).to_f32()),
    ] {
        let bytes: Vec<u8> = match dt {
            Dtype::F16 => orig.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
            _ => orig.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        };
        let view = safetensors::tensor::TensorView::new(dt, vec![orig.len()], &bytes).unwrap();
        let file = safetensors::serialize(vec![(name, view)], None).unwrap();
        let f = SafetensorsFile::from_bytes("mem", file).unwrap();
        let t = f.get(name).unwrap();
        assert_eq!(t.dtype, if dt == Dtype::F16 { StoredDtype::F16 } else { StoredDtype::BF16 });
        let want: Vec<f32> = orig.iter().map(|&x| conv(x)).collect();
        assert_eq!(t.to_f32().unwrap(), want);
        let up = t.upload(ctx(), DType::F32).unwrap().to_vec(ctx()).unwrap();
        assert_eq!(up, want);
        if ctx().f16 {
            let up = t.upload(ctx(), DType::F16).unwrap();
            assert_eq!(up.dtype(), DType::F16);
            let back = up.to_vec(ctx()).unwrap();
            let want16: Vec<f32> = want.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
            assert_eq!(back, want16);
        }
    }
}

/// Tensors of a safetensors file, for rewriting.
type Owned = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

fn read_all(path: &Path) -> Owned {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Owned = st.tensors().into_iter().map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn write_all(path: &Path, tensors: &Owned) {
    let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// A copy of the sd15 folder's text encoder (model_index.json, config.json) with `edit` applied
/// to its tensors.
fn broken_folder(name: &str, edit: impl FnOnce(&mut Owned)) -> PathBuf {
    let src = fixtures().join("sd15-tiny");
    let dir = scratch(name);
    std::fs::create_dir_all(dir.join("text_encoder")).unwrap();
    std::fs::copy(src.join("model_index.json"), dir.join("model_index.json")).unwrap();
    std::fs::copy(src.join("text_encoder/config.json"), dir.join("text_encoder/config.json")).unwrap();
    let mut t = read_all(&src.join("text_encoder/model.safetensors"));
    edit(&mut t);
    write_all(&dir.join("text_encoder/model.safetensors"), &t);
    dir
}

fn load_clip_err(dir: &Path) -> String {
    let w = Weights::open(dir).unwrap();
    match ClipTextModel::load(ctx(), w.text_encoder().unwrap(), DType::F32) {
        Ok(_) => panic!("{}: loaded a broken text encoder", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_tensor_is_named() {
    let name = "text_model.encoder.layers.2.mlp.fc2.bias";
    let dir = broken_folder("missing", |t| t.retain(|x| x.0 != name));
    let e = load_clip_err(&dir);
    assert!(e.contains(name) && e.contains("missing") && e.contains("model.safetensors"), "{e}");
    // The same through a single file: the original key is named too.
    let dir2 = scratch("missing-single");
    let mut t = read_all(&single_file("sd21-tiny"));
    let gone = "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight";
    t.retain(|x| x.0 != gone);
    write_all(&dir2.join("m.safetensors"), &t);
    let w = Weights::open(dir2.join("m.safetensors")).unwrap();
    let e = w.text_encoder().unwrap().get("text_model.encoder.layers.1.self_attn.k_proj.weight").unwrap_err().to_string();
    assert!(e.contains(gone) && e.contains("k_proj"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir2);
}

#[test]
fn wrong_shape_is_named() {
    let name = "text_model.encoder.layers.1.self_attn.out_proj.weight";
    let dir = broken_folder("shape", |t| {
        let x = t.iter_mut().find(|x| x.0 == name).unwrap();
        x.2 = vec![16, 64]; // same bytes, wrong shape
    });
    let e = load_clip_err(&dir);
    assert!(e.contains(name) && e.contains("[16, 64]") && e.contains("[32, 32]"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn integer_dtype_is_named() {
    let name = "text_model.final_layer_norm.weight";
    let dir = broken_folder("dtype", |t| {
        let x = t.iter_mut().find(|x| x.0 == name).unwrap();
        x.1 = Dtype::I16; // 2-byte elements like the F16 fixture: same size
    });
    let e = load_clip_err(&dir);
    assert!(e.contains(name) && e.contains("I16"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn truncated_file_is_named() {
    let dir = scratch("truncated");
    let src = std::fs::read(single_file("sd15-tiny")).unwrap();
    let p = dir.join("cut.safetensors");
    std::fs::write(&p, &src[..src.len() - 1000]).unwrap();
    let e = Weights::open(&p).unwrap_err().to_string();
    assert!(e.contains("truncated") && e.contains("cut.safetensors") && e.contains("tensor '"), "{e}");
    // Cut inside the header.
    std::fs::write(&p, &src[..100]).unwrap();
    let e = Weights::open(&p).unwrap_err().to_string();
    assert!(e.contains("truncated") && e.contains("header"), "{e}");
    std::fs::write(&p, &src[..5]).unwrap();
    let e = Weights::open(&p).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pickle_is_refused() {
    let dir = scratch("pickle");
    // A pickle stream (protocol 2) that would call os.system if unpickled: never read as pickle.
    let payload = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.";
    for name in ["model.ckpt", "model.pt", "pytorch_model.bin", "disguised.safetensors"] {
        let p = dir.join(name);
        std::fs::write(&p, payload).unwrap();
        let e = Weights::open(&p).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains("pickle") && e.contains("safetensors"), "{name}: {e}");
    }
    // torch.save's zip container.
    let p = dir.join("zipped.safetensors");
    std::fs::write(&p, b"PK\x03\x04rest-of-archive").unwrap();
    let e = Weights::open(&p).unwrap_err().to_string();
    assert!(e.contains("pickle"), "{e}");
    // A diffusers folder whose text encoder only has pytorch_model.bin.
    let f = dir.join("folder");
    std::fs::create_dir_all(f.join("text_encoder")).unwrap();
    std::fs::copy(fixtures().join("sd15-tiny/model_index.json"), f.join("model_index.json")).unwrap();
    std::fs::write(f.join("text_encoder/pytorch_model.bin"), payload).unwrap();
    let e = Weights::open(&f).unwrap_err().to_string();
    assert!(e.contains("pytorch_model.bin") && e.contains("pickle"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_architecture_is_refused() {
    let dir = scratch("arch");
    let p = dir.join("llama.safetensors");
    let data = vec![0u8; 16];
    let t: Owned = vec![
        ("model.layers.0.mlp.up_proj.weight".into(), Dtype::F32, vec![2, 2], data.clone()),
        ("lm_head.weight".into(), Dtype::F32, vec![2, 2], data),
    ];
    write_all(&p, &t);
    let e = Weights::open(&p).unwrap_err().to_string();
    assert!(e.contains("unknown architecture") && e.contains("llama.safetensors") && e.contains("lm_head.weight"), "{e}");
    // A folder without model_index.json.
    let e = Weights::open(&dir).unwrap_err().to_string();
    assert!(e.contains("model_index.json"), "{e}");
    // A text encoder with no layers / no embedding.
    let f = broken_folder("no-embedding", |t| t.retain(|x| !x.0.contains("token_embedding")));
    let e = load_clip_err(&f);
    assert!(e.contains("token_embedding"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&f);
}


/// The manifests' ops by hand on one tensor each (the loaders' tests above check every tensor
/// through Pigment's own single-file mapping): concat = q;k;v bytes, reshape = same bytes with
/// [C,C,1,1], identity = the bytes. web/test.sh runs this to write the files web/e2e.mjs picks.
#[test]
fn manifests_assemble_single_files() {
    let get = |t: &Owned, k: &str| t.iter().find(|x| x.0 == k).cloned().unwrap_or_else(|| panic!("{k}"));
    let sd21 = read_all(&single_file("sd21-tiny"));
    let text = read_all(&fixtures().join("sd21-tiny/text_encoder/model.safetensors"));
    let fused = get(&sd21, "cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight");
    let qkv: Vec<u8> = ["q", "k", "v"]
        .iter()
        .flat_map(|x| get(&text, &format!("text_model.encoder.layers.2.self_attn.{x}_proj.weight")).3)
        .collect();
    let d = get(&text, "text_model.final_layer_norm.weight").2[0];
    assert_eq!((fused.1, &fused.2[..], &fused.3), (Dtype::F16, &[3 * d, d][..], &qkv));
    let vae = read_all(&fixtures().join("sd15-tiny/vae/diffusion_pytorch_model.safetensors"));
    let sd15 = read_all(&single_file("sd15-tiny"));
    let (q, q4) = (get(&vae, "decoder.mid_block.attentions.0.to_q.weight"), get(&sd15, "first_stage_model.decoder.mid.attn_1.q.weight"));
    assert_eq!((q4.2.len(), &q4.2[2..], &q4.3), (4, &[1, 1][..], &q.3));
    let cn = read_all(&single_file("sd15-tiny-controlnet"));
    let src = read_all(&fixtures().join("sd15-tiny-controlnet/diffusion_pytorch_model.safetensors"));
    assert_eq!(cn.len(), src.len());
    assert_eq!(get(&cn, "control_model.zero_convs.1.0.weight").3, get(&src, "controlnet_down_blocks.1.weight").3);
    // A manifest naming a tensor the folder lacks is an error naming both.
    let m = std::fs::read_to_string(fixtures().join("sd15-tiny-controlnet.manifest.json")).unwrap();
    let bad = m.replacen("controlnet_down_blocks.1.weight", "controlnet_down_blocks.9.weight", 1);
    let e = single_file::assemble(&bad, &|p| std::fs::read(fixtures().join(p)).unwrap()).unwrap_err();
    assert!(e.contains("control_model.zero_convs.1.0.weight") && e.contains("controlnet_down_blocks.9.weight"), "{e}");
}
