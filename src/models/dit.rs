//! diffusers' `DiTTransformer2DModel` (DiT, class-conditional ImageNet). Field names mirror the
//! checkpoint keys (`pos_embed.proj`, `transformer_blocks.N.norm1.emb.timestep_embedder.linear_1`,
//! `norm1.linear`, `attn1.to_q`, `ff.net.0.proj`, `proj_out_1`, ...).
//!
//! Forward pass, per sequence (one latent of the batch):
//!
//! 1. patchify on the host (`[C, H, W]` → `[N, C·p·p]`, the patch conv's input order) and one
//!    GEMM with `pos_embed.proj` (a stride-p conv is exactly that), the 2-D sin-cos position
//!    embedding added as the GEMM's residual;
//! 2. each block, adaLN-Zero: `c = timestep_embedder(t) + class_embedder(label)`, six
//!    modulation vectors from `norm1.linear(silu(c))`, then
//!    `x += gate_msa · attn(LN(x)·(1 + scale_msa) + shift_msa)` and
//!    `x += gate_mlp · ff(LN(x)·(1 + scale_mlp) + shift_mlp)`;
//! 3. `norm_out` modulated by `proj_out_1(silu(c))` (block 0's `c`, as diffusers), `proj_out_2`,
//!    read back and unpatchified on the host.
//!
//! The modulation is per sequence and the elementwise ops broadcast a vector over rows only, so
//! each sequence runs on its own (the two CFG halves are two passes): the modulated layer norm
//! is then `layer_norm` with weight `1 + scale` and bias `shift`, and the `+ 1` is folded into
//! the scale chunks' biases at load. Patchify, modulation and the block are separate functions,
//! as MMDiT (SD 3, Flux) reuses them.

use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::models::clip::Linear;
use crate::ops::attention::attention_qkv;
use crate::ops::elementwise::{add, binary_broadcast, silu, Activation, BinaryOp};
use crate::ops::embedding::timestep_embedding_values;
use crate::ops::gemm::{matmul, GemmOpts};
use crate::ops::norm::layer_norm;
use crate::weights::{Component, WeightsError};
use serde_json::Value;

/// `DiTTransformer2DModel` hyper-parameters (diffusers config names in the comments).
#[derive(Clone, Debug, PartialEq)]
pub struct DitConfig {
    /// `sample_size`: the latent's width and height (fixed: the position embedding's grid).
    pub sample_size: usize,
    pub patch_size: usize,
    pub in_channels: usize,
    /// `out_channels` (default `in_channels`; twice it with learned sigma).
    pub out_channels: usize,
    pub num_layers: usize,
    /// `num_attention_heads`
    pub heads: usize,
    pub attention_head_dim: usize,
    /// `num_embeds_ada_norm`: ImageNet's 1000; label `num_classes` is the null class.
    pub num_classes: usize,
    /// `norm_eps` (the feed-forward's norm; the attention's and the output's are 1e-6).
    pub norm_eps: f32,
}

/// The timestep embedding's width (`CombinedTimestepLabelEmbeddings`' `Timesteps(256)`).
const TIME_PROJ: usize = 256;
/// `AdaLayerNormZero.norm` and `norm_out`: LayerNorm without affine, eps 1e-6.
const ADA_EPS: f32 = 1e-6;

impl DitConfig {
    /// From a `transformer/config.json` (`DiTTransformer2DModel`, or DiT-XL's original
    /// `Transformer2DModel` config with the same keys); refuses what DiT never uses.
    pub fn from_json(v: &Value) -> std::result::Result<DitConfig, String> {
        let num = |k: &str, default: Option<usize>| -> std::result::Result<usize, String> {
            match v.get(k).filter(|x| !x.is_null()) {
                Some(x) => x.as_u64().map(|x| x as usize).ok_or_else(|| format!("'{k}' is not a whole number")),
                None => default.ok_or_else(|| format!("no '{k}'")),
            }
        };
        let text = |k: &str, default: &str| v.get(k).and_then(Value::as_str).unwrap_or(default).to_string();
        for (k, want, default) in [("norm_type", "ada_norm_zero", "ada_norm_zero"), ("activation_fn", "gelu-approximate", "gelu-approximate")] {
            if text(k, default) != want {
                return Err(format!("{k} '{}' (DiT uses '{want}')", text(k, default)));
            }
        }
        for (k, want) in [("attention_bias", true), ("norm_elementwise_affine", false)] {
            if v.get(k).and_then(Value::as_bool).is_some_and(|b| b != want) {
                return Err(format!("{k} = {} (DiT uses {want})", !want));
            }
        }
        let in_channels = num("in_channels", Some(4))?;
        let c = DitConfig {
            sample_size: num("sample_size", Some(32))?,
            patch_size: num("patch_size", Some(2))?,
            in_channels,
            out_channels: num("out_channels", Some(in_channels))?,
            num_layers: num("num_layers", Some(28))?,
            heads: num("num_attention_heads", Some(16))?,
            attention_head_dim: num("attention_head_dim", Some(72))?,
            num_classes: num("num_embeds_ada_norm", Some(1000))?,
            norm_eps: v.get("norm_eps").and_then(Value::as_f64).unwrap_or(1e-5) as f32,
        };
        if c.patch_size == 0 || c.sample_size % c.patch_size != 0 {
            return Err(format!("sample_size {} is not a multiple of patch_size {}", c.sample_size, c.patch_size));
        }
        if c.heads == 0 || c.inner() % 4 != 0 {
            return Err(format!("{} heads of {} (the position embedding needs a width divisible by 4)", c.heads, c.attention_head_dim));
        }
        if c.out_channels != c.in_channels && c.out_channels != 2 * c.in_channels {
            return Err(format!("out_channels {} is neither in_channels {} nor twice it (learned sigma)", c.out_channels, c.in_channels));
        }
        Ok(c)
    }

    /// The width D = heads · head_dim.
    pub fn inner(&self) -> usize {
        self.heads * self.attention_head_dim
    }

    /// Patches per side, and tokens N.
    pub fn grid(&self) -> usize {
        self.sample_size / self.patch_size
    }
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Whether the second half of the output channels is the learned variance (DiTPipeline
    /// then keeps the first `in_channels` for the sampler).
    pub fn learned_sigma(&self) -> bool {
        self.out_channels == 2 * self.in_channels
    }
}

/// `[C, H, W]` → `[N, C·p·p]`, token `i·(W/p) + j` holding the patch at row i, column j in the
/// conv weight's `(c, py, px)` order.
pub fn patchify(x: &[f32], c: usize, h: usize, w: usize, p: usize) -> Vec<f32> {
    let (gh, gw) = (h / p, w / p);
    let mut out = Vec::with_capacity(c * h * w);
    for i in 0..gh {
        for j in 0..gw {
            for ch in 0..c {
                for py in 0..p {
                    let row = (ch * h + i * p + py) * w + j * p;
                    out.extend_from_slice(&x[row..row + p]);
                }
            }
        }
    }
    out
}

/// `[N, p·p·C]` (features in `(py, px, c)` order, diffusers' `nhwpqc`) → `[C, H, W]`.
pub fn unpatchify(t: &[f32], c: usize, h: usize, w: usize, p: usize) -> Vec<f32> {
    let gw = w / p;
    let mut out = vec![0f32; c * h * w];
    for (n, feats) in t.chunks_exact(p * p * c).enumerate() {
        let (i, j) = (n / gw, n % gw);
        for py in 0..p {
            for px in 0..p {
                for ch in 0..c {
                    out[(ch * h + i * p + py) * w + j * p + px] = feats[(py * p + px) * c + ch];
                }
            }
        }
    }
    out
}

/// diffusers' `get_2d_sincos_pos_embed(dim, grid)` with `base_size = grid` and interpolation 1:
/// token `(i, j)` is `[sin(j·ω), cos(j·ω), sin(i·ω), cos(i·ω)]`, each `dim/4` wide,
/// `ω_k = 10000^(-k/(dim/4))`, in f64 as torch does, rounded to f32. (The first half takes
/// the column: diffusers' meshgrid puts w first.)
pub fn sincos_pos_embed(dim: usize, grid: usize) -> Vec<f32> {
    let q = dim / 4;
    let omega: Vec<f64> = (0..q).map(|k| 1.0 / 10000f64.powf(k as f64 / q as f64)).collect();
    let mut out = Vec::with_capacity(grid * grid * dim);
    for i in 0..grid {
        for j in 0..grid {
            for pos in [j as f64, i as f64] {
                out.extend(omega.iter().map(|w| (pos * w).sin() as f32));
                out.extend(omega.iter().map(|w| (pos * w).cos() as f32));
            }
        }
    }
    out
}

/// `norm1.emb`: `CombinedTimestepLabelEmbeddings` (the class table stays in the memory-mapped
/// file; one row per sequence is gathered on the host).
pub struct TimestepLabelEmbedding {
    /// `timestep_embedder.linear_1` (SiLU fused) and `linear_2`.
    pub linear_1: Linear,
    pub linear_2: Linear,
    /// `class_embedder.embedding_table.weight`, `[num_classes + 1, D]`.
    table: String,
}

/// One `BasicTransformerBlock` with `norm_type = "ada_norm_zero"` (no cross attention).
pub struct DitBlock {
    pub emb: TimestepLabelEmbedding,
    /// `norm1.linear` split into its six chunks: shift_msa, scale_msa, gate_msa, shift_mlp,
    /// scale_mlp, gate_mlp (each `[D, D]`; the scale chunks' biases carry the `+ 1`).
    pub norm1_linear: Vec<Linear>,
    /// `attn1.to_q/k/v` fused `[D, 3D]`, and `attn1.to_out.0`.
    pub attn1_qkv: Linear,
    pub attn1_to_out: Linear,
    /// `ff.net.0.proj` (GELU-tanh fused) and `ff.net.2`.
    pub ff_net_0: Linear,
    pub ff_net_2: Linear,
}

pub struct DiTTransformer2DModel {
    pub config: DitConfig,
    pub dtype: DType,
    weights: Component,
    /// `pos_embed.proj` as a GEMM: weight `[C·p·p, D]`.
    pub pos_embed_proj: Linear,
    /// The sin-cos position embedding `[1, N, D]`.
    pub pos_embed: Tensor,
    pub transformer_blocks: Vec<DitBlock>,
    /// `proj_out_1` split: shift, scale (`+ 1` in its bias).
    pub proj_out_1: Vec<Linear>,
    pub proj_out_2: Linear,
}

struct Loader<'a> {
    ctx: &'a Context,
    c: &'a Component,
    dtype: DType,
}

impl Loader<'_> {
    fn vec(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        Ok(self.c.get(name)?.expect_shape(&[n])?.to_f32()?)
    }
    fn upload(&self, v: &[f32], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_f32(self.ctx, v, shape, self.dtype)
    }
    /// Weight `[out, in]` (or `[out, ...]` flattened) transposed to `[in, out]`.
    fn weight_t(&self, p: &str, out: usize, inp: usize) -> Result<Vec<f32>> {
        let name = format!("{p}.weight");
        let view = self.c.get(&name)?;
        if view.numel() != out * inp || view.shape.first() != Some(&out) {
            return Err(WeightsError::Shape { path: self.c.path().into(), name, got: view.shape.clone(), want: format!("[{out}, {inp}]") }.into());
        }
        let v = view.to_f32()?;
        let mut t = vec![0f32; out * inp];
        for o in 0..out {
            for i in 0..inp {
                t[i * out + o] = v[o * inp + i];
            }
        }
        Ok(t)
    }
    fn linear(&self, p: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear { weight_t: self.upload(&self.weight_t(p, out, inp)?, &[inp, out])?, bias: self.upload(&self.vec(&format!("{p}.bias"), out)?, &[out])? })
    }
    /// A Linear whose output is `k` chunks of `d` (diffusers' `.chunk(k, dim=1)`) as k Linears;
    /// `plus_one` chunks get `+ 1` on their bias (`1 + scale`).
    fn chunks(&self, p: &str, k: usize, d: usize, inp: usize, plus_one: &[usize]) -> Result<Vec<Linear>> {
        let w = self.weight_t(p, k * d, inp)?;
        let b = self.vec(&format!("{p}.bias"), k * d)?;
        (0..k)
            .map(|j| {
                let wj: Vec<f32> = w.chunks_exact(k * d).flat_map(|row| row[j * d..(j + 1) * d].iter().copied()).collect();
                let one = if plus_one.contains(&j) { 1.0 } else { 0.0 };
                let bj: Vec<f32> = b[j * d..(j + 1) * d].iter().map(|v| v + one).collect();
                Ok(Linear { weight_t: self.upload(&wj, &[inp, d])?, bias: self.upload(&bj, &[d])? })
            })
            .collect()
    }
    fn block(&self, i: usize, cfg: &DitConfig) -> Result<DitBlock> {
        let d = cfg.inner();
        let p = format!("transformer_blocks.{i}");
        let table = format!("{p}.norm1.emb.class_embedder.embedding_table.weight");
        self.c.get(&table)?.expect_shape(&[cfg.num_classes + 1, d])?;
        // Fused QKV [D, 3D]: row r = input feature r, columns q | k | v.
        let mut w = vec![0f32; d * 3 * d];
        let mut b = Vec::with_capacity(3 * d);
        for (j, name) in ["to_q", "to_k", "to_v"].iter().enumerate() {
            let t = self.weight_t(&format!("{p}.attn1.{name}"), d, d)?;
            for r in 0..d {
                w[r * 3 * d + j * d..r * 3 * d + (j + 1) * d].copy_from_slice(&t[r * d..(r + 1) * d]);
            }
            b.extend(self.vec(&format!("{p}.attn1.{name}.bias"), d)?);
        }
        let ff = self.c.shape(&format!("{p}.ff.net.0.proj.weight")).and_then(|s| s.first().copied()).unwrap_or(4 * d);
        Ok(DitBlock {
            emb: TimestepLabelEmbedding {
                linear_1: self.linear(&format!("{p}.norm1.emb.timestep_embedder.linear_1"), d, TIME_PROJ)?,
                linear_2: self.linear(&format!("{p}.norm1.emb.timestep_embedder.linear_2"), d, d)?,
                table,
            },
            norm1_linear: self.chunks(&format!("{p}.norm1.linear"), 6, d, d, &[1, 4])?,
            attn1_qkv: Linear { weight_t: self.upload(&w, &[d, 3 * d])?, bias: self.upload(&b, &[3 * d])? },
            attn1_to_out: self.linear(&format!("{p}.attn1.to_out.0"), d, d)?,
            ff_net_0: self.linear(&format!("{p}.ff.net.0.proj"), ff, d)?,
            ff_net_2: self.linear(&format!("{p}.ff.net.2"), d, ff)?,
        })
    }
}

fn gemm(ctx: &Context, x: &Tensor, l: &Linear, act: Activation, residual: Option<&Tensor>) -> Result<Tensor> {
    matmul(ctx, x, &l.weight_t, GemmOpts { bias: Some(&l.bias), act, residual, ..Default::default() })
}

/// adaLN: the modulation vectors `linear_k(silu(c))` of one sequence, each `[1, D]`.
pub fn modulation(ctx: &Context, c_silu: &Tensor, linears: &[Linear]) -> Result<Vec<Tensor>> {
    linears.iter().map(|l| gemm(ctx, c_silu, l, Activation::Identity, None)).collect()
}

/// `LayerNorm(x) · (1 + scale) + shift` with the `+ 1` already in `scale1p`.
pub fn modulate(ctx: &Context, x: &Tensor, shift: &Tensor, scale1p: &Tensor, eps: f32) -> Result<Tensor> {
    layer_norm(ctx, x, scale1p, shift, eps)
}

/// adaLN-Zero's gated residual `x + gate · y`, `gate` `[1, D]` over every row of `y`.
pub fn gated_residual(ctx: &Context, x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    add(ctx, x, &binary_broadcast(ctx, BinaryOp::Mul, y, gate, 1, 1.0)?)
}

impl DiTTransformer2DModel {
    /// Load from a `transformer/` component (its `config.json` is required).
    pub fn load(ctx: &Context, c: &Component, dtype: DType) -> Result<DiTTransformer2DModel> {
        let path = c.path().to_string();
        let cfg = c.config.as_ref().ok_or_else(|| WeightsError::Config { path: path.clone(), detail: "the DiT transformer needs its config.json".into() })?;
        let config = DitConfig::from_json(cfg).map_err(|detail| WeightsError::Config { path, detail })?;
        let l = Loader { ctx, c, dtype };
        let (d, k) = (config.inner(), config.in_channels * config.patch_size * config.patch_size);
        let pos = sincos_pos_embed(d, config.grid());
        Ok(DiTTransformer2DModel {
            pos_embed_proj: l.linear("pos_embed.proj", d, k)?,
            pos_embed: l.upload(&pos, &[1, config.tokens(), d])?,
            transformer_blocks: (0..config.num_layers).map(|i| l.block(i, &config)).collect::<Result<_>>()?,
            proj_out_1: l.chunks("proj_out_1", 2, d, d, &[1])?,
            proj_out_2: l.linear("proj_out_2", config.patch_size * config.patch_size * config.out_channels, d)?,
            config,
            dtype,
            weights: c.clone(),
        })
    }

    /// `silu(timestep_embedder(t) + class_embedder(label))` of one block for one sequence,
    /// `t_proj` the `[1, 256]` sinusoidal projection.
    fn conditioning(&self, ctx: &Context, e: &TimestepLabelEmbedding, t_proj: &Tensor, label: u32) -> Result<Tensor> {
        let d = self.config.inner();
        let row = self.weights.get(&e.table)?.gather_rows(&[label])?;
        let class = Tensor::from_f32(ctx, &row, &[1, d], self.dtype)?;
        let h = gemm(ctx, t_proj, &e.linear_1, Activation::Silu, None)?;
        silu(ctx, &gemm(ctx, &h, &e.linear_2, Activation::Identity, Some(&class))?)
    }

    /// One adaLN-Zero block on `x` `[1, N, D]`, conditioned by `c_silu` `[1, D]`.
    pub fn block(&self, ctx: &Context, b: &DitBlock, x: &Tensor, c_silu: &Tensor) -> Result<Tensor> {
        let cfg = &self.config;
        let m = modulation(ctx, c_silu, &b.norm1_linear)?;
        let h = modulate(ctx, x, &m[0], &m[1], ADA_EPS)?;
        let qkv = gemm(ctx, &h, &b.attn1_qkv, Activation::Identity, None)?;
        let a = attention_qkv(ctx, &qkv, cfg.heads, (cfg.attention_head_dim as f32).powf(-0.5), false)?;
        let a = gemm(ctx, &a, &b.attn1_to_out, Activation::Identity, None)?;
        let x = gated_residual(ctx, x, &a, &m[2])?;
        let h = modulate(ctx, &x, &m[3], &m[4], cfg.norm_eps)?;
        let h = gemm(ctx, &h, &b.ff_net_0, Activation::GeluTanh, None)?;
        let h = gemm(ctx, &h, &b.ff_net_2, Activation::Identity, None)?;
        gated_residual(ctx, &x, &h, &m[5])
    }

    /// The transformer on `batch` latents `[B, C, S, S]` (host, row-major) at `timesteps[b]`
    /// with `labels[b]` (`num_classes` = the null class): `[B, out_channels, S, S]`.
    pub async fn forward_async(&self, ctx: &Context, sample: &[f32], timesteps: &[f32], labels: &[u32]) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let (c, s, p) = (cfg.in_channels, cfg.sample_size, cfg.patch_size);
        let bn = labels.len();
        if sample.len() != bn * c * s * s || timesteps.len() != bn {
            return Err(Error::Shape {
                op: "dit",
                detail: format!("{} values, {} timesteps for {bn} latents of [{c}, {s}, {s}] (DiT's sample_size is fixed)", sample.len(), timesteps.len()),
            });
        }
        if let Some(bad) = labels.iter().find(|&&l| l as usize > cfg.num_classes) {
            return Err(Error::Unsupported(format!("class label {bad}: this DiT has {} classes (0..{}; {} = unconditional)", cfg.num_classes, cfg.num_classes - 1, cfg.num_classes)));
        }
        let n = cfg.tokens();
        let mut out = Vec::with_capacity(bn * cfg.out_channels * s * s);
        for (b, (&t, &label)) in timesteps.iter().zip(labels).enumerate() {
            let patches = patchify(&sample[b * c * s * s..(b + 1) * c * s * s], c, s, s, p);
            let x = Tensor::from_f32(ctx, &patches, &[1, n, c * p * p], self.dtype)?;
            let mut x = gemm(ctx, &x, &self.pos_embed_proj, Activation::Identity, Some(&self.pos_embed))?;
            // Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)
            let t_proj = Tensor::from_f32(ctx, &timestep_embedding_values(&[t], TIME_PROJ, true, 1.0, 10000.0), &[1, TIME_PROJ], self.dtype)?;
            let mut c0 = None;
            for blk in &self.transformer_blocks {
                let c_silu = self.conditioning(ctx, &blk.emb, &t_proj, label)?;
                x = self.block(ctx, blk, &x, &c_silu)?;
                c0.get_or_insert(c_silu);
            }
            let c0 = match c0 {
                Some(c) => c,
                None => return Err(Error::Unsupported("a DiT with no transformer blocks".into())),
            };
            let m = modulation(ctx, &c0, &self.proj_out_1)?;
            let h = modulate(ctx, &x, &m[0], &m[1], ADA_EPS)?;
            let h = gemm(ctx, &h, &self.proj_out_2, Activation::Identity, None)?;
            out.extend(unpatchify(&h.to_f32(ctx).await?, cfg.out_channels, s, s, p));
        }
        Ok(out)
    }

    /// Blocking [`Self::forward_async`] (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward(&self, ctx: &Context, sample: &[f32], timesteps: &[f32], labels: &[u32]) -> Result<Vec<f32>> {
        pollster::block_on(self.forward_async(ctx, sample, timesteps, labels))
    }
}
