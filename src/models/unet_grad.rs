//! The UNet's reverse pass for pix2pix-zero's cross-attention guidance (diffusers'
//! `StableDiffusionPix2PixZeroPipeline`): the gradient, with respect to the UNet's input sample,
//! of the L2 distance between every cross-attention map (`attn2`'s softmax probabilities
//! `[B·heads, Lq, Lk]`) and a reference map,
//!
//! `loss = Σ_layers mean_{b,h} Σ_{i,j} (P − P_ref)²` (diffusers' `Pix2PixZeroL2Loss`).
//!
//! Only activations are differentiated (weights, the text and the time embedding are constants).
//! The forward pass records each module's input ([`Step`]); the backward walks the record in
//! reverse and recomputes each module's internals from its input (activation checkpointing, so
//! memory is one module's intermediates, not the whole graph's). Attention maps are computed
//! explicitly here (GEMM + softmax on per-head tensors) rather than by the fused attention kernel,
//! so the maps the loss sees and the ones it differentiates are the same numbers.
//!
//! SD 1.x/2.x/XL UNets; GLIGEN fusers, `only_cross_attention` and odd latent sizes (a
//! `resize_nearest` upsample) are refused.

use super::unet::{
    check_inputs, resnet_keeping, time_embedding, AddedCond, Attention, BasicTransformerBlock, Conv, ResnetBlock2D, Transformer2DModel, UNet2DConditionModel, UNetConfig,
    ATTN_GROUP_NORM_EPS, LAYER_NORM_EPS,
};
use crate::error::{Error, Result};
use crate::gpu::{Context, Tensor};
use crate::ops::attention::AttnInput;
use crate::ops::elementwise::{add, binary_broadcast, scale, BinaryOp};
use crate::ops::gemm::{matmul, GemmOpts};
use crate::ops::grad::{
    conv2d_input_grad, geglu_grad, group_norm_grad, layer_norm_grad, merge_heads, softmax_grad, split_channels, split_heads, upsample_nearest2x_grad,
};
use crate::ops::norm::{group_norm, layer_norm};
use crate::ops::resample::{concat_channels, copy_blocks, transpose_last2, upsample_nearest2x};
use crate::ops::softmax::{geglu, softmax};

/// One recorded module of the forward pass, with what its backward needs.
enum Step<'m> {
    ConvIn,
    /// The output just computed became a skip connection.
    SkipPush,
    Resnet(&'m ResnetBlock2D, Tensor),
    /// A Transformer2DModel and its input; its cross-attentions are layers `first..`.
    Transformer(&'m Transformer2DModel, Tensor, usize),
    /// A down- or up-sampler's convolution and its input size.
    Conv(&'m Conv, (usize, usize)),
    /// `concat_channels(x, skip)` with `x`'s channel count.
    Concat(usize),
    Upsample,
}

/// What the forward pass of [`UNet2DConditionModel::forward_cross_maps`] returns.
pub struct CrossAttentionMaps {
    /// The noise prediction.
    pub sample: Tensor,
    /// Every `attn2`'s probabilities `[B·heads, Lq, Lk]` in forward order (down blocks, mid
    /// block, up blocks; transformer blocks in order).
    pub maps: Vec<Tensor>,
}

/// The inputs shared by every module of one pass.
struct Pass<'a> {
    ctx: &'a Context,
    cfg: &'a UNetConfig,
    emb_act: Tensor,
    text: &'a Tensor,
}

impl UNet2DConditionModel {
    fn check_differentiable(&self) -> Result<()> {
        if self.position_net.is_some() {
            return Err(Error::Unsupported("cross-attention guidance (pix2pix-zero) does not support GLIGEN UNets".into()));
        }
        if self.config.only_cross_attention.iter().any(|&b| b) {
            return Err(Error::Unsupported("cross-attention guidance (pix2pix-zero) does not support only_cross_attention UNets (the x4 upscaler)".into()));
        }
        Ok(())
    }

    /// The noise prediction for `sample` and every cross-attention map, as diffusers'
    /// `Pix2PixZeroAttnProcessor` records them (pix2pix-zero's reference maps).
    pub fn forward_cross_maps(&self, ctx: &Context, sample: &Tensor, timestep: f32, text: &Tensor, added: Option<&AddedCond>) -> Result<CrossAttentionMaps> {
        let mut maps = Vec::new();
        let (out, _) = self.recorded_forward(ctx, sample, timestep, text, added, Some(&mut maps), true)?;
        let sample = out.ok_or_else(|| Error::Shape { op: "unet", detail: "the recorded forward returned no sample".into() })?;
        Ok(CrossAttentionMaps { sample, maps })
    }

    /// `d loss / d sample` for `loss = Σ_layers mean_{b,h} Σ (P − reference)²` over the
    /// cross-attention maps `P` of `sample` under `text` (`reference` as
    /// [`Self::forward_cross_maps`] returns them, same shapes). Shaped like `sample`.
    pub fn cross_attention_loss_grad(
        &self,
        ctx: &Context,
        sample: &Tensor,
        timestep: f32,
        text: &Tensor,
        added: Option<&AddedCond>,
        reference: &[Tensor],
    ) -> Result<Tensor> {
        let (_, (pass, tape)) = self.recorded_forward(ctx, sample, timestep, text, added, None, false)?;
        let layers = tape.iter().map(|s| if let Step::Transformer(t, _, _) = s { t.transformer_blocks.len() } else { 0 }).sum::<usize>();
        if reference.len() != layers {
            return Err(Error::Shape { op: "cross-attention guidance", detail: format!("{} reference maps for {layers} cross-attention layers", reference.len()) });
        }
        let (mut g, mut skip_grads): (Option<Tensor>, Vec<Option<Tensor>>) = (None, Vec::new());
        for step in tape.into_iter().rev() {
            g = match step {
                Step::Transformer(t, x, first) => Some(transformer_grad(&pass, t, &x, g, &reference[first..first + t.transformer_blocks.len()])?),
                Step::Resnet(r, x) => g.map(|g| resnet_grad(&pass, r, &x, &g)).transpose()?,
                Step::Conv(c, hw) => g.map(|g| conv2d_input_grad(ctx, &g, c.weight.tensor(), c.stride, c.padding, hw)).transpose()?,
                Step::Upsample => g.map(|g| upsample_nearest2x_grad(ctx, &g)).transpose()?,
                Step::Concat(ca) => match g {
                    Some(g) => {
                        let (gx, gs) = split_channels(ctx, &g, ca)?;
                        skip_grads.push(Some(gs));
                        Some(gx)
                    }
                    None => {
                        skip_grads.push(None);
                        None
                    }
                },
                Step::SkipPush => match (g, skip_grads.pop().flatten()) {
                    (Some(a), Some(b)) => Some(add(ctx, &a, &b)?),
                    (a, b) => a.or(b),
                },
                Step::ConvIn => {
                    let c = &self.conv_in;
                    let hw = (sample.dim(2), sample.dim(3));
                    return match g {
                        Some(g) => conv2d_input_grad(ctx, &g, c.weight.tensor(), c.stride, c.padding, hw),
                        None => Tensor::zeros(ctx, sample.shape(), sample.dtype()),
                    };
                }
            };
        }
        Err(Error::Shape { op: "cross-attention guidance", detail: "the record has no conv_in".into() })
    }

    /// The forward pass at module granularity, recording each module's input. `full`: also the
    /// output head (`conv_norm_out`, `conv_out`), which no cross-attention map depends on.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn recorded_forward<'a>(
        &'a self,
        ctx: &'a Context,
        sample: &Tensor,
        timestep: f32,
        text: &'a Tensor,
        added: Option<&AddedCond>,
        mut maps: Option<&mut Vec<Tensor>>,
        full: bool,
    ) -> Result<(Option<Tensor>, (Pass<'a>, Vec<Step<'a>>))> {
        self.check_differentiable()?;
        let cfg = &self.config;
        let ts = check_inputs(cfg, "unet", sample, &[timestep], text)?;
        let aug = super::unet::added_embedding(ctx, cfg, self.dtype, self.add_embedding.as_ref(), added, sample.dim(0), "unet added conditioning")?;
        if self.class_embedding.is_some() {
            return Err(Error::Unsupported("cross-attention guidance (pix2pix-zero) does not support UNets with class embeddings".into()));
        }
        let (_, emb_act) = time_embedding(ctx, cfg, self.dtype, &self.time_embedding_linear_1, &self.time_embedding_linear_2, &ts, aug.as_ref(), None)?;
        let pass = Pass { ctx, cfg, emb_act, text };
        let mut tape = vec![Step::ConvIn, Step::SkipPush];
        let mut layer = 0;
        let mut x = self.conv_in.forward(ctx, sample)?;
        let mut skips = vec![x.clone()];
        let mut run_transformer = |t: &'a Transformer2DModel, x: &Tensor, tape: &mut Vec<Step<'a>>| -> Result<Tensor> {
            tape.push(Step::Transformer(t, x.clone(), layer));
            layer += t.transformer_blocks.len();
            transformer_forward(&pass, t, x, maps.as_deref_mut())
        };
        for block in &self.down_blocks {
            for (j, r) in block.resnets.iter().enumerate() {
                tape.push(Step::Resnet(r, x.clone()));
                x = resnet_keeping(ctx, cfg, r, &x, &pass.emb_act, false)?.0;
                if let Some(t) = block.attentions.get(j) {
                    x = run_transformer(t, &x, &mut tape)?;
                }
                skips.push(x.clone());
                tape.push(Step::SkipPush);
            }
            if let Some(conv) = &block.downsampler {
                tape.push(Step::Conv(conv, (x.dim(2), x.dim(3))));
                x = conv.forward(ctx, &x)?;
                skips.push(x.clone());
                tape.push(Step::SkipPush);
            }
        }
        let mid = &self.mid_block;
        tape.push(Step::Resnet(&mid.resnets[0], x.clone()));
        x = resnet_keeping(ctx, cfg, &mid.resnets[0], &x, &pass.emb_act, false)?.0;
        for (t, r) in mid.attentions.iter().zip(&mid.resnets[1..]) {
            x = run_transformer(t, &x, &mut tape)?;
            tape.push(Step::Resnet(r, x.clone()));
            x = resnet_keeping(ctx, cfg, r, &x, &pass.emb_act, false)?.0;
        }
        for block in &self.up_blocks {
            for (j, r) in block.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| Error::Shape { op: "unet", detail: "ran out of skip connections".into() })?;
                tape.push(Step::Concat(x.dim(1)));
                x = concat_channels(ctx, &x, &skip)?;
                tape.push(Step::Resnet(r, x.clone()));
                x = resnet_keeping(ctx, cfg, r, &x, &pass.emb_act, false)?.0;
                if let Some(t) = block.attentions.get(j) {
                    x = run_transformer(t, &x, &mut tape)?;
                }
            }
            if let Some(conv) = &block.upsampler {
                if skips.last().is_some_and(|s| (s.dim(2), s.dim(3)) != (2 * x.dim(2), 2 * x.dim(3))) {
                    return Err(Error::Unsupported(format!(
                        "cross-attention guidance (pix2pix-zero) needs latent sizes divisible by {} (an image side a multiple of {})",
                        cfg.downscale(),
                        8 * cfg.downscale()
                    )));
                }
                tape.push(Step::Upsample);
                x = upsample_nearest2x(ctx, &x)?;
                tape.push(Step::Conv(conv, (x.dim(2), x.dim(3))));
                x = conv.forward(ctx, &x)?;
            }
        }
        let out = if full {
            let n = &self.conv_norm_out;
            let h = group_norm(ctx, &x, cfg.norm_num_groups, &n.weight, &n.bias, cfg.norm_eps, true)?;
            Some(self.conv_out.forward(ctx, &h)?)
        } else {
            None
        };
        Ok((out, (pass, tape)))
    }
}

fn resnet_grad(p: &Pass, r: &ResnetBlock2D, x: &Tensor, g: &Tensor) -> Result<Tensor> {
    let (ctx, groups, eps) = (p.ctx, p.cfg.norm_num_groups, p.cfg.norm_eps);
    let h = resnet_keeping(ctx, p.cfg, r, x, &p.emb_act, true)?.1.ok_or_else(|| internal("resnet kept no norm2 input"))?;
    let hw = (x.dim(2), x.dim(3));
    let conv_grad = |c: &Conv, g: &Tensor| conv2d_input_grad(ctx, g, c.weight.tensor(), c.stride, c.padding, hw);
    let gb = conv_grad(&r.conv2, g)?;
    let gh = group_norm_grad(ctx, &h, &gb, groups, &r.norm2.weight, &r.norm2.bias, eps, true)?;
    let ga = conv_grad(&r.conv1, &gh)?;
    let gx = group_norm_grad(ctx, x, &ga, groups, &r.norm1.weight, &r.norm1.bias, eps, true)?;
    let gs = match &r.conv_shortcut {
        Some(c) => conv_grad(c, g)?,
        None => g.clone(),
    };
    add(ctx, &gx, &gs)
}

/// Transformer2DModel's token-major input `proj_in(norm(x))ᵀ` `[B, HW, C]`.
fn transformer_tokens(p: &Pass, t: &Transformer2DModel, x: &Tensor) -> Result<Tensor> {
    let (ctx, (b, c, hh, ww)) = (p.ctx, (x.dim(0), x.dim(1), x.dim(2), x.dim(3)));
    let h = group_norm(ctx, x, p.cfg.norm_num_groups, &t.norm.weight, &t.norm.bias, ATTN_GROUP_NORM_EPS, false)?;
    let h = transpose_last2(ctx, &h.reshape(&[b, c, hh * ww])?)?;
    matmul(ctx, &h, &t.proj_in.weight_t, GemmOpts { bias: t.proj_in.bias.as_ref(), ..Default::default() })
}

fn transformer_forward(p: &Pass, t: &Transformer2DModel, x: &Tensor, mut maps: Option<&mut Vec<Tensor>>) -> Result<Tensor> {
    let (b, c, hh, ww) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let mut h = transformer_tokens(p, t, x)?;
    for blk in &t.transformer_blocks {
        let acts = block_forward(p, blk, &h)?;
        if let Some(m) = maps.as_deref_mut() {
            m.push(acts.probs.clone());
        }
        h = acts.out;
    }
    let h = transpose_last2(p.ctx, &h)?.reshape(&[b, c, hh, ww])?;
    t.proj_out.forward_residual(p.ctx, &h, x)
}

fn transformer_grad(p: &Pass, t: &Transformer2DModel, x: &Tensor, g: Option<Tensor>, reference: &[Tensor]) -> Result<Tensor> {
    let ctx = p.ctx;
    let (b, c, hh, ww) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    // Each block's input, recomputed.
    let mut inputs = vec![transformer_tokens(p, t, x)?];
    for blk in &t.transformer_blocks[..t.transformer_blocks.len() - 1] {
        let next = block_forward(p, blk, inputs.last().unwrap())?.out;
        inputs.push(next);
    }
    // proj_out is a 1x1 conv on the NCHW map of the last block's output.
    let mut gh = match &g {
        Some(g) => {
            let gm = conv2d_input_grad(ctx, g, t.proj_out.weight.tensor(), 1, 0, (hh, ww))?;
            Some(transpose_last2(ctx, &gm.reshape(&[b, c, hh * ww])?)?)
        }
        None => None,
    };
    for ((blk, input), reference) in t.transformer_blocks.iter().zip(&inputs).zip(reference).rev() {
        gh = Some(block_grad(p, blk, input, gh, reference)?);
    }
    let gh = gh.ok_or_else(|| internal("a Transformer2DModel without transformer blocks"))?;
    let g_tokens = matmul(ctx, &gh, &t.proj_in.weight_t, GemmOpts { trans_b: true, ..Default::default() })?;
    let gn = transpose_last2(ctx, &g_tokens)?.reshape(&[b, c, hh, ww])?;
    let gx = group_norm_grad(ctx, x, &gn, p.cfg.norm_num_groups, &t.norm.weight, &t.norm.bias, ATTN_GROUP_NORM_EPS, false)?;
    match g {
        Some(g) => add(ctx, &gx, &g),
        None => Ok(gx),
    }
}

/// A BasicTransformerBlock's intermediates: `x1 = x + attn1(norm1(x))`,
/// `x2 = x1 + attn2(norm2(x1), text)`, `out = x2 + ff(norm3(x2))`.
struct BlockActs {
    n1: Tensor,
    x1: Tensor,
    n2: Tensor,
    x2: Tensor,
    /// `ff.net.0.proj(norm3(x2))`, the GEGLU's input.
    ff_in: Tensor,
    probs: Tensor,
    out: Tensor,
}

fn block_forward(p: &Pass, blk: &BasicTransformerBlock, x: &Tensor) -> Result<BlockActs> {
    let ctx = p.ctx;
    let ln = |x: &Tensor, n: &super::unet::Norm| layer_norm(ctx, x, &n.weight, &n.bias, LAYER_NORM_EPS);
    let n1 = ln(x, &blk.norm1)?;
    let x1 = self_attention(p, &blk.attn1, &n1, x)?;
    let n2 = ln(&x1, &blk.norm2)?;
    let (x2, probs) = cross_attention(p, &blk.attn2, &n2, &x1)?;
    let ff_in = matmul(ctx, &ln(&x2, &blk.norm3)?, &blk.ff_proj.weight_t, GemmOpts { bias: blk.ff_proj.bias.as_ref(), ..Default::default() })?;
    let o = &blk.ff_out;
    let out = matmul(ctx, &geglu(ctx, &ff_in)?, &o.weight_t, GemmOpts { bias: o.bias.as_ref(), residual: Some(&x2), ..Default::default() })?;
    Ok(BlockActs { n1, x1, n2, x2, ff_in, probs, out })
}

/// `d/d x` of the block for the output gradient `g` (none: the output does not reach the loss)
/// plus the loss of its cross-attention map against `reference`.
fn block_grad(p: &Pass, blk: &BasicTransformerBlock, x: &Tensor, g: Option<Tensor>, reference: &Tensor) -> Result<Tensor> {
    let ctx = p.ctx;
    let a = block_forward(p, blk, x)?;
    let lin_t = |g: &Tensor, w: &Tensor| matmul(ctx, g, w, GemmOpts { trans_b: true, ..Default::default() });
    let g2 = match g {
        Some(g) => {
            let gp = geglu_grad(ctx, &a.ff_in, &lin_t(&g, &blk.ff_out.weight_t)?)?;
            let gn3 = lin_t(&gp, &blk.ff_proj.weight_t)?;
            Some(add(ctx, &g, &layer_norm_grad(ctx, &a.x2, &gn3, &blk.norm3.weight, &blk.norm3.bias, LAYER_NORM_EPS)?)?)
        }
        None => None,
    };
    let gn2 = cross_attention_grad(p, &blk.attn2, &a.n2, &a.probs, g2.as_ref(), reference)?;
    let gl2 = layer_norm_grad(ctx, &a.x1, &gn2, &blk.norm2.weight, &blk.norm2.bias, LAYER_NORM_EPS)?;
    let g1 = match g2 {
        Some(g2) => add(ctx, &g2, &gl2)?,
        None => gl2,
    };
    let gn1 = self_attention_grad(p, &blk.attn1, &a.n1, &g1)?;
    add(ctx, &g1, &layer_norm_grad(ctx, x, &gn1, &blk.norm1.weight, &blk.norm1.bias, LAYER_NORM_EPS)?)
}

fn internal(detail: &str) -> Error {
    Error::Shape { op: "cross-attention guidance", detail: detail.into() }
}

/// Per-head views of an attention: `(heads, head_dim, scale)`.
fn geometry(a: &Attention, c: usize) -> (usize, usize, f32) {
    let d = c / a.heads;
    (a.heads, d, (d as f32).powf(-0.5))
}

/// `residual + to_out(P v)` with `P = softmax(scale · q kᵀ)` per head; `q` `[B·H, Lq, d]`.
fn attend_explicit(p: &Pass, a: &Attention, qh: &Tensor, kh: &Tensor, vh: &Tensor, residual: &Tensor, sc: f32) -> Result<(Tensor, Tensor)> {
    let ctx = p.ctx;
    let probs = softmax(ctx, &matmul(ctx, qh, kh, GemmOpts { trans_b: true, ..Default::default() })?, sc)?;
    let o = merge_heads(ctx, &[&matmul(ctx, &probs, vh, GemmOpts::default())?], a.heads)?;
    let out = matmul(ctx, &o, &a.to_out.weight_t, GemmOpts { bias: a.to_out.bias.as_ref(), residual: Some(residual), ..Default::default() })?;
    Ok((out, probs))
}

/// The self-attention's per-head q, k, v `[B·H, L, d]` from its fused projection.
fn self_qkv(p: &Pass, a: &Attention, n: &Tensor) -> Result<[Tensor; 3]> {
    let c = n.dim(2);
    let (h, d, _) = geometry(a, c);
    let qkv = matmul(p.ctx, n, &a.q_weight_t, GemmOpts::default())?;
    let part = |i: usize| split_heads(p.ctx, AttnInput::cols(&qkv, i * c), h, d);
    Ok([part(0)?, part(1)?, part(2)?])
}

/// The forward needs no map: the fused (flash) attention, memory O(L).
fn self_attention(p: &Pass, a: &Attention, n: &Tensor, residual: &Tensor) -> Result<Tensor> {
    super::unet::attend(p.ctx, a, n, None, residual, None)
}

/// `d/d n` of attn1 for the output gradient `g`. The map `P` `[B·H, L, L]` is built for as
/// many (batch, head) entries at a time as one binding holds (SD 1.5 at 512x512: 32 MiB each in
/// f16), each chunk's dq, dk and dv copied into place.
fn self_attention_grad(p: &Pass, a: &Attention, n: &Tensor, g: &Tensor) -> Result<Tensor> {
    let ctx = p.ctx;
    let (heads, d, sc) = geometry(a, n.dim(2));
    let [q, k, v] = self_qkv(p, a, n)?;
    let go = matmul(ctx, g, &a.to_out.weight_t, GemmOpts { trans_b: true, ..Default::default() })?;
    let go = split_heads(ctx, AttnInput::whole(&go), heads, d)?;
    let (bh, l) = (q.dim(0), q.dim(1));
    let per_entry = l * l * q.dtype().size();
    let chunk = (ctx.max_binding() as usize / per_entry.max(1)).clamp(1, bh);
    let grads = |q: &Tensor, k: &Tensor, v: &Tensor, go: &Tensor| -> Result<[Tensor; 3]> {
        let probs = softmax(ctx, &matmul(ctx, q, k, GemmOpts { trans_b: true, ..Default::default() })?, sc)?;
        let dp = matmul(ctx, go, v, GemmOpts { trans_b: true, ..Default::default() })?;
        let dv = matmul(ctx, &probs, go, GemmOpts { trans_a: true, ..Default::default() })?;
        let ds = softmax_grad(ctx, &probs, &dp)?;
        let dq = matmul(ctx, &ds, k, GemmOpts { alpha: sc, ..Default::default() })?;
        let dk = matmul(ctx, &ds, q, GemmOpts { trans_a: true, alpha: sc, ..Default::default() })?;
        Ok([dq, dk, dv])
    };
    let [dq, dk, dv] = if chunk == bh {
        grads(&q, &k, &v, &go)?
    } else {
        let empty = || Tensor::empty(ctx, q.shape(), q.dtype());
        let (dq, dk, dv) = (empty()?, empty()?, empty()?);
        let e = l * d;
        for s in (0..bh).step_by(chunk) {
            let m = chunk.min(bh - s);
            let part = grads(&q.narrow0(s, m)?, &k.narrow0(s, m)?, &v.narrow0(s, m)?, &go.narrow0(s, m)?)?;
            for (src, dst) in part.iter().zip([&dq, &dk, &dv]) {
                copy_blocks(ctx, "self-attention gradient", src, 0, 0, dst, s * e, 0, m * e, 1)?;
            }
        }
        [dq, dk, dv]
    };
    let dqkv = merge_heads(ctx, &[&dq, &dk, &dv], heads)?;
    matmul(ctx, &dqkv, &a.q_weight_t, GemmOpts { trans_b: true, ..Default::default() })
}

/// The cross-attention's per-head k and v `[B·H, Lk, d]` (from the text) for width `c`.
fn cross_kv(p: &Pass, a: &Attention, c: usize) -> Result<[Tensor; 2]> {
    let (h, d, _) = geometry(a, c);
    let kv_w = a.kv_weight_t.as_ref().ok_or_else(|| internal("attn2 without k/v weights"))?;
    let kv = matmul(p.ctx, p.text, kv_w, GemmOpts::default())?;
    Ok([split_heads(p.ctx, AttnInput::cols(&kv, 0), h, d)?, split_heads(p.ctx, AttnInput::cols(&kv, c), h, d)?])
}

fn cross_attention(p: &Pass, a: &Attention, n: &Tensor, residual: &Tensor) -> Result<(Tensor, Tensor)> {
    let (h, d, _) = geometry(a, n.dim(2));
    let q = split_heads(p.ctx, AttnInput::whole(&matmul(p.ctx, n, &a.q_weight_t, GemmOpts::default())?), h, d)?;
    let [k, v] = cross_kv(p, a, n.dim(2))?;
    attend_explicit(p, a, &q, &k, &v, residual, geometry(a, n.dim(2)).2)
}

/// `d/d n` of attn2 (input `n`, maps `probs`) for the output gradient `g` plus its layer's loss
/// `mean_{b,h} Σ (P − reference)²`, whose gradient is `2 (P − reference) / (B·H)`.
fn cross_attention_grad(p: &Pass, a: &Attention, n: &Tensor, probs: &Tensor, g: Option<&Tensor>, reference: &Tensor) -> Result<Tensor> {
    let ctx = p.ctx;
    let (heads, d, sc) = geometry(a, n.dim(2));
    if reference.shape() != probs.shape() {
        return Err(Error::Shape { op: "cross-attention guidance", detail: format!("reference map {:?} for a map {:?}", reference.shape(), probs.shape()) });
    }
    let [k, v] = cross_kv(p, a, n.dim(2))?;
    let coef = 2.0 / probs.dim(0) as f32;
    let mut dp = binary_broadcast(ctx, BinaryOp::Add, probs, &scale(ctx, reference, -1.0, 0.0)?, 1, coef)?;
    if let Some(g) = g {
        let go = matmul(ctx, g, &a.to_out.weight_t, GemmOpts { trans_b: true, ..Default::default() })?;
        let go = split_heads(ctx, AttnInput::whole(&go), heads, d)?;
        dp = add(ctx, &dp, &matmul(ctx, &go, &v, GemmOpts { trans_b: true, ..Default::default() })?)?;
    }
    let ds = softmax_grad(ctx, probs, &dp)?;
    let dq = merge_heads(ctx, &[&matmul(ctx, &ds, &k, GemmOpts { alpha: sc, ..Default::default() })?], heads)?;
    matmul(ctx, &dq, &a.q_weight_t, GemmOpts { trans_b: true, ..Default::default() })
}
