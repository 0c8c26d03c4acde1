//! GLIGEN's additions to the UNet (diffusers `attention_type="gated"`): a `position_net`
//! (`GLIGENTextBoundingboxProjection`, text-only) turning (phrase embedding, box) pairs into
//! grounding tokens, and in every BasicTransformerBlock a `fuser` (`GatedSelfAttentionDense`)
//! between the self- and cross-attention:
//!
//! ```text
//! objs = linear(objs)
//! x = x + tanh(alpha_attn)  · attn(norm1(cat[x, objs]))[:, :len(x)]
//! x = x + tanh(alpha_dense) · ff(norm2(x))
//! ```
//!
//! Only the visual tokens' outputs are kept, so the attention's queries are `norm1(x)` alone and
//! its keys/values `norm1(cat[x, objs])` (a cross-attention on the existing kernel); the gates
//! `tanh(alpha)` are folded into `attn.to_out.0` and `ff.net.2` at load.

use super::unet::{Attention, Linear, Loader, Norm};
use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor};
use crate::ops::elementwise::Activation;
use crate::ops::gemm::{matmul, GemmOpts};
use crate::ops::norm::layer_norm;
use crate::ops::resample::concat_channels;
use crate::ops::softmax::geglu;

/// diffusers' `max_objs`: the grounding tokens per image (unused ones get the null features).
pub const MAX_OBJECTS: usize = 30;
/// `fourier_freqs` of the position net: 8 frequencies × (sin, cos) × 4 coordinates.
const FOURIER_FREQS: usize = 8;
const POSITION_DIM: usize = FOURIER_FREQS * 2 * 4;
/// LayerNorm eps of the fuser (torch's default).
const EPS: f32 = 1e-5;

pub struct GatedSelfAttention {
    pub linear: Linear,
    pub norm1: Norm,
    /// `attn` as a cross-attention over `norm1(cat[x, objs])`; `to_out` scaled by the gate.
    pub attn: Attention,
    pub norm2: Norm,
    pub ff_proj: Linear,
    /// `ff.net.2`, scaled by the gate.
    pub ff_out: Linear,
}

pub struct PositionNet {
    /// `linears.0/2/4` (SiLU between).
    pub linears: [Linear; 3],
    /// `null_positive_feature` `[positive_len]`, `null_position_feature` `[64]` (host).
    pub null_positive: Vec<f32>,
    pub null_position: Vec<f32>,
    pub positive_len: usize,
}

impl Loader<'_> {
    /// The block's `fuser`, if the checkpoint has one.
    pub(crate) fn fuser(&self, block: &str, ch: usize, context_dim: usize, heads: usize) -> Result<Option<GatedSelfAttention>> {
        let p = format!("{block}.fuser");
        if self.c.get(&format!("{p}.linear.weight")).is_err() {
            return Ok(None);
        }
        let gate = |name: &str| -> Result<f32> {
            let t = self.c.get(&format!("{p}.{name}"))?;
            let v = t.to_f32()?;
            match v[..] {
                [a] => Ok(a.tanh()),
                _ => Err(Error::Shape { op: "gligen fuser", detail: format!("{p}.{name} has {} values, expected a scalar", v.len()) }),
            }
        };
        let (ga, gd) = (gate("alpha_attn")?, gate("alpha_dense")?);
        let mut attn = self.attention(&format!("{p}.attn"), ch, Some(ch), heads)?;
        attn.to_out = self.scaled_linear(&format!("{p}.attn.to_out.0"), ch, ch, ga)?;
        let inner = 4 * ch;
        Ok(Some(GatedSelfAttention {
            linear: self.linear(&format!("{p}.linear"), ch, context_dim, true)?,
            norm1: self.norm(&format!("{p}.norm1"), ch)?,
            attn,
            norm2: self.norm(&format!("{p}.norm2"), ch)?,
            ff_proj: self.linear(&format!("{p}.ff.net.0.proj"), 2 * inner, ch, true)?,
            ff_out: self.scaled_linear(&format!("{p}.ff.net.2"), ch, inner, gd)?,
        }))
    }

    fn scaled_linear(&self, p: &str, out: usize, inp: usize, s: f32) -> Result<Linear> {
        let w: Vec<f32> = self.matrix_t(&format!("{p}.weight"), out, inp)?.iter().map(|v| v * s).collect();
        let b: Vec<f32> = self.c.get(&format!("{p}.bias"))?.expect_shape(&[out])?.to_f32()?.iter().map(|v| v * s).collect();
        Ok(Linear { weight_t: self.upload(&w, &[inp, out])?, bias: Some(self.upload(&b, &[out])?) })
    }

    /// The UNet's `position_net`, if the checkpoint has one.
    pub(crate) fn position_net(&self, out_dim: usize) -> Result<Option<PositionNet>> {
        let Ok(w0) = self.c.get("position_net.linears.0.weight") else { return Ok(None) };
        let Some(positive_len) = w0.shape.get(1).and_then(|&n| n.checked_sub(POSITION_DIM)).filter(|&n| n > 0 && w0.shape.len() == 2) else {
            return Err(Error::Shape { op: "gligen position_net", detail: format!("linears.0.weight {:?} is not [512, positive_len + 64]", w0.shape) });
        };
        let hidden = w0.shape[0];
        let host = |name: &str, n: usize| -> Result<Vec<f32>> { Ok(self.c.get(name)?.expect_shape(&[n])?.to_f32()?) };
        Ok(Some(PositionNet {
            linears: [
                self.linear("position_net.linears.0", hidden, positive_len + POSITION_DIM, true)?,
                self.linear("position_net.linears.2", hidden, hidden, true)?,
                self.linear("position_net.linears.4", out_dim, hidden, true)?,
            ],
            null_positive: host("position_net.null_positive_feature", positive_len)?,
            null_position: host("position_net.null_position_feature", POSITION_DIM)?,
            positive_len,
        }))
    }
}

/// diffusers' `get_fourier_embeds_from_boundingbox(8, box)`: for each frequency `100^(k/8)`,
/// sin then cos of it times each of (x0, y0, x1, y1).
pub fn fourier_embedding(b: [f32; 4]) -> [f32; POSITION_DIM] {
    let mut out = [0f32; POSITION_DIM];
    for k in 0..FOURIER_FREQS {
        let f = 100f32.powf(k as f32 / FOURIER_FREQS as f32);
        for c in 0..4 {
            out[k * 8 + c] = (f * b[c]).sin();
            out[k * 8 + 4 + c] = (f * b[c]).cos();
        }
    }
    out
}

impl PositionNet {
    /// The grounding tokens `[B, 30, C]`: per batch entry with `grounded[b]`, one token per
    /// (phrase embedding, box) and the null features after; the others (CFG's uncond half,
    /// masked to 0 by diffusers) all null.
    pub fn objs(&self, ctx: &Context, phrases: &[f32], boxes: &[[f32; 4]], grounded: &[bool], dtype: crate::gpu::DType) -> Result<Tensor> {
        let (n, d) = (boxes.len(), self.positive_len);
        if n > MAX_OBJECTS || phrases.len() != n * d {
            return Err(Error::Shape { op: "gligen", detail: format!("{n} boxes (at most {MAX_OBJECTS}) with {} phrase values ({d} each)", phrases.len()) });
        }
        let row = d + POSITION_DIM;
        let mut x = Vec::with_capacity(grounded.len() * MAX_OBJECTS * row);
        for &g in grounded {
            for i in 0..MAX_OBJECTS {
                if g && i < n {
                    x.extend_from_slice(&phrases[i * d..(i + 1) * d]);
                    x.extend_from_slice(&fourier_embedding(boxes[i]));
                } else {
                    x.extend_from_slice(&self.null_positive);
                    x.extend_from_slice(&self.null_position);
                }
            }
        }
        let x = Tensor::from_f32(ctx, &x, &[grounded.len(), MAX_OBJECTS, row], dtype)?;
        let [l0, l1, l2] = &self.linears;
        fn silu(l: &Linear) -> GemmOpts<'_> {
            GemmOpts { bias: l.bias.as_ref(), act: Activation::Silu, ..Default::default() }
        }
        let h = matmul(ctx, &x, &l0.weight_t, silu(l0))?;
        let h = matmul(ctx, &h, &l1.weight_t, silu(l1))?;
        matmul(ctx, &h, &l2.weight_t, GemmOpts { bias: l2.bias.as_ref(), ..Default::default() })
    }
}

impl GatedSelfAttention {
    /// The fuser on token-major `x [B, L, C]` with grounding tokens `objs [B, N, D]`.
    pub fn forward(&self, ctx: &Context, x: &Tensor, objs: &Tensor) -> Result<Tensor> {
        let (b, l, c) = (x.dim(0), x.dim(1), x.dim(2));
        let o = matmul(ctx, objs, &self.linear.weight_t, GemmOpts { bias: self.linear.bias.as_ref(), ..Default::default() })?;
        let n = o.dim(1);
        // cat along the tokens: [B, L, C] and [B, N, C] seen as NCHW with the tokens as channels
        let cat = concat_channels(ctx, &x.reshape(&[b, l, c, 1])?, &o.reshape(&[b, n, c, 1])?)?.reshape(&[b, l + n, c])?;
        let (w, bias) = (&self.norm1.weight, &self.norm1.bias);
        let kv = layer_norm(ctx, &cat, w, bias, EPS)?;
        let x = super::unet::attend(ctx, &self.attn, &layer_norm(ctx, x, w, bias, EPS)?, Some((&kv).into()), x, None)?;
        let h = layer_norm(ctx, &x, &self.norm2.weight, &self.norm2.bias, EPS)?;
        let h = geglu(ctx, &matmul(ctx, &h, &self.ff_proj.weight_t, GemmOpts { bias: self.ff_proj.bias.as_ref(), ..Default::default() })?)?;
        matmul(ctx, &h, &self.ff_out.weight_t, GemmOpts { bias: self.ff_out.bias.as_ref(), residual: Some(&x), ..Default::default() })
    }
}
