//! AUTOMATIC1111-style prompts: emphasis weights, `BREAK`, `<lora:…>` tags and 75-token chunks.
//!
//! The flow for one prompt ([`tokenize_prompt`]), as A1111's `FrozenCLIPEmbedderWithCustomWords`:
//!
//! 1. [`extract_extra_networks`]: `<kind:args>` tags are removed from the text; `<lora:name:w>`
//!    ones are returned as [`LoraTag`]s for the LoRA loader;
//! 2. [`parse_prompt_attention`]: `(a)` ×1.1, `((a))` ×1.21, `[a]` ÷1.1, `(a:1.5)` ×1.5, escapes
//!    `\( \) \[ \] \\`, `BREAK`; unbalanced brackets as A1111 (an unclosed `(`/`[` applies to
//!    the rest of the prompt, an unmatched `)`/`]` is literal text);
//! 3. each weighted piece is tokenized separately with the CLIP tokenizer, and the tokens are
//!    cut into chunks of 75 (a chunk that would split mid-phrase moves everything after the last
//!    comma among its final 20 tokens to the next chunk; `BREAK` starts a new chunk), each
//!    wrapped as BOS + 75 + EOS = 77 ids with per-token weights (1.0 on BOS/EOS/padding).
//!
//! The text encoder runs once per chunk; its output is scaled by the weights with
//! [`apply_weights`] (A1111's "Original" emphasis) and the chunks are concatenated along the
//! token axis. Positive and negative prompts must have the same number of chunks:
//! [`match_chunk_counts`].
//!
//! Not covered: prompt editing/alternation (`[a:b:0.5]`, `[a|b]`, scheduling syntax that A1111
//! resolves before this step) and textual-inversion embeddings.

use crate::tokenizer::ClipTokenizer;

/// Prompt tokens per chunk.
pub const CHUNK_TOKENS: usize = 75;
/// Ids per chunk: BOS + 75 + EOS.
pub const CHUNK_LEN: usize = CHUNK_TOKENS + 2;
/// A1111's default `comma_padding_backtrack`.
pub const COMMA_PADDING_BACKTRACK: usize = 20;

const ROUND_MULT: f64 = 1.1;
const SQUARE_MULT: f64 = 1.0 / 1.1;

/// One piece of a parsed prompt with its attention weight. A `BREAK` keyword is the piece
/// `("BREAK", -1.0)`, as in A1111 ([`Segment::is_break`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub text: String,
    pub weight: f64,
}

impl Segment {
    fn new(text: impl Into<String>, weight: f64) -> Self {
        Self { text: text.into(), weight }
    }

    /// This is a `BREAK` marker, not text.
    pub fn is_break(&self) -> bool {
        self.weight == -1.0 && self.text == "BREAK"
    }
}

/// Python's `\s` for `str` patterns (`str.isspace`).
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `\w` for `str` patterns.
fn is_py_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `re.split(r"\s*\bBREAK\b\s*", text)`.
fn split_break(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut part_start = 0; // start of the current part (= end of the previous separator)
    let mut search = 0;
    while let Some(off) = text[search..].find("BREAK") {
        let b = search + off;
        let e = b + "BREAK".len();
        let before_ok = text[..b].chars().next_back().is_none_or(|c| !is_py_word(c));
        let after_ok = text[e..].chars().next().is_none_or(|c| !is_py_word(c));
        if before_ok && after_ok {
            // Leftmost match: the separator starts at the whitespace run just before BREAK,
            // but not before the end of the previous separator.
            let mut s = b;
            for (i, c) in text[part_start..b].char_indices().rev() {
                if is_py_space(c) {
                    s = part_start + i;
                } else {
                    break;
                }
            }
            let mut end = e;
            for c in text[e..].chars() {
                if is_py_space(c) {
                    end += c.len_utf8();
                } else {
                    break;
                }
            }
            parts.push(&text[part_start..s]);
            part_start = end;
            search = end;
        } else {
            search = b + 1;
        }
    }
    parts.push(&text[part_start..]);
    parts
}

/// Matches `:\s*([+-]?[.\d]+)\s*\)` at the start of `s` (which starts with `:`); returns the
/// number string and the match length in bytes.
fn match_weight(s: &str) -> Option<(&str, usize)> {
    let mut i = 1; // past ':'
    let skip_ws = |i: &mut usize| {
        while let Some(c) = s[*i..].chars().next().filter(|&c| is_py_space(c)) {
            *i += c.len_utf8();
        }
    };
    skip_ws(&mut i);
    let num_start = i;
    if s[i..].starts_with(['+', '-']) {
        i += 1;
    }
    let digits_start = i;
    while s[i..].starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
        i += 1;
    }
    if i == digits_start {
        return None;
    }
    let num = &s[num_start..i];
    skip_ws(&mut i);
    if s[i..].starts_with(')') {
        Some((num, i + 1))
    } else {
        None
    }
}

/// A1111's `parse_prompt_attention`: the prompt as pieces of text with weights, runs of equal
/// weight merged. `BREAK` pieces are `("BREAK", -1.0)`.
///
/// Differences from A1111: a weight that is not a number (`(a:1.2.3)`) closes the bracket with
/// weight 1.0 (A1111 raises an error), and only ASCII digits count as digits in weights.
pub fn parse_prompt_attention(text: &str) -> Vec<Segment> {
    let mut res: Vec<Segment> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();

    fn multiply_range(res: &mut [Segment], start: usize, m: f64) {
        for s in &mut res[start..] {
            s.weight *= m;
        }
    }
    fn push_text(res: &mut Vec<Segment>, text: &str) {
        for (i, part) in split_break(text).into_iter().enumerate() {
            if i > 0 {
                res.push(Segment::new("BREAK", -1.0));
            }
            res.push(Segment::new(part, 1.0));
        }
    }

    let mut pos = 0;
    while pos < text.len() {
        let rest = &text[pos..];
        let c = rest.chars().next().expect("non-empty");
        match c {
            '\\' => {
                let next = rest[1..].chars().next();
                match next {
                    Some(n @ ('(' | ')' | '[' | ']' | '\\')) => {
                        res.push(Segment::new(n.to_string(), 1.0));
                        pos += 2;
                    }
                    _ => {
                        // A lone backslash: A1111 appends text[1:], the empty string.
                        res.push(Segment::new("", 1.0));
                        pos += 1;
                    }
                }
            }
            '(' => {
                round.push(res.len());
                pos += 1;
            }
            '[' => {
                square.push(res.len());
                pos += 1;
            }
            ':' => {
                if let Some((num, len)) = match_weight(rest) {
                    if let Some(start) = round.pop() {
                        let w = num.parse::<f64>().unwrap_or(1.0);
                        multiply_range(&mut res, start, w);
                    } else {
                        push_text(&mut res, &rest[..len]);
                    }
                    pos += len;
                } else {
                    push_text(&mut res, ":");
                    pos += 1;
                }
            }
            ')' => {
                if let Some(start) = round.pop() {
                    multiply_range(&mut res, start, ROUND_MULT);
                } else {
                    push_text(&mut res, ")");
                }
                pos += 1;
            }
            ']' => {
                if let Some(start) = square.pop() {
                    multiply_range(&mut res, start, SQUARE_MULT);
                } else {
                    push_text(&mut res, "]");
                }
                pos += 1;
            }
            _ => {
                let end = rest.find(['\\', '(', ')', '[', ']', ':']).unwrap_or(rest.len());
                push_text(&mut res, &rest[..end]);
                pos += end;
            }
        }
    }
    for &p in &round {
        multiply_range(&mut res, p, ROUND_MULT);
    }
    for &p in &square {
        multiply_range(&mut res, p, SQUARE_MULT);
    }
    if res.is_empty() {
        res.push(Segment::new("", 1.0));
    }
    let mut i = 0;
    while i + 1 < res.len() {
        if res[i].weight == res[i + 1].weight {
            let next = res.remove(i + 1);
            res[i].text.push_str(&next.text);
        } else {
            i += 1;
        }
    }
    res
}

/// A `<lora:name:te_weight[:unet_weight]>` tag (A1111 also accepts `te=`/`unet=` named args).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraTag {
    pub name: String,
    /// Text-encoder multiplier (the usual single weight; 1.0 when omitted).
    pub weight: f32,
    /// UNet multiplier (= `weight` when omitted).
    pub unet_weight: f32,
}

/// A1111's `extra_networks.parse_prompt`: removes every `<kind:args>` tag (regex
/// `<(\w+):([^>]+)>`) and returns the text without them plus the `lora` (and `lyco`) tags.
/// Other kinds are dropped ([`extra_networks`] has them all; `hypernet`: the pipeline's
/// hypernetwork module).
pub fn extract_extra_networks(prompt: &str) -> (String, Vec<LoraTag>) {
    let (out, tags) = extra_networks(prompt);
    let loras = tags.iter().filter(|(k, _)| k == "lora" || k == "lyco").map(|(_, a)| parse_lora_args(a)).collect();
    (out, loras)
}

/// The text without its `<kind:args>` tags, and every tag's `(kind, args)` in prompt order.
pub fn extra_networks(prompt: &str) -> (String, Vec<(String, String)>) {
    let mut out = String::with_capacity(prompt.len());
    let mut tags = Vec::new();
    let mut last = 0;
    let mut search = 0;
    while let Some(off) = prompt[search..].find('<') {
        let lt = search + off;
        let after = &prompt[lt + 1..];
        let kind_len: usize = after.chars().take_while(|&c| is_py_word(c)).map(char::len_utf8).sum();
        if kind_len > 0 && after[kind_len..].starts_with(':') {
            let args_start = kind_len + 1;
            if let Some(gt) = after[args_start..].find('>') {
                if gt > 0 {
                    tags.push((after[..kind_len].to_string(), after[args_start..args_start + gt].to_string()));
                    out.push_str(&prompt[last..lt]);
                    last = lt + 1 + args_start + gt + 1;
                    search = last;
                    continue;
                }
            }
        }
        search = lt + 1;
    }
    out.push_str(&prompt[last..]);
    (out, tags)
}

fn parse_lora_args(args: &str) -> LoraTag {
    let mut positional = Vec::new();
    let (mut te, mut unet) = (None, None);
    for item in args.split(':') {
        match item.split_once('=') {
            Some((k, v)) if k.trim() == "te" => te = Some(v.trim()),
            Some((k, v)) if k.trim() == "unet" => unet = Some(v.trim()),
            Some(_) => {}
            None => positional.push(item),
        }
    }
    let num = |s: Option<&str>, default: f32| s.and_then(|s| s.trim().parse::<f32>().ok()).unwrap_or(default);
    let weight = num(te.or(positional.get(1).copied()), 1.0);
    let unet_weight = num(unet.or(positional.get(2).copied()), weight);
    LoraTag { name: positional.first().copied().unwrap_or_default().to_string(), weight, unet_weight }
}

/// One 77-token window for the text encoder.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Chunk {
    pub ids: [u32; CHUNK_LEN],
    pub weights: [f32; CHUNK_LEN],
}

/// A prompt turned into encoder input.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptTokens {
    /// At least one chunk.
    pub chunks: Vec<Chunk>,
    /// A1111's token count: 75 per finished chunk plus the tokens of the last.
    pub token_count: usize,
    /// `<lora:…>` tags removed from the prompt.
    pub loras: Vec<LoraTag>,
}

/// Chunking options.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChunkOptions {
    /// Parse `( ) [ ] (a:w)` (A1111 emphasis "Original"); `false` = the text as is, weight 1.
    pub emphasis: bool,
    /// Move the text after the last comma to the next chunk when that comma is within this
    /// many tokens of the chunk's end (0 = off). A1111 default 20.
    pub comma_padding_backtrack: usize,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        Self { emphasis: true, comma_padding_backtrack: COMMA_PADDING_BACKTRACK }
    }
}

/// BOS + tokens + end-padding + EOS with weights, then (SD2, where the pad id differs from
/// EOS) every id after the first EOS replaced by the pad id, as A1111's `process_tokens` does
/// — the same layout diffusers uses.
fn finish_chunk(tok: &ClipTokenizer, tokens: &[u32], weights: &[f32]) -> Chunk {
    debug_assert!(tokens.len() <= CHUNK_TOKENS && tokens.len() == weights.len());
    let mut ids = [tok.eos(); CHUNK_LEN];
    let mut w = [1.0f32; CHUNK_LEN];
    ids[0] = tok.bos();
    ids[1..=tokens.len()].copy_from_slice(tokens);
    w[1..=weights.len()].copy_from_slice(weights);
    if tok.pad() != tok.eos() {
        if let Some(first_eos) = ids.iter().position(|&i| i == tok.eos()) {
            for id in &mut ids[first_eos + 1..] {
                *id = tok.pad();
            }
        }
    }
    Chunk { ids, weights: w }
}

/// A1111's `empty_chunk`: BOS, EOS, padding; all weights 1 (also what `""` encodes to).
pub fn empty_chunk(tok: &ClipTokenizer) -> Chunk {
    finish_chunk(tok, &[], &[])
}

/// The longest prompt Pigment encodes, in 75-token chunks (4800 tokens, far past what any
/// SD prompt needs; each chunk is one more CLIP call and 77 more cross-attention keys per step).
pub const MAX_PROMPT_CHUNKS: usize = 64;
/// The longest prompt text, checked before tokenizing (a CLIP token is at least one byte,
/// so this only refuses what the chunk limit would refuse anyway, without tokenizing it).
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;

/// `what` (e.g. "prompt") as written must fit [`MAX_PROMPT_BYTES`].
pub fn check_bytes(what: &str, prompt: &str) -> Result<(), String> {
    if prompt.len() > MAX_PROMPT_BYTES {
        return Err(format!(
            "the {what} is {} bytes long; at most {MAX_PROMPT_BYTES} bytes ({MAX_PROMPT_CHUNKS} chunks of 75 tokens) are encoded: shorten it",
            prompt.len()
        ));
    }
    Ok(())
}

/// `what` (e.g. "prompt") must fit [`MAX_PROMPT_BYTES`] and [`MAX_PROMPT_CHUNKS`]: checked
/// before anything is allocated for it. Returns its chunks.
pub fn tokenize_bounded(tok: &ClipTokenizer, what: &str, prompt: &str) -> Result<Vec<Chunk>, String> {
    check_bytes(what, prompt)?;
    let t = tokenize_prompt(tok, prompt);
    if t.chunks.len() > MAX_PROMPT_CHUNKS {
        return Err(format!(
            "the {what} has {} tokens ({} chunks of 75); at most {MAX_PROMPT_CHUNKS} chunks ({} tokens) are encoded: shorten it",
            t.token_count,
            t.chunks.len(),
            MAX_PROMPT_CHUNKS * 75
        ));
    }
    Ok(t.chunks)
}

/// A prompt (with A1111 syntax) → chunks, with the default options.
pub fn tokenize_prompt(tok: &ClipTokenizer, prompt: &str) -> PromptTokens {
    tokenize_prompt_with(tok, prompt, ChunkOptions::default())
}

/// A prompt (with A1111 syntax) → chunks (A1111's `tokenize_line`).
pub fn tokenize_prompt_with(tok: &ClipTokenizer, prompt: &str, opts: ChunkOptions) -> PromptTokens {
    let (text, loras) = extract_extra_networks(prompt);
    let parsed = if opts.emphasis { parse_prompt_attention(&text) } else { vec![Segment::new(text, 1.0)] };
    let (chunks, token_count) = chunk_segments(tok, &parsed, opts.comma_padding_backtrack);
    PromptTokens { chunks, token_count, loras }
}

/// Already-parsed segments → chunks and A1111's token count.
pub fn chunk_segments(tok: &ClipTokenizer, parsed: &[Segment], comma_padding_backtrack: usize) -> (Vec<Chunk>, usize) {
    struct State<'t> {
        tok: &'t ClipTokenizer,
        chunks: Vec<Chunk>,
        ids: Vec<u32>,
        weights: Vec<f32>,
        token_count: usize,
        last_comma: Option<usize>,
    }
    impl State<'_> {
        /// A1111's `next_chunk`: finish the current chunk (padded) and start an empty one.
        fn next_chunk(&mut self, is_last: bool) {
            self.token_count += if is_last { self.ids.len() } else { CHUNK_TOKENS };
            self.chunks.push(finish_chunk(self.tok, &self.ids, &self.weights));
            self.ids.clear();
            self.weights.clear();
            self.last_comma = None;
        }
    }

    let comma = tok.token_to_id(",</w>");
    let mut st = State {
        tok,
        chunks: Vec::new(),
        ids: Vec::with_capacity(CHUNK_TOKENS),
        weights: Vec::with_capacity(CHUNK_TOKENS),
        token_count: 0,
        last_comma: None,
    };
    for seg in parsed {
        if seg.is_break() {
            st.next_chunk(false);
            continue;
        }
        let weight = seg.weight as f32;
        for id in tok.encode(&seg.text) {
            if Some(id) == comma {
                st.last_comma = Some(st.ids.len());
            } else if let Some(lc) = st.last_comma.filter(|&lc| {
                comma_padding_backtrack != 0
                    && st.ids.len() == CHUNK_TOKENS
                    && st.ids.len() - lc <= comma_padding_backtrack
            }) {
                // Move what follows the comma to the next chunk.
                let reloc_ids = st.ids.split_off(lc + 1);
                let reloc_w = st.weights.split_off(lc + 1);
                st.next_chunk(false);
                st.ids = reloc_ids;
                st.weights = reloc_w;
            }
            if st.ids.len() == CHUNK_TOKENS {
                st.next_chunk(false);
            }
            st.ids.push(id);
            st.weights.push(weight);
        }
    }
    if !st.ids.is_empty() || st.chunks.is_empty() {
        st.next_chunk(true);
    }
    (st.chunks, st.token_count)
}

/// Pads the shorter of two chunk lists (positive and negative prompt) with [`empty_chunk`]s
/// so both have the same number of chunks, as A1111 does.
pub fn match_chunk_counts(tok: &ClipTokenizer, a: &mut Vec<Chunk>, b: &mut Vec<Chunk>) {
    let n = a.len().max(b.len());
    let empty = empty_chunk(tok);
    a.resize(n, empty);
    b.resize(n, empty);
}

/// A1111's "Original" emphasis on one chunk's encoder output `hidden` (`[tokens, dim]`,
/// row-major): `m0 = mean(z); z *= weights[:, None]; z *= m0 / mean(z)`. Means are taken in
/// f64. If the weighted mean is exactly 0 the rescale is skipped (A1111 would produce inf/NaN).
pub fn apply_weights(hidden: &mut [f32], tokens: usize, dim: usize, weights: &[f32]) {
    assert_eq!(hidden.len(), tokens * dim, "apply_weights: hidden is not [tokens, dim]");
    assert_eq!(weights.len(), tokens, "apply_weights: one weight per token");
    if hidden.is_empty() {
        return;
    }
    let n = hidden.len() as f64;
    let original_mean = hidden.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    for (row, &w) in hidden.chunks_exact_mut(dim).zip(weights) {
        for x in row {
            *x *= w;
        }
    }
    let new_mean = hidden.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    if new_mean == 0.0 {
        return;
    }
    let scale = (original_mean / new_mean) as f32;
    for x in hidden.iter_mut() {
        *x *= scale;
    }
}
