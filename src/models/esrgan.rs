//! Real-ESRGAN's generator, basicsr's `RRDBNet` (`basicsr/archs/rrdbnet_arch.py`), on the
//! existing kernels: `RealESRGAN_x4plus` (23 blocks), `RealESRGAN_x4plus_anime_6B` (6 blocks),
//! `RealESRGAN_x2plus` and any other RRDBNet of that layout.
//!
//! ```text
//! x [1, 3, H, W] in [0, 1]
//! scale 2 / 1: pixel_unshuffle by 2 / 4 (12 / 48 channels at half / quarter size)
//! feat = conv_first(x)
//! body = conv_body(RRDB^num_block(feat)); feat = feat + body
//! feat = lrelu(conv_up1(nearest2x(feat))); feat = lrelu(conv_up2(nearest2x(feat)))
//! out  = conv_last(lrelu(conv_hr(feat)))            [1, 3, scale*H, scale*W]
//! RRDB(x) = 0.2 * RDB3(RDB2(RDB1(x))) + x
//! RDB(x): x1..x4 = lrelu(convK(cat(x, x1, .., xK-1))), x5 = conv5(cat(x, x1, .., x4));
//!         0.2 * x5 + x
//! ```
//!
//! All convolutions are 3x3 with padding 1, LeakyReLU slope 0.2. The RDB's `0.2 * x5 + x` is
//! one convolution: conv5's weight and bias are scaled by 0.2 at load and `x` is its fused
//! residual. Key names: basicsr's (`conv_first`, `body.N.rdb1.conv1`, ...; a `params_ema.` /
//! `params.` prefix, as a flattened .pth converted to safetensors keeps it, is stripped) or the
//! original ESRGAN repository's that spandrel maps (`model.0`, `model.1.sub.N.RDB1.conv1.0`,
//! `model.1.sub.{num_block}` = conv_body, `model.3/6/8/10` = up1/up2/hr/last; x4 only).

use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::models::unet::Conv;
use crate::ops::conv::ConvWeight;
use crate::ops::elementwise::{add, leaky_relu, scale};
use crate::ops::pixel_shuffle::pixel_unshuffle;
use crate::ops::resample::{concat_channels, upsample_nearest2x};
use crate::weights::{SafetensorsFile, WeightsError};
use std::collections::HashMap;

/// RRDBNet's hyper-parameters, read from the tensors' shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EsrganConfig {
    /// Output size / input size: 4, 2 or 1 (the input is pixel-unshuffled by 4 / scale).
    pub scale: usize,
    /// Channels of the trunk (64 in every released Real-ESRGAN model).
    pub num_feat: usize,
    /// Channels each dense-block convolution adds (32).
    pub num_grow_ch: usize,
    /// RRDB blocks (23 for x4plus / x2plus, 6 for x4plus_anime_6B).
    pub num_block: usize,
}

/// `synthetic:NAME` upscalers: the released models' architectures with generated weights.
pub const SYNTHETIC: &[(&str, EsrganConfig)] = &[
    ("x4plus", EsrganConfig { scale: 4, num_feat: 64, num_grow_ch: 32, num_block: 23 }),
    ("x4plus-anime-6b", EsrganConfig { scale: 4, num_feat: 64, num_grow_ch: 32, num_block: 6 }),
    ("x2plus", EsrganConfig { scale: 2, num_feat: 64, num_grow_ch: 32, num_block: 23 }),
];

impl EsrganConfig {
    /// `synthetic:x4plus` etc. -> the configuration; `None` without the `synthetic:` prefix, an
    /// error listing the names for an unknown one.
    pub fn from_synthetic_spec(spec: &str) -> Option<Result<EsrganConfig>> {
        let name = spec.strip_prefix("synthetic:")?;
        Some(SYNTHETIC.iter().find(|(n, _)| *n == name).map(|(_, c)| *c).ok_or_else(|| {
            let names: Vec<String> = SYNTHETIC.iter().map(|(n, _)| format!("synthetic:{n}")).collect();
            Error::Unsupported(format!("unknown synthetic upscaler '{spec}'; use one of {}", names.join(", ")))
        }))
    }

    /// Input channels of `conv_first`: RGB, pixel-unshuffled for scales below 4.
    pub fn in_channels(&self) -> usize {
        3 * self.unshuffle() * self.unshuffle()
    }

    /// The pixel-unshuffle factor basicsr applies first (1 = none).
    pub fn unshuffle(&self) -> usize {
        4 / self.scale
    }

    /// basicsr's tensor names and shapes for this configuration (what `torch.save` of
    /// `RRDBNet(3, 3, scale, num_feat, num_block, num_grow_ch).state_dict()` holds), sorted.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (nf, gc) = (self.num_feat, self.num_grow_ch);
        let mut v = Vec::new();
        let mut conv = |name: String, cout: usize, cin: usize| {
            v.push((format!("{name}.weight"), vec![cout, cin, 3, 3]));
            v.push((format!("{name}.bias"), vec![cout]));
        };
        conv("conv_first".into(), nf, self.in_channels());
        for b in 0..self.num_block {
            for r in 1..=3 {
                for k in 1..=5 {
                    let cout = if k == 5 { nf } else { gc };
                    conv(format!("body.{b}.rdb{r}.conv{k}"), cout, nf + (k - 1) * gc);
                }
            }
        }
        for name in ["conv_body", "conv_up1", "conv_up2", "conv_hr"] {
            conv(name.into(), nf, nf);
        }
        conv("conv_last".into(), 3, nf);
        v.sort();
        v
    }

    /// Bytes of the largest tensor one call on an `h` x `w` input makes (the tiler keeps this
    /// under one storage binding): the widest concatenation at the trunk's resolution, or the
    /// num_feat-channel tensors at 4x that resolution.
    pub fn peak_tensor_bytes(&self, h: usize, w: usize, dtype: DType) -> u64 {
        let u = self.unshuffle();
        let low = (h.div_ceil(u) * w.div_ceil(u)) as u64;
        let trunk = (self.num_feat + 4 * self.num_grow_ch).max(self.in_channels()) as u64 * low;
        let high = self.num_feat.max(3) as u64 * 16 * low;
        trunk.max(high) * dtype.size() as u64
    }
}

/// basicsr's ResidualDenseBlock: five convolutions, conv5 pre-scaled by 0.2.
pub struct Rdb {
    pub convs: Vec<Conv>,
}

impl Rdb {
    fn forward(&self, ctx: &Context, x: &Tensor) -> Result<Tensor> {
        let mut cat = x.clone();
        for conv in &self.convs[..4] {
            let xk = leaky_relu(ctx, &conv.forward(ctx, &cat)?)?;
            cat = concat_channels(ctx, &cat, &xk)?;
        }
        self.convs[4].forward_residual(ctx, &cat, x)
    }
}

/// Residual-in-residual dense block.
pub struct Rrdb {
    pub rdb1: Rdb,
    pub rdb2: Rdb,
    pub rdb3: Rdb,
}

impl Rrdb {
    fn forward(&self, ctx: &Context, x: &Tensor) -> Result<Tensor> {
        let h = self.rdb1.forward(ctx, x)?;
        let h = self.rdb2.forward(ctx, &h)?;
        let h = self.rdb3.forward(ctx, &h)?;
        add(ctx, &scale(ctx, &h, 0.2, 0.0)?, x)
    }
}

/// A loaded Real-ESRGAN / ESRGAN RRDBNet.
pub struct RealEsrgan {
    pub config: EsrganConfig,
    pub dtype: DType,
    pub conv_first: Conv,
    pub body: Vec<Rrdb>,
    pub conv_body: Conv,
    pub conv_up1: Conv,
    pub conv_up2: Conv,
    pub conv_hr: Conv,
    pub conv_last: Conv,
}

/// basicsr name -> the file's key, and the configuration, for a file's key set.
fn key_map(path: &str, names: &[&str]) -> std::result::Result<HashMap<String, String>, WeightsError> {
    let arch = |detail: String| WeightsError::Architecture { path: path.to_string(), detail };
    let prefix = ["params_ema.", "params.", "module."].into_iter().find(|p| !names.is_empty() && names.iter().all(|n| n.starts_with(p))).unwrap_or("");
    let names: Vec<&str> = names.iter().map(|n| &n[prefix.len()..]).collect();
    let has = |n: &str| names.contains(&n);
    let mut map = HashMap::new();
    if has("conv_first.weight") {
        for n in &names {
            map.insert(n.to_string(), format!("{prefix}{n}"));
        }
        return Ok(map);
    }
    if has("model.0.weight") && has("model.1.sub.0.RDB1.conv1.0.weight") {
        let nb = (0..).take_while(|b| has(&format!("model.1.sub.{b}.RDB1.conv1.0.weight"))).count();
        let ups: Vec<usize> = {
            let mut v: Vec<usize> = names.iter().filter_map(|n| n.strip_prefix("model.")?.strip_suffix(".weight")?.parse().ok()).filter(|&i| i >= 2).collect();
            v.sort();
            v
        };
        if ups != [3, 6, 8, 10] {
            return Err(arch(format!(
                "an original-ESRGAN RRDBNet whose layers after the trunk are model.{ups:?}; only the x4 layout (model.3, 6, 8, 10: two 2x upsamplers) is supported"
            )));
        }
        let mut put = |ours: String, theirs: String| {
            for s in ["weight", "bias"] {
                map.insert(format!("{ours}.{s}"), format!("{prefix}{theirs}.{s}"));
            }
        };
        put("conv_first".into(), "model.0".into());
        for b in 0..nb {
            for r in 1..=3 {
                for k in 1..=5 {
                    put(format!("body.{b}.rdb{r}.conv{k}"), format!("model.1.sub.{b}.RDB{r}.conv{k}.0"));
                }
            }
        }
        put("conv_body".into(), format!("model.1.sub.{nb}"));
        for (ours, i) in [("conv_up1", 3), ("conv_up2", 6), ("conv_hr", 8), ("conv_last", 10)] {
            put(ours.into(), format!("model.{i}"));
        }
        return Ok(map);
    }
    let mut sample: Vec<&str> = names.iter().copied().take(4).collect();
    sample.sort();
    let hint = if has("body.0.weight") && names.iter().any(|n| n.starts_with("body.") && !n.contains(".rdb")) {
        " (this looks like SRVGGNetCompact, the realesr-*-v3 models, which Pigment does not run)"
    } else {
        ""
    };
    Err(arch(format!(
        "not an RRDBNet upscaler: expected basicsr's `conv_first.weight` (Real-ESRGAN) or the original ESRGAN's `model.0.weight` + `model.1.sub.0.RDB1.conv1.0.weight`; its keys begin {sample:?}{hint}"
    )))
}

impl RealEsrgan {
    /// Open a `.safetensors` RRDBNet (pickle `.pth` files are refused by the weights layer).
    pub fn open(ctx: &Context, path: impl AsRef<std::path::Path>, dtype: DType) -> Result<RealEsrgan> {
        Self::load(ctx, &SafetensorsFile::open(path)?, dtype)
    }

    /// Read the configuration from the tensors (and check every shape against it), then upload.
    pub fn load(ctx: &Context, file: &SafetensorsFile, dtype: DType) -> Result<RealEsrgan> {
        let config = Self::inspect(file)?;
        let map = key_map(file.path(), &file.names())?;
        let load_conv = |name: &str, want: &[usize], factor: f32| -> Result<Conv> {
            let get = |suffix: &str, shape: &[usize]| -> Result<Tensor> {
                let key = format!("{name}.{suffix}");
                let file_key = map.get(&key).ok_or_else(|| WeightsError::Missing {
                    path: file.path().to_string(),
                    name: key.clone(),
                    detail: format!(" (an RRDBNet with {} blocks needs it)", config.num_block),
                })?;
                let view = file.get(file_key)?;
                view.expect_shape(shape)?;
                if factor == 1.0 {
                    return view.upload(ctx, dtype);
                }
                let v: Vec<f32> = view.to_f32()?.iter().map(|x| x * factor).collect();
                Tensor::from_f32(ctx, &v, shape, dtype)
            };
            let weight = get("weight", want)?;
            let bias = get("bias", &want[..1])?;
            Ok(Conv { weight: ConvWeight::new(weight), bias, stride: 1, padding: 1 })
        };
        let shapes: HashMap<String, Vec<usize>> = config.tensors().into_iter().collect();
        let conv = |name: &str| load_conv(name, &shapes[&format!("{name}.weight")], 1.0);
        let rdb = |b: usize, r: usize| -> Result<Rdb> {
            let convs = (1..=5)
                .map(|k| {
                    let name = format!("body.{b}.rdb{r}.conv{k}");
                    load_conv(&name, &shapes[&format!("{name}.weight")], if k == 5 { 0.2 } else { 1.0 })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Rdb { convs })
        };
        let body = (0..config.num_block).map(|b| Ok(Rrdb { rdb1: rdb(b, 1)?, rdb2: rdb(b, 2)?, rdb3: rdb(b, 3)? })).collect::<Result<Vec<_>>>()?;
        Ok(RealEsrgan {
            config,
            dtype,
            conv_first: conv("conv_first")?,
            body,
            conv_body: conv("conv_body")?,
            conv_up1: conv("conv_up1")?,
            conv_up2: conv("conv_up2")?,
            conv_hr: conv("conv_hr")?,
            conv_last: conv("conv_last")?,
        })
    }

    /// The configuration a file holds, without uploading anything (the server's listing).
    pub fn inspect(file: &SafetensorsFile) -> Result<EsrganConfig> {
        let map = key_map(file.path(), &file.names())?;
        let arch = |detail: String| Error::from(WeightsError::Architecture { path: file.path().to_string(), detail });
        let shape = |n: &str| map.get(n).and_then(|k| file.info(k)).map(|(_, s)| s.to_vec());
        let first = shape("conv_first.weight").ok_or_else(|| arch("no conv_first weight".into()))?;
        let scale = match first.get(1) {
            Some(3) => 4,
            Some(12) => 2,
            Some(48) => 1,
            _ => return Err(arch(format!("conv_first.weight has shape {first:?}; an RGB RRDBNet takes 3 (x4), 12 (x2) or 48 (x1) input channels"))),
        };
        let grow = shape("body.0.rdb1.conv1.weight").ok_or_else(|| arch("no body.0.rdb1.conv1 weight (an RRDBNet has at least one block)".into()))?;
        let num_block = (0..).take_while(|b| map.contains_key(&format!("body.{b}.rdb1.conv1.weight"))).count();
        let config = EsrganConfig { scale, num_feat: first[0], num_grow_ch: grow[0], num_block };
        if let Some(extra) = map.keys().find(|k| !config.tensors().iter().any(|(n, _)| n == *k)) {
            return Err(arch(format!("unexpected tensor '{}' for an RRDBNet of {num_block} blocks", map[extra])));
        }
        Ok(config)
    }

    /// A `.safetensors` path or a `synthetic:` name ([`SYNTHETIC`]).
    pub fn from_spec(ctx: &Context, spec: &str, dtype: DType) -> Result<RealEsrgan> {
        match EsrganConfig::from_synthetic_spec(spec) {
            Some(cfg) => Self::synthetic(ctx, cfg?, dtype),
            None => Self::open(ctx, spec, dtype),
        }
    }

    /// Random weights from Pigment's synthetic generator (`weights::synthetic`): the real
    /// architecture for benchmarks and tests, with no file.
    pub fn synthetic(ctx: &Context, config: EsrganConfig, dtype: DType) -> Result<RealEsrgan> {
        let bytes = crate::weights::synthetic::safetensors_bytes(&config.tensors());
        Self::load(ctx, &SafetensorsFile::from_bytes(format!("synthetic:esrgan-x{}", config.scale), bytes)?, dtype)
    }

    /// x `[1, 3, H, W]` (RGB in [0, 1]; H, W multiples of [`EsrganConfig::unshuffle`]) ->
    /// `[1, 3, scale*H, scale*W]`, not clamped.
    pub fn forward(&self, ctx: &Context, x: &Tensor) -> Result<Tensor> {
        let u = self.config.unshuffle();
        let x = if u > 1 { pixel_unshuffle(ctx, x, u)? } else { x.clone() };
        let feat = self.conv_first.forward(ctx, &x)?;
        drop(x);
        let mut h = feat.clone();
        for block in &self.body {
            h = block.forward(ctx, &h)?;
        }
        let feat = self.conv_body.forward_residual(ctx, &h, &feat)?;
        drop(h);
        let feat = leaky_relu(ctx, &self.conv_up1.forward(ctx, &upsample_nearest2x(ctx, &feat)?)?)?;
        let feat = leaky_relu(ctx, &self.conv_up2.forward(ctx, &upsample_nearest2x(ctx, &feat)?)?)?;
        let feat = leaky_relu(ctx, &self.conv_hr.forward(ctx, &feat)?)?;
        self.conv_last.forward(ctx, &feat)
    }
}
