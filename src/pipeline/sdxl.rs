//! SDXL's conditioning (diffusers' `StableDiffusionXLPipeline.encode_prompt` and
//! `_get_add_time_ids`): both text encoders' penultimate hidden states concatenated per token
//! (768 + 1280 = 2048 wide for SDXL), the second encoder's pooled, projected `text_embeds`, and
//! the time ids (original size, crop top-left, target size). An empty negative prompt is zeros
//! when the model's `force_zeros_for_empty_prompt` says so (SDXL base: true), as diffusers does
//! with no negative prompt and A1111 with an empty one.

use super::compose::{self, Composed};
use super::{Conditioning, GenerateOptions, StableDiffusion};
use crate::gpu::Context;
use crate::models::clip::ClipTextModel;
use crate::models::unet::AddedCond;
use crate::prompt::{self, Chunk, CHUNK_LEN};
use crate::tokenizer::{ClipTokenizer, PadToken};
use crate::weights::Weights;
use crate::{DType, Error, Result, Tensor};
use std::path::Path;

/// SDXL's second text encoder (`text_encoder_2/`, OpenCLIP ViT-bigG with `text_projection`) and
/// its tokenizer (`tokenizer_2/`, padding with "!").
pub struct SdxlParts {
    pub tokenizer_2: ClipTokenizer,
    pub clip_2: ClipTextModel,
    /// `model_index.json`'s `force_zeros_for_empty_prompt` (diffusers' default: true).
    pub force_zeros_for_empty_prompt: bool,
}

impl SdxlParts {
    /// `None` when the weights have no `text_encoder_2` (SD 1.x/2.x). `folder`: where
    /// `tokenizer_2/` and `model_index.json` live (else the embedded BPE padded with "!").
    pub fn load(ctx: &Context, weights: &Weights, folder: Option<&Path>, dtype: DType) -> Result<Option<SdxlParts>> {
        let Some(te2) = weights.text_encoder_2() else { return Ok(None) };
        let tokenizer_2 = match folder.map(|d| d.join("tokenizer_2")).filter(|d| d.is_dir()) {
            Some(dir) => ClipTokenizer::from_dir(&dir).map_err(|e| Error::Unsupported(format!("tokenizer_2: {e}")))?,
            None => ClipTokenizer::embedded(PadToken::Exclamation),
        };
        let force_zeros_for_empty_prompt = folder
            .and_then(|d| std::fs::read_to_string(d.join("model_index.json")).ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("force_zeros_for_empty_prompt").and_then(serde_json::Value::as_bool))
            .unwrap_or(true);
        let clip_2 = ClipTextModel::load(ctx, te2, dtype)?;
        if clip_2.text_projection.is_none() {
            return Err(Error::Unsupported(format!("{}: SDXL's text_encoder_2 needs text_projection.weight (CLIPTextModelWithProjection)", te2.path())));
        }
        Ok(Some(SdxlParts { tokenizer_2, clip_2, force_zeros_for_empty_prompt }))
    }

    /// `[chunks·77, D1 + D2]` hidden states (emphasis applied per chunk) and the first chunk's
    /// pooled `text_embeds`.
    async fn encode_text(&self, ctx: &Context, clip: &ClipTextModel, c1: &[Chunk], c2: &[Chunk], clip_skip: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let ids = |c: &[Chunk]| c.iter().flat_map(|c| c.ids).collect::<Vec<u32>>();
        let (mut h1, _) = clip.encode_sdxl_async(ctx, &ids(c1), CHUNK_LEN, clip_skip).await?;
        let (mut h2, pooled) = self.clip_2.encode_sdxl_async(ctx, &ids(c2), CHUNK_LEN, clip_skip).await?;
        let (d1, d2) = (clip.config.hidden, self.clip_2.config.hidden);
        // A1111 weights each encoder's output on its own (its SDXL hijack wraps both embedders,
        // each restoring its own mean), then the conditioner concatenates; so does ComfyUI.
        // With `prompt_2` each encoder's rows take their own prompt's weights.
        for (h, d, cs) in [(&mut h1, d1, c1), (&mut h2, d2, c2)] {
            for (c, rows) in cs.iter().zip(h.chunks_exact_mut(CHUNK_LEN * d)) {
                if c.weights.iter().any(|&w| w != 1.0) {
                    prompt::apply_weights(rows, CHUNK_LEN, d, &c.weights);
                }
            }
        }
        let mut h = Vec::with_capacity(h1.len() + h2.len());
        for (a, b) in h1.chunks_exact(d1).zip(h2.chunks_exact(d2)) {
            h.extend_from_slice(a);
            h.extend_from_slice(b);
        }
        let pooled = pooled.expect("text_encoder_2 has a projection (checked at load)");
        let p = pooled.len() / c2.len();
        Ok((h, pooled[..p].to_vec()))
    }

    /// `[batch, L, D1 + D2]` text and added conditioning: the negative (when `guided`), then
    /// one entry per distinct `AND` sub-prompt ([`super::compose`]), each through both
    /// encoders with its own pooled `text_embeds`.
    pub(super) async fn encode(&self, ctx: &Context, sd: &StableDiffusion, o: &GenerateOptions, c: &Composed, guided: bool) -> Result<Conditioning> {
        let (t1, t2) = (&sd.tokenizer, &self.tokenizer_2);
        if c.texts.len() > 1 && o.prompt_2.is_some() {
            return Err(Error::Unsupported("a prompt with AND sub-prompts cannot take prompt_2 as well: drop prompt_2 (each sub-prompt goes to both text encoders)".into()));
        }
        let negative_2 = o.negative_prompt_2.as_deref().unwrap_or(&o.negative_prompt);
        let mut conds = Vec::new();
        for (i, text) in c.texts.iter().enumerate() {
            let c1 = prompt::tokenize_bounded(t1, &compose::what(c, i), text).map_err(Error::Unsupported)?;
            let c2 = prompt::tokenize_bounded(t2, "prompt_2", o.prompt_2.as_deref().unwrap_or(text)).map_err(Error::Unsupported)?;
            conds.push((c1, c2));
        }
        let zero_negative = o.negative_prompt.is_empty() && negative_2.is_empty() && self.force_zeros_for_empty_prompt;
        let mut negative = None;
        if guided && !zero_negative {
            let u1 = prompt::tokenize_bounded(t1, "negative prompt", &o.negative_prompt).map_err(Error::Unsupported)?;
            let u2 = prompt::tokenize_bounded(t2, "negative prompt_2", negative_2).map_err(Error::Unsupported)?;
            negative = Some((u1, u2));
        }
        // Prompts and negative batch together, and the two encoders' rows are concatenated per
        // token: every list gets as many chunks (empty ones padded, as match_chunk_counts does).
        let mut lists: Vec<(&ClipTokenizer, &mut Vec<Chunk>)> = Vec::new();
        for (c1, c2) in &mut conds {
            lists.extend([(t1, c1), (t2, c2)]);
        }
        if let Some((u1, u2)) = &mut negative {
            lists.extend([(t1, u1), (t2, u2)]);
        }
        let n = lists.iter().map(|(_, c)| c.len()).max().unwrap_or(0);
        for (t, cs) in lists {
            cs.resize(n, prompt::empty_chunk(t));
        }
        let (mut hs, mut pooled) = (Vec::new(), Vec::new());
        for (c1, c2) in &conds {
            let (h, p) = self.encode_text(ctx, &sd.clip, c1, c2, o.clip_skip).await?;
            hs.push(h);
            pooled.push(p);
        }
        let (mut text, mut text_embeds) = (Vec::new(), Vec::new());
        if guided {
            let (hu, pu) = match &negative {
                Some((u1, u2)) => self.encode_text(ctx, &sd.clip, u1, u2, o.clip_skip).await?,
                None => (vec![0.0; hs[0].len()], vec![0.0; pooled[0].len()]),
            };
            text.extend(hu);
            text_embeds.extend(pu);
        }
        text.extend(hs.concat());
        text_embeds.extend(pooled.concat());
        let batch = c.batch(guided);
        let d = sd.clip.config.hidden + self.clip_2.config.hidden;
        let size = (o.height, o.width);
        let ids = AddedCond::time_ids(o.original_size.unwrap_or(size), o.crops_coords_top_left, o.target_size.unwrap_or(size));
        let time_ids = (0..batch).flat_map(|_| ids).collect();
        let text = Tensor::from_f32(ctx, &text, &[batch, n * CHUNK_LEN, d], sd.clip.dtype)?;
        Ok(Conditioning { text, added: Some(AddedCond { text_embeds, time_ids }) })
    }
}

impl StableDiffusion {
    /// Load a textual-inversion embedding (`.safetensors`) under `name` into the tokenizer(s) and
    /// text encoder(s): SD 1.x/2.x as [`ClipTextModel::load_textual_inversion`]; SDXL needs
    /// A1111's SDXL format, `clip_l` `[n, D1]` rows for the first encoder and `clip_g` `[n, D2]`
    /// for `text_encoder_2` (diffusers' `load_textual_inversion` twice, once with
    /// `text_encoder_2`/`tokenizer_2`). Returns the number of vectors.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_textual_inversion(&mut self, path: &Path, name: &str) -> Result<usize> {
        self.add_textual_inversion(&crate::weights::SafetensorsFile::open(path)?, name)
    }

    /// [`StableDiffusion::load_textual_inversion`] from a file already opened. Both encoders'
    /// vectors are checked before either is added, so an error leaves the model as it was.
    pub fn add_textual_inversion(&mut self, file: &crate::weights::SafetensorsFile, name: &str) -> Result<usize> {
        use crate::models::clip::{embedding_vectors, read_textual_inversion};
        if self.is_refiner() {
            // A refiner's only encoder is bigG (`self.clip`): an SDXL embedding's `clip_g` rows.
            if !file.contains("clip_g") {
                return Err(Error::Unsupported(format!(
                    "{}: an SDXL refiner takes the `clip_g` vectors of an SDXL embedding (its only text encoder is OpenCLIP bigG); this file has {:?}",
                    file.path(),
                    file.names()
                )));
            }
            let (n, v) = embedding_vectors(file, "clip_g", self.clip.config.hidden)?;
            self.clip.add_embedding_vectors(&v)?;
            self.tokenizer.add_embedding(name, n);
            return Ok(n);
        }
        let Some(x) = self.sdxl.as_mut() else {
            let (n, v) = read_textual_inversion(file, self.clip.config.hidden)?;
            self.clip.add_embedding_vectors(&v)?;
            self.tokenizer.add_embedding(name, n);
            return Ok(n);
        };
        if !(file.contains("clip_l") && file.contains("clip_g")) {
            return Err(Error::Unsupported(format!(
                "{}: an SDXL model needs an SDXL embedding with `clip_l` and `clip_g` vectors (one per text encoder); this file has {:?} (an SD 1.x/2.x embedding?)",
                file.path(),
                file.names()
            )));
        }
        let (n1, v1) = embedding_vectors(file, "clip_l", self.clip.config.hidden)?;
        let (n2, v2) = embedding_vectors(file, "clip_g", x.clip_2.config.hidden)?;
        if n1 != n2 {
            return Err(Error::Unsupported(format!("{}: `clip_l` has {n1} vectors and `clip_g` {n2}; an SDXL embedding has as many of each", file.path())));
        }
        self.clip.add_embedding_vectors(&v1)?;
        x.clip_2.add_embedding_vectors(&v2)?;
        // Both tokenizers hand out the same ids: same vocabulary, embeddings added in step.
        self.tokenizer.add_embedding(name, n1);
        x.tokenizer_2.add_embedding(name, n1);
        Ok(n1)
    }
}
