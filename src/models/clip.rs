//! The CLIP text encoder of Stable Diffusion 1.x (OpenAI ViT-L/14, `quick_gelu`) and 2.x
//! (OpenCLIP ViT-H/14 as ported to Hugging Face `CLIPTextModel`, `gelu`). Field names mirror the
//! checkpoint keys (`text_model.encoder.layers.N.self_attn.q_proj`, ...).
//!
//! Forward pass, per 77-token sequence:
//!
//! 1. embeddings: the token rows are gathered on the CPU straight from the (memory-mapped)
//!    table, so the 150 MB embedding table is never uploaded, plus the position embedding;
//! 2. each layer: `x += out_proj(attn(qkv(ln1(x))))`, `x += fc2(act(fc1(ln2(x))))`, with q/k/v
//!    fused into one GEMM (weights concatenated and pre-transposed to `[in, out]` at load so the
//!    vec4 GEMM kernel runs), causal attention with scale `head_dim^-0.5`, and the bias,
//!    activation and residual fused into the GEMMs;
//! 3. `final_layer_norm`.
//!
//! CLIP skip as A1111 counts it: 1 = the last layer (normal); n = the output of layer
//! `layers - (n - 1)`, followed by the final layer norm (what SD 2.x and many SD 1.x fine-tunes
//! use with n = 2; diffusers' `clip_skip = n - 1`).
//!
//! SDXL ([`ClipTextModel::encode_sdxl_async`]): both encoders give `hidden_states[-(n + 1)]`
//! (the penultimate layer's raw output at n = 1, no final layer norm), and the second one
//! (`CLIPTextModelWithProjection`) also `text_embeds = text_projection(final_layer_norm(x)[eos])`.

use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::ops::attention::attention_qkv;
use crate::ops::elementwise::Activation;
use crate::ops::gemm::{matmul, GemmOpts};
use crate::ops::norm::layer_norm;
use crate::prompt::{self, Chunk, CHUNK_LEN};
use crate::tokenizer::ClipTokenizer;
use crate::weights::{Component, TextEncoderKind, WeightsError};
use serde_json::Value;

/// Text encoder hyper-parameters (HF `CLIPTextConfig` names in the comments).
#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    /// `hidden_size`
    pub hidden: usize,
    /// `intermediate_size`
    pub intermediate: usize,
    /// `num_hidden_layers`
    pub layers: usize,
    /// `num_attention_heads`
    pub heads: usize,
    /// `vocab_size`
    pub vocab: usize,
    /// `max_position_embeddings`
    pub max_positions: usize,
    /// `hidden_act`: QuickGelu (SD1), Gelu (erf, SD2)
    pub act: Activation,
    /// `layer_norm_eps`
    pub eps: f32,
}

impl ClipConfig {
    /// From a transformers `config.json` (`CLIPTextConfig`, or a `CLIPConfig` with `text_config`).
    pub fn from_json(v: &Value) -> std::result::Result<ClipConfig, String> {
        let v = v.get("text_config").unwrap_or(v);
        let num = |k: &str, default: Option<usize>| -> std::result::Result<usize, String> {
            match v.get(k).and_then(Value::as_u64) {
                Some(x) => Ok(x as usize),
                None => default.ok_or_else(|| format!("no '{k}'")),
            }
        };
        let act = match v.get("hidden_act").and_then(Value::as_str).unwrap_or("quick_gelu") {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            other => return Err(format!("unsupported hidden_act '{other}'")),
        };
        Ok(ClipConfig {
            hidden: num("hidden_size", None)?,
            intermediate: num("intermediate_size", None)?,
            layers: num("num_hidden_layers", None)?,
            heads: num("num_attention_heads", None)?,
            vocab: num("vocab_size", Some(49408))?,
            max_positions: num("max_position_embeddings", Some(77))?,
            act,
            eps: v.get("layer_norm_eps").and_then(Value::as_f64).unwrap_or(1e-5) as f32,
        })
    }

    /// The config for a text encoder component: its `config.json` when it has one (folders, or
    /// single files opened with a config folder), else inferred from the tensors:
    ///
    /// * hidden / vocab / positions from the embeddings, intermediate from `fc1`;
    /// * layers = the layers present, except OpenCLIP ViT-H (width 1024, 24 resblocks) where it
    ///   is 23: SD 2.x uses the penultimate layer and diffusers' SD2 config has 23 layers;
    /// * heads = hidden / 64 (every released CLIP text tower has head dim 64: ViT-L 768/12,
    ///   ViT-H 1024/16, ViT-bigG 1280/20); a width that is not a multiple of 64 is an error
    ///   asking for a config (`OpenOptions::config_dir`);
    /// * act = quick_gelu for SD 1.x (OpenAI CLIP) keys, gelu for SD 2.x (OpenCLIP);
    /// * eps 1e-5.
    pub fn for_component(c: &Component) -> std::result::Result<ClipConfig, WeightsError> {
        let path = c.path().to_string();
        if let Some(cfg) = &c.config {
            return ClipConfig::from_json(cfg).map_err(|detail| WeightsError::Config { path, detail });
        }
        let emb = "text_model.embeddings.token_embedding.weight";
        let shape = c.shape(emb).ok_or_else(|| WeightsError::Missing {
            path: path.clone(),
            name: emb.into(),
            detail: " (needed to infer the text encoder)".into(),
        })?;
        let [vocab, hidden] = shape[..] else {
            return Err(WeightsError::Shape { path, name: emb.into(), got: shape, want: "[vocab, hidden]".into() });
        };
        let max_positions =
            c.shape("text_model.embeddings.position_embedding.weight").and_then(|s| s.first().copied()).unwrap_or(77);
        let mut layers = 0;
        while c.contains(&format!("text_model.encoder.layers.{layers}.layer_norm1.weight")) {
            layers += 1;
        }
        let kind = c.text_kind.unwrap_or(TextEncoderKind::Clip);
        if kind == TextEncoderKind::OpenClip && hidden == 1024 && layers == 24 {
            layers = 23;
        }
        let intermediate = c
            .shape("text_model.encoder.layers.0.mlp.fc1.weight")
            .and_then(|s| s.first().copied())
            .unwrap_or(4 * hidden);
        if hidden % 64 != 0 {
            return Err(WeightsError::Architecture {
                path,
                detail: format!(
                    "text encoder width {hidden} is not a multiple of 64, so its head count cannot be inferred \
                     (real CLIP heads = width / 64); pass a diffusers folder with its configs (`--config DIR`, `OpenOptions::config_dir`)"
                ),
            });
        }
        Ok(ClipConfig {
            hidden,
            intermediate,
            layers,
            heads: hidden / 64,
            vocab,
            max_positions,
            act: if kind == TextEncoderKind::Clip { Activation::QuickGelu } else { Activation::Gelu },
            eps: 1e-5,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// Norm weight and bias.
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// A `Linear` layer, weight pre-transposed to `[in, out]`.
pub struct Linear {
    pub weight_t: Tensor,
    pub bias: Tensor,
}

pub struct ClipEncoderLayer {
    pub layer_norm1: LayerNorm,
    /// q_proj, k_proj, v_proj fused: `[hidden, 3*hidden]`.
    pub qkv_proj: Linear,
    pub out_proj: Linear,
    pub layer_norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

/// Output of [`ClipTextModel::forward`], each tensor `[B, 77, D]`.
pub struct ClipOutput {
    /// `hidden_states[0]` = embeddings, `hidden_states[i]` = output of layer i (raw, before the
    /// final layer norm), for every layer run; empty unless asked for.
    pub hidden_states: Vec<Tensor>,
    /// The final layer norm of the last layer run.
    pub last_hidden_state: Tensor,
    /// Per sequence, the position pooled by HF (`argmax(input_ids)`: the first EOS).
    pub pooled_positions: Vec<usize>,
}

impl ClipOutput {
    /// Pooled output of sequence `b` (`[1, D]`, a view of `last_hidden_state`).
    pub fn pooled(&self, b: usize) -> Result<Tensor> {
        let (bs, l, d) = (self.last_hidden_state.dim(0), self.last_hidden_state.dim(1), self.last_hidden_state.dim(2));
        if b >= bs {
            return Err(Error::Shape { op: "clip pooled", detail: format!("sequence {b} of {bs}") });
        }
        self.last_hidden_state.reshape(&[bs * l, d])?.narrow0(b * l + self.pooled_positions[b], 1)
    }
}

pub struct ClipTextModel {
    pub config: ClipConfig,
    /// Storage dtype of every tensor the model makes.
    pub dtype: DType,
    /// The component, kept for CPU-side token embedding lookups.
    weights: Component,
    /// `[max_positions, hidden]`, f32 on the CPU.
    position_embedding: Vec<f32>,
    /// Textual-inversion vectors `[n, hidden]` for token ids `vocab..vocab + n`, in the order
    /// [`ClipTokenizer::add_embedding`] hands out ids.
    extra_embeddings: Vec<f32>,
    /// The encoder layers on the GPU (empty when `streamed`).
    pub layers: Vec<ClipEncoderLayer>,
    /// Layers are uploaded from `weights` as they run ([`ClipTextModel::stream_layers`]).
    streamed: bool,
    pub final_layer_norm: LayerNorm,
    /// `text_projection.weight` transposed to `[hidden, projection_dim]` (HF
    /// `CLIPTextModelWithProjection`, SDXL's `text_encoder_2`); `None` for `CLIPTextModel`.
    pub text_projection: Option<Tensor>,
}

const TOKEN_EMBEDDING: &str = "text_model.embeddings.token_embedding.weight";

/// Reads a component's tensors into GPU layers (at load, or per run when streamed).
struct Uploader<'a> {
    ctx: &'a Context,
    c: &'a Component,
    dtype: DType,
    d: usize,
}

impl Uploader<'_> {
    fn tensor(&self, v: &[f32], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_f32(self.ctx, v, shape, self.dtype)
    }
    fn vec(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        Ok(self.c.get(name)?.expect_shape(&[n])?.to_f32()?)
    }
    fn ln(&self, p: &str) -> Result<LayerNorm> {
        let d = self.d;
        Ok(LayerNorm { weight: self.tensor(&self.vec(&format!("{p}.weight"), d)?, &[d])?, bias: self.tensor(&self.vec(&format!("{p}.bias"), d)?, &[d])? })
    }
    /// Linear weight [out, in] -> [in, out].
    fn linear_t(&self, p: &str, out: usize, inp: usize) -> Result<Vec<f32>> {
        Ok(self.c.get(&format!("{p}.weight"))?.expect_shape(&[out, inp])?.transposed_f32()?)
    }
    fn linear(&self, p: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear { weight_t: self.tensor(&self.linear_t(p, out, inp)?, &[inp, out])?, bias: self.tensor(&self.vec(&format!("{p}.bias"), out)?, &[out])? })
    }
    fn layer(&self, i: usize, inner: usize) -> Result<ClipEncoderLayer> {
        let d = self.d;
        let p = format!("text_model.encoder.layers.{i}");
        // Fused QKV [d, 3d]: row r = input feature r, columns q | k | v.
        let mut w = vec![0f32; d * 3 * d];
        let mut b = Vec::with_capacity(3 * d);
        for (j, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            let t = self.linear_t(&format!("{p}.self_attn.{name}"), d, d)?;
            for r in 0..d {
                w[r * 3 * d + j * d..r * 3 * d + (j + 1) * d].copy_from_slice(&t[r * d..(r + 1) * d]);
            }
            b.extend(self.vec(&format!("{p}.self_attn.{name}.bias"), d)?);
        }
        Ok(ClipEncoderLayer {
            layer_norm1: self.ln(&format!("{p}.layer_norm1"))?,
            qkv_proj: Linear { weight_t: self.tensor(&w, &[d, 3 * d])?, bias: self.tensor(&b, &[3 * d])? },
            out_proj: self.linear(&format!("{p}.self_attn.out_proj"), d, d)?,
            layer_norm2: self.ln(&format!("{p}.layer_norm2"))?,
            fc1: self.linear(&format!("{p}.mlp.fc1"), inner, d)?,
            fc2: self.linear(&format!("{p}.mlp.fc2"), d, inner)?,
        })
    }
}

impl ClipTextModel {
    /// Load with the component's config ([`ClipConfig::for_component`]) in `dtype`
    /// (see [`crate::weights::storage_dtype`]).
    pub fn load(ctx: &Context, c: &Component, dtype: DType) -> Result<ClipTextModel> {
        let config = ClipConfig::for_component(c)?;
        Self::load_with(ctx, c, config, dtype)
    }

    /// Load with an explicit config.
    pub fn load_with(ctx: &Context, c: &Component, config: ClipConfig, dtype: DType) -> Result<ClipTextModel> {
        let d = config.hidden;
        if config.heads == 0 || d % config.heads != 0 {
            return Err(Error::Unsupported(format!("CLIP width {d} with {} heads", config.heads)));
        }
        c.get(TOKEN_EMBEDDING)?.expect_shape(&[config.vocab, d])?;
        let position_embedding = c
            .get("text_model.embeddings.position_embedding.weight")?
            .expect_shape(&[config.max_positions, d])?
            .to_f32()?;
        let up = Uploader { ctx, c, dtype, d };
        let layers = (0..config.layers).map(|i| up.layer(i, config.intermediate)).collect::<Result<Vec<_>>>()?;
        let final_layer_norm = up.ln("text_model.final_layer_norm")?;
        let text_projection = match c.shape("text_projection.weight") {
            Some(s) if s.len() == 2 && s[1] == d => Some(up.tensor(&up.linear_t("text_projection", s[0], d)?, &[d, s[0]])?),
            Some(s) => {
                return Err(WeightsError::Shape { path: c.path().into(), name: "text_projection.weight".into(), got: s, want: format!("[projection_dim, {d}]") }.into())
            }
            None => None,
        };
        Ok(ClipTextModel {
            text_projection,
            config,
            dtype,
            weights: c.clone(),
            position_embedding,
            extra_embeddings: Vec::new(),
            layers,
            streamed: false,
            final_layer_norm,
        })
    }

    /// Keep the encoder layers on the host from now on: each is uploaded when it runs and
    /// dropped after (A1111's `--medvram` for the text encoders): SDXL's two encoders are 1.6 GB
    /// of f16 that a generation needs only at its start. Costs the layers' conversion and
    /// upload on every prompt encode.
    pub fn stream_layers(&mut self) {
        self.streamed = true;
        self.layers.clear();
    }

    /// Whether the layers are streamed ([`ClipTextModel::stream_layers`]).
    pub fn is_streamed(&self) -> bool {
        self.streamed
    }

    /// The component the model was loaded from (its base tensors; the browser merges LoRAs from
    /// it, having no other copy of the text encoder).
    pub fn component(&self) -> &Component {
        &self.weights
    }

    /// Rebuild the layers from another component of the same model (e.g. LoRA-merged weights,
    /// [`crate::lora`]), keeping the config, dtype and textual-inversion vectors.
    pub fn reload_weights(&mut self, ctx: &Context, c: &Component) -> Result<()> {
        let mut new = Self::load_with(ctx, c, self.config.clone(), self.dtype)?;
        new.extra_embeddings = std::mem::take(&mut self.extra_embeddings);
        if self.streamed {
            // The layers are read from the component on every run: keep every merged tensor.
            new.stream_layers();
        } else {
            // Kept for the CPU embedding lookup only: drop the other merged tensors' memory.
            new.weights = c.retain_overrides(|n| n == TOKEN_EMBEDDING);
        }
        *self = new;
        Ok(())
    }

    /// Token + position embeddings for `ids` (B sequences of equal length L ≤ max_positions),
    /// computed on the CPU in f32, uploaded as `[B, L, D]`.
    pub fn embed(&self, ctx: &Context, ids: &[u32], seq_len: usize) -> Result<Tensor> {
        let d = self.config.hidden;
        if seq_len == 0 || !ids.len().is_multiple_of(seq_len) || seq_len > self.config.max_positions {
            return Err(Error::Shape {
                op: "clip embed",
                detail: format!("{} ids as sequences of {seq_len} (at most {})", ids.len(), self.config.max_positions),
            });
        }
        let vocab = self.config.vocab as u32;
        let extra = (self.extra_embeddings.len() / d) as u32;
        if let Some(&bad) = ids.iter().find(|&&i| i >= vocab + extra) {
            return Err(Error::Shape { op: "clip embed", detail: format!("token id {bad} past the vocabulary ({vocab}) and {extra} embedding vectors") });
        }
        let table = self.weights.get(TOKEN_EMBEDDING)?;
        let mut x = Vec::with_capacity(ids.len() * d);
        for &id in ids {
            if id < vocab {
                x.extend(table.gather_rows(&[id])?);
            } else {
                let r = (id - vocab) as usize * d;
                x.extend_from_slice(&self.extra_embeddings[r..r + d]);
            }
        }
        for (i, row) in x.chunks_exact_mut(d).enumerate() {
            let pos = &self.position_embedding[(i % seq_len) * d..(i % seq_len + 1) * d];
            for (a, p) in row.iter_mut().zip(pos) {
                *a += p;
            }
        }
        Tensor::from_f32(ctx, &x, &[ids.len() / seq_len, seq_len, d], self.dtype)
    }

    /// Append textual-inversion vectors (`[n, hidden]`, row-major) for the next `n` placeholder
    /// ids; register the same name with [`ClipTokenizer::add_embedding`] so both agree.
    pub fn add_embedding_vectors(&mut self, vectors: &[f32]) -> Result<()> {
        let d = self.config.hidden;
        if vectors.is_empty() || vectors.len() % d != 0 {
            return Err(Error::Shape { op: "textual inversion", detail: format!("{} values are not whole {d}-wide vectors for this text encoder", vectors.len()) });
        }
        self.extra_embeddings.extend_from_slice(vectors);
        Ok(())
    }

    /// Load a textual-inversion embedding (`.safetensors`: A1111's `emb_params` [n, D], or a
    /// diffusers `learned_embeds` file holding one [D] or [n, D] tensor) and register it under
    /// `name` in both the tokenizer and this model. Returns the number of vectors.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_textual_inversion(&mut self, tok: &mut ClipTokenizer, path: &std::path::Path, name: &str) -> Result<usize> {
        let file = crate::weights::SafetensorsFile::open(path)?;
        let (n, vectors) = read_textual_inversion(&file, self.config.hidden)?;
        self.add_embedding_vectors(&vectors)?;
        tok.add_embedding(name, n);
        Ok(n)
    }

    /// One encoder layer.
    pub fn layer(&self, ctx: &Context, i: usize, x: &Tensor) -> Result<Tensor> {
        let streamed;
        let l = if self.streamed {
            let up = Uploader { ctx, c: &self.weights, dtype: self.dtype, d: self.config.hidden };
            streamed = up.layer(i, self.config.intermediate)?;
            &streamed
        } else {
            &self.layers[i]
        };
        let cfg = &self.config;
        let h = layer_norm(ctx, x, &l.layer_norm1.weight, &l.layer_norm1.bias, cfg.eps)?;
        let qkv = matmul(ctx, &h, &l.qkv_proj.weight_t, GemmOpts { bias: Some(&l.qkv_proj.bias), ..Default::default() })?;
        let scale = (cfg.head_dim() as f32).powf(-0.5);
        let a = attention_qkv(ctx, &qkv, cfg.heads, scale, true)?;
        let x = matmul(
            ctx,
            &a,
            &l.out_proj.weight_t,
            GemmOpts { bias: Some(&l.out_proj.bias), residual: Some(x), ..Default::default() },
        )?;
        let h = layer_norm(ctx, &x, &l.layer_norm2.weight, &l.layer_norm2.bias, cfg.eps)?;
        let h = matmul(ctx, &h, &l.fc1.weight_t, GemmOpts { bias: Some(&l.fc1.bias), act: cfg.act, ..Default::default() })?;
        matmul(ctx, &h, &l.fc2.weight_t, GemmOpts { bias: Some(&l.fc2.bias), residual: Some(&x), ..Default::default() })
    }

    /// Run the encoder on B sequences of 77 (or `seq_len`) ids laid end to end. `clip_skip` as
    /// A1111 (0 or 1 = all layers; n = stop after layer `layers - (n-1)`), then the final
    /// layer norm. `keep_hidden` keeps every intermediate hidden state.
    pub fn forward(&self, ctx: &Context, ids: &[u32], seq_len: usize, clip_skip: usize, keep_hidden: bool) -> Result<ClipOutput> {
        let skip = clip_skip.max(1) - 1;
        if skip >= self.config.layers {
            return Err(Error::Unsupported(format!("clip skip {clip_skip} with {} layers", self.config.layers)));
        }
        let mut x = self.embed(ctx, ids, seq_len)?;
        let mut hidden_states = Vec::new();
        for i in 0..self.config.layers - skip {
            if keep_hidden {
                hidden_states.push(x.clone());
            }
            x = self.layer(ctx, i, &x)?;
        }
        if keep_hidden {
            hidden_states.push(x.clone());
        }
        let last_hidden_state = layer_norm(ctx, &x, &self.final_layer_norm.weight, &self.final_layer_norm.bias, self.config.eps)?;
        // HF (eos_token_id 2 configs): pooled at argmax(input_ids), the first maximum.
        let pooled_positions = ids
            .chunks(seq_len)
            .map(|s| s.iter().enumerate().fold(0, |best, (i, &id)| if id > s[best] { i } else { best }))
            .collect();
        Ok(ClipOutput { hidden_states, last_hidden_state, pooled_positions })
    }

    /// SDXL's conditioning of B sequences of `seq_len` ids laid end to end (diffusers'
    /// `StableDiffusionXLPipeline.encode_prompt`): `hidden_states[-(clip_skip + 1)]` with
    /// `clip_skip` as A1111 counts it (1 = the penultimate layer, SDXL's default; diffusers'
    /// `clip_skip + 1`), raw (no final layer norm), `[B, seq_len, D]` on the host; and with a
    /// `text_projection`, the pooled `text_embeds` `[B, projection_dim]` of the last layer.
    pub async fn encode_sdxl_async(&self, ctx: &Context, ids: &[u32], seq_len: usize, clip_skip: usize) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let n = clip_skip.max(1);
        if n >= self.config.layers {
            return Err(Error::Unsupported(format!("clip skip {clip_skip} with {} layers (SDXL counts from the penultimate layer)", self.config.layers)));
        }
        let mut x = self.embed(ctx, ids, seq_len)?;
        let mut hidden = None;
        let run = if self.text_projection.is_some() { self.config.layers } else { self.config.layers - n };
        for i in 0..run {
            x = self.layer(ctx, i, &x)?;
            if i + 1 == self.config.layers - n {
                hidden = Some(x.clone());
            }
        }
        let hidden = hidden.expect("the kept layer is run").to_f32(ctx).await?;
        let Some(proj) = &self.text_projection else { return Ok((hidden, None)) };
        let last = layer_norm(ctx, &x, &self.final_layer_norm.weight, &self.final_layer_norm.bias, self.config.eps)?.to_f32(ctx).await?;
        let d = self.config.hidden;
        // HF: the first EOS (argmax of the ids, EOS being the largest id)
        let rows: Vec<f32> = ids
            .chunks(seq_len)
            .enumerate()
            .flat_map(|(b, s)| {
                let p = s.iter().enumerate().fold(0, |best, (i, &id)| if id > s[best] { i } else { best });
                last[(b * seq_len + p) * d..(b * seq_len + p + 1) * d].to_vec()
            })
            .collect();
        let pooled = Tensor::from_f32(ctx, &rows, &[rows.len() / d, d], self.dtype)?;
        let pooled = matmul(ctx, &pooled, proj, GemmOpts::default())?.to_f32(ctx).await?;
        Ok((hidden, Some(pooled)))
    }

    /// The conditioning for one 77-token sequence, `[1, 77, D]` (diffusers `encode_prompt`
    /// for already tokenized ids; `clip_skip` as A1111).
    pub fn encode_ids(&self, ctx: &Context, ids: &[u32; CHUNK_LEN], clip_skip: usize) -> Result<Tensor> {
        Ok(self.forward(ctx, ids, CHUNK_LEN, clip_skip, false)?.last_hidden_state)
    }

    /// A1111-style conditioning for prompt chunks: every chunk encoded (one batch), scaled by its
    /// emphasis weights ([`prompt::apply_weights`], on the CPU after a readback: the tensor is
    /// small) and concatenated: `[1, 77 * chunks, D]`. Async for the web's readback.
    pub async fn encode_chunks_async(&self, ctx: &Context, chunks: &[Chunk], clip_skip: usize) -> Result<Tensor> {
        if chunks.is_empty() {
            return Err(Error::Shape { op: "clip encode", detail: "no chunks".into() });
        }
        let ids: Vec<u32> = chunks.iter().flat_map(|c| c.ids).collect();
        let out = self.forward(ctx, &ids, CHUNK_LEN, clip_skip, false)?.last_hidden_state;
        let d = self.config.hidden;
        let shape = [1, CHUNK_LEN * chunks.len(), d];
        if chunks.iter().all(|c| c.weights.iter().all(|&w| w == 1.0)) {
            // Weights of 1 leave the hidden state unchanged: stay on the GPU.
            return out.reshape(&shape);
        }
        let mut host = out.to_f32(ctx).await?;
        for (c, h) in chunks.iter().zip(host.chunks_exact_mut(CHUNK_LEN * d)) {
            prompt::apply_weights(h, CHUNK_LEN, d, &c.weights);
        }
        Tensor::from_f32(ctx, &host, &shape, self.dtype)
    }

    /// Tokenize an A1111 prompt (emphasis, `BREAK`, 75-token chunks) and encode it:
    /// `[1, 77 * chunks, D]`.
    pub async fn encode_prompt_async(&self, ctx: &Context, tok: &ClipTokenizer, prompt: &str, clip_skip: usize) -> Result<Tensor> {
        let tokens = prompt::tokenize_prompt(tok, prompt);
        self.encode_chunks_async(ctx, &tokens.chunks, clip_skip).await
    }

    /// Blocking [`Self::encode_chunks_async`] (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_chunks(&self, ctx: &Context, chunks: &[Chunk], clip_skip: usize) -> Result<Tensor> {
        pollster::block_on(self.encode_chunks_async(ctx, chunks, clip_skip))
    }

    /// Blocking [`Self::encode_prompt_async`] (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_prompt(&self, ctx: &Context, tok: &ClipTokenizer, prompt: &str, clip_skip: usize) -> Result<Tensor> {
        pollster::block_on(self.encode_prompt_async(ctx, tok, prompt, clip_skip))
    }
}

/// A textual-inversion file's vectors for a text encoder `hidden` wide, checked on the CPU
/// (no GPU needed; [`ClipTextModel::load_textual_inversion`] and the fuzz targets call it):
/// `(n, [n * hidden] row-major)`.
pub fn read_textual_inversion(file: &crate::weights::SafetensorsFile, hidden: usize) -> Result<(usize, Vec<f32>)> {
    let names = file.names();
    if file.contains("clip_l") && file.contains("clip_g") {
        return Err(Error::Unsupported(format!("{}: an SDXL embedding (`clip_l` and `clip_g` vectors), but this model has one text encoder", file.path())));
    }
    let key = if file.contains("emb_params") {
        "emb_params".to_string()
    } else if names.len() == 1 {
        names[0].to_string()
    } else {
        return Err(Error::Unsupported(format!(
            "{}: not a textual-inversion embedding (expected an `emb_params` tensor or a single tensor, found {names:?})",
            file.path()
        )));
    };
    embedding_vectors(file, &key, hidden)
}

/// Tensor `key` of an embedding file as `(n, [n * hidden])`: `[hidden]` or `[n, hidden]`, n > 0.
pub fn embedding_vectors(file: &crate::weights::SafetensorsFile, key: &str, hidden: usize) -> Result<(usize, Vec<f32>)> {
    let d = hidden;
    let view = file.get(key)?;
    let shape = view.shape.clone();
    let n = match shape[..] {
        [w] if w == d => 1,
        [0, w] if w == d => return Err(Error::Unsupported(format!("{}: embedding '{key}' holds no vectors (shape {shape:?})", file.path()))),
        [n, w] if w == d => n,
        _ => {
            return Err(Error::Unsupported(format!(
                "{}: embedding '{key}' has shape {shape:?}, but this text encoder is {d} wide (an embedding for another model family?)",
                file.path()
            )))
        }
    };
    Ok((n, view.to_f32()?))
}
