//! diffusers' `ControlNetModel` (SD 1.x/2.x and SDXL ControlNets), on the UNet's own block code.
//!
//! A ControlNet is a copy of the UNet's encoder half (`time_embedding`, `conv_in`, `down_blocks`,
//! `mid_block`: built and run by the functions in [`crate::models::unet`]) plus
//!
//! * `controlnet_cond_embedding` (ControlNetConditioningEmbedding): the control image
//!   `[B, 3, 8h, 8w]` in [0, 1] through `conv_in`, `blocks` (pairs of 3x3 convs, the second with
//!   stride 2) and `conv_out`, SiLU after every conv but the last; added to `conv_in(sample)`;
//! * one 1x1 "zero convolution" per UNet skip connection (`controlnet_down_blocks.N`) and one on
//!   the mid block output (`controlnet_mid_block`).
//!
//! The outputs, scaled by the conditioning scale, are what diffusers' UNet takes as
//! `down_block_additional_residuals` / `mid_block_additional_residual`
//! ([`UNet2DConditionModel::forward_controlled`](crate::models::unet::UNet2DConditionModel::forward_controlled)).
//! An SDXL ControlNet (`addition_embed_type: "text_time"`) also has the UNet's `add_embedding` and
//! takes the same `text_embeds` / `time_ids` ([`AddedCond`]) as the SDXL UNet it drives.
//! `guess_mode` and `global_pool_conditions` (shuffle-style ControlNets) are not implemented.

use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::models::unet::{self, AddedCond, Conv, DownBlock, Linear, Loader, MidBlock, UNetConfig};
use crate::ops::elementwise::{scale, silu};
use crate::weights::{Component, WeightsError};
use serde_json::Value;

/// ControlNet hyper-parameters: the UNet-shaped part and the hint encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct ControlNetConfig {
    /// The encoder half's config (UNet names; `up_block_types` mirror the down blocks and
    /// `out_channels` = `in_channels`, unused).
    pub unet: UNetConfig,
    /// `conditioning_channels` (3: an RGB hint)
    pub conditioning_channels: usize,
    /// `conditioning_embedding_out_channels` (SD: 16, 32, 96, 256; each level after the first
    /// halves the resolution, so 4 entries map the image onto the 8x smaller latent)
    pub conditioning_embedding_out_channels: Vec<usize>,
    /// `controlnet_conditioning_channel_order == "bgr"`
    pub bgr: bool,
}

impl ControlNetConfig {
    /// From a diffusers ControlNet `config.json`.
    pub fn from_json(v: &Value) -> std::result::Result<ControlNetConfig, String> {
        let mut u = v.clone();
        let obj = u.as_object_mut().ok_or("config is not a JSON object")?;
        // The shared parser wants a whole UNet: give it the mirror-image up blocks.
        let ups: Vec<Value> = obj
            .get("down_block_types")
            .and_then(Value::as_array)
            .ok_or("no 'down_block_types' list")?
            .iter()
            .rev()
            .map(|t| Value::String(t.as_str().unwrap_or("").replace("Down", "Up")))
            .collect();
        obj.insert("up_block_types".into(), Value::Array(ups));
        let in_ch = obj.get("in_channels").cloned().unwrap_or(Value::from(4));
        obj.insert("out_channels".into(), in_ch);
        let unet = UNetConfig::from_json(&u)?;
        if v.get("global_pool_conditions").and_then(Value::as_bool).unwrap_or(false) {
            return Err("global_pool_conditions (shuffle-style ControlNets) is not supported".into());
        }
        let bgr = match v.get("controlnet_conditioning_channel_order").and_then(Value::as_str).unwrap_or("rgb") {
            "rgb" => false,
            "bgr" => true,
            other => return Err(format!("unknown controlnet_conditioning_channel_order '{other}'")),
        };
        let conditioning_embedding_out_channels = match v.get("conditioning_embedding_out_channels") {
            None | Some(Value::Null) => vec![16, 32, 96, 256],
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_u64().map(|x| x as usize))
                .collect::<Option<Vec<_>>>()
                .filter(|l| !l.is_empty())
                .ok_or("bad 'conditioning_embedding_out_channels'")?,
            Some(other) => return Err(format!("'conditioning_embedding_out_channels' = {other} is not a list")),
        };
        let conditioning_channels = v.get("conditioning_channels").and_then(Value::as_u64).unwrap_or(3) as usize;
        Ok(ControlNetConfig { unet, conditioning_channels, conditioning_embedding_out_channels, bgr })
    }

    /// The component's `config.json`, else inferred from the tensors (A1111 single files carry
    /// none). Attention heads and GroupNorm settings are not stored in the weights: they are taken
    /// from `heads_from` (the UNet the ControlNet will drive, which must have the same ones) when
    /// given, else the LDM defaults of [`UNetConfig::infer`].
    pub fn for_component(c: &Component, heads_from: Option<&UNetConfig>) -> std::result::Result<ControlNetConfig, WeightsError> {
        let path = c.path().to_string();
        if let Some(cfg) = &c.config {
            return ControlNetConfig::from_json(cfg).map_err(|detail| WeightsError::Config { path, detail });
        }
        let mut unet = UNetConfig::infer_with_heads(c, heads_from.map(|u| u.heads.as_slice()))?;
        if let Some(u) = heads_from {
            // What the weights do not store (heads, GroupNorm groups and eps, time projection
            // flags) from the UNet, when the stored structure is the same.
            if u.block_out_channels == unet.block_out_channels && u.layers_per_block == unet.layers_per_block {
                unet.heads = u.heads.clone();
                unet.upcast_attention = u.upcast_attention;
                unet.norm_num_groups = u.norm_num_groups;
                unet.norm_eps = u.norm_eps;
                unet.flip_sin_to_cos = u.flip_sin_to_cos;
                unet.freq_shift = u.freq_shift;
            }
            // The time ids' embedding width is not stored either (only the sum with the pooled
            // width): the UNet's when the sums agree, else SDXL's 256 from `infer`.
            if let (Some((_, a)), Some((t, b))) = (unet.text_time, u.text_time) {
                if a == b {
                    unet.text_time = Some((t, b));
                }
            }
        }
        let shape = |name: &str| c.shape(name);
        let conv_in = shape("controlnet_cond_embedding.conv_in.weight").ok_or_else(|| WeightsError::Missing {
            path: path.clone(),
            name: "controlnet_cond_embedding.conv_in.weight".into(),
            detail: " (needed to infer the ControlNet's hint encoder)".into(),
        })?;
        let short = |name: &str, got: Vec<usize>, n: usize| WeightsError::Shape { path: path.clone(), name: name.into(), got, want: format!("at least {n} dimensions") };
        if conv_in.len() < 2 {
            return Err(short("controlnet_cond_embedding.conv_in.weight", conv_in, 2));
        }
        let mut chans = vec![conv_in[0]];
        let mut i = 1;
        while let Some(s) = shape(&format!("controlnet_cond_embedding.blocks.{i}.weight")) {
            let Some(&c0) = s.first() else { return Err(short(&format!("controlnet_cond_embedding.blocks.{i}.weight"), s, 1)) };
            chans.push(c0);
            i += 2;
        }
        Ok(ControlNetConfig { unet, conditioning_channels: conv_in[1], conditioning_embedding_out_channels: chans, bgr: false })
    }

    /// Error unless this ControlNet fits `unet` (same widths, depths, block types, context width
    /// and time embedding), naming both values of what differs.
    pub fn check_matches(&self, unet: &UNetConfig, name: &str) -> Result<()> {
        let c = &self.unet;
        let mut diffs = Vec::new();
        let mut cmp = |what: &str, a: String, b: String| {
            if a != b {
                diffs.push(format!("{what} {a} (ControlNet) vs {b} (UNet)"));
            }
        };
        cmp("cross_attention_dim", c.cross_attention_dim.to_string(), unet.cross_attention_dim.to_string());
        cmp("block_out_channels", format!("{:?}", c.block_out_channels), format!("{:?}", unet.block_out_channels));
        cmp("layers_per_block", c.layers_per_block.to_string(), unet.layers_per_block.to_string());
        cmp("down_block_types", format!("{:?}", c.down_block_types), format!("{:?}", unet.down_block_types));
        cmp("in_channels", c.in_channels.to_string(), unet.in_channels.to_string());
        cmp("time_embedding_dim", c.time_embed_dim.to_string(), unet.time_embed_dim.to_string());
        let added = |t: Option<(usize, usize)>| match t {
            Some((time, input)) => format!("text_time (addition_time_embed_dim {time}, projection_class_embeddings_input_dim {input})"),
            None => "none".into(),
        };
        cmp("addition_embed_type", added(c.text_time), added(unet.text_time));
        if diffs.is_empty() {
            return Ok(());
        }
        let family = |d: usize| match d {
            768 => " (SD 1.x)",
            1024 => " (SD 2.x)",
            2048 => " (SDXL)",
            _ => "",
        };
        Err(Error::Unsupported(format!(
            "ControlNet {name} is for another model architecture{}: {}; use a ControlNet trained for this checkpoint{}",
            family(c.cross_attention_dim),
            diffs.join(", "),
            family(unet.cross_attention_dim)
        )))
    }
}

/// ControlNetConditioningEmbedding: the hint image to the latent grid.
pub struct ControlNetConditioningEmbedding {
    pub conv_in: Conv,
    pub blocks: Vec<Conv>,
    pub conv_out: Conv,
}

/// The ControlNet's outputs, already multiplied by the conditioning scale: one residual per UNet
/// skip connection (diffusers' order) and one for the mid block.
pub struct ControlNetOutput {
    pub down: Vec<Tensor>,
    pub mid: Tensor,
}

pub struct ControlNetModel {
    pub config: ControlNetConfig,
    pub dtype: DType,
    pub time_embedding_linear_1: Linear,
    pub time_embedding_linear_2: Linear,
    /// SDXL's `add_embedding.linear_1/2` (`config.unet.text_time`).
    pub add_embedding: Option<(Linear, Linear)>,
    pub conv_in: Conv,
    pub controlnet_cond_embedding: ControlNetConditioningEmbedding,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlock,
    /// The zero convolutions on the skip connections (1x1).
    pub controlnet_down_blocks: Vec<Conv>,
    pub controlnet_mid_block: Conv,
}

impl ControlNetModel {
    /// Load with the component's config ([`ControlNetConfig::for_component`]).
    pub fn load(ctx: &Context, c: &Component, dtype: DType) -> Result<ControlNetModel> {
        Self::load_with(ctx, c, ControlNetConfig::for_component(c, None)?, dtype)
    }

    /// Load with an explicit config; every tensor's shape is checked against it.
    pub fn load_with(ctx: &Context, c: &Component, config: ControlNetConfig, dtype: DType) -> Result<ControlNetModel> {
        let ld = Loader { ctx, c, dtype };
        let cfg = &config.unet;
        let ch = &cfg.block_out_channels;
        let (c0, temb, k) = (ch[0], cfg.time_embed_dim, cfg.conv_in_kernel);
        if k % 2 == 0 || cfg.layers_per_block == 0 {
            return Err(Error::Unsupported(format!("ControlNet conv_in kernel {k} / layers_per_block {}", cfg.layers_per_block)));
        }
        let e = &config.conditioning_embedding_out_channels;
        let p = "controlnet_cond_embedding";
        let mut blocks = Vec::new();
        for i in 0..e.len() - 1 {
            blocks.push(ld.conv(&format!("{p}.blocks.{}", 2 * i), e[i], e[i], 3, 1, 1)?);
            blocks.push(ld.conv(&format!("{p}.blocks.{}", 2 * i + 1), e[i + 1], e[i], 3, 2, 1)?);
        }
        let controlnet_cond_embedding = ControlNetConditioningEmbedding {
            conv_in: ld.conv(&format!("{p}.conv_in"), e[0], config.conditioning_channels, 3, 1, 1)?,
            blocks,
            conv_out: ld.conv(&format!("{p}.conv_out"), c0, e[e.len() - 1], 3, 1, 1)?,
        };
        // One zero conv per skip connection: conv_in, every resnet, every downsampler.
        let mut skip_channels = vec![c0];
        for (i, &w) in ch.iter().enumerate() {
            skip_channels.extend(std::iter::repeat_n(w, cfg.layers_per_block));
            if i + 1 < ch.len() {
                skip_channels.push(w);
            }
        }
        let controlnet_down_blocks = skip_channels
            .iter()
            .enumerate()
            .map(|(n, &w)| ld.conv(&format!("controlnet_down_blocks.{n}"), w, w, 1, 1, 0))
            .collect::<Result<Vec<_>>>()?;
        let cl = ch[ch.len() - 1];
        Ok(ControlNetModel {
            time_embedding_linear_1: ld.linear("time_embedding.linear_1", temb, c0, true)?,
            time_embedding_linear_2: ld.linear("time_embedding.linear_2", temb, temb, true)?,
            add_embedding: unet::load_add_embedding(&ld, cfg)?,
            conv_in: ld.conv("conv_in", c0, cfg.in_channels, k, 1, k / 2)?,
            controlnet_cond_embedding,
            down_blocks: unet::load_down_blocks(&ld, cfg)?,
            mid_block: unet::load_mid_block(&ld, cfg)?,
            controlnet_down_blocks,
            controlnet_mid_block: ld.conv("controlnet_mid_block", cl, cl, 1, 1, 0)?,
            config,
            dtype,
        })
    }

    /// The hint tensor `[batch, C, H, W]` in [0, 1] from RGB8 pixels (diffusers'
    /// `VaeImageProcessor(do_normalize=False)`), in the model's channel order, repeated `batch`
    /// times (the CFG batch).
    pub fn prepare_cond(&self, ctx: &Context, rgb: &[u8], width: usize, height: usize, batch: usize) -> Result<Tensor> {
        let c = self.config.conditioning_channels;
        if c != 3 {
            return Err(Error::Unsupported(format!("ControlNets with {c} conditioning channels (only RGB hints are implemented)")));
        }
        if rgb.len() != width * height * 3 {
            return Err(Error::Shape { op: "controlnet", detail: format!("{} bytes for a {width}x{height} RGB image", rgb.len()) });
        }
        let hw = width * height;
        let mut one = vec![0f32; 3 * hw];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for ch in 0..3 {
                let src = if self.config.bgr { 2 - ch } else { ch };
                one[ch * hw + i] = px[src] as f32 / 255.0;
            }
        }
        let data: Vec<f32> = one.iter().copied().cycle().take(batch * one.len()).collect();
        Tensor::from_f32(ctx, &data, &[batch, 3, height, width], self.dtype)
    }

    /// Residuals for `sample [B, Cin, h, w]` at `timesteps` with `encoder_hidden_states [B, L, D]`
    /// and the hint `controlnet_cond [B, 3, 8h, 8w]` ([`Self::prepare_cond`]), times
    /// `conditioning_scale`. `added`: SDXL's text_embeds / time_ids (required by an SDXL
    /// ControlNet, refused by others).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        ctx: &Context,
        sample: &Tensor,
        timesteps: &[f32],
        encoder_hidden_states: &Tensor,
        added: Option<&AddedCond>,
        controlnet_cond: &Tensor,
        conditioning_scale: f32,
    ) -> Result<ControlNetOutput> {
        let hint = self.cond_embedding(ctx, controlnet_cond)?;
        self.forward_embedded(ctx, sample, timesteps, encoder_hidden_states, added, &hint, conditioning_scale)
    }

    /// [`Self::forward`] with the hint already through [`Self::cond_embedding`] (it does not
    /// change between steps: the pipeline embeds it once).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_embedded(
        &self,
        ctx: &Context,
        sample: &Tensor,
        timesteps: &[f32],
        encoder_hidden_states: &Tensor,
        added: Option<&AddedCond>,
        hint: &Tensor,
        conditioning_scale: f32,
    ) -> Result<ControlNetOutput> {
        let cfg = &self.config.unet;
        let ts = unet::check_inputs(cfg, "controlnet", sample, timesteps, encoder_hidden_states)?;
        let aug = unet::added_embedding(ctx, cfg, self.dtype, self.add_embedding.as_ref(), added, sample.dim(0), "controlnet added conditioning")?;
        let (l1, l2) = (&self.time_embedding_linear_1, &self.time_embedding_linear_2);
        let (_, emb_act) = unet::time_embedding(ctx, cfg, self.dtype, l1, l2, &ts, aug.as_ref(), None)?;
        let s = sample.shape();
        if hint.shape() != [s[0], cfg.block_out_channels[0], s[2], s[3]] {
            return Err(Error::Shape {
                op: "controlnet",
                detail: format!(
                    "the control image embeds to {:?}, which does not fit the latent {s:?}: give the image at 8x the latent size",
                    hint.shape()
                ),
            });
        }
        // sample = conv_in(sample) + controlnet_cond_embedding(cond), the sum fused into the conv.
        let x = self.conv_in.forward_residual(ctx, sample, hint)?;
        let mut skips = vec![x.clone()];
        let x = unet::down_blocks_forward(ctx, cfg, &self.down_blocks, x, &emb_act, encoder_hidden_states.into(), None, &mut skips, None)?;
        let x = unet::mid_block_forward(ctx, cfg, &self.mid_block, x, &emb_act, encoder_hidden_states.into(), None, None)?;
        if skips.len() != self.controlnet_down_blocks.len() {
            return Err(Error::Shape { op: "controlnet", detail: format!("{} skips for {} zero convs", skips.len(), self.controlnet_down_blocks.len()) });
        }
        let scaled = |t: Tensor| if conditioning_scale == 1.0 { Ok(t) } else { scale(ctx, &t, conditioning_scale, 0.0) };
        let down = skips
            .iter()
            .zip(&self.controlnet_down_blocks)
            .map(|(s, conv)| scaled(conv.forward(ctx, s)?))
            .collect::<Result<Vec<_>>>()?;
        let mid = scaled(self.controlnet_mid_block.forward(ctx, &x)?)?;
        Ok(ControlNetOutput { down, mid })
    }

    /// `controlnet_cond_embedding`: SiLU after every conv but `conv_out`.
    pub fn cond_embedding(&self, ctx: &Context, cond: &Tensor) -> Result<Tensor> {
        let e = &self.controlnet_cond_embedding;
        let c = self.config.conditioning_channels;
        if cond.shape().len() != 4 || cond.dim(1) != c {
            return Err(Error::Shape { op: "controlnet", detail: format!("control image {:?} must be [B, {c}, H, W]", cond.shape()) });
        }
        let mut h = silu(ctx, &e.conv_in.forward(ctx, cond)?)?;
        for b in &e.blocks {
            h = silu(ctx, &b.forward(ctx, &h)?)?;
        }
        e.conv_out.forward(ctx, &h)
    }
}
