//! `sdxl-tiny` as a diffusers folder, rebuilt from `assets/synthetic/sdxl-tiny/` (tensor list and
//! configs from `tools/fixtures_sdxl.py`) with Pigment's synthetic generator: no weight file is
//! committed. Both tokenizers are `tests/fixtures/sd15-tiny/tokenizer` (the real CLIP BPE);
//! `tokenizer_2` pads with "!" as SDXL's does.

use pigment::weights::synthetic::{safetensors_bytes, tensor_list};
use std::path::{Path, PathBuf};

/// `model`: the folder under `assets/synthetic/` (`sdxl-tiny`, `sdxl-refiner-tiny`).
fn asset_of(model: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/synthetic").join(model).join(name)
}

/// `inpaint`: the 9-channel inpainting UNet instead (`unet_inpaint.json`; only `conv_in`'s
/// input channels differ, and the generator fills it by its shape). Components (and their
/// tokenizers) missing from the model's tensor list are left out: the refiner has no
/// `text_encoder`.
fn write_folder(dir: &Path, model: &str, inpaint: bool) {
    let asset = |name: &str| asset_of(model, name);
    let gz = std::fs::read(asset("tensors.txt.gz")).unwrap();
    let has_te = !tensor_list(&gz, "text_encoder").unwrap().is_empty();
    for (component, file) in [
        ("text_encoder", "model"),
        ("text_encoder_2", "model"),
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
    ] {
        if component == "text_encoder" && !has_te {
            continue;
        }
        let sub = dir.join(component);
        std::fs::create_dir_all(&sub).unwrap();
        let mut tensors = tensor_list(&gz, component).unwrap();
        assert!(!tensors.is_empty(), "no {component} tensors in the list");
        let mut config = format!("{component}.json");
        if inpaint && component == "unet" {
            let conv_in = tensors.iter_mut().find(|(n, _)| n == "conv_in.weight").unwrap();
            conv_in.1[1] = 9;
            config = "unet_inpaint.json".into();
        }
        std::fs::write(sub.join(format!("{file}.safetensors")), safetensors_bytes(&tensors)).unwrap();
        std::fs::copy(asset(&config), sub.join("config.json")).unwrap();
    }
    std::fs::create_dir_all(dir.join("scheduler")).unwrap();
    std::fs::copy(asset("scheduler.json"), dir.join("scheduler/scheduler_config.json")).unwrap();
    std::fs::copy(asset("model_index.json"), dir.join("model_index.json")).unwrap();
    let tok = super::fixtures().join("sd15-tiny/tokenizer");
    for t in ["tokenizer", "tokenizer_2"].into_iter().filter(|&t| has_te || t == "tokenizer_2") {
        std::fs::create_dir_all(dir.join(t)).unwrap();
        for f in ["vocab.json", "merges.txt", "special_tokens_map.json"] {
            std::fs::copy(tok.join(f), dir.join(t).join(f)).unwrap();
        }
    }
    // tokenizer_2: sd15-tiny's settings with SDXL's pad token
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tok.join("tokenizer_config.json")).unwrap()).unwrap();
    let pad: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(asset("tokenizer_2.json")).unwrap()).unwrap();
    cfg["pad_token"] = pad["pad_token"].clone();
    std::fs::write(dir.join("tokenizer_2/tokenizer_config.json"), cfg.to_string()).unwrap();
    let mut map: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tok.join("special_tokens_map.json")).unwrap()).unwrap();
    map["pad_token"] = pad["pad_token"].clone();
    std::fs::write(dir.join("tokenizer_2/special_tokens_map.json"), map.to_string()).unwrap();
    if has_te {
        std::fs::copy(tok.join("tokenizer_config.json"), dir.join("tokenizer/tokenizer_config.json")).unwrap();
    }
}

/// The folder (`<target tmp>/fixtures/sdxl-tiny`), written once per test binary into a
/// temporary name and renamed, so a reader never sees half of it.
pub fn sdxl_tiny() -> PathBuf {
    static DONE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    folder(&DONE, "sdxl-tiny", "sdxl-tiny", false)
}

/// The tiny SDXL refiner (tools/fixtures_sdxl_refiner.py: text_encoder_2 only, time ids with an
/// aesthetic score), `<target tmp>/fixtures/sdxl-refiner-tiny`.
pub fn sdxl_refiner_tiny() -> PathBuf {
    static DONE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    folder(&DONE, "sdxl-refiner-tiny", "sdxl-refiner-tiny", false)
}

/// `sdxl-tiny` with a 9-channel inpainting UNet (`<target tmp>/fixtures/sdxl-tiny-inpaint`).
pub fn sdxl_tiny_inpaint() -> PathBuf {
    static DONE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    folder(&DONE, "sdxl-tiny-inpaint", "sdxl-tiny", true)
}

fn folder(done: &std::sync::Mutex<bool>, name: &str, model: &str, inpaint: bool) -> PathBuf {
    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    let dir = root.join(name);
    if !*done {
        let tmp = root.join(format!("{name}.{}.part", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        write_folder(&tmp, model, inpaint);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).unwrap();
        *done = true;
    }
    dir
}

/// The tiny ControlNet-XL for sdxl-tiny (`tools/fixtures_controlnet_xl.py`), rebuilt from
/// `assets/synthetic/sdxl-tiny-controlnet/`: a diffusers folder (`<target tmp>/fixtures/
/// sdxl-tiny-controlnet/`) and the same weights as one diffusers-layout `.safetensors` with no
/// config beside it (`sdxl-tiny-controlnet.safetensors`, as XL ControlNets are downloaded).
pub fn sdxl_tiny_controlnet() -> (PathBuf, PathBuf) {
    static DONE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    let (dir, file) = (root.join("sdxl-tiny-controlnet"), root.join("sdxl-tiny-controlnet.safetensors"));
    if !*done {
        let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/synthetic/sdxl-tiny-controlnet");
        let tensors = tensor_list(&std::fs::read(assets.join("tensors.txt.gz")).unwrap(), "controlnet").unwrap();
        assert!(!tensors.is_empty(), "no controlnet tensors in the list");
        let bytes = safetensors_bytes(&tensors);
        let tmp = root.join(format!("sdxl-tiny-controlnet.{}.part", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("diffusion_pytorch_model.safetensors"), &bytes).unwrap();
        std::fs::copy(assets.join("controlnet.json"), tmp.join("config.json")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).unwrap();
        let part = root.join(format!("sdxl-tiny-controlnet.{}.safetensors.part", std::process::id()));
        std::fs::write(&part, &bytes).unwrap();
        std::fs::rename(&part, &file).unwrap();
        *done = true;
    }
    (dir, file)
}
