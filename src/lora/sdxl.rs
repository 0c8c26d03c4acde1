//! SDXL's LoRA namings. kohya's sd-scripts trains SDXL on the original (sgm) UNet, so its
//! `lora_unet_*` keys name LDM modules (`input_blocks_4_1_transformer_blocks_0_attn1_to_q`,
//! `middle_block_0_in_layers_2`, `label_emb_0_0`), while its SD 1.x/2.x files use diffusers'
//! module paths; the text encoders are `lora_te1_*` (CLIP ViT-L) and `lora_te2_*` (OpenCLIP
//! bigG in transformers' naming, diffusers' `text_encoder_2`). The LDM names are resolved by
//! computing each diffusers module's LDM path from the UNet's own layout (the inverse of
//! `weights::single_file::map_unet`), so they work on folders and single files alike.
//!
//! On SDXL, `lora_te_` and `text_encoder.` are the first encoder (as diffusers reads them); on SD
//! 1.x/2.x, SDXL-only keys (`lora_te1_`, `lora_te2_`, `text_encoder_2.`, LDM UNet names) match
//! nothing, so an SDXL LoRA there is the "matches no layer" error, and an SD 1.x LoRA on SDXL
//! fails on the first layer whose shape differs (a cross-attention: the context is wider).

use super::{merge_part, plan, LoraUse, Merged};
use crate::error::Result;
use crate::weights::Component;
use std::collections::HashMap;

/// [`super::merge`] with SDXL's `text_encoder_2` (`None`: a single-encoder model).
pub fn merge_sdxl(text_encoder: &Component, text_encoder_2: Option<&Component>, unet: &Component, uses: &[LoraUse]) -> Result<Merged> {
    let plan = plan(text_encoder, text_encoder_2, unet, uses)?;
    let mut merged = Merged { warnings: plan.warnings.clone(), ..Default::default() };
    let parts = [
        (Some(text_encoder), &plan.text_encoder, &mut merged.text_encoder),
        (text_encoder_2, &plan.text_encoder_2, &mut merged.text_encoder_2),
        (Some(unet), &plan.unet, &mut merged.unet),
    ];
    for (c, group, out) in parts {
        if let Some(c) = c {
            merge_part(c, group, |k, v| {
                out.insert(k, v);
            })?;
        }
    }
    Ok(merged)
}

/// An SDXL UNet (added text/time conditioning): LDM names and `lora_te1_/lora_te2_` resolve
/// only on these, as kohya writes them only for SDXL.
pub(super) fn is_sdxl_unet(unet: &Component) -> bool {
    unet.contains("add_embedding.linear_1.weight")
}

/// diffusers resnet sub-module → LDM.
fn resnet(prefix: String, tail: &[&str]) -> Option<String> {
    let s = match tail {
        ["norm1"] => "in_layers.0",
        ["conv1"] => "in_layers.2",
        ["time_emb_proj"] => "emb_layers.1",
        ["norm2"] => "out_layers.0",
        ["conv2"] => "out_layers.3",
        ["conv_shortcut"] => "skip_connection",
        _ => return None,
    };
    Some(format!("{prefix}.{s}"))
}

/// The LDM path of diffusers UNet module `m`, with `l` resnets per down block (up blocks have
/// `l + 1`) and `up_attn(i)`: whether up block `i` has attention (its upsampler then sits at
/// index 2 of the last output block, else 1).
fn ldm_module(m: &str, l: usize, up_attn: &dyn Fn(usize) -> bool) -> Option<String> {
    let top = [
        ("time_embedding.linear_1", "time_embed.0"),
        ("time_embedding.linear_2", "time_embed.2"),
        ("add_embedding.linear_1", "label_emb.0.0"),
        ("add_embedding.linear_2", "label_emb.0.2"),
        ("conv_in", "input_blocks.0.0"),
        ("conv_norm_out", "out.0"),
        ("conv_out", "out.2"),
    ];
    if let Some((_, s)) = top.iter().find(|(d, _)| *d == m) {
        return Some(s.to_string());
    }
    fn n(s: &str) -> Option<usize> {
        s.parse().ok()
    }
    let p: Vec<&str> = m.split('.').collect();
    let tail = |t: &[&str]| (!t.is_empty()).then(|| t.join("."));
    match p.as_slice() {
        ["down_blocks", i, "resnets", j, t @ ..] => resnet(format!("input_blocks.{}.0", (l + 1) * n(i)? + n(j)? + 1), t),
        ["down_blocks", i, "attentions", j, t @ ..] => Some(format!("input_blocks.{}.1.{}", (l + 1) * n(i)? + n(j)? + 1, tail(t)?)),
        ["down_blocks", i, "downsamplers", "0", "conv"] => Some(format!("input_blocks.{}.0.op", (l + 1) * (n(i)? + 1))),
        ["mid_block", "resnets", j, t @ ..] => resnet(format!("middle_block.{}", 2 * n(j)?), t),
        ["mid_block", "attentions", "0", t @ ..] => Some(format!("middle_block.1.{}", tail(t)?)),
        ["up_blocks", i, "resnets", j, t @ ..] => resnet(format!("output_blocks.{}.0", (l + 1) * n(i)? + n(j)?), t),
        ["up_blocks", i, "attentions", j, t @ ..] => Some(format!("output_blocks.{}.1.{}", (l + 1) * n(i)? + n(j)?, tail(t)?)),
        ["up_blocks", i, "upsamplers", "0", "conv"] => {
            let i = n(i)?;
            Some(format!("output_blocks.{}.{}.conv", (l + 1) * i + l, if up_attn(i) { 2 } else { 1 }))
        }
        _ => None,
    }
}

/// kohya's flat LDM module names (`.` as `_`) → the UNet's weight names.
pub(super) fn ldm_aliases(unet: &Component) -> HashMap<String, String> {
    let names = unet.names();
    let l = (0..).take_while(|j| unet.contains(&format!("down_blocks.0.resnets.{j}.conv1.weight"))).count();
    let up_attn = |i: usize| {
        let p = format!("up_blocks.{i}.attentions.");
        names.iter().any(|n| n.starts_with(&p))
    };
    names
        .iter()
        .filter_map(|n| {
            let ldm = ldm_module(n.strip_suffix(".weight")?, l, &up_attn)?;
            Some((ldm.replace('.', "_"), n.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::ldm_module;

    /// SDXL base's layout (2 resnets per down block, attention on the up blocks 0 and 1 of 3).
    #[test]
    fn sdxl_base_paths() {
        let up_attn = |i: usize| i < 2;
        let m = |d: &str| ldm_module(d, 2, &up_attn);
        for (d, want) in [
            ("down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q", "input_blocks.4.1.transformer_blocks.1.attn1.to_q"),
            ("down_blocks.2.attentions.1.proj_out", "input_blocks.8.1.proj_out"),
            ("down_blocks.0.resnets.1.conv2", "input_blocks.2.0.out_layers.3"),
            ("down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection"),
            ("down_blocks.1.downsamplers.0.conv", "input_blocks.6.0.op"),
            ("mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1"),
            ("mid_block.attentions.0.transformer_blocks.9.ff.net.0.proj", "middle_block.1.transformer_blocks.9.ff.net.0.proj"),
            ("up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_out.0", "output_blocks.2.1.transformer_blocks.0.attn2.to_out.0"),
            ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
            ("up_blocks.2.resnets.2.conv1", "output_blocks.8.0.in_layers.2"),
            ("add_embedding.linear_2", "label_emb.0.2"),
            ("time_embedding.linear_1", "time_embed.0"),
        ] {
            assert_eq!(m(d).as_deref(), Some(want), "{d}");
        }
        assert_eq!(m("down_blocks.1.attentions.0"), None);
        assert_eq!(m("up_blocks.0.resnets.0.nonsense"), None);
    }
}
