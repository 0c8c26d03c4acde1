//! diffusers' `UNet2DConditionModel` as Stable Diffusion 1.x, 2.x and XL use it, on the kernels in
//! [`crate::ops`]. Configured from `unet/config.json` (widths, depths, heads, projections), and
//! field names mirror the checkpoint keys (`down_blocks.0.attentions.0.transformer_blocks.0.attn1`).
//!
//! Forward pass (`sample [B, Cin, H, W]`, one timestep for the batch, `encoder_hidden_states
//! [B, L, D]`):
//!
//! 1. `time_proj`: diffusers' sinusoidal embedding of the timestep (host, f32), then
//!    `time_embedding`: `linear_2(silu(linear_1(.)))`; SDXL (`addition_embed_type: "text_time"`)
//!    adds `add_embedding` of `[text_embeds, time_proj(time_ids)]` ([`AddedCond`]); every
//!    ResnetBlock adds `time_emb_proj(silu(temb))` per (batch, channel);
//! 2. `conv_in`, the down blocks (ResnetBlock2D, Transformer2DModel, Downsample2D), the mid block
//!    (resnet, attention, resnet), the up blocks (skip connections concatenated in diffusers'
//!    order, resnets, attentions, Upsample2D), `conv_norm_out` + SiLU, `conv_out`.
//!
//! ResnetBlock2D: `norm1`+SiLU (one fused GroupNorm), `conv1`, + time embedding, `norm2`+SiLU,
//! `conv2` with the skip (`conv_shortcut` 1x1 when channels change) fused as its residual.
//!
//! Transformer2DModel: GroupNorm (eps 1e-6), the NCHW map transposed to token-major `[B, HW, C]`,
//! `proj_in` (a 1x1 conv or a Linear: the same matrix, so both run as one GEMM), the
//! BasicTransformerBlocks (`x += attn1(norm1(x))`, `x += attn2(norm2(x), context)`,
//! `x += ff(norm3(x))` with GEGLU), back to NCHW and `proj_out` as a 1x1 convolution with the
//! block's input fused as residual. Linear weights are pre-transposed to `[in, out]` at load so
//! the vec4 GEMM runs; self-attention q/k/v are fused into one `[C, 3C]` GEMM and the
//! cross-attention k/v into one `[D, 2C]` GEMM; biases and residuals are fused into the GEMMs.
//! Attention scale `head_dim^-0.5`; softmax is always computed in f32 (so `upcast_attention`
//! needs nothing).

use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::ops::attention::{attention_qkv, attention_strided, AttnInput};
use crate::ops::conv::{conv2d_with, ConvWeight};
use crate::models::controlnet::ControlNetOutput;
use crate::models::gligen::{GatedSelfAttention, PositionNet};
use crate::ops::elementwise::{add, binary_broadcast, silu, Activation, BinaryOp};
use crate::ops::embedding::timestep_embedding;
use crate::ops::gemm::{matmul, GemmOpts};
use crate::ops::norm::{group_norm, layer_norm};
use crate::ops::resample::{concat_channels, resize_nearest, transpose_last2, upsample_nearest2x};
use crate::ops::softmax::geglu;
use crate::weights::{Component, WeightsError};
use serde_json::Value;

/// GroupNorm eps of Transformer2DModel's `norm` (fixed in diffusers, not in the config).
pub const ATTN_GROUP_NORM_EPS: f32 = 1e-6;
/// LayerNorm eps of BasicTransformerBlock (diffusers' default `norm_eps`).
pub const LAYER_NORM_EPS: f32 = 1e-5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownBlockType {
    CrossAttnDownBlock2D,
    DownBlock2D,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpBlockType {
    CrossAttnUpBlock2D,
    UpBlock2D,
}

/// UNet hyper-parameters (diffusers `UNet2DConditionModel` config names in the comments).
#[derive(Clone, Debug, PartialEq)]
pub struct UNetConfig {
    /// `in_channels`
    pub in_channels: usize,
    /// `out_channels`
    pub out_channels: usize,
    /// `block_out_channels`
    pub block_out_channels: Vec<usize>,
    /// `layers_per_block` (resnets per down block; up blocks have one more)
    pub layers_per_block: usize,
    /// `down_block_types`
    pub down_block_types: Vec<DownBlockType>,
    /// `up_block_types`
    pub up_block_types: Vec<UpBlockType>,
    /// Heads per down block (`num_attention_heads`, or the legacy `attention_head_dim`, which
    /// SD 1.x/2.x use to mean the head count); a single number applies to every block. Up blocks
    /// use the reversed list and the mid block the last entry, as diffusers does.
    pub heads: Vec<usize>,
    /// `transformer_layers_per_block`, per down block.
    pub transformer_layers: Vec<usize>,
    /// `cross_attention_dim`
    pub cross_attention_dim: usize,
    /// `use_linear_projection` (Linear rather than 1x1 conv `proj_in`/`proj_out`; only the
    /// stored weight shape differs).
    pub use_linear_projection: bool,
    /// `upcast_attention` (softmax in f32: what the kernel always does).
    pub upcast_attention: bool,
    /// `norm_num_groups`
    pub norm_num_groups: usize,
    /// `norm_eps` (ResnetBlock and `conv_norm_out` GroupNorms)
    pub norm_eps: f32,
    /// `flip_sin_to_cos`
    pub flip_sin_to_cos: bool,
    /// `freq_shift`
    pub freq_shift: f32,
    /// `time_embedding_dim` (default `4 * block_out_channels[0]`)
    pub time_embed_dim: usize,
    /// `conv_in_kernel` / `conv_out_kernel`
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    /// SDXL's `addition_embed_type: "text_time"`: `(addition_time_embed_dim,
    /// projection_class_embeddings_input_dim)`; `None` for SD 1.x/2.x.
    pub text_time: Option<(usize, usize)>,
    /// `only_cross_attention`, per down block (up blocks reversed; the mid block never): attn1
    /// attends to the text as attn2 does (the x4 upscaler's (T, T, T, F)).
    pub only_cross_attention: Vec<bool>,
    /// `num_class_embeds` (`class_embedding`, an `nn.Embedding` added to the time embedding;
    /// the x4 upscaler's noise level is the label).
    pub num_class_embeds: Option<usize>,
}

/// SDXL's `added_cond_kwargs`, per batch entry (host f32): the pooled text embedding
/// (`text_embeds`, `[B, P]` row-major) and the time ids (`[B, k]`: original size, crop top-left,
/// target size, each (h, w), so k = 6).
#[derive(Clone, Debug, PartialEq)]
pub struct AddedCond {
    pub text_embeds: Vec<f32>,
    pub time_ids: Vec<f32>,
}

impl AddedCond {
    /// diffusers' `_get_add_time_ids`: `original_size + crops_coords_top_left + target_size`.
    pub fn time_ids(original: (usize, usize), crop: (usize, usize), target: (usize, usize)) -> [f32; 6] {
        [original.0, original.1, crop.0, crop.1, target.0, target.1].map(|x| x as f32)
    }
}

impl UNetConfig {
    /// From a diffusers `unet/config.json`. Options SD 1.x/2.x never set (class or addition
    /// embeddings, scale-shift time conditioning, non-SiLU activations, ...) are refused.
    pub fn from_json(v: &Value) -> std::result::Result<UNetConfig, String> {
        let num = |k: &str, default: Option<usize>| -> std::result::Result<usize, String> {
            match v.get(k) {
                Some(Value::Number(n)) => n.as_u64().map(|x| x as usize).ok_or_else(|| format!("'{k}' is not a whole number")),
                None | Some(Value::Null) => default.ok_or_else(|| format!("no '{k}'")),
                Some(other) => Err(format!("'{k}' = {other} is not a number")),
            }
        };
        let float = |k: &str, default: f64| -> f64 { v.get(k).and_then(Value::as_f64).unwrap_or(default) };
        let boolean = |k: &str, default: bool| -> bool { v.get(k).and_then(Value::as_bool).unwrap_or(default) };
        let strings = |k: &str| -> std::result::Result<Vec<String>, String> {
            v.get(k)
                .and_then(Value::as_array)
                .ok_or_else(|| format!("no '{k}' list"))?
                .iter()
                .map(|s| s.as_str().map(str::to_string).ok_or_else(|| format!("'{k}' holds a non-string")))
                .collect()
        };
        // A number or a list of numbers, broadcast to `n` entries.
        let per_block = |k: &str, n: usize| -> std::result::Result<Option<Vec<usize>>, String> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(x)) => Ok(Some(vec![x.as_u64().ok_or_else(|| format!("bad '{k}'"))? as usize; n])),
                Some(Value::Array(a)) => {
                    let l: Vec<usize> = a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect::<Option<_>>().ok_or_else(|| format!("bad '{k}'"))?;
                    if l.len() != n {
                        return Err(format!("'{k}' has {} entries for {n} blocks", l.len()));
                    }
                    Ok(Some(l))
                }
                Some(other) => Err(format!("'{k}' = {other} is neither a number nor a list")),
            }
        };

        let block_out_channels: Vec<usize> = v
            .get("block_out_channels")
            .and_then(Value::as_array)
            .ok_or("no 'block_out_channels'")?
            .iter()
            .map(|x| x.as_u64().map(|x| x as usize))
            .collect::<Option<_>>()
            .ok_or("bad 'block_out_channels'")?;
        let n = block_out_channels.len();
        if n == 0 {
            return Err("empty 'block_out_channels'".into());
        }
        let down_block_types = strings("down_block_types")?
            .iter()
            .map(|s| match s.as_str() {
                "CrossAttnDownBlock2D" => Ok(DownBlockType::CrossAttnDownBlock2D),
                "DownBlock2D" => Ok(DownBlockType::DownBlock2D),
                other => Err(format!("unsupported down block '{other}'")),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let up_block_types = strings("up_block_types")?
            .iter()
            .map(|s| match s.as_str() {
                "CrossAttnUpBlock2D" => Ok(UpBlockType::CrossAttnUpBlock2D),
                "UpBlock2D" => Ok(UpBlockType::UpBlock2D),
                other => Err(format!("unsupported up block '{other}'")),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if down_block_types.len() != n || up_block_types.len() != n {
            return Err(format!("{n} block_out_channels but {} down / {} up block types", down_block_types.len(), up_block_types.len()));
        }
        match v.get("mid_block_type").and_then(Value::as_str).unwrap_or("UNetMidBlock2DCrossAttn") {
            "UNetMidBlock2DCrossAttn" => {}
            other => return Err(format!("unsupported mid block '{other}'")),
        }
        // Options SD 1.x/2.x leave at their defaults.
        let str_is = |k: &str, want: &[&str]| match v.get(k) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => want.contains(&s.as_str()),
            _ => false,
        };
        let null = |k: &str| matches!(v.get(k), None | Some(Value::Null));
        for (ok, what) in [
            (str_is("act_fn", &["silu", "swish"]), "act_fn"),
            (str_is("resnet_time_scale_shift", &["default"]), "resnet_time_scale_shift"),
            (str_is("time_embedding_type", &["positional"]), "time_embedding_type"),
            (str_is("attention_type", &["default", "gated"]), "attention_type"),
            (null("class_embed_type") && !boolean("class_embeddings_concat", false), "class_embed_type / class_embeddings_concat"),
            (null("encoder_hid_dim"), "encoder_hid_dim"),
            (null("time_cond_proj_dim"), "time_cond_proj_dim"),
            (null("time_embedding_act_fn") && null("timestep_post_act"), "extra time-embedding activations"),
            (null("cross_attention_norm"), "cross_attention_norm"),
            (!boolean("center_input_sample", false), "center_input_sample"),
            (!boolean("dual_cross_attention", false), "dual_cross_attention"),
            (float("mid_block_scale_factor", 1.0) == 1.0, "mid_block_scale_factor"),
            (float("resnet_out_scale_factor", 1.0) == 1.0, "resnet_out_scale_factor"),
            (!boolean("resnet_skip_time_act", false), "resnet_skip_time_act"),
            (num("downsample_padding", Some(1))? == 1, "downsample_padding"),
        ] {
            if !ok {
                return Err(format!("unsupported '{what}' (only Stable Diffusion 1.x/2.x/XL UNets are implemented)"));
            }
        }
        let heads = per_block("num_attention_heads", n)?
            .or(per_block("attention_head_dim", n)?)
            .unwrap_or(vec![8; n]);
        let transformer_layers = per_block("transformer_layers_per_block", n)?.unwrap_or(vec![1; n]);
        let only_cross_attention = match v.get("only_cross_attention") {
            None | Some(Value::Null) => vec![false; n],
            Some(Value::Bool(b)) => vec![*b; n],
            Some(Value::Array(a)) if a.len() == n => a.iter().map(Value::as_bool).collect::<Option<_>>().ok_or("bad 'only_cross_attention'")?,
            Some(other) => return Err(format!("'only_cross_attention' = {other} is neither a bool nor {n} bools")),
        };
        // (UNetMidBlock2DCrossAttn ignores `mid_block_only_cross_attention`.)
        let num_class_embeds = match v.get("num_class_embeds") {
            None | Some(Value::Null) => None,
            Some(_) => Some(num("num_class_embeds", None)?),
        };
        let cross_attention_dim = match v.get("cross_attention_dim") {
            Some(Value::Number(x)) => x.as_u64().ok_or("bad 'cross_attention_dim'")? as usize,
            _ => return Err("'cross_attention_dim' must be one number".into()),
        };
        let text_time = match v.get("addition_embed_type") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s == "text_time" => {
                Some((num("addition_time_embed_dim", None)?, num("projection_class_embeddings_input_dim", None)?))
            }
            Some(other) => return Err(format!("unsupported 'addition_embed_type' {other} (only SDXL's \"text_time\" is implemented)")),
        };
        let c0 = block_out_channels[0];
        Ok(UNetConfig {
            text_time,
            only_cross_attention,
            num_class_embeds,
            in_channels: num("in_channels", Some(4))?,
            out_channels: num("out_channels", Some(4))?,
            layers_per_block: num("layers_per_block", Some(2))?,
            down_block_types,
            up_block_types,
            heads,
            transformer_layers,
            cross_attention_dim,
            use_linear_projection: boolean("use_linear_projection", false),
            upcast_attention: boolean("upcast_attention", false),
            norm_num_groups: num("norm_num_groups", Some(32))?,
            norm_eps: float("norm_eps", 1e-5) as f32,
            flip_sin_to_cos: boolean("flip_sin_to_cos", true),
            freq_shift: float("freq_shift", 0.0) as f32,
            time_embed_dim: num("time_embedding_dim", Some(4 * c0))?,
            conv_in_kernel: num("conv_in_kernel", Some(3))?,
            conv_out_kernel: num("conv_out_kernel", Some(3))?,
            block_out_channels,
        })
    }

    /// The component's `config.json` when it has one (folders, or single files opened with a
    /// config folder), else inferred from the tensors ([`UNetConfig::infer`]).
    pub fn for_component(c: &Component) -> std::result::Result<UNetConfig, WeightsError> {
        let path = c.path().to_string();
        match &c.config {
            Some(cfg) => UNetConfig::from_json(cfg).map_err(|detail| WeightsError::Config { path, detail }),
            None => UNetConfig::infer(c),
        }
    }

    /// The config of an SD 1.x/2.x UNet from its tensors (single-file checkpoints carry none):
    /// widths, depths, block types, context width, time embedding width, conv kernels and the
    /// projection kind from the shapes and names present. Heads are not stored: as the original
    /// LDM configs, 8 heads per block for conv projections (SD 1.x, `num_heads: 8`) and head dim
    /// 64 for Linear projections (SD 2.x, `num_head_channels: 64`); a model that differs needs a
    /// config folder (`OpenOptions::config_dir`). GroupNorm 32 groups, eps 1e-5 (every SD UNet).
    pub fn infer(c: &Component) -> std::result::Result<UNetConfig, WeightsError> {
        Self::infer_with_heads(c, None)
    }

    /// [`Self::infer`] with the heads given (`heads`, when it has one entry per block): a
    /// ControlNet takes its UNet's, which may not follow the LDM defaults.
    pub(crate) fn infer_with_heads(c: &Component, heads: Option<&[usize]>) -> std::result::Result<UNetConfig, WeightsError> {
        let path = c.path().to_string();
        // Every shape read here is indexed up to its 3rd dimension: fewer is an error, not a panic.
        let shape = |name: &str| -> std::result::Result<Vec<usize>, WeightsError> {
            let s = c.shape(name).ok_or_else(|| WeightsError::Missing {
                path: path.clone(),
                name: name.to_string(),
                detail: " (needed to infer the UNet config)".into(),
            })?;
            let want = if name.ends_with("conv_in.weight") || name.ends_with("conv_out.weight") { 3 } else { 2 };
            if s.len() < want {
                return Err(WeightsError::Shape { path: path.clone(), name: name.to_string(), got: s, want: format!("at least {want} dimensions") });
            }
            Ok(s)
        };
        let arch = |detail: String| WeightsError::Architecture { path: path.clone(), detail };
        let mut block_out_channels = Vec::new();
        while c.contains(&format!("down_blocks.{}.resnets.0.conv1.weight", block_out_channels.len())) {
            block_out_channels.push(shape(&format!("down_blocks.{}.resnets.0.conv1.weight", block_out_channels.len()))?[0]);
        }
        let n = block_out_channels.len();
        if n == 0 {
            return Err(arch("no down_blocks.0.resnets.0: not a diffusers-style UNet".into()));
        }
        let mut layers_per_block = 0;
        while c.contains(&format!("down_blocks.0.resnets.{layers_per_block}.conv1.weight")) {
            layers_per_block += 1;
        }
        let has_attn = |p: &str| c.contains(&format!("{p}.attentions.0.norm.weight"));
        let down_block_types: Vec<DownBlockType> = (0..n)
            .map(|i| if has_attn(&format!("down_blocks.{i}")) { DownBlockType::CrossAttnDownBlock2D } else { DownBlockType::DownBlock2D })
            .collect();
        let up_block_types: Vec<UpBlockType> = (0..n)
            .map(|i| if has_attn(&format!("up_blocks.{i}")) { UpBlockType::CrossAttnUpBlock2D } else { UpBlockType::UpBlock2D })
            .collect();
        let attn = "mid_block.attentions.0";
        let cross = shape(&format!("{attn}.transformer_blocks.0.attn2.to_k.weight"))?;
        let use_linear_projection = shape(&format!("{attn}.proj_in.weight"))?.len() == 2;
        let heads: Vec<usize> = if let Some(h) = heads.filter(|h| h.len() == n) {
            h.to_vec()
        } else if use_linear_projection {
            if let Some(&ch) = block_out_channels.iter().find(|&&ch| !ch.is_multiple_of(64)) {
                return Err(arch(format!(
                    "width {ch} is not a multiple of 64, so the head count cannot be inferred; pass a diffusers folder with its configs (`--config DIR`)"
                )));
            }
            block_out_channels.iter().map(|ch| ch / 64).collect()
        } else {
            vec![8; n]
        };
        let depth = |p: &str| {
            let mut d = 0;
            while c.contains(&format!("{p}.attentions.0.transformer_blocks.{d}.norm1.weight")) {
                d += 1;
            }
            d.max(1)
        };
        let transformer_layers = (0..n).map(|i| if i + 1 == n { depth("mid_block") } else { depth(&format!("down_blocks.{i}")) }).collect();
        // SDXL: `add_embedding` (the single-file `label_emb.0`); its time ids are embedded 256
        // wide in every SDXL-family model (base, refiner, Turbo).
        let text_time = c.shape("add_embedding.linear_1.weight").map(|s| (256, s[1]));
        let conv_in = shape("conv_in.weight")?;
        // ControlNets (the encoder half only) have no conv_out.
        let conv_out = if c.contains("conv_out.weight") { shape("conv_out.weight")? } else { conv_in.clone() };
        Ok(UNetConfig {
            text_time,
            only_cross_attention: vec![false; n],
            num_class_embeds: c.shape("class_embedding.weight").map(|s| s[0]),
            in_channels: conv_in[1],
            out_channels: conv_out[0],
            layers_per_block,
            down_block_types,
            up_block_types,
            heads,
            transformer_layers,
            cross_attention_dim: cross[1],
            use_linear_projection,
            upcast_attention: use_linear_projection,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            time_embed_dim: shape("time_embedding.linear_1.weight")?[0],
            conv_in_kernel: conv_in[2],
            conv_out_kernel: conv_out[2],
            block_out_channels,
        })
    }

    /// Down-sampling factor of the UNet (odd sizes are rounded up on the way down).
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// Heads of the attention blocks in up block `i` (diffusers reverses the per-block list).
    pub fn up_heads(&self, i: usize) -> usize {
        self.heads[self.heads.len() - 1 - i]
    }
    pub fn up_transformer_layers(&self, i: usize) -> usize {
        self.transformer_layers[self.transformer_layers.len() - 1 - i]
    }
}

/// GroupNorm / LayerNorm affine parameters.
pub struct Norm {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// A `Linear` layer, weight pre-transposed to `[in, out]`.
pub struct Linear {
    pub weight_t: Tensor,
    pub bias: Option<Tensor>,
}

/// A convolution, weight as stored `[Cout, Cin, k, k]` (with its packed forms, `ConvWeight`).
pub struct Conv {
    pub weight: ConvWeight,
    pub bias: Tensor,
    pub stride: usize,
    pub padding: usize,
}

impl Conv {
    pub(crate) fn forward(&self, ctx: &Context, x: &Tensor) -> Result<Tensor> {
        conv2d_with(ctx, x, &self.weight, Some(&self.bias), self.stride, self.padding, None, None)
    }
    pub(crate) fn forward_residual(&self, ctx: &Context, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        conv2d_with(ctx, x, &self.weight, Some(&self.bias), self.stride, self.padding, Some(residual), None)
    }
}

pub struct ResnetBlock2D {
    pub norm1: Norm,
    pub conv1: Conv,
    pub time_emb_proj: Linear,
    pub norm2: Norm,
    pub conv2: Conv,
    pub conv_shortcut: Option<Conv>,
}

/// diffusers `Attention`: self-attention with q/k/v fused (`[C, 3C]`), or cross-attention with
/// `to_q` `[C, C]` and k/v fused (`[D, 2C]`). No q/k/v biases (SD's `attention_bias = False`).
pub struct Attention {
    pub heads: usize,
    /// Self: fused `[C, 3C]`; cross: `to_q` `[C, C]` (both `[in, out]`).
    pub q_weight_t: Tensor,
    /// Cross-attention `to_k | to_v`, `[D, 2C]`; `None` for self-attention.
    pub kv_weight_t: Option<Tensor>,
    pub to_out: Linear,
}

/// What every cross-attention's `to_k` and `to_v` read: the text itself, or (hypernetworks,
/// [`crate::models::hypernetwork`]) a transformed context for each.
#[derive(Clone, Copy)]
pub struct CrossContext<'a> {
    pub k: &'a Tensor,
    pub v: &'a Tensor,
}

impl<'a> From<&'a Tensor> for CrossContext<'a> {
    fn from(t: &'a Tensor) -> Self {
        CrossContext { k: t, v: t }
    }
}

pub struct BasicTransformerBlock {
    pub norm1: Norm,
    pub attn1: Attention,
    pub norm2: Norm,
    pub attn2: Attention,
    pub norm3: Norm,
    /// `ff.net.0.proj` (to `2 * inner`: GEGLU hidden | gate halves)
    pub ff_proj: Linear,
    /// `ff.net.2`
    pub ff_out: Linear,
    /// GLIGEN's gated self-attention (`attention_type="gated"` checkpoints).
    pub fuser: Option<GatedSelfAttention>,
}

pub struct Transformer2DModel {
    pub norm: Norm,
    /// `proj_in` as a `[C, C]` matrix (`[in, out]`), whether stored as a 1x1 conv or a Linear.
    pub proj_in: Linear,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    /// `proj_out` as a 1x1 convolution `[C, C, 1, 1]` (a Linear weight reshaped).
    pub proj_out: Conv,
}

pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    /// Downsample2D: 3x3 conv, stride 2, padding 1.
    pub downsampler: Option<Conv>,
}

pub struct MidBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    /// Upsample2D: nearest 2x, then a 3x3 conv.
    pub upsampler: Option<Conv>,
}

/// Intermediate tensors named like the goldens' `dbg.*` entries (`time_proj`, `time_embedding`,
/// `conv_in`, `down_blocks.i`, `mid_block`, `up_blocks.i`, `conv_norm_out` before SiLU).
pub type Trace = Vec<(String, Tensor)>;

pub struct UNet2DConditionModel {
    pub config: UNetConfig,
    /// Storage dtype of every tensor the model makes.
    pub dtype: DType,
    pub time_embedding_linear_1: Linear,
    pub time_embedding_linear_2: Linear,
    /// SDXL's `add_embedding.linear_1/2` (`config.text_time`).
    pub add_embedding: Option<(Linear, Linear)>,
    /// `class_embedding.weight` `[num_class_embeds, T]` on the host (rows gathered per call).
    pub class_embedding: Option<Vec<f32>>,
    pub conv_in: Conv,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: Norm,
    pub conv_out: Conv,
    /// GLIGEN's `position_net` (with a fuser in every transformer block).
    pub position_net: Option<PositionNet>,
}

/// Loading helpers bound to one component, context and dtype (shared with the ControlNet).
pub(crate) struct Loader<'a> {
    pub ctx: &'a Context,
    pub c: &'a Component,
    pub dtype: DType,
}

impl Loader<'_> {
    pub(crate) fn upload(&self, v: &[f32], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_f32(self.ctx, v, shape, self.dtype)
    }
    pub(crate) fn vec(&self, name: &str, n: usize) -> Result<Tensor> {
        self.c.get(name)?.expect_shape(&[n])?.upload(self.ctx, self.dtype)
    }
    pub(crate) fn norm(&self, p: &str, ch: usize) -> Result<Norm> {
        Ok(Norm { weight: self.vec(&format!("{p}.weight"), ch)?, bias: self.vec(&format!("{p}.bias"), ch)? })
    }
    /// A `[out, in]` (or `[out, in, 1, 1]`) weight transposed to `[in, out]`, f32 on the host.
    pub(crate) fn matrix_t(&self, name: &str, out: usize, inp: usize) -> Result<Vec<f32>> {
        let t = self.c.get(name)?;
        if t.shape != [out, inp] && t.shape != [out, inp, 1, 1] {
            t.expect_shape(&[out, inp])?;
        }
        let v = t.to_f32()?;
        let mut w = vec![0f32; out * inp];
        for o in 0..out {
            for i in 0..inp {
                w[i * out + o] = v[o * inp + i];
            }
        }
        Ok(w)
    }
    pub(crate) fn linear(&self, p: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        Ok(Linear {
            weight_t: self.upload(&self.matrix_t(&format!("{p}.weight"), out, inp)?, &[inp, out])?,
            bias: if bias { Some(self.vec(&format!("{p}.bias"), out)?) } else { None },
        })
    }
    pub(crate) fn conv(&self, p: &str, out: usize, inp: usize, k: usize, stride: usize, padding: usize) -> Result<Conv> {
        let w = self.c.get(&format!("{p}.weight"))?;
        // A Linear stored [out, in] used as a 1x1 convolution.
        let weight = if k == 1 && w.shape == [out, inp] {
            self.upload(&w.to_f32()?, &[out, inp, 1, 1])?
        } else {
            w.expect_shape(&[out, inp, k, k])?.upload(self.ctx, self.dtype)?
        };
        Ok(Conv { weight: ConvWeight::new(weight), bias: self.vec(&format!("{p}.bias"), out)?, stride, padding })
    }
    pub(crate) fn resnet(&self, p: &str, inp: usize, out: usize, temb: usize) -> Result<ResnetBlock2D> {
        Ok(ResnetBlock2D {
            norm1: self.norm(&format!("{p}.norm1"), inp)?,
            conv1: self.conv(&format!("{p}.conv1"), out, inp, 3, 1, 1)?,
            time_emb_proj: self.linear(&format!("{p}.time_emb_proj"), out, temb, true)?,
            norm2: self.norm(&format!("{p}.norm2"), out)?,
            conv2: self.conv(&format!("{p}.conv2"), out, out, 3, 1, 1)?,
            conv_shortcut: if inp != out { Some(self.conv(&format!("{p}.conv_shortcut"), out, inp, 1, 1, 0)?) } else { None },
        })
    }
    pub(crate) fn attention(&self, p: &str, ch: usize, context: Option<usize>, heads: usize) -> Result<Attention> {
        let kv_in = context.unwrap_or(ch);
        let q = self.matrix_t(&format!("{p}.to_q.weight"), ch, ch)?;
        let k = self.matrix_t(&format!("{p}.to_k.weight"), ch, kv_in)?;
        let v = self.matrix_t(&format!("{p}.to_v.weight"), ch, kv_in)?;
        // Column-concatenate [in, ch] matrices into [in, parts*ch].
        let cat = |parts: &[&[f32]], rows: usize| -> Vec<f32> {
            let w = parts.len() * ch;
            let mut out = vec![0f32; rows * w];
            for (j, m) in parts.iter().enumerate() {
                for r in 0..rows {
                    out[r * w + j * ch..r * w + (j + 1) * ch].copy_from_slice(&m[r * ch..(r + 1) * ch]);
                }
            }
            out
        };
        let (q_weight_t, kv_weight_t) = match context {
            None => (self.upload(&cat(&[&q, &k, &v], ch), &[ch, 3 * ch])?, None),
            Some(d) => (self.upload(&q, &[ch, ch])?, Some(self.upload(&cat(&[&k, &v], d), &[d, 2 * ch])?)),
        };
        Ok(Attention { heads, q_weight_t, kv_weight_t, to_out: self.linear(&format!("{p}.to_out.0"), ch, ch, true)? })
    }
    pub(crate) fn transformer(&self, p: &str, ch: usize, heads: usize, depth: usize, cfg: &UNetConfig) -> Result<Transformer2DModel> {
        self.transformer_with(p, ch, heads, depth, cfg, false)
    }
    /// `only_cross`: attn1 takes its keys and values from the text (`only_cross_attention`).
    pub(crate) fn transformer_with(&self, p: &str, ch: usize, heads: usize, depth: usize, cfg: &UNetConfig, only_cross: bool) -> Result<Transformer2DModel> {
        if heads == 0 || !ch.is_multiple_of(heads) {
            return Err(Error::Unsupported(format!("{p}: {ch} channels in {heads} heads")));
        }
        let inner = 4 * ch;
        let mut transformer_blocks = Vec::with_capacity(depth);
        for i in 0..depth {
            let b = format!("{p}.transformer_blocks.{i}");
            transformer_blocks.push(BasicTransformerBlock {
                norm1: self.norm(&format!("{b}.norm1"), ch)?,
                attn1: self.attention(&format!("{b}.attn1"), ch, only_cross.then_some(cfg.cross_attention_dim), heads)?,
                norm2: self.norm(&format!("{b}.norm2"), ch)?,
                attn2: self.attention(&format!("{b}.attn2"), ch, Some(cfg.cross_attention_dim), heads)?,
                norm3: self.norm(&format!("{b}.norm3"), ch)?,
                ff_proj: self.linear(&format!("{b}.ff.net.0.proj"), 2 * inner, ch, true)?,
                ff_out: self.linear(&format!("{b}.ff.net.2"), ch, inner, true)?,
                fuser: self.fuser(&b, ch, cfg.cross_attention_dim, heads)?,
            });
        }
        Ok(Transformer2DModel {
            norm: self.norm(&format!("{p}.norm"), ch)?,
            proj_in: self.linear(&format!("{p}.proj_in"), ch, ch, true)?,
            transformer_blocks,
            proj_out: self.conv(&format!("{p}.proj_out"), ch, ch, 1, 1, 0)?,
        })
    }
}

/// The down blocks of a UNet or ControlNet (`down_blocks.{i}`: resnets, attentions, downsampler).
pub(crate) fn load_down_blocks(ld: &Loader, cfg: &UNetConfig) -> Result<Vec<DownBlock>> {
    let ch = &cfg.block_out_channels;
    let (n, c0, temb) = (ch.len(), ch[0], cfg.time_embed_dim);
    let mut down_blocks = Vec::with_capacity(n);
    let mut out_ch = c0;
    for (i, &ty) in cfg.down_block_types.iter().enumerate() {
        let in_ch = out_ch;
        out_ch = ch[i];
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..cfg.layers_per_block {
            let p = format!("down_blocks.{i}");
            resnets.push(ld.resnet(&format!("{p}.resnets.{j}"), if j == 0 { in_ch } else { out_ch }, out_ch, temb)?);
            if ty == DownBlockType::CrossAttnDownBlock2D {
                let only_cross = cfg.only_cross_attention.get(i).copied().unwrap_or(false);
                attentions.push(ld.transformer_with(&format!("{p}.attentions.{j}"), out_ch, cfg.heads[i], cfg.transformer_layers[i], cfg, only_cross)?);
            }
        }
        let downsampler =
            if i + 1 < n { Some(ld.conv(&format!("down_blocks.{i}.downsamplers.0.conv"), out_ch, out_ch, 3, 2, 1)?) } else { None };
        down_blocks.push(DownBlock { resnets, attentions, downsampler });
    }
    Ok(down_blocks)
}

/// `mid_block` (UNetMidBlock2DCrossAttn: resnet, attention, resnet) of a UNet or ControlNet.
pub(crate) fn load_mid_block(ld: &Loader, cfg: &UNetConfig) -> Result<MidBlock> {
    let ch = &cfg.block_out_channels;
    let (n, temb) = (ch.len(), cfg.time_embed_dim);
    let cl = ch[n - 1];
    Ok(MidBlock {
        resnets: vec![ld.resnet("mid_block.resnets.0", cl, cl, temb)?, ld.resnet("mid_block.resnets.1", cl, cl, temb)?],
        attentions: vec![ld.transformer("mid_block.attentions.0", cl, cfg.heads[n - 1], cfg.transformer_layers[n - 1], cfg)?],
    })
}

impl UNet2DConditionModel {
    /// Latent channels the UNet takes.
    pub fn in_channels(&self) -> usize {
        self.config.in_channels
    }
    /// Channels of the prediction.
    pub fn out_channels(&self) -> usize {
        self.config.out_channels
    }

    /// Load with the component's config ([`UNetConfig::for_component`]) in `dtype`.
    pub fn load(ctx: &Context, c: &Component, dtype: DType) -> Result<UNet2DConditionModel> {
        let config = UNetConfig::for_component(c)?;
        Self::load_with(ctx, c, config, dtype)
    }

    /// Load with an explicit config. Every tensor's shape is checked against the config.
    pub fn load_with(ctx: &Context, c: &Component, config: UNetConfig, dtype: DType) -> Result<UNet2DConditionModel> {
        let ld = Loader { ctx, c, dtype };
        let cfg = &config;
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let (c0, temb) = (ch[0], cfg.time_embed_dim);
        let (kin, kout) = (cfg.conv_in_kernel, cfg.conv_out_kernel);
        if kin % 2 == 0 || kout % 2 == 0 {
            return Err(Error::Unsupported(format!("even conv_in/conv_out kernels ({kin}, {kout})")));
        }
        if cfg.layers_per_block == 0 {
            return Err(Error::Unsupported("layers_per_block 0".into()));
        }
        let time_embedding_linear_1 = ld.linear("time_embedding.linear_1", temb, c0, true)?;
        let time_embedding_linear_2 = ld.linear("time_embedding.linear_2", temb, temb, true)?;
        let add_embedding = load_add_embedding(&ld, cfg)?;
        let class_embedding = match cfg.num_class_embeds {
            Some(k) => Some(c.get("class_embedding.weight")?.expect_shape(&[k, temb])?.to_f32()?),
            None => None,
        };
        let conv_in = ld.conv("conv_in", c0, cfg.in_channels, kin, 1, kin / 2)?;

        let down_blocks = load_down_blocks(&ld, cfg)?;
        let mid_block = load_mid_block(&ld, cfg)?;

        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut out_ch = rev[0];
        for (i, &ty) in cfg.up_block_types.iter().enumerate() {
            let prev_out = out_ch;
            out_ch = rev[i];
            let in_ch = rev[(i + 1).min(n - 1)];
            let layers = cfg.layers_per_block + 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..layers {
                let p = format!("up_blocks.{i}");
                let skip = if j == layers - 1 { in_ch } else { out_ch };
                let res_in = if j == 0 { prev_out } else { out_ch };
                resnets.push(ld.resnet(&format!("{p}.resnets.{j}"), res_in + skip, out_ch, temb)?);
                if ty == UpBlockType::CrossAttnUpBlock2D {
                    let only_cross = cfg.only_cross_attention.get(n - 1 - i).copied().unwrap_or(false);
                    attentions.push(ld.transformer_with(&format!("{p}.attentions.{j}"), out_ch, cfg.up_heads(i), cfg.up_transformer_layers(i), cfg, only_cross)?);
                }
            }
            let upsampler =
                if i + 1 < n { Some(ld.conv(&format!("up_blocks.{i}.upsamplers.0.conv"), out_ch, out_ch, 3, 1, 1)?) } else { None };
            up_blocks.push(UpBlock { resnets, attentions, upsampler });
        }

        let conv_norm_out = ld.norm("conv_norm_out", c0)?;
        let conv_out = ld.conv("conv_out", cfg.out_channels, c0, kout, 1, kout / 2)?;
        let position_net = ld.position_net(cfg.cross_attention_dim)?;
        Ok(UNet2DConditionModel {
            config,
            dtype,
            time_embedding_linear_1,
            time_embedding_linear_2,
            add_embedding,
            class_embedding,
            conv_in,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            position_net,
        })
    }

    /// The noise prediction for `sample [B, in_channels, H, W]` at `timestep` (the same for the
    /// whole batch, e.g. `[uncond, cond]`), conditioned on `encoder_hidden_states [B, L, D]`.
    /// Any H and W: odd sizes are rounded up by the down blocks and resized back on the way up,
    /// as diffusers does (`forward_upsample_size`).
    pub fn forward(&self, ctx: &Context, sample: &Tensor, timestep: f32, encoder_hidden_states: &Tensor) -> Result<Tensor> {
        self.forward_traced(ctx, sample, &[timestep], encoder_hidden_states, None)
    }

    /// [`Self::forward`] with one timestep per batch entry (or one for all), optionally recording
    /// the intermediates named in [`Trace`].
    pub fn forward_traced(
        &self,
        ctx: &Context,
        sample: &Tensor,
        timesteps: &[f32],
        encoder_hidden_states: &Tensor,
        trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        self.forward_full(ctx, sample, timesteps, encoder_hidden_states, None, None, trace)
    }

    /// [`Self::forward`] with a ControlNet's residuals added to the skip connections and the mid
    /// block output, as diffusers' `down_block_additional_residuals` /
    /// `mid_block_additional_residual` (already scaled by the conditioning scale).
    pub fn forward_controlled(
        &self,
        ctx: &Context,
        sample: &Tensor,
        timesteps: &[f32],
        encoder_hidden_states: &Tensor,
        control: Option<&ControlNetOutput>,
    ) -> Result<Tensor> {
        self.forward_full(ctx, sample, timesteps, encoder_hidden_states, None, control, None)
    }

    /// The general call: SDXL's added conditioning (required when the model has
    /// `add_embedding`, refused otherwise), an optional ControlNet's residuals and trace.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_full(
        &self,
        ctx: &Context,
        sample: &Tensor,
        timesteps: &[f32],
        encoder_hidden_states: &Tensor,
        added: Option<&AddedCond>,
        control: Option<&ControlNetOutput>,
        trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        self.forward_with(ctx, sample, timesteps, encoder_hidden_states.into(), added, control, trace, UNetExtras::default())
    }

    /// [`Self::forward_full`] with separate k and v contexts for the cross-attentions
    /// (hypernetworks) and [`UNetExtras`]: class labels (the x4 upscaler's noise level),
    /// GLIGEN's grounding tokens, the probe of the mid block's first self-attention
    /// (Self-Attention Guidance reads its attention map).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with(
        &self,
        ctx: &Context,
        sample: &Tensor,
        timesteps: &[f32],
        cross: CrossContext,
        added: Option<&AddedCond>,
        control: Option<&ControlNetOutput>,
        mut trace: Option<&mut Trace>,
        extras: UNetExtras,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let UNetExtras { probe, gligen: objs, class_labels } = extras;
        if objs.is_some() && self.position_net.is_none() {
            return Err(Error::Unsupported("grounding boxes need a GLIGEN UNet (attention_type \"gated\", with position_net)".into()));
        }
        let encoder_hidden_states = cross;
        let ts = check_inputs(cfg, "unet", sample, timesteps, cross.k)?;
        if cross.v.shape() != cross.k.shape() {
            return Err(Error::Shape { op: "unet", detail: format!("v context {:?} and k context {:?} differ", cross.v.shape(), cross.k.shape()) });
        }
        let aug = self.added_embedding(ctx, added, sample.dim(0))?;
        let aug = self.class_embedding(ctx, aug, class_labels, sample.dim(0))?;
        let (_, emb_act) =
            time_embedding(ctx, cfg, self.dtype, &self.time_embedding_linear_1, &self.time_embedding_linear_2, &ts, aug.as_ref(), trace.as_deref_mut())?;

        let x = self.conv_in.forward(ctx, sample)?;
        record(&mut trace, "conv_in", &x);
        let mut skips = vec![x.clone()];
        let x = down_blocks_forward(ctx, cfg, &self.down_blocks, x, &emb_act, encoder_hidden_states, objs, &mut skips, trace.as_deref_mut())?;
        let mut x = mid_block_forward(ctx, cfg, &self.mid_block, x, &emb_act, encoder_hidden_states, objs, probe)?;
        if let Some(c) = control {
            if c.down.len() != skips.len() {
                return Err(Error::Shape {
                    op: "unet",
                    detail: format!("{} ControlNet down residuals for {} skip connections", c.down.len(), skips.len()),
                });
            }
            for (skip, r) in skips.iter_mut().zip(&c.down) {
                *skip = add(ctx, skip, r)?;
            }
            x = add(ctx, &x, &c.mid)?;
        }
        record(&mut trace, "mid_block", &x);

        for (i, block) in self.up_blocks.iter().enumerate() {
            for (j, r) in block.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| Error::Shape { op: "unet", detail: "ran out of skip connections".into() })?;
                x = concat_channels(ctx, &x, &skip)?;
                x = resnet(ctx, cfg, r, &x, &emb_act)?;
                if let Some(attn) = block.attentions.get(j) {
                    x = transformer(ctx, cfg, attn, &x, encoder_hidden_states, objs, None)?;
                }
            }
            if let Some(conv) = &block.upsampler {
                // diffusers' `upsample_size`: up to the next skip's size, which is 2H − 1 where
                // a down block's stride-2 conv rounded an odd size up.
                let (h2, w2) = (2 * x.dim(2), 2 * x.dim(3));
                x = match skips.last().map(|s| (s.dim(2), s.dim(3))) {
                    Some((h, w)) if (h, w) != (h2, w2) => resize_nearest(ctx, &x, h, w)?,
                    _ => upsample_nearest2x(ctx, &x)?,
                };
                x = conv.forward(ctx, &x)?;
            }
            record(&mut trace, &format!("up_blocks.{i}"), &x);
        }

        let groups = cfg.norm_num_groups;
        let n = &self.conv_norm_out;
        if trace.is_some() {
            let pre = group_norm(ctx, &x, groups, &n.weight, &n.bias, cfg.norm_eps, false)?;
            record(&mut trace, "conv_norm_out", &pre);
        }
        let h = group_norm(ctx, &x, groups, &n.weight, &n.bias, cfg.norm_eps, true)?;
        self.conv_out.forward(ctx, &h)
    }
}

impl UNet2DConditionModel {
    fn added_embedding(&self, ctx: &Context, added: Option<&AddedCond>, batch: usize) -> Result<Option<Tensor>> {
        added_embedding(ctx, &self.config, self.dtype, self.add_embedding.as_ref(), added, batch, "unet added conditioning")
    }
}

/// SDXL's `add_embedding.linear_1/2` when `config.text_time` says the model has them (the UNet
/// and an SDXL ControlNet alike).
pub(crate) fn load_add_embedding(ld: &Loader, cfg: &UNetConfig) -> Result<Option<(Linear, Linear)>> {
    let temb = cfg.time_embed_dim;
    match cfg.text_time {
        Some((_, input_dim)) => Ok(Some((ld.linear("add_embedding.linear_1", temb, input_dim, true)?, ld.linear("add_embedding.linear_2", temb, temb, true)?))),
        None => Ok(None),
    }
}

/// SDXL's `aug_emb = add_embedding(concat(text_embeds, add_time_proj(time_ids)))`, `[B, T]`, for
/// the UNet or an SDXL ControlNet (diffusers' `ControlNetModel` computes it the same way).
pub(crate) fn added_embedding(
    ctx: &Context,
    cfg: &UNetConfig,
    dtype: DType,
    add_embedding: Option<&(Linear, Linear)>,
    added: Option<&AddedCond>,
    batch: usize,
    op: &'static str,
) -> Result<Option<Tensor>> {
    let (Some((l1, l2)), Some((time_dim, input_dim))) = (add_embedding, cfg.text_time) else {
        return match added {
            Some(_) => Err(Error::Shape { op, detail: "text_embeds/time_ids given to a model without add_embedding (not SDXL)".into() }),
            None => Ok(None),
        };
    };
    let Some(a) = added else {
        return Err(Error::Shape { op, detail: "this SDXL model needs text_embeds and time_ids (AddedCond)".into() });
    };
    let (p, k) = (a.text_embeds.len() / batch.max(1), a.time_ids.len() / batch.max(1));
    if a.text_embeds.len() != p * batch || a.time_ids.len() != k * batch || p + k * time_dim != input_dim {
        return Err(Error::Shape {
            op,
            detail: format!(
                "{} text_embeds and {} time_ids values for batch {batch}: add_embedding takes {input_dim} = pooled width + ids x {time_dim} per entry",
                a.text_embeds.len(),
                a.time_ids.len()
            ),
        });
    }
    let t = crate::ops::embedding::timestep_embedding_values(&a.time_ids, time_dim, cfg.flip_sin_to_cos, cfg.freq_shift, 10000.0);
    let mut x = Vec::with_capacity(batch * input_dim);
    for b in 0..batch {
        x.extend_from_slice(&a.text_embeds[b * p..(b + 1) * p]);
        x.extend_from_slice(&t[b * k * time_dim..(b + 1) * k * time_dim]);
    }
    let x = Tensor::from_f32(ctx, &x, &[batch, input_dim], dtype)?;
    let h = matmul(ctx, &x, &l1.weight_t, GemmOpts { bias: l1.bias.as_ref(), act: Activation::Silu, ..Default::default() })?;
    Ok(Some(matmul(ctx, &h, &l2.weight_t, GemmOpts { bias: l2.bias.as_ref(), ..Default::default() })?))
}

impl UNet2DConditionModel {
    /// `aug + class_embedding(class_labels)`, `[B, T]`: diffusers adds both to the time embedding.
    fn class_embedding(&self, ctx: &Context, aug: Option<Tensor>, labels: Option<&[usize]>, batch: usize) -> Result<Option<Tensor>> {
        let op = "unet class labels";
        let (table, labels) = match (&self.class_embedding, labels) {
            (None, None) => return Ok(aug),
            (None, Some(_)) => return Err(Error::Shape { op, detail: "class labels given to a UNet without class embeddings (num_class_embeds)".into() }),
            (Some(_), None) => return Err(Error::Shape { op, detail: "this UNet has class embeddings (num_class_embeds): give class labels (the x4 upscaler's noise level)".into() }),
            (Some(t), Some(l)) => (t, l),
        };
        let t = self.config.time_embed_dim;
        let k = table.len() / t;
        if labels.len() != 1 && labels.len() != batch {
            return Err(Error::Shape { op, detail: format!("{} class labels for batch {batch}", labels.len()) });
        }
        let mut x = Vec::with_capacity(batch * t);
        for b in 0..batch {
            let l = labels[if labels.len() == 1 { 0 } else { b }];
            if l >= k {
                return Err(Error::Shape { op, detail: format!("class label {l} is out of range: the UNet has {k} class embeddings") });
            }
            x.extend_from_slice(&table[l * t..(l + 1) * t]);
        }
        let emb = Tensor::from_f32(ctx, &x, &[batch, t], self.dtype)?;
        Ok(Some(match aug {
            Some(a) => add(ctx, &a, &emb)?,
            None => emb,
        }))
    }
}

fn record(trace: &mut Option<&mut Trace>, name: &str, t: &Tensor) {
    if let Some(tr) = trace.as_deref_mut() {
        tr.push((name.to_string(), t.clone()));
    }
}

/// Checks `sample [B, in_channels, H, W]` and `encoder_hidden_states [B, L, D]` against the
/// config; returns one timestep per batch entry.
pub(crate) fn check_inputs(cfg: &UNetConfig, op: &'static str, sample: &Tensor, timesteps: &[f32], encoder_hidden_states: &Tensor) -> Result<Vec<f32>> {
    let s = sample.shape();
    if s.len() != 4 || s[1] != cfg.in_channels {
        return Err(Error::Shape { op, detail: format!("sample {s:?} must be [B, {}, H, W]", cfg.in_channels) });
    }
    let b = s[0];
    let e = encoder_hidden_states.shape();
    if e.len() != 3 || e[0] != b || e[2] != cfg.cross_attention_dim {
        return Err(Error::Shape { op, detail: format!("encoder_hidden_states {e:?} must be [{b}, L, {}]", cfg.cross_attention_dim) });
    }
    match timesteps.len() {
        1 => Ok(vec![timesteps[0]; b]),
        n if n == b => Ok(timesteps.to_vec()),
        n => Err(Error::Shape { op, detail: format!("{n} timesteps for batch {b}") }),
    }
}

/// `time_proj` (diffusers' sinusoidal embedding, host f32) then `time_embedding`:
/// `linear_2(silu(linear_1(.)))`, plus SDXL's `aug` embedding when given. Returns the embedding
/// and `silu` of it (every resnet applies SiLU before its projection: done once).
#[allow(clippy::too_many_arguments)]
pub(crate) fn time_embedding(
    ctx: &Context,
    cfg: &UNetConfig,
    dtype: DType,
    l1: &Linear,
    l2: &Linear,
    ts: &[f32],
    aug: Option<&Tensor>,
    mut trace: Option<&mut Trace>,
) -> Result<(Tensor, Tensor)> {
    let t_proj = timestep_embedding(ctx, ts, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift, 10000.0, dtype)?;
    record(&mut trace, "time_proj", &t_proj);
    let h = matmul(ctx, &t_proj, &l1.weight_t, GemmOpts { bias: l1.bias.as_ref(), act: Activation::Silu, ..Default::default() })?;
    let emb = matmul(ctx, &h, &l2.weight_t, GemmOpts { bias: l2.bias.as_ref(), residual: aug, ..Default::default() })?;
    record(&mut trace, "time_embedding", &emb);
    let emb_act = silu(ctx, &emb)?;
    Ok((emb, emb_act))
}

/// The down blocks from `x` (after `conv_in`); every resnet/attention output and downsampler
/// output is pushed to `skips` in diffusers' order. Returns the last block's output.
#[allow(clippy::too_many_arguments)]
pub(crate) fn down_blocks_forward(
    ctx: &Context,
    cfg: &UNetConfig,
    blocks: &[DownBlock],
    mut x: Tensor,
    emb_act: &Tensor,
    context: CrossContext,
    objs: Option<&Tensor>,
    skips: &mut Vec<Tensor>,
    mut trace: Option<&mut Trace>,
) -> Result<Tensor> {
    for (i, block) in blocks.iter().enumerate() {
        for (j, r) in block.resnets.iter().enumerate() {
            x = resnet(ctx, cfg, r, &x, emb_act)?;
            if let Some(attn) = block.attentions.get(j) {
                x = transformer(ctx, cfg, attn, &x, context, objs, None)?;
            }
            skips.push(x.clone());
        }
        if let Some(conv) = &block.downsampler {
            x = conv.forward(ctx, &x)?;
            skips.push(x.clone());
        }
        record(&mut trace, &format!("down_blocks.{i}"), &x);
    }
    Ok(x)
}

/// UNetMidBlock2DCrossAttn: resnet, then (attention, resnet) pairs. `probe` receives the first
/// attention's first self-attention q|k|v.
pub(crate) fn mid_block_forward(
    ctx: &Context,
    cfg: &UNetConfig,
    mid: &MidBlock,
    x: Tensor,
    emb_act: &Tensor,
    context: CrossContext,
    objs: Option<&Tensor>,
    mut probe: Option<&mut Option<MidAttention>>,
) -> Result<Tensor> {
    let mut x = resnet(ctx, cfg, &mid.resnets[0], &x, emb_act)?;
    for (attn, r) in mid.attentions.iter().zip(&mid.resnets[1..]) {
        let map = (x.dim(2), x.dim(3));
        let mut qkv = None;
        x = transformer(ctx, cfg, attn, &x, context, objs, probe.is_some().then_some(&mut qkv))?;
        if let (Some(p), Some(qkv)) = (probe.take(), qkv) {
            *p = Some(MidAttention { qkv, heads: attn.transformer_blocks[0].attn1.heads, map });
        }
        x = resnet(ctx, cfg, r, &x, emb_act)?;
    }
    Ok(x)
}

/// Optional inputs of [`UNet2DConditionModel::forward_with`].
#[derive(Default)]
pub struct UNetExtras<'a> {
    /// Receives the mid block's first self-attention inputs.
    pub probe: Option<&'a mut Option<MidAttention>>,
    /// GLIGEN's grounding tokens `[B, 30, C]` ([`PositionNet::objs`]); `None`: fusers off.
    pub gligen: Option<&'a Tensor>,
    /// One class label per batch entry (or one for all), which a UNet with `num_class_embeds`
    /// needs (the x4 upscaler's noise level) and others refuse.
    pub class_labels: Option<&'a [usize]>,
}

/// The mid block's first self-attention inputs: fused `q|k|v` `[B, H·W, 3C]` over the `map`
/// `(H, W)` grid, `heads` heads.
pub struct MidAttention {
    pub qkv: Tensor,
    pub heads: usize,
    pub map: (usize, usize),
}

/// ResnetBlock2D: `shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb)))))`.
/// `emb_act` is `silu(temb)` `[B, T]`.
fn resnet(ctx: &Context, cfg: &UNetConfig, r: &ResnetBlock2D, x: &Tensor, emb_act: &Tensor) -> Result<Tensor> {
    Ok(resnet_keeping(ctx, cfg, r, x, emb_act, false)?.0)
}

/// [`resnet`], also returning `norm2`'s input `conv1(..) + temb` when `keep` (its reverse pass,
/// [`super::unet_grad`], needs it).
pub(crate) fn resnet_keeping(ctx: &Context, cfg: &UNetConfig, r: &ResnetBlock2D, x: &Tensor, emb_act: &Tensor, keep: bool) -> Result<(Tensor, Option<Tensor>)> {
    let (g, eps) = (cfg.norm_num_groups, cfg.norm_eps);
    // Intermediates are dropped as soon as used (shadowed ones would live to the end).
    let mut h = r.conv1.forward(ctx, &group_norm(ctx, x, g, &r.norm1.weight, &r.norm1.bias, eps, true)?)?;
    let t = matmul(ctx, emb_act, &r.time_emb_proj.weight_t, GemmOpts { bias: r.time_emb_proj.bias.as_ref(), ..Default::default() })?;
    let hw = h.dim(2) * h.dim(3);
    h = binary_broadcast(ctx, BinaryOp::Add, &h, &t, hw, 1.0)?;
    let kept = keep.then(|| h.clone());
    h = group_norm(ctx, &h, g, &r.norm2.weight, &r.norm2.bias, eps, true)?;
    let shortcut = match &r.conv_shortcut {
        Some(c) => c.forward(ctx, x)?,
        None => x.clone(),
    };
    Ok((r.conv2.forward_residual(ctx, &h, &shortcut)?, kept))
}

/// Transformer2DModel on NCHW `x` with `context [B, L, D]`; returns NCHW.
/// `objs`: GLIGEN's grounding tokens (for the blocks' fusers); `probe` receives the first
/// block's self-attention q|k|v.
fn transformer(
    ctx: &Context,
    cfg: &UNetConfig,
    t: &Transformer2DModel,
    x: &Tensor,
    context: CrossContext,
    objs: Option<&Tensor>,
    mut probe: Option<&mut Option<Tensor>>,
) -> Result<Tensor> {
    let (b, c, hh, ww) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let h = group_norm(ctx, x, cfg.norm_num_groups, &t.norm.weight, &t.norm.bias, ATTN_GROUP_NORM_EPS, false)?;
    // [B, C, HW] -> token-major [B, HW, C], then proj_in.
    let h = transpose_last2(ctx, &h.reshape(&[b, c, hh * ww])?)?;
    let mut h = matmul(ctx, &h, &t.proj_in.weight_t, GemmOpts { bias: t.proj_in.bias.as_ref(), ..Default::default() })?;
    for blk in &t.transformer_blocks {
        h = transformer_block(ctx, blk, &h, context, objs, probe.take())?;
    }
    // Back to NCHW; proj_out as a 1x1 conv with the block input as residual.
    let h = transpose_last2(ctx, &h)?.reshape(&[b, c, hh, ww])?;
    t.proj_out.forward_residual(ctx, &h, x)
}

fn transformer_block(
    ctx: &Context,
    blk: &BasicTransformerBlock,
    x: &Tensor,
    context: CrossContext,
    objs: Option<&Tensor>,
    probe: Option<&mut Option<Tensor>>,
) -> Result<Tensor> {
    // Norm outputs and the GEGLU's 8C-wide input are dropped once used.
    // attn1 is self-attention (no kv weights: `attend` ignores the context) unless loaded with
    // `only_cross_attention`.
    let mut x = attend(ctx, &blk.attn1, &layer_norm(ctx, x, &blk.norm1.weight, &blk.norm1.bias, LAYER_NORM_EPS)?, Some(context), x, probe)?;
    if let (Some(fuser), Some(objs)) = (&blk.fuser, objs) {
        x = fuser.forward(ctx, &x, objs)?;
    }
    x = attend(ctx, &blk.attn2, &layer_norm(ctx, &x, &blk.norm2.weight, &blk.norm2.bias, LAYER_NORM_EPS)?, Some(context), &x, None)?;
    let p = &blk.ff_proj;
    let h = {
        let n = layer_norm(ctx, &x, &blk.norm3.weight, &blk.norm3.bias, LAYER_NORM_EPS)?;
        geglu(ctx, &matmul(ctx, &n, &p.weight_t, GemmOpts { bias: p.bias.as_ref(), ..Default::default() })?)?
    };
    let o = &blk.ff_out;
    matmul(ctx, &h, &o.weight_t, GemmOpts { bias: o.bias.as_ref(), residual: Some(&x), ..Default::default() })
}

/// `residual + to_out(attention(q(x), k(ctx), v(ctx)))`, token-major `[B, L, C]`. `probe`
/// receives a self-attention's fused q|k|v.
pub(crate) fn attend(ctx: &Context, a: &Attention, x: &Tensor, context: Option<CrossContext>, residual: &Tensor, probe: Option<&mut Option<Tensor>>) -> Result<Tensor> {
    let c = x.dim(2);
    let head_dim = c / a.heads;
    let scale = (head_dim as f32).powf(-0.5);
    let out = match (&a.kv_weight_t, context) {
        (Some(kv_w), Some(context)) => {
            let q = matmul(ctx, x, &a.q_weight_t, GemmOpts::default())?;
            let kv = matmul(ctx, context.k, kv_w, GemmOpts::default())?;
            if std::ptr::eq(context.k, context.v) {
                attention_strided(ctx, AttnInput::whole(&q), AttnInput::cols(&kv, 0), AttnInput::cols(&kv, c), a.heads, head_dim, scale, false)?
            } else {
                // Hypernetworks: v's own context through the same fused weight (its k half unused).
                let kv2 = matmul(ctx, context.v, kv_w, GemmOpts::default())?;
                attention_strided(ctx, AttnInput::whole(&q), AttnInput::cols(&kv, 0), AttnInput::cols(&kv2, c), a.heads, head_dim, scale, false)?
            }
        }
        _ => {
            let qkv = matmul(ctx, x, &a.q_weight_t, GemmOpts::default())?;
            if let Some(p) = probe {
                *p = Some(qkv.clone());
            }
            attention_qkv(ctx, &qkv, a.heads, scale, false)?
        }
    };
    matmul(ctx, &out, &a.to_out.weight_t, GemmOpts { bias: a.to_out.bias.as_ref(), residual: Some(residual), ..Default::default() })
}
