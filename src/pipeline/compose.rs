//! Composable Diffusion as A1111 writes it: `a cat AND a hat :0.5`.
//!
//! The prompt (with its `<lora:…>`-style tags removed first, as A1111's `extra_networks`
//! does before its `prompt_parser`) is split on the word `AND` (the regex `\bAND\b`,
//! case-sensitive); each sub-prompt may end in `:weight` (default 1). Identical sub-prompt
//! texts share one encoding (A1111 indexes them by text) but each keeps its own term. Every
//! distinct text is encoded on its own (emphasis, BREAK, embeddings apply as in a plain
//! prompt) and gets its own conditional UNet batch entry; the negative prompt is encoded once
//! and never split. The guided prediction is `uncond + g · Σ wᵢ (condᵢ − uncond)`.
//!
//! A1111 combines *denoised* values (`combine_denoised`); Pigment combines model outputs. The
//! two agree: every sampler's denoised value is `a(σ)·x + b(σ)·out` with the same `x`, `a`, `b`
//! for every batch entry (ε: `x − σ·ε`; v: `c_skip·x + c_out·v`), so
//! `D_u + g Σ wᵢ (D_i − D_u) = a·x + b·(out_u + g Σ wᵢ (out_i − out_u))` exactly, whatever Σ wᵢ is.
//!
//! Guidance ≤ 1: A1111 always evaluates the uncond batch (its CFG denoiser has no
//! `do_classifier_free_guidance`), so a composed prompt runs it there too and the same formula
//! applies. A plain prompt (one sub-prompt, weight 1) keeps diffusers' single cond batch, which
//! is the same prediction (at g = 1 exactly `cond`).

use super::{Conditioning, GenerateOptions, StableDiffusion};
use crate::gpu::Context;
use crate::prompt;
use crate::{Error, Result, Tensor};

/// Most sub-prompts one prompt may have: each is one more UNet batch entry per step.
pub const MAX_SUBPROMPTS: usize = 32;

/// A prompt split on `AND`.
#[derive(Clone, Debug, PartialEq)]
pub struct Composed {
    /// Distinct sub-prompt texts, in first-seen order (one cond batch entry each).
    pub texts: Vec<String>,
    /// `(index into texts, weight)` per sub-prompt, in prompt order.
    pub terms: Vec<(usize, f32)>,
}

impl Composed {
    /// A1111's `get_multicond_prompt_list` for one prompt. Errors: an empty sub-prompt next to
    /// an `AND` (A1111 would quietly encode `""`), more than [`MAX_SUBPROMPTS`] sub-prompts.
    pub fn parse(prompt: &str) -> Result<Composed> {
        // the size as written, before the split trims anything
        prompt::check_bytes("prompt", prompt).map_err(Error::Unsupported)?;
        let (text, _) = prompt::extract_extra_networks(prompt);
        let parts = split_and(&text);
        if parts.len() > MAX_SUBPROMPTS {
            return Err(Error::Unsupported(format!(
                "the prompt has {} sub-prompts joined by AND; at most {MAX_SUBPROMPTS} are run (each is one more UNet evaluation per step): join fewer",
                parts.len()
            )));
        }
        let mut c = Composed { texts: Vec::new(), terms: Vec::new() };
        for (i, part) in parts.iter().enumerate() {
            let (t, w) = split_weight(part);
            if parts.len() > 1 && t.trim_matches(is_py_space).is_empty() {
                return Err(Error::Unsupported(format!(
                    "sub-prompt {} of {} around AND is empty in {prompt:?}: write text between the ANDs, or remove the extra AND (write `and` for the plain word)",
                    i + 1,
                    parts.len()
                )));
            }
            let index = match c.texts.iter().position(|x| x == t) {
                Some(k) => k,
                None => {
                    c.texts.push(t.to_string());
                    c.texts.len() - 1
                }
            };
            c.terms.push((index, w));
        }
        Ok(c)
    }

    /// One sub-prompt of weight 1: plain classifier-free guidance.
    pub fn is_plain(&self) -> bool {
        self.terms.len() == 1 && self.terms[0].1 == 1.0
    }

    /// Whether the uncond batch runs: classifier-free guidance, or any composed prompt (A1111).
    pub fn guided(&self, guidance: f32) -> bool {
        super::uses_cfg(guidance) || !self.is_plain()
    }

    /// UNet batch size: the distinct texts, plus the uncond entry when `guided`.
    pub fn batch(&self, guided: bool) -> usize {
        self.texts.len() + usize::from(guided)
    }

    /// The guided prediction from the UNet's output `[uncond, cond_0, …]` (each `n` values):
    /// `uncond + Σ (g·wᵢ) (cond_{index i} − uncond)`. With one term of weight 1 this is
    /// [`crate::schedulers::cfg_combine`] bit for bit (`g·1 = g`, and `u + x` is the first sum).
    pub fn combine(&self, out: &[f32], n: usize, guidance: f32) -> Vec<f32> {
        assert_eq!(out.len(), n * (self.texts.len() + 1), "Composed::combine: output is not [uncond, one per text]");
        let u = &out[..n];
        let mut acc = u.to_vec();
        for &(i, w) in &self.terms {
            let c = &out[(i + 1) * n..(i + 2) * n];
            let s = guidance * w;
            for ((a, &c), &u) in acc.iter_mut().zip(c).zip(u) {
                *a += s * (c - u);
            }
        }
        acc
    }
}

/// `re.split(r"\bAND\b", text)` with Python's `\w` (Unicode letters, digits, `_`).
pub fn split_and(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut search = 0;
    while let Some(off) = text[search..].find("AND") {
        let at = search + off;
        let end = at + 3;
        let before = text[..at].chars().next_back().is_some_and(is_py_word);
        let after = text[end..].chars().next().is_some_and(is_py_word);
        if !before && !after {
            parts.push(&text[start..at]);
            start = end;
            search = end;
        } else {
            search = at + 1;
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A1111's `re_weight`, `^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$`: the text
/// (trailing whitespace dropped, leading kept) and the weight after the last `:` when all that
/// follows it is a number; otherwise the whole text and 1.
pub fn split_weight(sub: &str) -> (&str, f32) {
    let t = sub.trim_end_matches(is_py_space);
    if let Some(colon) = t.rfind(':') {
        let num = t[colon + 1..].trim_start_matches(is_py_space);
        if is_a1111_number(num) {
            if let Ok(w) = num.parse::<f64>() {
                return (t[..colon].trim_end_matches(is_py_space), w as f32);
            }
        }
    }
    (t, 1.0)
}

/// `[-+]?(?:\d+\.?|\d*\.\d+)` over the whole string: digits with at most one `.`, at least one
/// digit (ASCII digits; Python's `\d` would also take other scripts' decimal digits).
fn is_a1111_number(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    body.chars().all(|c| c.is_ascii_digit() || c == '.') && body.matches('.').count() <= 1 && body.chars().any(|c| c.is_ascii_digit())
}

fn is_py_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Python's `\s` for `str` (`str.isspace`: Unicode White_Space plus the separators \x1c-\x1f).
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// The sub-prompt's name in errors: "prompt" for a plain prompt, else "sub-prompt i of n".
pub(crate) fn what(c: &Composed, i: usize) -> String {
    if c.texts.len() == 1 { "prompt".into() } else { format!("sub-prompt {} of {} (AND)", i + 1, c.texts.len()) }
}

/// SD 1.x/2.x text conditioning `[batch, 77·chunks, D]`: the negative prompt (when `guided`),
/// then each distinct sub-prompt; every list padded with empty chunks to the longest, as
/// A1111 pads conds of unequal length with the encoded empty chunk.
pub(super) async fn encode_single(sd: &StableDiffusion, ctx: &Context, o: &GenerateOptions, c: &Composed, guided: bool) -> Result<Conditioning> {
    let tok = &sd.tokenizer;
    let mut lists = Vec::new();
    if guided {
        lists.push(prompt::tokenize_bounded(tok, "negative prompt", &o.negative_prompt).map_err(Error::Unsupported)?);
    }
    for (i, t) in c.texts.iter().enumerate() {
        lists.push(prompt::tokenize_bounded(tok, &what(c, i), t).map_err(Error::Unsupported)?);
    }
    let chunks = lists.iter().map(Vec::len).max().unwrap_or(1);
    let mut data = Vec::new();
    let mut last = None;
    for mut l in lists.iter().cloned() {
        l.resize(chunks, prompt::empty_chunk(tok));
        let e = sd.clip.encode_chunks_async(ctx, &l, o.clip_skip).await?;
        data.extend(e.to_f32(ctx).await?);
        last = Some(e);
    }
    let e = last.expect("at least one text");
    let mut shape = e.shape().to_vec();
    shape[0] = lists.len();
    let text = Tensor::from_f32(ctx, &data, &shape, e.dtype())?;
    Ok(Conditioning { text, added: None })
}
