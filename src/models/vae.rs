//! Stable Diffusion's `AutoencoderKL` (diffusers names: `encoder.*`, `decoder.*`, `quant_conv`,
//! `post_quant_conv`), configured from `vae/config.json` (or SD 1.x/2.x defaults inferred from
//! the tensors for single files without a config).
//!
//! * Decoder: `post_quant_conv` (1×1) → `conv_in` → mid block (resnet, attention, resnet) → up
//!   blocks (channels reversed, `layers_per_block + 1` resnets each, nearest-2× upsample + 3×3
//!   conv except the last) → `conv_norm_out` + SiLU → `conv_out`.
//! * Encoder: `conv_in` → down blocks (`layers_per_block` resnets, `Downsample2D` except the
//!   last) → mid block → `conv_norm_out` + SiLU → `conv_out` (2·latent) → `quant_conv` → mean,
//!   logvar (clamped to [-30, 20]), std = exp(logvar / 2).
//! * `ResnetBlock2D` as diffusers without time embedding: GroupNorm+SiLU (fused) → conv1 →
//!   GroupNorm+SiLU → conv2 with the shortcut (1×1 `conv_shortcut` when channels change) added
//!   in the convolution.
//! * `Downsample2D` with `padding = 0` pads right/bottom by one, then a 3×3 stride-2 conv without
//!   padding. Here: the 3×3 weight is embedded at offset (1, 1) in a 4×4 kernel with a zero first
//!   row and column and convolved with stride 2, symmetric padding 1. Output pixel o then reads
//!   input rows 2o-1..2o+2 with the 2o-1 row weighted 0, i.e. exactly rows 2o..2o+2 with row H
//!   zero: the same windows and output size `floor((H-2)/2)+1` as pad (0,1,0,1) + conv.
//! * Mid-block attention (one head, head dim = C): GroupNorm → token-major `[B, HW, C]`
//!   (`transpose_last2`) → `to_q`/`to_k`/`to_v` Linear GEMMs → attention → back to `[B, C, HW]`
//!   → `to_out.0` as a 1×1 convolution with the residual fused. C ≤ [`MAX_HEAD_DIM`] runs the
//!   flash kernel; larger C (real SD: 512) runs [`attention_matmul`]: scores = Q·Kᵀ by GEMM (Kᵀ
//!   made directly by a 1×1 convolution of the normalised NCHW input, so both GEMMs take the
//!   fast row-major path), softmax with the 1/√C scale fused, ·V, chunked over query rows so
//!   that no scores binding exceeds `ctx.max_binding()`.
//! * Big images: every op splits its own work over storage bindings; on top of that
//!   [`Vae::decode`] switches to [`Vae::decode_tiled`] (diffusers' `tiled_decode`: overlapping
//!   latent tiles blended linearly) when the estimated activation memory of a full decode
//!   exceeds [`Tiling::budget_bytes`].

use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::ops::attention::{attention, MAX_HEAD_DIM};
use crate::ops::conv::{conv2d_with, ConvWeight};
use crate::ops::elementwise::scale;
use crate::ops::gemm::{matmul, GemmOpts};
use crate::ops::norm::group_norm;
use crate::ops::resample::{concat_channels, transpose_last2, upsample_nearest2x};
use crate::ops::softmax::softmax;
use crate::weights::{Component, WeightsError};
use serde_json::Value;

/// `AutoencoderKL` hyper-parameters (diffusers config names).
#[derive(Clone, Debug, PartialEq)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f32,
    /// SD3/Flux-style `shift_factor` (absent for SD 1.x/2.x): `z = latents / scaling + shift`.
    pub shift_factor: Option<f32>,
    pub mid_block_add_attention: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    /// Image size the model was trained at (sets diffusers' default tile size).
    pub sample_size: usize,
}

/// Every VAE norm uses eps 1e-6 (diffusers hard-codes it in `Encoder`/`Decoder`).
pub const EPS: f32 = 1e-6;

impl VaeConfig {
    /// SD 1.x / 2.x.
    pub fn sd() -> VaeConfig {
        VaeConfig {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            mid_block_add_attention: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            sample_size: 512,
        }
    }

    pub fn from_json(v: &Value) -> std::result::Result<VaeConfig, String> {
        let d = VaeConfig::sd();
        let num = |k: &str, default: usize| v.get(k).and_then(Value::as_u64).map(|x| x as usize).unwrap_or(default);
        let flag = |k: &str, default: bool| v.get(k).and_then(Value::as_bool).unwrap_or(default);
        let block_out_channels = match v.get("block_out_channels") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_u64().map(|x| x as usize).ok_or_else(|| "block_out_channels must be integers".to_string()))
                .collect::<std::result::Result<Vec<_>, _>>()?,
            _ => return Err("no 'block_out_channels'".into()),
        };
        if block_out_channels.is_empty() {
            return Err("empty block_out_channels".into());
        }
        if let Some(act) = v.get("act_fn").and_then(Value::as_str) {
            if act != "silu" {
                return Err(format!("unsupported act_fn '{act}'"));
            }
        }
        for key in ["down_block_types", "up_block_types"] {
            if let Some(Value::Array(a)) = v.get(key) {
                let want = if key == "down_block_types" { "DownEncoderBlock2D" } else { "UpDecoderBlock2D" };
                if let Some(bad) = a.iter().filter_map(Value::as_str).find(|s| *s != want) {
                    return Err(format!("unsupported {key} entry '{bad}'"));
                }
            }
        }
        let sample_size = match v.get("sample_size") {
            Some(Value::Array(a)) => a.first().and_then(Value::as_u64).map(|x| x as usize).unwrap_or(d.sample_size),
            Some(x) => x.as_u64().map(|x| x as usize).unwrap_or(d.sample_size),
            None => d.sample_size,
        };
        Ok(VaeConfig {
            in_channels: num("in_channels", 3),
            out_channels: num("out_channels", 3),
            latent_channels: num("latent_channels", 4),
            block_out_channels,
            layers_per_block: num("layers_per_block", 1),
            norm_num_groups: num("norm_num_groups", 32),
            scaling_factor: v.get("scaling_factor").and_then(Value::as_f64).unwrap_or(0.18215) as f32,
            shift_factor: v.get("shift_factor").and_then(Value::as_f64).map(|x| x as f32),
            mid_block_add_attention: flag("mid_block_add_attention", true),
            use_quant_conv: flag("use_quant_conv", true),
            use_post_quant_conv: flag("use_post_quant_conv", true),
            sample_size,
        })
    }

    /// The component's `config.json`, or (single files without one) SD 1.x/2.x defaults with the
    /// channels, levels and layers read from the tensors.
    pub fn for_component(c: &Component) -> std::result::Result<VaeConfig, WeightsError> {
        let path = c.path().to_string();
        if let Some(cfg) = &c.config {
            return VaeConfig::from_json(cfg).map_err(|detail| WeightsError::Config { path, detail });
        }
        let mut cfg = VaeConfig::sd();
        let mut chans = Vec::new();
        // A shape with fewer dimensions than read here is an error naming the tensor, not a panic.
        let dims = |name: &str, n: usize| -> std::result::Result<Option<Vec<usize>>, WeightsError> {
            match c.shape(name) {
                Some(s) if s.len() < n => {
                    Err(WeightsError::Shape { path: path.clone(), name: name.into(), got: s, want: format!("at least {n} dimensions") })
                }
                s => Ok(s),
            }
        };
        while let Some(s) = dims(&format!("decoder.up_blocks.{}.resnets.0.conv2.weight", chans.len()), 1)? {
            chans.push(s[0]);
        }
        if chans.is_empty() {
            return Err(WeightsError::Missing {
                path: path.clone(),
                name: "decoder.up_blocks.0.resnets.0.conv2.weight".into(),
                detail: " (needed to infer the VAE)".into(),
            });
        }
        chans.reverse();
        cfg.block_out_channels = chans;
        let mut layers = 0usize;
        while c.contains(&format!("decoder.up_blocks.0.resnets.{layers}.conv1.weight")) {
            layers += 1;
        }
        cfg.layers_per_block = layers.saturating_sub(1).max(1);
        if let Some(s) = dims("decoder.conv_in.weight", 2)? {
            cfg.latent_channels = s[1];
        }
        if let Some(s) = dims("decoder.conv_out.weight", 1)? {
            cfg.out_channels = s[0];
        }
        if let Some(s) = dims("encoder.conv_in.weight", 2)? {
            cfg.in_channels = s[1];
        }
        // SDXL's VAE (same layout, retrained) scales its latents by 0.13025.
        if c.file_contains("conditioner.embedders.1.model.ln_final.weight") {
            cfg.scaling_factor = 0.13025;
        }
        cfg.use_quant_conv = c.contains("quant_conv.weight");
        cfg.use_post_quant_conv = c.contains("post_quant_conv.weight");
        cfg.mid_block_add_attention = c.contains("decoder.mid_block.attentions.0.to_q.weight");
        Ok(cfg)
    }

    /// Image pixels per latent pixel along each side (8 for SD).
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

#[derive(Clone)]
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub groups: usize,
}

impl GroupNorm {
    fn forward(&self, ctx: &Context, x: &Tensor, silu: bool) -> Result<Tensor> {
        group_norm(ctx, x, self.groups, &self.weight, &self.bias, EPS, silu)
    }
}

/// A convolution, weight `[Cout, Cin, k, k]` (with its packed forms, `ConvWeight`).
#[derive(Clone)]
pub struct Conv2d {
    pub weight: ConvWeight,
    pub bias: Tensor,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    fn forward(&self, ctx: &Context, x: &Tensor) -> Result<Tensor> {
        conv2d_with(ctx, x, &self.weight, Some(&self.bias), self.stride, self.padding, None, None)
    }
    fn forward_residual(&self, ctx: &Context, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        conv2d_with(ctx, x, &self.weight, Some(&self.bias), self.stride, self.padding, Some(residual), None)
    }
}

/// A `Linear` layer, weight pre-transposed to `[in, out]`.
#[derive(Clone)]
pub struct Linear {
    pub weight_t: Tensor,
    pub bias: Tensor,
}

impl Linear {
    fn forward(&self, ctx: &Context, x: &Tensor) -> Result<Tensor> {
        matmul(ctx, x, &self.weight_t, GemmOpts { bias: Some(&self.bias), ..Default::default() })
    }
}

#[derive(Clone)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
}

/// The mid block's single-head self-attention (`mid_block.attentions.0`).
#[derive(Clone)]
pub struct Attention {
    pub group_norm: GroupNorm,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    /// `to_k` as a 1×1 convolution (`[C, C, 1, 1]`): Kᵀ for the matmul path.
    pub to_k_conv: Conv2d,
    /// `to_out.0` as a 1×1 convolution, so the result lands in NCHW with the residual fused.
    pub to_out: Conv2d,
}

#[derive(Clone)]
pub struct MidBlock {
    /// Two resnets around the attention.
    pub resnets: Vec<ResnetBlock2D>,
    pub attention: Option<Attention>,
}

#[derive(Clone)]
pub struct DownEncoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    /// `downsamplers.0.conv`, stored as the 4×4 stride-2 kernel described in the module docs.
    pub downsampler: Option<Conv2d>,
}

#[derive(Clone)]
pub struct UpDecoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsampler: Option<Conv2d>,
}

#[derive(Clone)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownEncoderBlock2D>,
    pub mid_block: MidBlock,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

#[derive(Clone)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpDecoderBlock2D>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

/// Which attention implementation the mid blocks use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttentionMode {
    /// Flash kernel when C ≤ [`MAX_HEAD_DIM`], else the matmul path.
    #[default]
    Auto,
    /// Always the GEMM + softmax path (tests).
    Matmul,
}

/// Automatic tiled decoding (diffusers' `tiled_decode`).
#[derive(Clone, Debug, PartialEq)]
pub struct Tiling {
    /// A full decode whose estimated activation memory ([`Vae::decode_bytes`]) exceeds this is
    /// decoded in tiles. `u64::MAX` disables automatic tiling.
    pub budget_bytes: u64,
    /// Tile size in latent pixels (diffusers: `sample_size / scale_factor`, 64 for SD 1.x).
    pub tile_latent: usize,
    /// Fraction of a tile overlapping its neighbours (diffusers: 0.25).
    pub overlap: f32,
}

/// The bits of the encoder's last projection producing mean and logvar, split in two so both
/// come out contiguous for any batch.
#[derive(Clone)]
struct MomentsConv {
    mean: Conv2d,
    logvar: Conv2d,
}

/// The diffusers class name.
pub type AutoencoderKL = Vae;

#[derive(Clone)]
pub struct Vae {
    pub config: VaeConfig,
    pub dtype: DType,
    /// `None` when loaded with [`Vae::load_decoder`] or when the checkpoint has no encoder.
    pub encoder: Option<Encoder>,
    pub decoder: Decoder,
    pub post_quant_conv: Option<Conv2d>,
    /// `quant_conv` (or, without one, the encoder's `conv_out`) split into mean / logvar halves.
    moments: Option<MomentsConv>,
    pub attention_mode: AttentionMode,
    /// Query rows per scores chunk on the matmul attention path (`None`: as many as one binding
    /// holds). Tests lower it to exercise the chunking.
    pub attention_max_rows: Option<usize>,
    pub tiling: Tiling,
}

/// Intermediate outputs named like diffusers modules (`decoder.mid_block`, ...), recorded when
/// asked for (the goldens' `dbg.decode.*` / `dbg.encode.*`).
pub type Trace = Vec<(String, Tensor)>;

struct Loader<'a> {
    ctx: &'a Context,
    c: &'a Component,
    dtype: DType,
}

impl Loader<'_> {
    fn vec(&self, name: &str, n: usize) -> Result<Tensor> {
        self.c.get(name)?.expect_shape(&[n])?.upload(self.ctx, self.dtype)
    }
    fn norm(&self, p: &str, ch: usize, groups: usize) -> Result<GroupNorm> {
        if ch % groups != 0 {
            return Err(Error::Unsupported(format!("{p}: {ch} channels in {groups} groups")));
        }
        Ok(GroupNorm { weight: self.vec(&format!("{p}.weight"), ch)?, bias: self.vec(&format!("{p}.bias"), ch)?, groups })
    }
    /// A `[out, in]` or `[out, in, 1, 1]` weight as f32 `[out, in]`.
    fn matrix(&self, name: &str, out: usize, inp: usize) -> Result<Vec<f32>> {
        let t = self.c.get(name)?;
        if t.shape != [out, inp] && t.shape != [out, inp, 1, 1] {
            t.expect_shape(&[out, inp])?;
        }
        Ok(t.to_f32()?)
    }
    fn upload(&self, v: &[f32], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_f32(self.ctx, v, shape, self.dtype)
    }
    fn linear(&self, p: &str, out: usize, inp: usize) -> Result<Linear> {
        let w = self.matrix(&format!("{p}.weight"), out, inp)?;
        let mut t = vec![0f32; out * inp];
        for o in 0..out {
            for i in 0..inp {
                t[i * out + o] = w[o * inp + i];
            }
        }
        Ok(Linear { weight_t: self.upload(&t, &[inp, out])?, bias: self.vec(&format!("{p}.bias"), out)? })
    }
    /// A Linear `[out, in]` (or 1×1 conv) as a 1×1 convolution.
    fn conv1x1(&self, p: &str, out: usize, inp: usize) -> Result<Conv2d> {
        let w = self.matrix(&format!("{p}.weight"), out, inp)?;
        Ok(Conv2d { weight: ConvWeight::new(self.upload(&w, &[out, inp, 1, 1])?), bias: self.vec(&format!("{p}.bias"), out)?, stride: 1, padding: 0 })
    }
    fn conv(&self, p: &str, out: usize, inp: usize, k: usize) -> Result<Conv2d> {
        let w = self.c.get(&format!("{p}.weight"))?;
        w.expect_shape(&[out, inp, k, k])?;
        Ok(Conv2d { weight: ConvWeight::new(w.upload(self.ctx, self.dtype)?), bias: self.vec(&format!("{p}.bias"), out)?, stride: 1, padding: k / 2 })
    }
    /// Output channels `[o0, o1)` of a convolution.
    fn conv_rows(&self, p: &str, out: usize, inp: usize, k: usize, o0: usize, o1: usize) -> Result<Conv2d> {
        let w = self.c.get(&format!("{p}.weight"))?;
        if w.shape != [out, inp, k, k] && !(k == 1 && w.shape == [out, inp]) {
            w.expect_shape(&[out, inp, k, k])?;
        }
        let per = inp * k * k;
        let wv = w.range_f32(o0 * per, (o1 - o0) * per)?;
        let b = self.c.get(&format!("{p}.bias"))?;
        b.expect_shape(&[out])?;
        let bv = b.range_f32(o0, o1 - o0)?;
        Ok(Conv2d {
            weight: ConvWeight::new(self.upload(&wv, &[o1 - o0, inp, k, k])?),
            bias: self.upload(&bv, &[o1 - o0])?,
            stride: 1,
            padding: k / 2,
        })
    }
    /// `Downsample2D(padding=0)`: the 3×3 weight placed at (1, 1) of a zero 4×4 kernel, stride 2,
    /// padding 1 (see the module docs).
    fn downsample(&self, p: &str, ch: usize) -> Result<Conv2d> {
        let w = self.c.get(&format!("{p}.weight"))?;
        w.expect_shape(&[ch, ch, 3, 3])?;
        let v = w.to_f32()?;
        let mut w4 = vec![0f32; ch * ch * 16];
        for oc in 0..ch * ch {
            for y in 0..3 {
                for x in 0..3 {
                    w4[oc * 16 + (y + 1) * 4 + (x + 1)] = v[oc * 9 + y * 3 + x];
                }
            }
        }
        Ok(Conv2d { weight: ConvWeight::new(self.upload(&w4, &[ch, ch, 4, 4])?), bias: self.vec(&format!("{p}.bias"), ch)?, stride: 2, padding: 1 })
    }
    fn resnet(&self, p: &str, inp: usize, out: usize, groups: usize) -> Result<ResnetBlock2D> {
        Ok(ResnetBlock2D {
            norm1: self.norm(&format!("{p}.norm1"), inp, groups)?,
            conv1: self.conv(&format!("{p}.conv1"), out, inp, 3)?,
            norm2: self.norm(&format!("{p}.norm2"), out, groups)?,
            conv2: self.conv(&format!("{p}.conv2"), out, out, 3)?,
            conv_shortcut: if inp != out { Some(self.conv1x1(&format!("{p}.conv_shortcut"), out, inp)?) } else { None },
        })
    }
    fn attention(&self, p: &str, ch: usize, groups: usize) -> Result<Attention> {
        Ok(Attention {
            group_norm: self.norm(&format!("{p}.group_norm"), ch, groups)?,
            to_q: self.linear(&format!("{p}.to_q"), ch, ch)?,
            to_k: self.linear(&format!("{p}.to_k"), ch, ch)?,
            to_v: self.linear(&format!("{p}.to_v"), ch, ch)?,
            to_k_conv: self.conv1x1(&format!("{p}.to_k"), ch, ch)?,
            to_out: self.conv1x1(&format!("{p}.to_out.0"), ch, ch)?,
        })
    }
    fn mid(&self, p: &str, ch: usize, cfg: &VaeConfig) -> Result<MidBlock> {
        let g = cfg.norm_num_groups;
        Ok(MidBlock {
            resnets: vec![self.resnet(&format!("{p}.resnets.0"), ch, ch, g)?, self.resnet(&format!("{p}.resnets.1"), ch, ch, g)?],
            attention: if cfg.mid_block_add_attention { Some(self.attention(&format!("{p}.attentions.0"), ch, g)?) } else { None },
        })
    }
}

impl Loader<'_> {
    /// The encoder and its mean/logvar projection.
    fn encoder(&self, cfg: &VaeConfig) -> Result<(Encoder, MomentsConv)> {
        let ld = self;
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let g = cfg.norm_num_groups;
        let lc = cfg.latent_channels;
        let conv_in = ld.conv("encoder.conv_in", ch[0], cfg.in_channels, 3)?;
        let mut down_blocks = Vec::with_capacity(n);
        let mut out_ch = ch[0];
        for i in 0..n {
            let inp = out_ch;
            out_ch = ch[i];
            let p = format!("encoder.down_blocks.{i}");
            let resnets = (0..cfg.layers_per_block)
                .map(|j| ld.resnet(&format!("{p}.resnets.{j}"), if j == 0 { inp } else { out_ch }, out_ch, g))
                .collect::<Result<Vec<_>>>()?;
            let downsampler = if i + 1 < n { Some(ld.downsample(&format!("{p}.downsamplers.0.conv"), out_ch)?) } else { None };
            down_blocks.push(DownEncoderBlock2D { resnets, downsampler });
        }
        let cl = ch[n - 1];
        let mid_block = ld.mid("encoder.mid_block", cl, cfg)?;
        let conv_norm_out = ld.norm("encoder.conv_norm_out", cl, g)?;
        let (conv_out, moments) = if cfg.use_quant_conv {
            let q = MomentsConv {
                mean: ld.conv_rows("quant_conv", 2 * lc, 2 * lc, 1, 0, lc)?,
                logvar: ld.conv_rows("quant_conv", 2 * lc, 2 * lc, 1, lc, 2 * lc)?,
            };
            (ld.conv("encoder.conv_out", 2 * lc, cl, 3)?, q)
        } else {
            // No quant_conv: split the encoder's conv_out itself; `conv_out` is then unused
            // (a 1-channel placeholder keeps the struct simple).
            let q = MomentsConv {
                mean: ld.conv_rows("encoder.conv_out", 2 * lc, cl, 3, 0, lc)?,
                logvar: ld.conv_rows("encoder.conv_out", 2 * lc, cl, 3, lc, 2 * lc)?,
            };
            (ld.conv_rows("encoder.conv_out", 2 * lc, cl, 3, 0, 1)?, q)
        };
        Ok((Encoder { conv_in, down_blocks, mid_block, conv_norm_out, conv_out }, moments))
    }
}

impl Vae {
    /// Encoder (when the checkpoint has one) and decoder, with the component's config.
    pub fn load(ctx: &Context, c: &Component, dtype: DType) -> Result<Vae> {
        let config = VaeConfig::for_component(c)?;
        let with_encoder = c.contains("encoder.conv_in.weight");
        Self::load_with(ctx, c, config, dtype, with_encoder)
    }

    /// The decoder only (what text-to-image needs).
    pub fn load_decoder(ctx: &Context, c: &Component, dtype: DType) -> Result<Vae> {
        let config = VaeConfig::for_component(c)?;
        Self::load_with(ctx, c, config, dtype, false)
    }

    /// A decoder-only VAE (see [`Vae::load_decoder`]) with its encoder added: the decoder's
    /// tensors are shared, only the encoder's are uploaded. What img2img and inpainting need,
    /// loaded when they first need it.
    pub fn with_encoder(&self, ctx: &Context, c: &Component) -> Result<Vae> {
        if !c.contains("encoder.conv_in.weight") {
            return Err(Error::Unsupported(format!("{}: this VAE has no encoder (encoder.conv_in.weight); img2img and inpainting need one", c.path())));
        }
        let ld = Loader { ctx, c, dtype: self.dtype };
        let (e, m) = ld.encoder(&self.config)?;
        Ok(Vae { encoder: Some(e), moments: Some(m), ..self.clone() })
    }

    pub fn load_with(ctx: &Context, c: &Component, config: VaeConfig, dtype: DType, with_encoder: bool) -> Result<Vae> {
        let ld = Loader { ctx, c, dtype };
        let cfg = &config;
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let g = cfg.norm_num_groups;
        let lc = cfg.latent_channels;
        if cfg.layers_per_block == 0 {
            return Err(Error::Unsupported("layers_per_block 0".into()));
        }

        // Decoder.
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let conv_in = ld.conv("decoder.conv_in", rev[0], lc, 3)?;
        let mid_block = ld.mid("decoder.mid_block", rev[0], cfg)?;
        let mut up_blocks = Vec::with_capacity(n);
        let mut out_ch = rev[0];
        for i in 0..n {
            let prev = out_ch;
            out_ch = rev[i];
            let p = format!("decoder.up_blocks.{i}");
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| ld.resnet(&format!("{p}.resnets.{j}"), if j == 0 { prev } else { out_ch }, out_ch, g))
                .collect::<Result<Vec<_>>>()?;
            let upsampler = if i + 1 < n { Some(ld.conv(&format!("{p}.upsamplers.0.conv"), out_ch, out_ch, 3)?) } else { None };
            up_blocks.push(UpDecoderBlock2D { resnets, upsampler });
        }
        let decoder = Decoder {
            conv_in,
            mid_block,
            up_blocks,
            conv_norm_out: ld.norm("decoder.conv_norm_out", ch[0], g)?,
            conv_out: ld.conv("decoder.conv_out", cfg.out_channels, ch[0], 3)?,
        };
        let post_quant_conv = if cfg.use_post_quant_conv { Some(ld.conv1x1("post_quant_conv", lc, lc)?) } else { None };

        let (encoder, moments) = if with_encoder {
            let (e, m) = ld.encoder(cfg)?;
            (Some(e), Some(m))
        } else {
            (None, None)
        };

        let tiling = Tiling { budget_bytes: 4 << 30, tile_latent: (cfg.sample_size / cfg.scale_factor()).max(1), overlap: 0.25 };
        Ok(Vae {
            config,
            dtype,
            encoder,
            decoder,
            post_quant_conv,
            moments,
            attention_mode: AttentionMode::Auto,
            attention_max_rows: None,
            tiling,
        })
    }

    /// Takes `x` by value so it can be dropped as soon as it is used, and drops every
    /// intermediate once used (shadowed ones would live to the end): at 512² f16 the last
    /// stage's first resnet held 512 MiB of activations this way it holds 256.
    fn resnet(&self, ctx: &Context, r: &ResnetBlock2D, x: Tensor) -> Result<Tensor> {
        let (c1, shortcut) = match &r.conv_shortcut {
            Some(c) => {
                let shortcut = c.forward(ctx, &x)?;
                let n = r.norm1.forward(ctx, &x, true)?;
                drop(x);
                (r.conv1.forward(ctx, &n)?, shortcut)
            }
            None => (r.conv1.forward(ctx, &r.norm1.forward(ctx, &x, true)?)?, x),
        };
        let h = r.norm2.forward(ctx, &c1, true)?;
        drop(c1);
        r.conv2.forward_residual(ctx, &h, &shortcut)
    }

    fn attention(&self, ctx: &Context, a: &Attention, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let hw = h * w;
        let hn = a.group_norm.forward(ctx, x, false)?;
        let tokens = transpose_last2(ctx, &hn.reshape(&[b, c, hw])?)?;
        let q = a.to_q.forward(ctx, &tokens)?;
        let v = a.to_v.forward(ctx, &tokens)?;
        let sc = (c as f32).powf(-0.5);
        let o = if self.attention_mode == AttentionMode::Auto && c <= MAX_HEAD_DIM {
            let k = a.to_k.forward(ctx, &tokens)?;
            attention(ctx, &q, &k, &v, 1, sc, false)?
        } else {
            let kt = a.to_k_conv.forward(ctx, &hn)?.reshape(&[b, c, hw])?;
            attention_matmul(ctx, &q, &kt, &v, sc, self.attention_max_rows)?
        };
        let o = transpose_last2(ctx, &o)?.reshape(&[b, c, h, w])?;
        a.to_out.forward_residual(ctx, &o, x)
    }

    fn mid(&self, ctx: &Context, m: &MidBlock, x: &Tensor) -> Result<Tensor> {
        let mut x = self.resnet(ctx, &m.resnets[0], x.clone())?;
        if let Some(a) = &m.attention {
            x = self.attention(ctx, a, &x)?;
        }
        self.resnet(ctx, &m.resnets[1], x)
    }

    /// `vae.decode(z)`: z `[B, latent, h, w]` (latents already divided by the scaling factor) →
    /// image `[B, 3, 8h, 8w]` in about [-1, 1]. Decodes in tiles ([`Self::decode_tiled`]) when the
    /// estimated memory of a full decode exceeds `self.tiling.budget_bytes`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode(&self, ctx: &Context, z: &Tensor) -> Result<Tensor> {
        pollster::block_on(self.decode_async(ctx, z))
    }

    /// [`Self::decode`] for async callers (the web: tiled decoding reads tiles back).
    pub async fn decode_async(&self, ctx: &Context, z: &Tensor) -> Result<Tensor> {
        self.check_latents(z)?;
        if self.needs_tiling(z) {
            let t = self.tiling.clone();
            return self.decode_tiled_async(ctx, z, t.tile_latent, t.overlap).await;
        }
        self.decode_traced(ctx, z, None)
    }

    /// Whether [`Self::decode`] would decode `z` in tiles (see [`Tiling`]).
    pub fn needs_tiling(&self, z: &Tensor) -> bool {
        let (b, h, w) = (z.dim(0), z.dim(2), z.dim(3));
        self.decode_bytes(b, h, w) > self.tiling.budget_bytes && (h > self.tiling.tile_latent || w > self.tiling.tile_latent)
    }

    fn check_latents(&self, z: &Tensor) -> Result<()> {
        if z.shape().len() != 4 || z.dim(1) != self.config.latent_channels {
            return Err(Error::Shape {
                op: "vae decode",
                detail: format!("latents {:?} must be [B, {}, h, w]", z.shape(), self.config.latent_channels),
            });
        }
        if z.dtype() != self.dtype {
            return Err(Error::Shape { op: "vae decode", detail: format!("latents are {} but the model is {}", z.dtype().name(), self.dtype.name()) });
        }
        Ok(())
    }

    /// A full (untiled) decode, recording the `dbg.decode.*` intermediates into `trace`.
    pub fn decode_traced(&self, ctx: &Context, z: &Tensor, mut trace: Option<&mut Trace>) -> Result<Tensor> {
        self.check_latents(z)?;
        let tracing = trace.is_some();
        let mut rec = |name: &str, t: &Tensor| {
            if let Some(tr) = trace.as_deref_mut() {
                tr.push((name.to_string(), t.clone()));
            }
        };
        let d = &self.decoder;
        let mut x = match &self.post_quant_conv {
            Some(c) => c.forward(ctx, z)?,
            None => z.clone(),
        };
        rec("post_quant_conv", &x);
        x = d.conv_in.forward(ctx, &x)?;
        rec("decoder.conv_in", &x);
        x = self.mid(ctx, &d.mid_block, &x)?;
        rec("decoder.mid_block", &x);
        for (i, blk) in d.up_blocks.iter().enumerate() {
            for r in &blk.resnets {
                x = self.resnet(ctx, r, x)?;
            }
            if let Some(up) = &blk.upsampler {
                x = up.forward(ctx, &upsample_nearest2x(ctx, &x)?)?;
            }
            rec(&format!("decoder.up_blocks.{i}"), &x);
        }
        if tracing {
            rec("decoder.conv_norm_out", &d.conv_norm_out.forward(ctx, &x, false)?);
        }
        let x = d.conv_norm_out.forward(ctx, &x, true)?;
        d.conv_out.forward(ctx, &x)
    }

    /// Rough peak bytes of a full decode of `[b, latent, h, w]`: three live activations of the
    /// largest stage (input, the resnet's intermediate, output) plus one attention scores chunk.
    pub fn decode_bytes(&self, b: usize, h: usize, w: usize) -> u64 {
        let rev: Vec<usize> = self.config.block_out_channels.iter().rev().copied().collect();
        let mut peak = 0u64;
        let mut prev = rev[0];
        for (i, &c) in rev.iter().enumerate() {
            let px = (h << i) as u64 * (w << i) as u64;
            let px_up = if i + 1 < rev.len() { 4 * px } else { px };
            peak = peak.max(prev.max(c) as u64 * px).max(c as u64 * px_up);
            prev = c;
        }
        let es = self.dtype.size() as u64;
        let hw = (h * w) as u64;
        3 * peak * b as u64 * es + (hw * hw * es).min(1 << 30)
    }

    /// diffusers' `tiled_decode`: latent tiles of `tile_latent` pixels every
    /// `int(tile_latent * (1 - overlap))`, each decoded alone; each tile's first
    /// `int(tile_sample * overlap)` rows/columns are blended linearly with the tile above/left
    /// (in diffusers' order, blending into already-blended neighbours), then cropped to
    /// `tile_sample - blend` and stitched. The blend runs on the host (the image is small next
    /// to the decoder's activations); the result is uploaded as one tensor.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode_tiled(&self, ctx: &Context, z: &Tensor, tile_latent: usize, overlap: f32) -> Result<Tensor> {
        pollster::block_on(self.decode_tiled_async(ctx, z, tile_latent, overlap))
    }

    /// [`Self::decode_tiled`] for async callers.
    pub async fn decode_tiled_async(&self, ctx: &Context, z: &Tensor, tile_latent: usize, overlap: f32) -> Result<Tensor> {
        self.check_latents(z)?;
        let (b, lc, h, w) = (z.dim(0), z.dim(1), z.dim(2), z.dim(3));
        if tile_latent == 0 || !(0.0..1.0).contains(&overlap) {
            return Err(Error::Unsupported(format!("tiles of {tile_latent} latent pixels with overlap {overlap}")));
        }
        let sf = self.config.scale_factor();
        let tile_sample = tile_latent * sf;
        let step = ((tile_latent as f64 * (1.0 - overlap as f64)) as usize).max(1);
        let blend = (tile_sample as f64 * overlap as f64) as usize;
        let row_limit = tile_sample - blend;
        let zv = z.to_f32(ctx).await?;
        let oc = self.config.out_channels;
        let mut rows: Vec<Vec<HostTile>> = Vec::new();
        for i in (0..h).step_by(step) {
            let mut row = Vec::new();
            for j in (0..w).step_by(step) {
                let (th, tw) = (tile_latent.min(h - i), tile_latent.min(w - j));
                let mut t = Vec::with_capacity(b * lc * th * tw);
                for bc in 0..b * lc {
                    for y in 0..th {
                        let s = bc * h * w + (i + y) * w + j;
                        t.extend_from_slice(&zv[s..s + tw]);
                    }
                }
                let zt = Tensor::from_f32(ctx, &t, &[b, lc, th, tw], self.dtype)?;
                let dec = self.decode_traced(ctx, &zt, None)?;
                let data = dec.to_f32(ctx).await?;
                row.push(HostTile { data, bc: b * oc, h: th * sf, w: tw * sf });
            }
            rows.push(row);
        }
        for i in 0..rows.len() {
            for j in 0..rows[i].len() {
                if i > 0 {
                    let a = rows[i - 1][j].clone();
                    blend_v(&a, &mut rows[i][j], blend);
                }
                if j > 0 {
                    let a = rows[i][j - 1].clone();
                    blend_h(&a, &mut rows[i][j], blend);
                }
            }
        }
        let heights: Vec<usize> = rows.iter().map(|r| r[0].h.min(row_limit)).collect();
        let widths: Vec<usize> = rows[0].iter().map(|t| t.w.min(row_limit)).collect();
        let (oh, ow) = (heights.iter().sum::<usize>(), widths.iter().sum::<usize>());
        let mut out = vec![0f32; b * oc * oh * ow];
        let mut y0 = 0;
        for (i, row) in rows.iter().enumerate() {
            let mut x0 = 0;
            for (j, t) in row.iter().enumerate() {
                for bc in 0..b * oc {
                    for y in 0..heights[i] {
                        let src = bc * t.h * t.w + y * t.w;
                        let dst = bc * oh * ow + (y0 + y) * ow + x0;
                        out[dst..dst + widths[j]].copy_from_slice(&t.data[src..src + widths[j]]);
                    }
                }
                x0 += widths[j];
            }
            y0 += heights[i];
        }
        Tensor::from_f32(ctx, &out, &[b, oc, oh, ow], self.dtype)
    }

    /// `latents [B, latent, h, w]` as the sampler leaves them → RGB bytes `[B, 8h, 8w, 3]`
    /// (row-major, B images back to back), as diffusers' pipeline + `VaeImageProcessor`:
    /// `z = latents / scaling_factor (+ shift)`, decode, `round(clamp(x/2 + 0.5, 0, 1) * 255)`.
    /// Latents in another dtype than the model's are converted first.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn latents_to_image_u8(&self, ctx: &Context, latents: &Tensor) -> Result<Vec<u8>> {
        pollster::block_on(self.latents_to_image_u8_async(ctx, latents))
    }

    /// [`Self::latents_to_image_u8`] for async callers.
    pub async fn latents_to_image_u8_async(&self, ctx: &Context, latents: &Tensor) -> Result<Vec<u8>> {
        let converted;
        let latents = if latents.dtype() != self.dtype {
            converted = Tensor::from_f32(ctx, &latents.to_f32(ctx).await?, latents.shape(), self.dtype)?;
            &converted
        } else {
            latents
        };
        let img = self.latents_to_image_async(ctx, latents).await?;
        let v = img.to_f32(ctx).await?;
        Ok(image_to_u8(&v, img.dim(0), img.dim(1), img.dim(2), img.dim(3)))
    }

    /// Latents (scaled as the UNet sees them, in this VAE's dtype) → image `[B, 3, H, W]` in
    /// about [-1, 1], on the GPU (what the pipeline's NaN guard checks before reading back).
    pub async fn latents_to_image_async(&self, ctx: &Context, latents: &Tensor) -> Result<Tensor> {
        let z = scale(ctx, latents, 1.0 / self.config.scaling_factor, self.config.shift_factor.unwrap_or(0.0))?;
        self.decode_async(ctx, &z).await
    }

    /// `vae.encode(image).latent_dist`: image `[B, 3, H, W]` in [-1, 1] → (mean, std), each
    /// `[B, latent, H/8, W/8]`. Sample latents as `(mean + std * noise) * scaling_factor`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode(&self, ctx: &Context, image: &Tensor) -> Result<(Tensor, Tensor)> {
        let (mean, _logvar, std) = self.encode_traced(ctx, image, None)?;
        Ok((mean, std))
    }

    /// [`Self::encode`] returning (mean, clamped logvar, std) and recording `dbg.encode.*`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_traced(&self, ctx: &Context, image: &Tensor, trace: Option<&mut Trace>) -> Result<(Tensor, Tensor, Tensor)> {
        pollster::block_on(self.encode_async(ctx, image, trace))
    }

    /// [`Self::encode_traced`] for async callers.
    pub async fn encode_async(&self, ctx: &Context, image: &Tensor, mut trace: Option<&mut Trace>) -> Result<(Tensor, Tensor, Tensor)> {
        let (Some(e), Some(m)) = (&self.encoder, &self.moments) else {
            return Err(Error::Unsupported("this VAE was loaded without its encoder (StableDiffusion::encoder_vae loads it for img2img)".into()));
        };
        if image.shape().len() != 4 || image.dim(1) != self.config.in_channels || image.dtype() != self.dtype {
            return Err(Error::Shape {
                op: "vae encode",
                detail: format!("image {:?} ({}) must be [B, {}, H, W] ({})", image.shape(), image.dtype().name(), self.config.in_channels, self.dtype.name()),
            });
        }
        let tracing = trace.is_some();
        let mut rec = |name: &str, t: &Tensor| {
            if let Some(tr) = trace.as_deref_mut() {
                tr.push((name.to_string(), t.clone()));
            }
        };
        let mut x = e.conv_in.forward(ctx, image)?;
        rec("encoder.conv_in", &x);
        for (i, blk) in e.down_blocks.iter().enumerate() {
            for r in &blk.resnets {
                x = self.resnet(ctx, r, x)?;
            }
            if let Some(d) = &blk.downsampler {
                x = d.forward(ctx, &x)?;
            }
            rec(&format!("encoder.down_blocks.{i}"), &x);
        }
        x = self.mid(ctx, &e.mid_block, &x)?;
        rec("encoder.mid_block", &x);
        let x = e.conv_norm_out.forward(ctx, &x, true)?;
        let (mean, logvar) = if self.config.use_quant_conv {
            let h = e.conv_out.forward(ctx, &x)?;
            rec("encoder.conv_out", &h);
            (m.mean.forward(ctx, &h)?, m.logvar.forward(ctx, &h)?)
        } else {
            (m.mean.forward(ctx, &x)?, m.logvar.forward(ctx, &x)?)
        };
        if tracing {
            let name = if self.config.use_quant_conv { "quant_conv" } else { "encoder.conv_out" };
            rec(name, &concat_channels(ctx, &mean, &logvar)?);
        }
        // clamp + exp on the host: the latent is tiny and the elementwise kernels have no exp.
        let lv = logvar.to_f32(ctx).await?;
        let lv: Vec<f32> = lv.iter().map(|&v| v.clamp(-30.0, 20.0)).collect();
        let std: Vec<f32> = lv.iter().map(|&v| (0.5 * v).exp()).collect();
        let logvar = Tensor::from_f32(ctx, &lv, logvar.shape(), self.dtype)?;
        let std = Tensor::from_f32(ctx, &std, mean.shape(), self.dtype)?;
        Ok((mean, logvar, std))
    }
}

/// `[B, C, H, W]` floats in [-1, 1] → `[B, H, W, C]` bytes, `round(clamp(x/2 + 0.5, 0, 1) * 255)`
/// in f32 with ties to even (numpy's `round`), as diffusers' `VaeImageProcessor.postprocess` +
/// `numpy_to_pil`.
pub fn image_to_u8(v: &[f32], b: usize, c: usize, h: usize, w: usize) -> Vec<u8> {
    let mut out = vec![0u8; b * h * w * c];
    for bi in 0..b {
        for ci in 0..c {
            for p in 0..h * w {
                let x = v[(bi * c + ci) * h * w + p];
                let y = (x / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0;
                out[(bi * h * w + p) * c + ci] = y.round_ties_even() as u8;
            }
        }
    }
    out
}

#[derive(Clone)]
struct HostTile {
    data: Vec<f32>,
    /// batch × channels planes
    bc: usize,
    h: usize,
    w: usize,
}

/// diffusers `blend_v`: `b[y] = a[-e + y] * (1 - y/e) + b[y] * (y/e)` for the first e rows.
fn blend_v(a: &HostTile, b: &mut HostTile, extent: usize) {
    let e = extent.min(a.h).min(b.h);
    for p in 0..b.bc {
        for y in 0..e {
            let t = y as f64 / e as f64;
            let (wa, wb) = ((1.0 - t) as f32, t as f32);
            for x in 0..b.w.min(a.w) {
                let av = a.data[p * a.h * a.w + (a.h - e + y) * a.w + x];
                let bv = &mut b.data[p * b.h * b.w + y * b.w + x];
                *bv = av * wa + *bv * wb;
            }
        }
    }
}

/// diffusers `blend_h`: the same over the first e columns.
fn blend_h(a: &HostTile, b: &mut HostTile, extent: usize) {
    let e = extent.min(a.w).min(b.w);
    for p in 0..b.bc {
        for y in 0..b.h.min(a.h) {
            for x in 0..e {
                let t = x as f64 / e as f64;
                let (wa, wb) = ((1.0 - t) as f32, t as f32);
                let av = a.data[p * a.h * a.w + y * a.w + (a.w - e + x)];
                let bv = &mut b.data[p * b.h * b.w + y * b.w + x];
                *bv = av * wa + *bv * wb;
            }
        }
    }
}

/// Single-head attention by GEMMs: `softmax(scale · Q·Kᵀ)·V` with q, v `[B, L, C]` and Kᵀ given
/// as `kt [B, C, L]` (so both products run on row-major operands). Per batch entry, query rows
/// are processed in chunks whose scores `[rows, L]` fit one storage binding (or `max_rows`);
/// chunk starts keep every view on the storage offset alignment. Output `[B, L, C]`.
pub fn attention_matmul(ctx: &Context, q: &Tensor, kt: &Tensor, v: &Tensor, scale: f32, max_rows: Option<usize>) -> Result<Tensor> {
    let (b, l, c) = (q.dim(0), q.dim(1), q.dim(2));
    if kt.shape() != [b, c, l] || v.shape() != [b, l, c] {
        return Err(Error::Shape { op: "vae attention", detail: format!("q {:?}, kt {:?}, v {:?}", q.shape(), kt.shape(), v.shape()) });
    }
    let es = q.dtype().size();
    let align = ctx.limits.min_storage_buffer_offset_alignment.max(4) as usize;
    let limit = ctx.max_binding() as usize;
    // Row chunk starts must keep r0 * C * es on the alignment.
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let row_step = align / gcd(align, c * es);
    if (l * c * es) % align != 0 && b > 1 {
        return Err(Error::Unsupported(format!("vae attention over {b} images of {l}x{c}: per-image views are not {align}-byte aligned")));
    }
    let mut rows = (limit / (l * es)).min(max_rows.unwrap_or(usize::MAX)).min(l);
    if rows < l {
        rows = rows / row_step * row_step;
    }
    if rows == 0 {
        return Err(Error::BindingTooLarge { what: format!("attention scores for {l} keys"), bytes: (row_step * l * es) as u64, limit: limit as u64 });
    }
    let q_rows = q.reshape(&[b * l, c])?;
    let mut out: Option<Tensor> = None;
    for bi in 0..b {
        let kt_b = kt.narrow0(bi, 1)?.reshape(&[c, l])?;
        let v_b = v.narrow0(bi, 1)?.reshape(&[l, c])?;
        let mut r0 = 0;
        while r0 < l {
            let n = rows.min(l - r0);
            let q_c = q_rows.narrow0(bi * l + r0, n)?;
            let s = matmul(ctx, &q_c, &kt_b, GemmOpts::default())?;
            let p = softmax(ctx, &s, scale)?;
            let o = matmul(ctx, &p, &v_b, GemmOpts::default())?.reshape(&[1, n, c])?;
            out = Some(match out {
                None => o,
                Some(prev) => concat_channels(ctx, &prev, &o)?,
            });
            r0 += n;
        }
    }
    out.expect("at least one row").reshape(&[b, l, c])
}
