//! The CLIP BPE tokenizer used by Stable Diffusion 1.x/2.x, reproducing Hugging Face's *slow*
//! `CLIPTokenizer` (the one diffusers loads), built on the `tokenizers` crate.
//!
//! Pipeline for `encode(text)`, in the order HF's slow tokenizer runs it:
//!
//! 1. split the raw text on the added/special tokens (`<|startoftext|>`, `<|endoftext|>`, and for
//!    SD2 the pad token `!`; leftmost-longest match, case-sensitive), which map straight to their ids;
//! 2. for every other piece: `ftfy.fix_text` (the subset in [`fix_text`]), whitespace clean-up
//!    (`\s+` → one space, trimmed), lowercase;
//! 3. CLIP's pre-tokenizer regex, byte-level mapping and BPE with the `</w>` end-of-word suffix
//!    (the `tokenizers` crate: `Split` + `ByteLevel` pre-tokenizers and a `BPE` model).
//!
//! Sources of vocabulary: a diffusers `tokenizer/` folder ([`ClipTokenizer::from_dir`]) or the
//! original OpenAI merges file compiled into the binary ([`ClipTokenizer::embedded`]), so that
//! single-file checkpoints need no download.
//!
//! ## What `ftfy` does that this does not
//!
//! [`fix_text`] ports the ftfy 6.x steps that apply to prompts: HTML entities (only when the text
//! has no `<`, as ftfy's `unescape_html="auto"`; numeric references exactly as `html.unescape`,
//! named ones from a table of ~150 common entities instead of all 2,231 of HTML5), mojibake (only
//! the common UTF-8-read-as-Windows-1252 shapes: one character's UTF-8 bytes shown as `Â`/`Ã` +
//! 1, `â` + 2 or `ð` + 3 Latin-1/Windows-1252 characters; not ftfy's badness heuristics, other
//! code pages, `restore_byte_a0` or lossy-sequence repair), C1 controls, Latin ligatures,
//! full-width/half-width forms, curly quotes, line breaks, terminal escapes, control characters
//! and NFC. Text where the two can differ is rare in prompts: unusual entity names, mojibake in
//! other encodings, and text ftfy's heuristics judge *not* to be mojibake although it matches the
//! shapes above.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, NormalizedString, SplitDelimiterBehavior, Tokenizer};

/// `<|startoftext|>`
pub const BOS_TOKEN: &str = "<|startoftext|>";
/// `<|endoftext|>`
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// Id of `<|startoftext|>` in the CLIP vocabulary.
pub const BOS_ID: u32 = 49406;
/// Id of `<|endoftext|>` in the CLIP vocabulary.
pub const EOS_ID: u32 = 49407;
/// Size of the CLIP vocabulary.
pub const VOCAB_SIZE: usize = 49408;
/// CLIP's context length: BOS + 75 tokens + EOS.
pub const MAX_LENGTH: usize = 77;

/// CLIP's pre-tokenizer regex (HF `CLIPTokenizer.pat`, compiled with IGNORECASE there).
pub const CLIP_PATTERN: &str =
    r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// OpenAI's CLIP merges file (`bpe_simple_vocab_16e6.txt.gz`).
static EMBEDDED_BPE_GZ: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.txt.gz");

/// Which token fills the sequence after `<|endoftext|>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadToken {
    /// SD1.x (OpenAI CLIP ViT-L/14): pad with `<|endoftext|>` (49407).
    EndOfText,
    /// SD2.x (OpenCLIP ViT-H/14 as shipped by diffusers): pad with `!` (id 0). HF's slow
    /// tokenizer then treats `!` as a special token, so every `!` in a prompt becomes id 0.
    Exclamation,
}

/// One piece of raw text after splitting out the special tokens.
enum Piece<'a> {
    Text(&'a str),
    Special(u32),
    /// A textual-inversion embedding's placeholder ids.
    Embedding(&'a [u32]),
}

/// The CLIP tokenizer. Cheap to share (`&self` everywhere); `Send + Sync`.
#[derive(Clone)]
pub struct ClipTokenizer {
    /// BPE model + CLIP regex split + byte-level mapping; `<|startoftext|>`/`<|endoftext|>`
    /// as added special tokens (so the cleaned text `<|endoftext|>` maps to its id, like the
    /// slow tokenizer's BPE cache does).
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    /// Literal strings split out of the raw text before cleaning (HF's added-tokens trie),
    /// sorted longest first.
    specials: Vec<(String, u32)>,
    /// Textual-inversion embeddings: lowercase name → placeholder ids past the vocabulary
    /// (one per vector), longest name first. See [`ClipTokenizer::add_embedding`].
    embeddings: Vec<(String, Vec<u32>)>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("specials", &self.specials)
            .finish()
    }
}

/// GPT-2/CLIP's reversible byte → printable-unicode map, in the order CLIP lists it (printable
/// Latin-1 bytes first, then the others shifted to U+0100...).
pub fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> = (u32::from(b'!')..=u32::from(b'~')).collect();
    bs.extend(0xA1..=0xAC);
    bs.extend(0xAE..=0xFF);
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter().zip(cs).map(|(b, c)| (b as u8, char::from_u32(c).expect("valid char"))).collect()
}

/// Merges lines as CLIP reads them: skip the `#version` header, keep at most
/// 49152 - 256 - 2 merges (`lines[1 : 49152-256-2+1]`), split each on whitespace.
fn parse_merges(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut merges = Vec::with_capacity(48894);
    for (i, line) in text.split('\n').enumerate().skip(1).take(49152 - 256 - 2) {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let mut it = line.split_whitespace();
        match (it.next(), it.next(), it.next()) {
            (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
            _ => bail!("merges line {} is not two tokens: {line:?}", i + 1),
        }
    }
    Ok(merges)
}

impl ClipTokenizer {
    /// The real 49408-token CLIP BPE from the merges file compiled into the binary.
    pub fn embedded(pad: PadToken) -> Self {
        let mut gz = flate2::read::GzDecoder::new(EMBEDDED_BPE_GZ);
        let mut text = String::new();
        gz.read_to_string(&mut text).expect("embedded CLIP merges file is valid gzip UTF-8");
        let merges = parse_merges(&text).expect("embedded CLIP merges parse");

        let byte_chars: Vec<String> = bytes_to_unicode().into_iter().map(|(_, c)| c.to_string()).collect();
        let mut tokens: Vec<String> = Vec::with_capacity(VOCAB_SIZE);
        tokens.extend(byte_chars.iter().cloned());
        tokens.extend(byte_chars.iter().map(|c| format!("{c}</w>")));
        tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        tokens.push(BOS_TOKEN.to_string());
        tokens.push(EOS_TOKEN.to_string());
        debug_assert_eq!(tokens.len(), VOCAB_SIZE);
        let vocab: Vocab = tokens.into_iter().enumerate().map(|(i, t)| (t, i as u32)).collect();

        let pad_token = match pad {
            PadToken::EndOfText => EOS_TOKEN,
            PadToken::Exclamation => "!",
        };
        Self::build(vocab, merges, BOS_TOKEN, EOS_TOKEN, pad_token, &[]).expect("embedded CLIP tokenizer builds")
    }

    /// Loads a diffusers/transformers `tokenizer/` folder: `vocab.json` + `merges.txt` (or
    /// `tokenizer.json`), with the pad/bos/eos tokens from `tokenizer_config.json` or
    /// `special_tokens_map.json` (default: pad = `<|endoftext|>`).
    pub fn from_dir(dir: impl AsRef<Path>) -> anyhow::Result<Self> {
        let dir = dir.as_ref();
        let read_json = |name: &str| -> anyhow::Result<Option<serde_json::Value>> {
            let p = dir.join(name);
            if !p.exists() {
                return Ok(None);
            }
            let s = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            Ok(Some(serde_json::from_str(&s).with_context(|| format!("parsing {}", p.display()))?))
        };
        let config = read_json("tokenizer_config.json")?;
        let special_map = read_json("special_tokens_map.json")?;

        let (vocab, merges) = if dir.join("vocab.json").exists() && dir.join("merges.txt").exists() {
            let vp = dir.join("vocab.json");
            let vs = std::fs::read_to_string(&vp).with_context(|| format!("reading {}", vp.display()))?;
            let vocab: HashMap<String, u32> =
                serde_json::from_str(&vs).with_context(|| format!("parsing {}", vp.display()))?;
            let mp = dir.join("merges.txt");
            let ms = std::fs::read_to_string(&mp).with_context(|| format!("reading {}", mp.display()))?;
            // HF reads `read().strip().split("\n")[1:48895]`.
            (vocab.into_iter().collect::<Vocab>(), parse_merges(ms.trim())?)
        } else if let Some(tj) = read_json("tokenizer.json")? {
            vocab_merges_from_tokenizer_json(&tj)?
        } else {
            bail!(
                "{} holds neither vocab.json + merges.txt nor tokenizer.json: not a CLIP tokenizer folder",
                dir.display()
            );
        };

        // A token setting: tokenizer_config.json first, then special_tokens_map.json.
        let token_setting = |key: &str| -> Option<String> {
            [config.as_ref(), special_map.as_ref()].into_iter().flatten().find_map(|v| match v.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            })
        };
        let bos = token_setting("bos_token").unwrap_or_else(|| BOS_TOKEN.to_string());
        let eos = token_setting("eos_token").unwrap_or_else(|| EOS_TOKEN.to_string());
        let pad = token_setting("pad_token").unwrap_or_else(|| eos.clone());
        let mut extra: Vec<String> = token_setting("unk_token").into_iter().collect();
        if let Some(added) = config.as_ref().and_then(|c| c.get("added_tokens_decoder")).and_then(|a| a.as_object()) {
            extra.extend(added.values().filter_map(|t| t.get("content")?.as_str().map(str::to_string)));
        }
        Self::build(vocab, merges, &bos, &eos, &pad, &extra)
            .with_context(|| format!("building the CLIP tokenizer from {}", dir.display()))
    }

    fn build(
        vocab: Vocab,
        merges: Vec<(String, String)>,
        bos: &str,
        eos: &str,
        pad: &str,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let id = |t: &str| vocab.get(t).copied().ok_or_else(|| anyhow!("token {t:?} is not in the vocabulary"));
        let (bos_id, eos_id, pad_id) = (id(bos)?, id(eos)?, id(pad)?);
        let mut specials: Vec<(String, u32)> = Vec::new();
        for t in [bos, eos, pad].into_iter().chain(extra.iter().map(String::as_str)) {
            if let Ok(i) = id(t) {
                if !specials.iter().any(|(s, _)| s == t) {
                    specials.push((t.to_string(), i));
                }
            }
        }
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()));

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .unk_token(eos.to_string())
            .end_of_word_suffix("</w>".to_string())
            .build()
            .map_err(|e| anyhow!("BPE: {e}"))?;
        let split = Split::new(SplitPattern::Regex(CLIP_PATTERN.to_string()), SplitDelimiterBehavior::Removed, true)
            .map_err(|e| anyhow!("CLIP regex: {e}"))?;
        let pre = Sequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
        ]);
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre));
        inner
            .add_special_tokens([AddedToken::from(bos.to_string(), true), AddedToken::from(eos.to_string(), true)])
            .map_err(|e| anyhow!("special tokens: {e}"))?;
        Ok(Self { inner, bos: bos_id, eos: eos_id, pad: pad_id, specials, embeddings: Vec::new() })
    }

    /// `<|startoftext|>` id (49406).
    pub fn bos(&self) -> u32 {
        self.bos
    }

    /// `<|endoftext|>` id (49407).
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// Padding id: 49407 for SD1, 0 (`!`) for SD2.
    pub fn pad(&self) -> u32 {
        self.pad
    }

    /// Number of tokens (49408 for CLIP).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The whole vocabulary, token → id.
    pub fn vocab(&self) -> HashMap<String, u32> {
        self.inner.get_vocab(true)
    }

    /// Token ids of `text`, without BOS/EOS and without truncation.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for piece in self.split_specials(text) {
            match piece {
                Piece::Special(id) => ids.push(id),
                Piece::Embedding(e) => ids.extend_from_slice(e),
                Piece::Text(t) => {
                    let clean = clean_text(t);
                    if clean.is_empty() {
                        continue;
                    }
                    let enc = self.inner.encode(clean.as_str(), false).expect("CLIP BPE covers every byte");
                    ids.extend_from_slice(enc.get_ids());
                }
            }
        }
        ids
    }

    /// Token strings of `text` (byte-level BPE pieces, `</w>` at word ends), without BOS/EOS.
    pub fn tokenize(&self, text: &str) -> Vec<String> {
        self.encode(text).into_iter().map(|i| self.id_to_token(i).unwrap_or_default()).collect()
    }

    /// `BOS + ids + EOS` without truncation.
    pub fn encode_with_special(&self, text: &str) -> Vec<u32> {
        let mut v = vec![self.bos];
        v.extend(self.encode(text));
        v.push(self.eos);
        v
    }

    /// What diffusers feeds the text encoder: `BOS + ids[..len-2] + EOS`, then the pad id up to
    /// `len` (77 for SD).
    pub fn encode_padded(&self, text: &str, len: usize) -> Vec<u32> {
        assert!(len >= 2, "encode_padded needs room for BOS and EOS");
        let ids = self.encode(text);
        let mut v = Vec::with_capacity(len);
        v.push(self.bos);
        v.extend(ids.iter().take(len - 2));
        v.push(self.eos);
        v.resize(len, self.pad);
        v
    }

    /// Register a textual-inversion embedding of `vectors` vectors under `name` (A1111: the
    /// file name). The name, matched case-insensitively as a whole word in prompts, becomes
    /// that many placeholder ids starting at the returned one (past the vocabulary and any
    /// earlier embedding); the text encoder maps them to the vectors.
    pub fn add_embedding(&mut self, name: &str, vectors: usize) -> u32 {
        let first = self.vocab_size() as u32 + self.embeddings.iter().map(|(_, v)| v.len() as u32).sum::<u32>();
        self.embeddings.retain(|(n, _)| *n != name.to_lowercase());
        self.embeddings.push((name.to_lowercase(), (first..first + vectors as u32).collect()));
        self.embeddings.sort_by(|a, b| b.0.len().cmp(&a.0.len()));
        first
    }

    /// The embedding whose name starts `text[i..]` as a whole word.
    fn embedding_at<'s>(&'s self, text: &str, i: usize) -> Option<(usize, &'s [u32])> {
        let word_char = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
        if text[..i].chars().next_back().is_some_and(word_char) {
            return None;
        }
        self.embeddings.iter().find_map(|(name, ids)| {
            let end = i + name.len();
            let hit = text.get(i..end).is_some_and(|w| w.to_lowercase() == *name)
                && !text[end..].chars().next().is_some_and(word_char);
            hit.then_some((name.len(), ids.as_slice()))
        })
    }

    /// HF's added-tokens trie: leftmost, longest special string first (and textual-inversion
    /// names, as whole words).
    fn split_specials<'a>(&'a self, text: &'a str) -> Vec<Piece<'a>> {
        let mut out = Vec::new();
        let mut start = 0; // start of the pending text piece
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            if let Some((len, ids)) = self.embedding_at(text, i) {
                if start < i {
                    out.push(Piece::Text(&text[start..i]));
                }
                out.push(Piece::Embedding(ids));
                i += len;
                start = i;
            } else if let Some((s, id)) = self.specials.iter().find(|(s, _)| rest.starts_with(s.as_str())) {
                if start < i {
                    out.push(Piece::Text(&text[start..i]));
                }
                out.push(Piece::Special(*id));
                i += s.len();
                start = i;
            } else {
                i += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        if start < text.len() {
            out.push(Piece::Text(&text[start..]));
        }
        out
    }
}

fn vocab_merges_from_tokenizer_json(tj: &serde_json::Value) -> anyhow::Result<(Vocab, Vec<(String, String)>)> {
    let model = tj.get("model").ok_or_else(|| anyhow!("tokenizer.json has no model"))?;
    if let Some(t) = model.get("type").and_then(|t| t.as_str()) {
        if t != "BPE" {
            bail!("tokenizer.json model is {t}, not BPE");
        }
    }
    let vocab_obj =
        model.get("vocab").and_then(|v| v.as_object()).ok_or_else(|| anyhow!("tokenizer.json model has no vocab"))?;
    let mut vocab = Vocab::default();
    for (k, v) in vocab_obj {
        let id = v.as_u64().ok_or_else(|| anyhow!("tokenizer.json vocab id of {k:?} is not a number"))?;
        vocab.insert(k.clone(), id as u32);
    }
    let mut merges = Vec::new();
    for m in model.get("merges").and_then(|m| m.as_array()).into_iter().flatten() {
        let pair = match m {
            serde_json::Value::String(s) => {
                let mut it = s.split(' ');
                match (it.next(), it.next(), it.next()) {
                    (Some(a), Some(b), None) => (a.to_string(), b.to_string()),
                    _ => bail!("tokenizer.json merge {s:?} is not two tokens"),
                }
            }
            serde_json::Value::Array(a) if a.len() == 2 => {
                (a[0].as_str().unwrap_or_default().to_string(), a[1].as_str().unwrap_or_default().to_string())
            }
            _ => bail!("tokenizer.json merge {m} is not a pair"),
        };
        merges.push(pair);
    }
    merges.truncate(49152 - 256 - 2);
    // Added tokens (e.g. <|startoftext|>) live outside model.vocab in some files.
    for t in tj.get("added_tokens").and_then(|a| a.as_array()).into_iter().flatten() {
        if let (Some(c), Some(id)) = (t.get("content").and_then(|c| c.as_str()), t.get("id").and_then(|i| i.as_u64())) {
            vocab.entry(c.to_string()).or_insert(id as u32);
        }
    }
    Ok((vocab, merges))
}

/// HF's `whitespace_clean(fix_text(text)).lower()`.
pub fn clean_text(text: &str) -> String {
    let fixed = fix_text(text);
    let mut out = String::with_capacity(fixed.len());
    for word in fixed.split(char::is_whitespace).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out.to_lowercase()
}

// ---------------------------------------------------------------------------------------------
// ftfy subset
// ---------------------------------------------------------------------------------------------

/// The subset of `ftfy.fix_text` (ftfy 6.x defaults) that prompts need; see the module docs for
/// what is not covered. Like ftfy, works line by line, and once a line contains `<` no later
/// line gets HTML entities decoded.
pub fn fix_text(text: &str) -> String {
    if text.is_ascii()
        && !text.contains('&')
        && !text.contains(|c: char| c.is_ascii_control() && c != '\n' && c != '\t' && c != ' ')
    {
        return text.to_string(); // fast path: nothing any step would change
    }
    let mut unescape = true;
    let mut out = String::with_capacity(text.len());
    for segment in text.split_inclusive('\n') {
        if segment.contains('<') {
            unescape = false;
        }
        out.push_str(&fix_segment(segment, unescape));
    }
    out
}

fn fix_segment(text: &str, unescape: bool) -> String {
    let mut text = text.to_string();
    for _ in 0..8 {
        let orig = text.clone();
        if unescape {
            text = unescape_html(&text);
        }
        text = fix_mojibake(&text);
        text = text.chars().map(fix_c1).collect();
        text = fix_ligatures_width_quotes(&text);
        text = fix_line_breaks(&text);
        text = remove_terminal_escapes(&text);
        text.retain(|c| !is_removed_control(c));
        if !text.is_ascii() {
            let mut n = NormalizedString::from(text.as_str());
            n.nfc();
            text = n.get().to_string();
        }
        if text == orig {
            break;
        }
    }
    text
}

/// Windows-1252 characters for bytes 0x80..=0x9F; `None` where 1252 leaves the byte undefined
/// ("sloppy" decoding then keeps the C1 control U+0080 + n).
const CP1252_HIGH: [Option<char>; 32] = [
    Some('\u{20AC}'),
    None,
    Some('\u{201A}'),
    Some('\u{0192}'),
    Some('\u{201E}'),
    Some('\u{2026}'),
    Some('\u{2020}'),
    Some('\u{2021}'),
    Some('\u{02C6}'),
    Some('\u{2030}'),
    Some('\u{0160}'),
    Some('\u{2039}'),
    Some('\u{0152}'),
    None,
    Some('\u{017D}'),
    None,
    None,
    Some('\u{2018}'),
    Some('\u{2019}'),
    Some('\u{201C}'),
    Some('\u{201D}'),
    Some('\u{2022}'),
    Some('\u{2013}'),
    Some('\u{2014}'),
    Some('\u{02DC}'),
    Some('\u{2122}'),
    Some('\u{0161}'),
    Some('\u{203A}'),
    Some('\u{0153}'),
    None,
    Some('\u{017E}'),
    Some('\u{0178}'),
];

/// "Sloppy" Windows-1252 decoding of one byte.
fn sloppy_1252_decode(b: u8) -> char {
    if (0x80..0xA0).contains(&b) {
        CP1252_HIGH[(b - 0x80) as usize].unwrap_or(char::from(b))
    } else {
        char::from(b)
    }
}

/// "Sloppy" Windows-1252 encoding of one char, if it has a byte.
fn sloppy_1252_encode(c: char) -> Option<u8> {
    let u = c as u32;
    if u < 0x80 || (0xA0..=0xFF).contains(&u) {
        return Some(u as u8);
    }
    if let Some(i) = CP1252_HIGH.iter().position(|&x| x == Some(c)) {
        return Some(0x80 + i as u8);
    }
    if (0x80..0xA0).contains(&u) && CP1252_HIGH[(u - 0x80) as usize].is_none() {
        return Some(u as u8);
    }
    None
}

/// `fix_c1_controls`: U+0080..U+009F decoded as Windows-1252.
fn fix_c1(c: char) -> char {
    let u = c as u32;
    if (0x80..0xA0).contains(&u) {
        sloppy_1252_decode(u as u8)
    } else {
        c
    }
}

/// The common mojibake shapes: one character's UTF-8 bytes shown as Windows-1252/Latin-1 text,
/// lead `Â`/`Ã` (2 bytes: U+0080..U+00FF), `â` (3 bytes: U+2000..U+2FFF, quotes, dashes, ...)
/// or `ð` (4 bytes: emoji), replaced by the character.
fn fix_mojibake(text: &str) -> String {
    if !text.contains(['Â', 'Ã', 'â', 'ð']) {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let need = match chars[i] {
            'Â' | 'Ã' => 1,
            'â' => 2,
            'ð' => 3,
            _ => 0,
        };
        if need > 0 && i + need < chars.len() {
            let mut bytes = vec![sloppy_1252_encode(chars[i]).expect("lead encodes")];
            let mut ok = true;
            for &c in &chars[i + 1..=i + need] {
                match sloppy_1252_encode(c) {
                    Some(b) if (0x80..0xC0).contains(&b) => bytes.push(b),
                    _ => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                if let Ok(s) = std::str::from_utf8(&bytes) {
                    out.push_str(s);
                    i += need + 1;
                    continue;
                }
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Latin ligatures (ftfy's table), full-width/half-width forms (NFKC of U+3000 and
/// U+FF01..U+FFEF) and curly quotes.
fn fix_ligatures_width_quotes(text: &str) -> String {
    if text.is_ascii() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let u = c as u32;
        let lig = match c {
            'Ĳ' => Some("IJ"),
            'ĳ' => Some("ij"),
            'ŉ' => Some("ʼn"),
            'Ǳ' => Some("DZ"),
            'ǲ' => Some("Dz"),
            'ǳ' => Some("dz"),
            'Ǆ' => Some("DŽ"),
            'ǅ' => Some("Dž"),
            'ǆ' => Some("dž"),
            'Ǉ' => Some("LJ"),
            'ǈ' => Some("Lj"),
            'ǉ' => Some("lj"),
            'Ǌ' => Some("NJ"),
            'ǋ' => Some("Nj"),
            'ǌ' => Some("nj"),
            'ﬀ' => Some("ff"),
            'ﬁ' => Some("fi"),
            'ﬂ' => Some("fl"),
            'ﬃ' => Some("ffi"),
            'ﬄ' => Some("ffl"),
            'ﬅ' => Some("ſt"),
            'ﬆ' => Some("st"),
            _ => None,
        };
        if let Some(l) = lig {
            out.push_str(l);
        } else if u == 0x3000 {
            out.push(' ');
        } else if (0xFF01..0xFFF0).contains(&u) {
            let mut buf = [0u8; 4];
            let mut n = NormalizedString::from(&*c.encode_utf8(&mut buf));
            n.nfkc();
            out.push_str(n.get());
        } else if u == 0x02BC || (0x2018..=0x201B).contains(&u) {
            out.push('\'');
        } else if (0x201C..=0x201F).contains(&u) {
            out.push('"');
        } else {
            out.push(c);
        }
    }
    out
}

fn fix_line_breaks(text: &str) -> String {
    if !text.contains(['\r', '\u{2028}', '\u{2029}', '\u{85}']) {
        return text.to_string();
    }
    text.replace("\r\n", "\n").replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
}

/// Removes ANSI escapes `ESC [ (digits|;)* letter`.
fn remove_terminal_escapes(text: &str) -> String {
    if !text.contains('\u{1b}') {
        return text.to_string();
    }
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == 0x1b && i + 1 < b.len() && b[i + 1] == b'[' {
            let mut j = i + 2;
            while j < b.len() && (b[j].is_ascii_digit() || b[j] == b';') {
                j += 1;
            }
            if j < b.len() && b[j].is_ascii_alphabetic() {
                out.push_str(&text[last..i]);
                last = j + 1;
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[last..]);
    out
}

/// ftfy's `remove_control_chars` set.
fn is_removed_control(c: char) -> bool {
    matches!(c as u32, 0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC)
}

/// Named HTML entities decoded (a common subset of HTML5's list).
const HTML_ENTITIES: &[(&str, &str)] = &[
    ("amp", "&"),
    ("lt", "<"),
    ("gt", ">"),
    ("quot", "\""),
    ("apos", "'"),
    ("nbsp", "\u{A0}"),
    ("AMP", "&"),
    ("LT", "<"),
    ("GT", ">"),
    ("QUOT", "\""),
    ("COPY", "©"),
    ("REG", "®"),
    ("iexcl", "¡"),
    ("cent", "¢"),
    ("pound", "£"),
    ("curren", "¤"),
    ("yen", "¥"),
    ("brvbar", "¦"),
    ("sect", "§"),
    ("uml", "¨"),
    ("copy", "©"),
    ("ordf", "ª"),
    ("laquo", "«"),
    ("not", "¬"),
    ("shy", "\u{AD}"),
    ("reg", "®"),
    ("macr", "¯"),
    ("deg", "°"),
    ("plusmn", "±"),
    ("sup2", "²"),
    ("sup3", "³"),
    ("acute", "´"),
    ("micro", "µ"),
    ("para", "¶"),
    ("middot", "·"),
    ("cedil", "¸"),
    ("sup1", "¹"),
    ("ordm", "º"),
    ("raquo", "»"),
    ("frac14", "¼"),
    ("frac12", "½"),
    ("frac34", "¾"),
    ("iquest", "¿"),
    ("Agrave", "À"),
    ("Aacute", "Á"),
    ("Acirc", "Â"),
    ("Atilde", "Ã"),
    ("Auml", "Ä"),
    ("Aring", "Å"),
    ("AElig", "Æ"),
    ("Ccedil", "Ç"),
    ("Egrave", "È"),
    ("Eacute", "É"),
    ("Ecirc", "Ê"),
    ("Euml", "Ë"),
    ("Igrave", "Ì"),
    ("Iacute", "Í"),
    ("Icirc", "Î"),
    ("Iuml", "Ï"),
    ("ETH", "Ð"),
    ("Ntilde", "Ñ"),
    ("Ograve", "Ò"),
    ("Oacute", "Ó"),
    ("Ocirc", "Ô"),
    ("Otilde", "Õ"),
    ("Ouml", "Ö"),
    ("times", "×"),
    ("Oslash", "Ø"),
    ("Ugrave", "Ù"),
    ("Uacute", "Ú"),
    ("Ucirc", "Û"),
    ("Uuml", "Ü"),
    ("Yacute", "Ý"),
    ("THORN", "Þ"),
    ("szlig", "ß"),
    ("agrave", "à"),
    ("aacute", "á"),
    ("acirc", "â"),
    ("atilde", "ã"),
    ("auml", "ä"),
    ("aring", "å"),
    ("aelig", "æ"),
    ("ccedil", "ç"),
    ("egrave", "è"),
    ("eacute", "é"),
    ("ecirc", "ê"),
    ("euml", "ë"),
    ("igrave", "ì"),
    ("iacute", "í"),
    ("icirc", "î"),
    ("iuml", "ï"),
    ("eth", "ð"),
    ("ntilde", "ñ"),
    ("ograve", "ò"),
    ("oacute", "ó"),
    ("ocirc", "ô"),
    ("otilde", "õ"),
    ("ouml", "ö"),
    ("divide", "÷"),
    ("oslash", "ø"),
    ("ugrave", "ù"),
    ("uacute", "ú"),
    ("ucirc", "û"),
    ("uuml", "ü"),
    ("yacute", "ý"),
    ("thorn", "þ"),
    ("yuml", "ÿ"),
    ("OElig", "Œ"),
    ("oelig", "œ"),
    ("Scaron", "Š"),
    ("scaron", "š"),
    ("Yuml", "Ÿ"),
    ("fnof", "ƒ"),
    ("circ", "ˆ"),
    ("tilde", "˜"),
    ("ensp", "\u{2002}"),
    ("emsp", "\u{2003}"),
    ("thinsp", "\u{2009}"),
    ("zwnj", "\u{200C}"),
    ("zwj", "\u{200D}"),
    ("lrm", "\u{200E}"),
    ("rlm", "\u{200F}"),
    ("ndash", "–"),
    ("mdash", "—"),
    ("lsquo", "‘"),
    ("rsquo", "’"),
    ("sbquo", "‚"),
    ("ldquo", "“"),
    ("rdquo", "”"),
    ("bdquo", "„"),
    ("dagger", "†"),
    ("Dagger", "‡"),
    ("bull", "•"),
    ("hellip", "…"),
    ("permil", "‰"),
    ("prime", "′"),
    ("Prime", "″"),
    ("lsaquo", "‹"),
    ("rsaquo", "›"),
    ("oline", "‾"),
    ("frasl", "⁄"),
    ("euro", "€"),
    ("trade", "™"),
    ("larr", "←"),
    ("uarr", "↑"),
    ("rarr", "→"),
    ("darr", "↓"),
    ("harr", "↔"),
    ("infin", "∞"),
    ("ne", "≠"),
    ("le", "≤"),
    ("ge", "≥"),
    ("minus", "−"),
    ("hearts", "♥"),
    ("spades", "♠"),
    ("clubs", "♣"),
    ("diams", "♦"),
    ("star", "☆"),
    ("starf", "★"),
    ("check", "✓"),
    ("Alpha", "Α"),
    ("Beta", "Β"),
    ("Gamma", "Γ"),
    ("Delta", "Δ"),
    ("Omega", "Ω"),
    ("alpha", "α"),
    ("beta", "β"),
    ("gamma", "γ"),
    ("delta", "δ"),
    ("epsilon", "ε"),
    ("lambda", "λ"),
    ("mu", "μ"),
    ("pi", "π"),
    ("sigma", "σ"),
    ("omega", "ω"),
    ("phi", "φ"),
    ("theta", "θ"),
];

/// ftfy's `unescape_html`: `&#?[0-9A-Za-z]{1,24};` entities; named ones from the table (and
/// their all-uppercase spelling, decoded to the uppercase character), numeric ones as
/// `html.unescape`, kept as they are when that fails or yields a `;`.
pub fn unescape_html(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'&' {
            i += 1;
            continue;
        }
        let hash = i + 1 < b.len() && b[i + 1] == b'#';
        let start = i + 1 + hash as usize;
        let mut j = start;
        while j < b.len() && j - start < 24 && b[j].is_ascii_alphanumeric() {
            j += 1;
        }
        if j > start && j < b.len() && b[j] == b';' {
            let name = &text[start..j];
            let rep = if hash { numeric_charref(name) } else { named_entity(name) };
            if let Some(r) = rep {
                out.push_str(&text[last..i]);
                out.push_str(&r);
                last = j + 1;
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[last..]);
    out
}

fn named_entity(name: &str) -> Option<String> {
    if let Some((_, v)) = HTML_ENTITIES.iter().find(|(n, _)| *n == name) {
        return Some(v.to_string());
    }
    // ftfy also decodes an all-lowercase entity name written in uppercase, to the uppercase char.
    if name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) {
        let lower = name.to_ascii_lowercase();
        if let Some((_, v)) = HTML_ENTITIES.iter().find(|(n, _)| *n == lower) {
            return Some(v.to_uppercase());
        }
    }
    None
}

/// `html.unescape` of `&#<body>;` as ftfy uses it: `None` = leave the entity as written.
fn numeric_charref(body: &str) -> Option<String> {
    let (digits, radix) = match body.strip_prefix(['x', 'X']) {
        Some(h) => (h, 16),
        None => (body, 10),
    };
    // html.unescape's pattern: #[0-9]+;? or #[xX][0-9a-fA-F]+;? — a partial match leaves the
    // rest (and the ';') in the result, which ftfy then rejects.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let num = u64::from_str_radix(digits, radix).unwrap_or(u64::MAX);
    let s = match num {
        0x00 => "\u{FFFD}".to_string(),
        0x0D => "\r".to_string(),
        0x80..=0x9F => sloppy_1252_decode(num as u8).to_string(),
        0xD800..=0xDFFF => "\u{FFFD}".to_string(),
        n if n > 0x10FFFF => "\u{FFFD}".to_string(),
        0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F..=0x9F | 0xFDD0..=0xFDEF => String::new(),
        n if (n & 0xFFFE) == 0xFFFE => String::new(),
        n => char::from_u32(n as u32).map(String::from).unwrap_or_default(),
    };
    if s.contains(';') {
        None
    } else {
        Some(s)
    }
}
