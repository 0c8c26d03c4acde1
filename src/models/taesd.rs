//! TAESD, diffusers' `AutoencoderTiny` (`madebyollin/taesd`, `taesdxl`): a tiny distilled VAE
//! (~1.2M parameters per half) for previews and fast decodes. Names as diffusers:
//! `encoder.layers.N.*`, `decoder.layers.N.*`, each layer of an `nn.Sequential`:
//!
//! * Encoder: `Conv(in→c0)`, then per stage a stride-2 `Conv` without bias (all stages but the
//!   first) and `num_encoder_blocks[i]` blocks, then `Conv(c_last→latent)`. Input is the image
//!   in [-1, 1] mapped to [0, 1] (`x.add(1).div(2)`).
//! * Decoder: the clamp `tanh(x/3)·3`, `Conv(latent→c0)`, ReLU, then per stage
//!   `num_decoder_blocks[i]` blocks and (all stages but the last) nearest-2× upsampling and a
//!   `Conv` without bias; the last stage ends with `Conv(c→out)` with bias. Output [0, 1] is
//!   mapped to [-1, 1] (`x.mul(2).sub(1)`).
//! * `AutoencoderTinyBlock`: `relu(conv.4(relu(conv.2(relu(conv.0(x))))) + skip(x))`, `skip` a
//!   1×1 conv without bias when channels change (never in the released models), else identity
//!   (fused into `conv.4` as its residual).
//!
//! Latents: the pipeline decodes `latents / scaling_factor` and encodes to
//! `encoder(x).latents · scaling_factor`, with `scaling_factor` 1.0 for TAESD: TAESD works
//! directly on the UNet's (already scaled) latents, and its encoder is deterministic (no
//! posterior sample, so no draw from the generator).
//!
//! The original release (`taesd_encoder.safetensors`, `taesd_decoder.safetensors`) names the
//! same layers `N.*` without prefix; its decoder's `nn.Sequential` starts with the parameterless
//! `Clamp`, so original decoder layer N is diffusers' N-1 (diffusers'
//! `convert_tiny_autoencoder_to_diffusers.py` maps them so).

use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::ops::conv::{conv2d_with, ConvWeight};
use crate::ops::elementwise::{relu, scale, unary, Activation};
use crate::ops::resample::upsample_nearest2x;
use crate::weights::{SafetensorsFile, WeightsError};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `AutoencoderTiny` hyper-parameters (diffusers config names).
#[derive(Clone, Debug, PartialEq)]
pub struct TaesdConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub encoder_block_out_channels: Vec<usize>,
    pub decoder_block_out_channels: Vec<usize>,
    pub num_encoder_blocks: Vec<usize>,
    pub num_decoder_blocks: Vec<usize>,
    /// What the pipeline divides latents by before decoding (1.0 for TAESD).
    pub scaling_factor: f32,
}

impl Default for TaesdConfig {
    /// diffusers' `AutoencoderTiny()` defaults (= `madebyollin/taesd`).
    fn default() -> Self {
        TaesdConfig {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            encoder_block_out_channels: vec![64; 4],
            decoder_block_out_channels: vec![64; 4],
            num_encoder_blocks: vec![1, 3, 3, 3],
            num_decoder_blocks: vec![3, 3, 3, 1],
            scaling_factor: 1.0,
        }
    }
}

impl TaesdConfig {
    pub fn from_json(v: &Value) -> std::result::Result<TaesdConfig, String> {
        let d = TaesdConfig::default();
        let num = |k: &str, default: usize| v.get(k).and_then(Value::as_u64).map_or(default, |x| x as usize);
        let list = |k: &str, default: &Vec<usize>| -> std::result::Result<Vec<usize>, String> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(default.clone()),
                Some(Value::Array(a)) => {
                    a.iter().map(|x| x.as_u64().map(|x| x as usize).ok_or_else(|| format!("{k} must be integers"))).collect()
                }
                Some(_) => Err(format!("{k} must be a list")),
            }
        };
        for (k, want) in [("act_fn", "relu"), ("upsample_fn", "nearest")] {
            if let Some(got) = v.get(k).and_then(Value::as_str) {
                if got != want {
                    return Err(format!("unsupported {k} '{got}' (TAESD uses '{want}')"));
                }
            }
        }
        if num("upsampling_scaling_factor", 2) != 2 {
            return Err("unsupported upsampling_scaling_factor (TAESD uses 2)".into());
        }
        if v.get("shift_factor").and_then(Value::as_f64).is_some_and(|s| s != 0.0) {
            return Err("unsupported non-zero shift_factor".into());
        }
        let c = TaesdConfig {
            in_channels: num("in_channels", d.in_channels),
            out_channels: num("out_channels", d.out_channels),
            latent_channels: num("latent_channels", d.latent_channels),
            encoder_block_out_channels: list("encoder_block_out_channels", &d.encoder_block_out_channels)?,
            decoder_block_out_channels: list("decoder_block_out_channels", &d.decoder_block_out_channels)?,
            num_encoder_blocks: list("num_encoder_blocks", &d.num_encoder_blocks)?,
            num_decoder_blocks: list("num_decoder_blocks", &d.num_decoder_blocks)?,
            scaling_factor: v.get("scaling_factor").and_then(Value::as_f64).unwrap_or(1.0) as f32,
        };
        if c.encoder_block_out_channels.len() != c.num_encoder_blocks.len() || c.decoder_block_out_channels.len() != c.num_decoder_blocks.len() {
            return Err("block_out_channels and num_*_blocks differ in length".into());
        }
        if c.encoder_block_out_channels.is_empty() || c.decoder_block_out_channels.is_empty() {
            return Err("no blocks".into());
        }
        Ok(c)
    }

    /// Image pixels per latent pixel along each side (8 for TAESD).
    pub fn scale_factor(&self) -> usize {
        1 << (self.decoder_block_out_channels.len() - 1)
    }
}

/// A 3×3 (or 1×1 skip) convolution; `stride` 2 for the encoder's downsampling ones.
#[derive(Clone)]
struct Conv {
    weight: ConvWeight,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv {
    fn forward(&self, ctx: &Context, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        conv2d_with(ctx, x, &self.weight, self.bias.as_ref(), self.stride, self.padding, residual, None)
    }
}

/// `AutoencoderTinyBlock`.
#[derive(Clone)]
struct Block {
    convs: [Conv; 3],
    skip: Option<Conv>,
}

impl Block {
    fn forward(&self, ctx: &Context, x: &Tensor) -> Result<Tensor> {
        let h = relu(ctx, &self.convs[0].forward(ctx, x, None)?)?;
        let h = relu(ctx, &self.convs[1].forward(ctx, &h, None)?)?;
        let skip = match &self.skip {
            Some(s) => s.forward(ctx, x, None)?,
            None => x.clone(),
        };
        relu(ctx, &self.convs[2].forward(ctx, &h, Some(&skip))?)
    }
}

#[derive(Clone)]
enum Layer {
    Conv(Conv),
    Relu,
    Block(Block),
    Upsample,
}

fn run(ctx: &Context, layers: &[Layer], mut x: Tensor) -> Result<Tensor> {
    for l in layers {
        x = match l {
            Layer::Conv(c) => c.forward(ctx, &x, None)?,
            Layer::Relu => relu(ctx, &x)?,
            Layer::Block(b) => b.forward(ctx, &x)?,
            Layer::Upsample => upsample_nearest2x(ctx, &x)?,
        };
    }
    Ok(x)
}

/// Where the TAESD tensors are: diffusers names → (file, stored name).
pub struct TaesdWeights {
    files: Vec<SafetensorsFile>,
    names: HashMap<String, (usize, String)>,
    pub config: TaesdConfig,
    /// Shown in errors.
    pub path: String,
}

impl TaesdWeights {
    /// A diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`), a folder with
    /// the original `taesd_encoder.safetensors` / `taesd_decoder.safetensors` (either or both;
    /// also `taesdxl_*`), or one `.safetensors` file: diffusers-named, or an original half (the
    /// other half is picked up beside it when its name differs only by encoder/decoder).
    pub fn open(path: &Path) -> Result<TaesdWeights> {
        let shown = path.display().to_string();
        let mut w = TaesdWeights { files: Vec::new(), names: HashMap::new(), config: TaesdConfig::default(), path: shown.clone() };
        let mut config_json = None;
        if path.is_dir() {
            let diffusers = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"].iter().map(|f| path.join(f)).find(|p| p.exists());
            if let Some(f) = diffusers {
                let cfg = path.join("config.json");
                if cfg.exists() {
                    let text = std::fs::read_to_string(&cfg).map_err(|source| WeightsError::Io { path: cfg.display().to_string(), source })?;
                    config_json = Some(serde_json::from_str::<Value>(&text).map_err(|e| WeightsError::Config { path: cfg.display().to_string(), detail: e.to_string() })?);
                }
                w.add(SafetensorsFile::open(&f)?)?;
            } else {
                let mut found = false;
                for stem in ["taesd", "taesdxl", "taesd3", "taef1"] {
                    for half in ["encoder", "decoder"] {
                        let f = path.join(format!("{stem}_{half}.safetensors"));
                        if f.exists() && !found_half(&w, half) {
                            w.add(SafetensorsFile::open(&f)?)?;
                            found = true;
                        }
                    }
                }
                if !found {
                    return Err(WeightsError::Architecture {
                        path: shown,
                        detail: "no TAESD weights here: expected diffusion_pytorch_model.safetensors and config.json (as madebyollin/taesd), or taesd_decoder.safetensors / taesd_encoder.safetensors".into(),
                    }
                    .into());
                }
            }
        } else {
            let file = SafetensorsFile::open(path)?;
            let original = !file.names().iter().any(|n| n.starts_with("encoder.layers.") || n.starts_with("decoder.layers."));
            w.add(file)?;
            // An original half: its sibling, if present.
            if original {
                if let Some(other) = sibling(path).filter(|p| p.exists()) {
                    w.add(SafetensorsFile::open(&other)?)?;
                }
            }
        }
        w.config = match config_json {
            Some(v) => TaesdConfig::from_json(&v).map_err(|detail| WeightsError::Config { path: w.path.clone(), detail })?,
            None => w.inferred_config(),
        };
        Ok(w)
    }

    /// Files already opened (the browser's bytes): a diffusers `diffusion_pytorch_model.safetensors`
    /// with its `config.json` (parsed; `None`: defaults with the latent channels from the
    /// tensors), or the original `taesd_encoder` / `taesd_decoder` halves, one or both.
    pub fn from_files(files: Vec<SafetensorsFile>, config: Option<&Value>) -> Result<TaesdWeights> {
        let path = files.iter().map(SafetensorsFile::path).collect::<Vec<_>>().join(" + ");
        let mut w = TaesdWeights { files: Vec::new(), names: HashMap::new(), config: TaesdConfig::default(), path };
        for f in files {
            w.add(f)?;
        }
        w.config = match config {
            Some(v) => TaesdConfig::from_json(v).map_err(|detail| WeightsError::Config { path: w.path.clone(), detail })?,
            None => w.inferred_config(),
        };
        Ok(w)
    }

    /// Adds a file's tensors under their diffusers names.
    fn add(&mut self, file: SafetensorsFile) -> Result<()> {
        let idx = self.files.len();
        let names: Vec<String> = file.names().iter().map(|s| s.to_string()).collect();
        let diffusers = names.iter().any(|n| n.starts_with("encoder.layers.") || n.starts_with("decoder.layers."));
        let half = if diffusers {
            None
        } else if file.info("0.weight").is_some_and(|(_, s)| s.len() == 4) {
            // The encoder starts with a conv; the decoder with the parameterless Clamp.
            Some("encoder")
        } else if file.info("1.weight").is_some_and(|(_, s)| s.len() == 4) {
            Some("decoder")
        } else {
            return Err(WeightsError::Architecture {
                path: file.path().to_string(),
                detail: "not a TAESD file: no encoder.layers.*/decoder.layers.* (diffusers) nor 0.weight/1.weight (original taesd_encoder/taesd_decoder)".into(),
            }
            .into());
        };
        for n in names {
            let mapped = match half {
                None => n.clone(),
                Some("encoder") => format!("encoder.layers.{n}"),
                Some(_) => {
                    let (i, rest) = n.split_once('.').unwrap_or((&n, ""));
                    match i.parse::<usize>() {
                        Ok(i) if i >= 1 => format!("decoder.layers.{}.{rest}", i - 1),
                        _ => continue,
                    }
                }
            };
            self.names.insert(mapped, (idx, n));
        }
        self.files.push(file);
        Ok(())
    }

    pub fn has_encoder(&self) -> bool {
        self.names.contains_key("encoder.layers.0.weight")
    }
    pub fn has_decoder(&self) -> bool {
        self.names.contains_key("decoder.layers.0.weight")
    }

    /// Defaults with the latent channels read from the tensors (original files carry no config).
    fn inferred_config(&self) -> TaesdConfig {
        let mut c = TaesdConfig::default();
        if let Some(s) = self.shape("decoder.layers.0.weight") {
            c.latent_channels = s[1];
        } else if let Some(s) = self.shape(&format!("encoder.layers.{}.weight", encoder_len(&c) - 1)) {
            c.latent_channels = s[0];
        }
        c
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let (f, n) = self.names.get(name)?;
        self.files[*f].info(n).map(|(_, s)| s.to_vec())
    }

    fn upload(&self, ctx: &Context, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let (f, n) = self.names.get(name).ok_or_else(|| WeightsError::Missing {
            path: self.path.clone(),
            name: name.to_string(),
            detail: " (a TAESD with this config needs it)".into(),
        })?;
        let t = self.files[*f].get(n)?;
        t.expect_shape(shape)?;
        t.upload(ctx, dtype)
    }

    fn conv(&self, ctx: &Context, p: &str, cout: usize, cin: usize, k: usize, stride: usize, bias: bool, dtype: DType) -> Result<Conv> {
        Ok(Conv {
            weight: ConvWeight::new(self.upload(ctx, &format!("{p}.weight"), &[cout, cin, k, k], dtype)?),
            bias: if bias { Some(self.upload(ctx, &format!("{p}.bias"), &[cout], dtype)?) } else { None },
            stride,
            padding: k / 2,
        })
    }

    fn block(&self, ctx: &Context, p: &str, cin: usize, cout: usize, dtype: DType) -> Result<Block> {
        let c = |i: usize, ci: usize| self.conv(ctx, &format!("{p}.conv.{i}"), cout, ci, 3, 1, true, dtype);
        Ok(Block {
            convs: [c(0, cin)?, c(2, cout)?, c(4, cout)?],
            skip: if cin != cout { Some(self.conv(ctx, &format!("{p}.skip"), cout, cin, 1, 1, false, dtype)?) } else { None },
        })
    }
}

fn found_half(w: &TaesdWeights, half: &str) -> bool {
    if half == "encoder" {
        w.has_encoder()
    } else {
        w.has_decoder()
    }
}

/// `taesd_decoder.safetensors` ↔ `taesd_encoder.safetensors`.
fn sibling(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let other = if name.contains("decoder") { name.replace("decoder", "encoder") } else { name.replace("encoder", "decoder") };
    (other != name).then(|| path.with_file_name(other))
}

fn encoder_len(c: &TaesdConfig) -> usize {
    c.num_encoder_blocks.iter().sum::<usize>() + c.num_encoder_blocks.len() + 1
}

/// The loaded model; either half may be absent (the original release ships them apart).
#[derive(Clone)]
pub struct Taesd {
    pub config: TaesdConfig,
    pub dtype: DType,
    encoder: Option<Vec<Layer>>,
    decoder: Option<Vec<Layer>>,
}

/// The diffusers class name.
pub type AutoencoderTiny = Taesd;

impl Taesd {
    /// [`TaesdWeights::open`] + [`Taesd::load`].
    pub fn open(ctx: &Context, path: &Path, dtype: DType) -> Result<Taesd> {
        Self::load(ctx, &TaesdWeights::open(path)?, dtype)
    }

    /// Uploads whichever halves the weights have.
    pub fn load(ctx: &Context, w: &TaesdWeights, dtype: DType) -> Result<Taesd> {
        let c = &w.config;
        if !w.has_encoder() && !w.has_decoder() {
            return Err(Error::Unsupported(format!("{}: no TAESD encoder or decoder tensors", w.path)));
        }
        let encoder = if w.has_encoder() {
            let ch = &c.encoder_block_out_channels;
            let mut layers = Vec::new();
            let mut prev = c.in_channels;
            for (i, &n) in c.num_encoder_blocks.iter().enumerate() {
                let p = format!("encoder.layers.{}", layers.len());
                // diffusers: the first conv maps in→c0, later ones c_i→c_i with stride 2.
                let conv = if i == 0 { w.conv(ctx, &p, ch[0], prev, 3, 1, true, dtype)? } else { w.conv(ctx, &p, ch[i], ch[i], 3, 2, false, dtype)? };
                if i > 0 && ch[i] != prev {
                    return Err(Error::Unsupported(format!("{}: encoder stage {i} changes channels {prev}→{} (diffusers' EncoderTiny cannot either)", w.path, ch[i])));
                }
                layers.push(Layer::Conv(conv));
                for _ in 0..n {
                    let p = format!("encoder.layers.{}", layers.len());
                    layers.push(Layer::Block(w.block(ctx, &p, ch[i], ch[i], dtype)?));
                }
                prev = ch[i];
            }
            let p = format!("encoder.layers.{}", layers.len());
            layers.push(Layer::Conv(w.conv(ctx, &p, c.latent_channels, prev, 3, 1, true, dtype)?));
            Some(layers)
        } else {
            None
        };
        let decoder = if w.has_decoder() {
            let ch = &c.decoder_block_out_channels;
            let mut layers = vec![Layer::Conv(w.conv(ctx, "decoder.layers.0", ch[0], c.latent_channels, 3, 1, true, dtype)?), Layer::Relu];
            let stages = c.num_decoder_blocks.len();
            let mut prev = ch[0];
            for (i, &n) in c.num_decoder_blocks.iter().enumerate() {
                for _ in 0..n {
                    let p = format!("decoder.layers.{}", layers.len());
                    layers.push(Layer::Block(w.block(ctx, &p, prev, ch[i], dtype)?));
                    prev = ch[i];
                }
                let last = i + 1 == stages;
                if !last {
                    layers.push(Layer::Upsample);
                }
                let p = format!("decoder.layers.{}", layers.len());
                let out = if last { c.out_channels } else { ch[i] };
                layers.push(Layer::Conv(w.conv(ctx, &p, out, ch[i], 3, 1, last, dtype)?));
                prev = out;
            }
            Some(layers)
        } else {
            None
        };
        Ok(Taesd { config: c.clone(), dtype, encoder, decoder })
    }

    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }
    pub fn has_decoder(&self) -> bool {
        self.decoder.is_some()
    }

    /// `decoder(z)`: z `[B, latent, h, w]` (what the pipeline passes: latents / scaling_factor)
    /// → image `[B, out, 8h, 8w]` in about [-1, 1].
    pub fn decode(&self, ctx: &Context, z: &Tensor) -> Result<Tensor> {
        let Some(layers) = &self.decoder else {
            return Err(Error::Unsupported("this TAESD has no decoder (give taesd_decoder.safetensors or a diffusers AutoencoderTiny folder)".into()));
        };
        self.check(z, self.config.latent_channels, "latents")?;
        // The clamp tanh(x/3)·3 (two passes on the small latent), then the layers, then [0,1]→[-1,1].
        let x = scale(ctx, &unary(ctx, Activation::Tanh, z, 1.0 / 3.0, 0.0)?, 3.0, 0.0)?;
        scale(ctx, &run(ctx, layers, x)?, 2.0, -1.0)
    }

    /// `encoder(x)`: image `[B, in, H, W]` in [-1, 1] → latents `[B, latent, H/8, W/8]`, already
    /// in the UNet's scale (times `scaling_factor`, 1.0).
    pub fn encode(&self, ctx: &Context, image: &Tensor) -> Result<Tensor> {
        let Some(layers) = &self.encoder else {
            return Err(Error::Unsupported("this TAESD has no encoder (give taesd_encoder.safetensors or a diffusers AutoencoderTiny folder)".into()));
        };
        self.check(image, self.config.in_channels, "image")?;
        let x = run(ctx, layers, scale(ctx, image, 0.5, 0.5)?)?;
        if self.config.scaling_factor == 1.0 {
            Ok(x)
        } else {
            scale(ctx, &x, self.config.scaling_factor, 0.0)
        }
    }

    fn check(&self, x: &Tensor, channels: usize, what: &str) -> Result<()> {
        if x.shape().len() != 4 || x.dim(1) != channels || x.dtype() != self.dtype {
            return Err(Error::Shape {
                op: "taesd",
                detail: format!("{what} {:?} ({}) must be [B, {channels}, H, W] ({})", x.shape(), x.dtype().name(), self.dtype.name()),
            });
        }
        Ok(())
    }

    /// Sampler latents `[B, latent, h, w]` (any dtype) → RGB bytes `[B, 8h, 8w, 3]`, as the
    /// pipeline + `VaeImageProcessor` with `vae=AutoencoderTiny`: decode `latents /
    /// scaling_factor`, `round(clamp(x/2 + 0.5, 0, 1) · 255)`.
    pub async fn latents_to_image_u8_async(&self, ctx: &Context, latents: &Tensor) -> Result<Vec<u8>> {
        let z = Tensor::from_f32(ctx, &latents.to_f32(ctx).await?, latents.shape(), self.dtype)?;
        let z = if self.config.scaling_factor == 1.0 { z } else { scale(ctx, &z, 1.0 / self.config.scaling_factor, 0.0)? };
        let img = self.decode(ctx, &z)?;
        let v = img.to_f32(ctx).await?;
        Ok(super::vae::image_to_u8(&v, img.dim(0), img.dim(1), img.dim(2), img.dim(3)))
    }

    /// [`Self::latents_to_image_u8_async`], blocking.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn latents_to_image_u8(&self, ctx: &Context, latents: &Tensor) -> Result<Vec<u8>> {
        pollster::block_on(self.latents_to_image_u8_async(ctx, latents))
    }
}
