//! Original (LDM / CompVis) single-file checkpoint keys → diffusers names.
//!
//! * text encoder, SD 1.x: `cond_stage_model.transformer.text_model.*` is already Hugging Face
//!   CLIP naming (`cond_stage_model.transformer.*` without `text_model.` in old files);
//! * text encoder, SD 2.x: OpenCLIP `cond_stage_model.model.*` (`token_embedding.weight`,
//!   `positional_embedding`, `transformer.resblocks.N.{ln_1, attn.in_proj_weight/bias (q;k;v
//!   rows), attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final`). Every resblock present is
//!   mapped (`layers.N` = `resblocks.N`); `text_projection` and `logit_scale` are not used by
//!   `CLIPTextModel` and are not mapped;
//! * UNet `model.diffusion_model.*` and VAE `first_stage_model.*`: see [`map_unet`], [`map_vae`];
//! * SDXL (`conditioner.embedders.*`): see [`map_sdxl`].
//!
//! The architecture is inferred from the keys present; a file with none of the known prefixes
//! is rejected naming a few of the keys it does have.

use super::{Mapped, Result, SafetensorsFile, TextEncoderKind, WeightsError};
use std::collections::HashMap;

/// The mapped parts of one single-file checkpoint.
pub struct Parts {
    pub text_encoder: Option<HashMap<String, Mapped>>,
    pub text_kind: Option<TextEncoderKind>,
    /// SDXL's OpenCLIP ViT-bigG (`conditioner.embedders.1.model.*`) as `CLIPTextModelWithProjection`.
    pub text_encoder_2: Option<HashMap<String, Mapped>>,
    pub unet: Option<HashMap<String, Mapped>>,
    pub vae: Option<HashMap<String, Mapped>>,
}

const SD1_TEXT: &str = "cond_stage_model.transformer.";
const SD2_TEXT: &str = "cond_stage_model.model.";
const SDXL_TEXT_1: &str = "conditioner.embedders.0.transformer.";
const SDXL_TEXT_2: &str = "conditioner.embedders.1.model.";
const SDXL_REFINER_TEXT: &str = "conditioner.embedders.0.model.";
const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";

pub fn map_checkpoint(file: &SafetensorsFile) -> Result<Parts> {
    let names = file.names();
    let has = |p: &str| names.iter().any(|n| n.starts_with(p));
    if has("conditioner.embedders.") {
        return map_sdxl(file, &names);
    }
    let (text_encoder, text_kind) = if has(SD1_TEXT) {
        (Some(map_sd1_text(&names)), Some(TextEncoderKind::Clip))
    } else if has(SD2_TEXT) {
        (Some(map_openclip_text(file, &names, SD2_TEXT)?), Some(TextEncoderKind::OpenClip))
    } else {
        (None, None)
    };
    let mut unet = if has(UNET) { Some(map_unet(file, &names)?) } else { None };
    if let (Some(u), None) = (&mut unet, &text_encoder) {
        // The UNet alone, split from an SDXL file (the page hands one part at a time).
        map_label_emb(file, u);
    }
    let vae = if has(VAE) { Some(map_vae(file, &names)) } else { None };
    if text_encoder.is_none() && unet.is_none() && vae.is_none() {
        let sample: Vec<&str> = names.iter().take(5).copied().collect();
        return Err(WeightsError::Architecture {
            path: file.path().to_string(),
            detail: format!(
                "unknown architecture: no Stable Diffusion 1.x/2.x keys (`{UNET}*`, `{VAE}*`, `{SD1_TEXT}*`, \
                 `{SD2_TEXT}*`); the file has {} tensors, e.g. {sample:?}",
                names.len()
            ),
        });
    }
    Ok(Parts { text_encoder, text_kind, text_encoder_2: None, unet, vae })
}

/// SDXL's original (sgm) layout: `conditioner.embedders.0.transformer.*` (CLIP ViT-L in Hugging
/// Face names), `conditioner.embedders.1.model.*` (OpenCLIP ViT-bigG, with its `text_projection`
/// `[width, proj]` as the Linear weight transposed), the UNet with `label_emb.0.{0,2}` as
/// `add_embedding.linear_{1,2}`, and the VAE. The refiner's only encoder is bigG at
/// `conditioner.embedders.0.model.*`: it maps to `text_encoder_2` (and there is no `text_encoder`).
fn map_sdxl(file: &SafetensorsFile, names: &[&str]) -> Result<Parts> {
    let has = |p: &str| names.iter().any(|n| n.starts_with(p));
    let refiner = has(SDXL_REFINER_TEXT);
    let arch = |detail: String| Err(WeightsError::Architecture { path: file.path().to_string(), detail });
    if refiner && (has(SDXL_TEXT_1) || has(SDXL_TEXT_2)) {
        return arch(format!("{SDXL_REFINER_TEXT}* (an SDXL refiner's OpenCLIP) beside {SDXL_TEXT_1}* / {SDXL_TEXT_2}* (SDXL base's encoders): not a model Pigment knows"));
    }
    // Either encoder alone is a subset of a whole file (the page splits one per part).
    if !(refiner || has(SDXL_TEXT_1) || has(SDXL_TEXT_2)) {
        return arch(format!("an SDXL-style single file (conditioner.embedders.*) without {SDXL_TEXT_1}*, {SDXL_TEXT_2}* or {SDXL_REFINER_TEXT}*: not a model Pigment knows"));
    }
    let text_encoder = has(SDXL_TEXT_1).then(|| map_hf_text(names, SDXL_TEXT_1));
    let bigg = if refiner { SDXL_REFINER_TEXT } else { SDXL_TEXT_2 };
    let text_encoder_2 = if has(bigg) {
        let mut m = map_openclip_text(file, names, bigg)?;
        let projection = format!("{bigg}text_projection");
        if file.contains(&projection) {
            m.insert("text_projection.weight".into(), Mapped::transposed(projection));
        }
        Some(m)
    } else {
        None
    };
    let mut unet = if has(UNET) { Some(map_unet(file, names)?) } else { None };
    if let Some(u) = &mut unet {
        map_label_emb(file, u);
    }
    let vae = has(VAE).then(|| map_vae(file, names));
    Ok(Parts { text_encoder, text_kind: Some(TextEncoderKind::Clip), text_encoder_2, unet, vae })
}

/// SDXL's `label_emb.0.{0,2}` as diffusers' `add_embedding.linear_{1,2}` (when present).
fn map_label_emb(file: &SafetensorsFile, u: &mut HashMap<String, Mapped>) {
    for (src, dst) in [("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2.")] {
        for wb in ["weight", "bias"] {
            let n = format!("{UNET}{src}{wb}");
            if file.contains(&n) {
                u.insert(format!("{dst}{wb}"), Mapped::plain(n));
            }
        }
    }
}

fn map_sd1_text(names: &[&str]) -> HashMap<String, Mapped> {
    map_hf_text(names, SD1_TEXT)
}

/// Hugging Face CLIP names under `prefix` (with or without their `text_model.`).
fn map_hf_text(names: &[&str], prefix: &str) -> HashMap<String, Mapped> {
    let mut m = HashMap::new();
    for n in names {
        let Some(rest) = n.strip_prefix(prefix) else { continue };
        if rest.ends_with("position_ids") {
            continue; // a buffer, not a weight
        }
        let key = if rest.starts_with("text_model.") { rest.to_string() } else { format!("text_model.{rest}") };
        m.insert(key, Mapped::plain(*n));
    }
    m
}

/// OpenCLIP text tower names under `p` (SD 2.x's `cond_stage_model.model.`, SDXL's bigG).
fn map_openclip_text(file: &SafetensorsFile, names: &[&str], p: &str) -> Result<HashMap<String, Mapped>> {
    let mut m = HashMap::new();
    let mut put = |k: String, src: String| {
        m.insert(k, Mapped::plain(src));
    };
    put("text_model.embeddings.token_embedding.weight".into(), format!("{p}token_embedding.weight"));
    put("text_model.embeddings.position_embedding.weight".into(), format!("{p}positional_embedding"));
    put("text_model.final_layer_norm.weight".into(), format!("{p}ln_final.weight"));
    put("text_model.final_layer_norm.bias".into(), format!("{p}ln_final.bias"));
    // Width from the positional embedding, to split the fused QKV.
    let width = file
        .info(&format!("{p}positional_embedding"))
        .and_then(|(_, s)| s.get(1).copied())
        .or_else(|| file.info(&format!("{p}token_embedding.weight")).and_then(|(_, s)| s.get(1).copied()))
        .ok_or_else(|| WeightsError::Missing {
            path: file.path().to_string(),
            name: format!("{p}positional_embedding"),
            detail: " (needed to find the OpenCLIP text width)".into(),
        })?;
    let rb = format!("{p}transformer.resblocks.");
    let mut layers: Vec<usize> =
        names.iter().filter_map(|n| n.strip_prefix(rb.as_str())?.split('.').next()?.parse().ok()).collect();
    layers.sort_unstable();
    layers.dedup();
    for i in layers {
        let src = |s: &str| format!("{rb}{i}.{s}");
        let dst = |s: &str| format!("text_model.encoder.layers.{i}.{s}");
        for (d, s) in [
            ("layer_norm1", "ln_1"),
            ("layer_norm2", "ln_2"),
            ("self_attn.out_proj", "attn.out_proj"),
            ("mlp.fc1", "mlp.c_fc"),
            ("mlp.fc2", "mlp.c_proj"),
        ] {
            for wb in ["weight", "bias"] {
                m.insert(dst(&format!("{d}.{wb}")), Mapped::plain(src(&format!("{s}.{wb}"))));
            }
        }
        // q; k; v rows of the fused projection (a width this large is a corrupt shape, not a model).
        if width.checked_mul(3).is_none() {
            return Err(WeightsError::Architecture {
                path: file.path().to_string(),
                detail: format!("OpenCLIP text width {width} (from {p}positional_embedding) is implausible"),
            });
        }
        for (j, qkv) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            let rows = Some((j * width, (j + 1) * width));
            m.insert(
                dst(&format!("self_attn.{qkv}.weight")),
                Mapped { rows, ..Mapped::plain(src("attn.in_proj_weight")) },
            );
            m.insert(dst(&format!("self_attn.{qkv}.bias")), Mapped { rows, ..Mapped::plain(src("attn.in_proj_bias")) });
        }
    }
    Ok(m)
}

/// LDM VAE (`first_stage_model.*`) → diffusers `AutoencoderKL`: `encoder.down.i.block.j` →
/// `encoder.down_blocks.i.resnets.j`, `decoder.up.{n-1-i}` → `decoder.up_blocks.i`, `mid.block_1/2`
/// → `mid_block.resnets.0/1`, `mid.attn_1.{norm,q,k,v,proj_out}` → `mid_block.attentions.0.
/// {group_norm,to_q,to_k,to_v,to_out.0}` (1×1 conv weights viewed as [C, C]), `nin_shortcut` →
/// `conv_shortcut`, `norm_out` → `conv_norm_out`; `quant_conv`, `post_quant_conv`, `conv_in`,
/// `conv_out` keep their names.
pub fn map_vae(file: &SafetensorsFile, names: &[&str]) -> HashMap<String, Mapped> {
    let mut m = HashMap::new();
    let n_up = names
        .iter()
        .filter_map(|n| n.strip_prefix("first_stage_model.decoder.up.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |x| x + 1);
    for n in names {
        let Some(rest) = n.strip_prefix(VAE) else { continue };
        let parts: Vec<&str> = rest.split('.').collect();
        let mut shape = None;
        let key: Option<String> = match parts.as_slice() {
            ["encoder" | "decoder", "conv_in" | "conv_out", ..] => Some(rest.to_string()),
            [side @ ("encoder" | "decoder"), "norm_out", wb] => Some(format!("{side}.conv_norm_out.{wb}")),
            ["encoder", "down", i, "block", j, tail @ ..] => {
                Some(format!("encoder.down_blocks.{i}.resnets.{j}.{}", resnet_tail(tail)))
            }
            ["encoder", "down", i, "downsample", "conv", wb] => {
                Some(format!("encoder.down_blocks.{i}.downsamplers.0.conv.{wb}"))
            }
            ["decoder", "up", i, "block", j, tail @ ..] => {
                let i = n_up - 1 - i.parse::<usize>().unwrap_or(0);
                Some(format!("decoder.up_blocks.{i}.resnets.{j}.{}", resnet_tail(tail)))
            }
            ["decoder", "up", i, "upsample", "conv", wb] => {
                let i = n_up - 1 - i.parse::<usize>().unwrap_or(0);
                Some(format!("decoder.up_blocks.{i}.upsamplers.0.conv.{wb}"))
            }
            [side @ ("encoder" | "decoder"), "mid", b @ ("block_1" | "block_2"), tail @ ..] => {
                let j = if *b == "block_1" { 0 } else { 1 };
                Some(format!("{side}.mid_block.resnets.{j}.{}", resnet_tail(tail)))
            }
            [side @ ("encoder" | "decoder"), "mid", "attn_1", layer, wb] => {
                let d = match *layer {
                    "norm" => "group_norm",
                    "q" => "to_q",
                    "k" => "to_k",
                    "v" => "to_v",
                    "proj_out" => "to_out.0",
                    _ => "",
                };
                if *layer != "norm" && *wb == "weight" {
                    // 1x1 conv [C, C, 1, 1] viewed as a Linear weight [C, C].
                    shape = file.info(n).map(|(_, s)| s.iter().copied().take(2).collect::<Vec<usize>>());
                }
                (!d.is_empty()).then(|| format!("{side}.mid_block.attentions.0.{d}.{wb}"))
            }
            ["quant_conv" | "post_quant_conv", ..] => Some(rest.to_string()),
            _ => None,
        };
        if let Some(key) = key {
            m.insert(key, Mapped { shape, ..Mapped::plain(*n) });
        }
    }
    m
}

/// `norm1, conv1, norm2, conv2, nin_shortcut` → diffusers resnet names.
fn resnet_tail(tail: &[&str]) -> String {
    let t = tail.join(".");
    match t.strip_prefix("nin_shortcut.") {
        Some(wb) => format!("conv_shortcut.{wb}"),
        None => t,
    }
}

/// LDM UNet (`model.diffusion_model.*`) → diffusers `UNet2DConditionModel`. The layout (levels,
/// layers per block, which levels have attention) is inferred from the keys: `input_blocks.0` is
/// `conv_in`, then per level L resnets (each with an optional transformer at `.1`) and a
/// downsampler `input_blocks.{(L+1)(i+1)}.0.op` except on the last level; `output_blocks` has
/// L+1 entries per level.
pub fn map_unet(file: &SafetensorsFile, names: &[&str]) -> Result<HashMap<String, Mapped>> {
    map_unet_keys(file, names, UNET, true)
}

/// [`map_unet`] for the keys under `root`; `with_outputs` false for a ControlNet (the encoder
/// half only: the layout then comes from the input blocks, `levels * (L+1)` of them).
fn map_unet_keys(file: &SafetensorsFile, names: &[&str], root: &str, with_outputs: bool) -> Result<HashMap<String, Mapped>> {
    let idx = |prefix: &str| -> Vec<usize> {
        let mut v: Vec<usize> = names
            .iter()
            .filter_map(|n| n.strip_prefix(root)?.strip_prefix(prefix)?.split('.').next()?.parse().ok())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let inputs = idx("input_blocks.");
    let outputs = idx("output_blocks.");
    // The first downsampler's block index is L+1.
    let first_op = inputs.iter().copied().find(|&i| names.iter().any(|n| n.starts_with(&format!("{root}input_blocks.{i}.0.op."))));
    let arch_err = |d: String| WeightsError::Architecture { path: file.path().to_string(), detail: d };
    let (l, levels) = match first_op {
        Some(op) if op >= 2 && with_outputs && !outputs.is_empty() && outputs.len() % op == 0 => (op - 1, outputs.len() / op),
        Some(op) if op >= 2 && !with_outputs && inputs.len() % op == 0 => (op - 1, inputs.len() / op),
        _ => return Err(arch_err(format!("cannot infer the UNet layout from {} input / {} output blocks", inputs.len(), outputs.len()))),
    };
    let mut m = HashMap::new();
    let u = |s: &str| format!("{root}{s}");
    // Map every key under `src_prefix` to `dst_prefix` with a tail renamer.
    let mut map_prefix = |src_prefix: String, dst_prefix: String, rename: &dyn Fn(&str) -> Option<String>| {
        for n in names {
            if let Some(tail) = n.strip_prefix(src_prefix.as_str()) {
                if let Some(t) = rename(tail) {
                    m.insert(format!("{dst_prefix}{t}"), Mapped::plain(*n));
                }
            }
        }
    };
    let same = |t: &str| Some(t.to_string());
    map_prefix(u("time_embed.0."), "time_embedding.linear_1.".into(), &same);
    map_prefix(u("time_embed.2."), "time_embedding.linear_2.".into(), &same);
    map_prefix(u("input_blocks.0.0."), "conv_in.".into(), &same);
    map_prefix(u("out.0."), "conv_norm_out.".into(), &same);
    map_prefix(u("out.2."), "conv_out.".into(), &same);
    for i in 0..levels {
        for j in 0..l {
            let b = (l + 1) * i + j + 1;
            map_prefix(u(&format!("input_blocks.{b}.0.")), format!("down_blocks.{i}.resnets.{j}."), &resnet);
            map_prefix(u(&format!("input_blocks.{b}.1.")), format!("down_blocks.{i}.attentions.{j}."), &same);
        }
        if i + 1 < levels {
            let b = (l + 1) * (i + 1);
            map_prefix(u(&format!("input_blocks.{b}.0.op.")), format!("down_blocks.{i}.downsamplers.0.conv."), &same);
        }
    }
    map_prefix(u("middle_block.0."), "mid_block.resnets.0.".into(), &resnet);
    map_prefix(u("middle_block.1."), "mid_block.attentions.0.".into(), &same);
    map_prefix(u("middle_block.2."), "mid_block.resnets.1.".into(), &resnet);
    for i in (0..levels).filter(|_| with_outputs) {
        for j in 0..=l {
            let b = (l + 1) * i + j;
            map_prefix(u(&format!("output_blocks.{b}.0.")), format!("up_blocks.{i}.resnets.{j}."), &resnet);
            // `.1` is either the transformer or (no attention at this level) the upsampler.
            let has_attn = names.iter().any(|n| n.starts_with(&u(&format!("output_blocks.{b}.1.transformer_blocks."))) || n.starts_with(&u(&format!("output_blocks.{b}.1.proj_in."))));
            if has_attn {
                map_prefix(u(&format!("output_blocks.{b}.1.")), format!("up_blocks.{i}.attentions.{j}."), &same);
            }
            if j == l && i + 1 < levels {
                let at = if has_attn { 2 } else { 1 };
                map_prefix(u(&format!("output_blocks.{b}.{at}.conv.")), format!("up_blocks.{i}.upsamplers.0.conv."), &same);
            }
        }
    }
    Ok(m)
}

/// LDM resnet names → diffusers `ResnetBlock2D`.
fn resnet(tail: &str) -> Option<String> {
    let (head, wb) = tail.rsplit_once('.')?;
    let d = match head {
        "in_layers.0" => "norm1",
        "in_layers.2" => "conv1",
        "emb_layers.1" => "time_emb_proj",
        "out_layers.0" => "norm2",
        "out_layers.3" => "conv2",
        "skip_connection" => "conv_shortcut",
        _ => return None,
    };
    Some(format!("{d}.{wb}"))
}

/// An A1111 / original ControlNet file → diffusers `ControlNetModel` names: the UNet encoder
/// keys (`time_embed`, `input_blocks`, `middle_block`) as in [`map_unet`], `zero_convs.N.0` →
/// `controlnet_down_blocks.N`, `middle_block_out.0` → `controlnet_mid_block`, and the hint
/// encoder `input_hint_block.K` (conv, SiLU, conv, ...): K = 0 → `controlnet_cond_embedding.conv_in`,
/// the last conv → `conv_out`, the others `blocks.{K/2 - 1}`. Keys may carry a `control_model.`
/// prefix or none.
pub fn map_controlnet(file: &SafetensorsFile) -> Result<HashMap<String, Mapped>> {
    let names = file.names();
    let root = if names.iter().any(|n| n.starts_with("control_model.")) { "control_model." } else { "" };
    let hint = format!("{root}input_hint_block.");
    let hint_idx: Vec<usize> = names.iter().filter_map(|n| n.strip_prefix(hint.as_str())?.split('.').next()?.parse().ok()).collect();
    let Some(&last) = hint_idx.iter().max() else {
        let sample: Vec<&str> = names.iter().take(5).copied().collect();
        return Err(WeightsError::Architecture {
            path: file.path().to_string(),
            detail: format!(
                "not a ControlNet: no `{hint}*` (A1111) or `controlnet_cond_embedding.*` (diffusers) keys; the file has {} tensors, e.g. {sample:?}",
                names.len()
            ),
        });
    };
    let mut m = map_unet_keys(file, &names, root, false)?;
    for n in &names {
        let Some(rest) = n.strip_prefix(root) else { continue };
        let parts: Vec<&str> = rest.split('.').collect();
        let key = match parts.as_slice() {
            ["zero_convs", i, "0", wb] => format!("controlnet_down_blocks.{i}.{wb}"),
            ["middle_block_out", "0", wb] => format!("controlnet_mid_block.{wb}"),
            // SDXL ControlNets: `label_emb.0.{0,2}` as the UNet's (`map_label_emb`)
            ["label_emb", "0", "0", wb] => format!("add_embedding.linear_1.{wb}"),
            ["label_emb", "0", "2", wb] => format!("add_embedding.linear_2.{wb}"),
            ["input_hint_block", k, wb] => match k.parse::<usize>() {
                Ok(0) => format!("controlnet_cond_embedding.conv_in.{wb}"),
                Ok(k) if k == last => format!("controlnet_cond_embedding.conv_out.{wb}"),
                Ok(k) if k % 2 == 0 => format!("controlnet_cond_embedding.blocks.{}.{wb}", k / 2 - 1),
                _ => continue,
            },
            _ => continue,
        };
        m.insert(key, Mapped::plain(*n));
    }
    Ok(m)
}
