//! A1111 prompt handling: emphasis parsing (A1111's documented examples), BREAK, lora tags,
//! 75-token chunking with comma back-off, chunk-count matching and the emphasis rescale. CPU only.

use pigment::prompt::{
    apply_weights, empty_chunk, extract_extra_networks, match_chunk_counts, parse_prompt_attention, tokenize_prompt,
    tokenize_prompt_with, Chunk, ChunkOptions, LoraTag, CHUNK_LEN,
};
use pigment::tokenizer::{ClipTokenizer, PadToken, BOS_ID, EOS_ID};
use std::sync::OnceLock;

fn sd1() -> &'static ClipTokenizer {
    static T: OnceLock<ClipTokenizer> = OnceLock::new();
    T.get_or_init(|| ClipTokenizer::embedded(PadToken::EndOfText))
}

fn sd2() -> &'static ClipTokenizer {
    static T: OnceLock<ClipTokenizer> = OnceLock::new();
    T.get_or_init(|| ClipTokenizer::embedded(PadToken::Exclamation))
}

fn parsed(text: &str) -> Vec<(String, f64)> {
    parse_prompt_attention(text).into_iter().map(|s| (s.text, s.weight)).collect()
}

fn p(v: &[(&str, f64)]) -> Vec<(String, f64)> {
    v.iter().map(|(t, w)| (t.to_string(), *w)).collect()
}

fn id(word: &str) -> u32 {
    let ids = sd1().encode(word);
    assert_eq!(ids.len(), 1, "{word:?} is one token");
    ids[0]
}

// --- parse_prompt_attention: the examples in A1111's docstring, exact f64 weights ---

#[test]
fn a1111_docstring_examples() {
    assert_eq!(parsed("normal text"), p(&[("normal text", 1.0)]));
    assert_eq!(parsed("an (important) word"), p(&[("an ", 1.0), ("important", 1.1), (" word", 1.0)]));
    assert_eq!(parsed("(unbalanced"), p(&[("unbalanced", 1.1)]));
    assert_eq!(parsed(r"\(literal\]"), p(&[("(literal]", 1.0)]));
    assert_eq!(parsed("(unnecessary)(parens)"), p(&[("unnecessaryparens", 1.1)]));
    assert_eq!(
        parsed("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
        p(&[
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ])
    );
}

#[test]
fn emphasis_weights() {
    assert_eq!(
        parsed("a (b:1.5) [c] ((d))"),
        p(&[("a ", 1.0), ("b", 1.5), (" ", 1.0), ("c", 1.0 / 1.1), (" ", 1.0), ("d", 1.1 * 1.1)])
    );
    assert_eq!(parsed("[[x]]"), p(&[("x", 1.0 / 1.1 / 1.1)]));
    // Spaces around the weight are allowed, signs too.
    assert_eq!(parsed("(x : 0.5 )"), p(&[("x ", 0.5)]));
    assert_eq!(parsed("(x:-1)"), p(&[("x", -1.0)]));
    // Nested explicit weight multiplies.
    assert_eq!(parsed("((x:2))"), p(&[("x", 2.0 * 1.1)]));
}

#[test]
fn escapes_and_unbalanced() {
    assert_eq!(parsed(r"a \(b\) \[c\] d\\e"), p(&[(r"a (b) [c] d\e", 1.0)]));
    // A lone backslash disappears (A1111 appends text[1:] of "\").
    assert_eq!(parsed(r"a\b"), p(&[("ab", 1.0)]));
    // An unmatched closing bracket is literal text.
    assert_eq!(parsed("a) b]"), p(&[("a) b]", 1.0)]));
    // A colon that is not a weight is text; inside brackets it takes the bracket's weight.
    assert_eq!(parsed("(a:b)"), p(&[("a:b", 1.1)]));
    assert_eq!(parsed("time: 5pm"), p(&[("time: 5pm", 1.0)]));
    // A weight with no open bracket is literal text.
    assert_eq!(parsed("x:1.5)"), p(&[("x:1.5)", 1.0)]));
    // Unclosed square bracket applies to the rest.
    assert_eq!(parsed("a [b c"), p(&[("a ", 1.0), ("b c", 1.0 / 1.1)]));
    assert_eq!(parsed(""), p(&[("", 1.0)]));
}

#[test]
fn break_keyword() {
    assert_eq!(parsed("a BREAK b"), p(&[("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]));
    assert_eq!(parsed("a\n  BREAK\tb"), p(&[("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]));
    assert_eq!(parsed("BREAKfast aBREAK break"), p(&[("BREAKfast aBREAK break", 1.0)]));
    assert_eq!(parsed("(a BREAK b)"), p(&[("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]));
    assert!(parse_prompt_attention("x BREAK y")[1].is_break());
}

// --- lora tags ---

#[test]
fn lora_tags_are_extracted() {
    let (text, loras) = extract_extra_networks(
        "a cat <lora:foo:0.8>, <lora:bar>, <hypernet:h:1> <lora:baz:0.5:0.25> <lora:q:unet=0.3:te=0.7> <not a tag> <x:>",
    );
    assert_eq!(text, "a cat , ,    <not a tag> <x:>");
    let l = |name: &str, weight: f32, unet_weight: f32| LoraTag { name: name.into(), weight, unet_weight };
    assert_eq!(loras, vec![l("foo", 0.8, 0.8), l("bar", 1.0, 1.0), l("baz", 0.5, 0.25), l("q", 0.7, 0.3)]);

    let t = tokenize_prompt(sd1(), "<lora:style:0.6>a photo of a cat");
    assert_eq!(t.loras, vec![l("style", 0.6, 0.6)]);
    assert_eq!(t.chunks[0].ids[..7], sd1().encode_padded("a photo of a cat", 77)[..7]);
}

// --- chunking ---

fn check_frame(c: &Chunk) {
    assert_eq!(c.ids[0], BOS_ID);
    assert_eq!(c.ids[CHUNK_LEN - 1], EOS_ID);
    assert_eq!(c.weights[0], 1.0);
    assert_eq!(c.weights[CHUNK_LEN - 1], 1.0);
}

#[test]
fn short_prompt_is_one_chunk_like_diffusers() {
    let tok = sd1();
    for text in ["a photo of a cat", "", "hello, world!"] {
        let t = tokenize_prompt(tok, text);
        assert_eq!(t.chunks.len(), 1);
        check_frame(&t.chunks[0]);
        assert_eq!(t.chunks[0].ids.to_vec(), tok.encode_padded(text, 77), "{text:?}");
        assert!(t.chunks[0].weights.iter().all(|&w| w == 1.0));
        assert_eq!(t.token_count, tok.encode(text).len());
    }
    assert_eq!(tokenize_prompt(tok, "").chunks[0], empty_chunk(tok));
}

#[test]
fn sd2_chunks_pad_with_zero_after_eos() {
    let tok = sd2();
    let t = tokenize_prompt(tok, "a photo of a cat");
    assert_eq!(t.chunks[0].ids.to_vec(), tok.encode_padded("a photo of a cat", 77));
    let e = empty_chunk(tok);
    assert_eq!(&e.ids[..3], &[BOS_ID, EOS_ID, 0]);
    assert!(e.ids[2..].iter().all(|&i| i == 0));
    // A full chunk keeps its final EOS.
    let t = tokenize_prompt(tok, &"cat ".repeat(80));
    assert_eq!(t.chunks.len(), 2);
    assert_eq!(t.chunks[0].ids[76], EOS_ID);
    assert_eq!(&t.chunks[1].ids[..8], &[BOS_ID, id("cat"), id("cat"), id("cat"), id("cat"), id("cat"), EOS_ID, 0]);
}

#[test]
fn long_prompt_splits_into_chunks_of_75() {
    let tok = sd1();
    let cat = id("cat");
    let t = tokenize_prompt(tok, &"cat ".repeat(100));
    assert_eq!(t.chunks.len(), 2);
    assert_eq!(t.token_count, 100);
    for c in &t.chunks {
        check_frame(c);
        assert!(c.weights.iter().all(|&w| w == 1.0));
    }
    assert!(t.chunks[0].ids[1..76].iter().all(|&i| i == cat));
    assert!(t.chunks[1].ids[1..26].iter().all(|&i| i == cat));
    assert!(t.chunks[1].ids[26..].iter().all(|&i| i == EOS_ID));

    // Exactly 75 tokens: one chunk; 76: two.
    assert_eq!(tokenize_prompt(tok, &"cat ".repeat(75)).chunks.len(), 1);
    let t = tokenize_prompt(tok, &"cat ".repeat(76));
    assert_eq!(t.chunks.len(), 2);
    assert_eq!(t.token_count, 76);
    assert_eq!(t.chunks[1].ids[1], cat);
    assert_eq!(t.chunks[1].ids[2], EOS_ID);
}

#[test]
fn comma_backoff_moves_the_last_phrase() {
    let tok = sd1();
    let (cat, dog, comma) = (id("cat"), id("dog"), id(","));
    // 70 cats, a comma (index 70), then 10 dogs: at 75 tokens the comma is 5 back (<= 20), so
    // the 4 dogs after it move to the second chunk.
    let prompt = format!("{}, {}", "cat ".repeat(70).trim_end(), "dog ".repeat(10));
    let t = tokenize_prompt(tok, &prompt);
    assert_eq!(t.chunks.len(), 2);
    let c0 = &t.chunks[0].ids;
    assert!(c0[1..71].iter().all(|&i| i == cat));
    assert_eq!(c0[71], comma);
    assert!(c0[72..].iter().all(|&i| i == EOS_ID), "padded after the comma");
    let c1 = &t.chunks[1].ids;
    assert!(c1[1..11].iter().all(|&i| i == dog));
    assert_eq!(c1[11], EOS_ID);
    assert_eq!(t.token_count, 75 + 10);

    // Back-off disabled: the first chunk is filled to 75.
    let t = tokenize_prompt_with(tok, &prompt, ChunkOptions { comma_padding_backtrack: 0, ..Default::default() });
    assert_eq!(&t.chunks[0].ids[71..76], &[comma, dog, dog, dog, dog]);
    assert!(t.chunks[1].ids[1..7].iter().all(|&i| i == dog));

    // A comma more than 20 tokens back is not used.
    let prompt = format!("{}, {}", "cat ".repeat(50).trim_end(), "dog ".repeat(40));
    let t = tokenize_prompt(tok, &prompt);
    assert_eq!(t.chunks[0].ids[51], comma);
    assert!(t.chunks[0].ids[52..76].iter().all(|&i| i == dog));
}

#[test]
fn break_starts_a_new_chunk() {
    let tok = sd1();
    let t = tokenize_prompt(tok, "a cat BREAK a dog");
    assert_eq!(t.chunks.len(), 2);
    assert_eq!(&t.chunks[0].ids[..4], &[BOS_ID, id("a"), id("cat"), EOS_ID]);
    assert_eq!(&t.chunks[1].ids[..4], &[BOS_ID, id("a"), id("dog"), EOS_ID]);
    assert_eq!(t.token_count, 75 + 2);
    // BREAK at the start gives an empty first chunk, as in A1111.
    let t = tokenize_prompt(tok, "BREAK cat");
    assert_eq!(t.chunks.len(), 2);
    assert_eq!(t.chunks[0], empty_chunk(tok));
}

#[test]
fn chunk_weights_follow_emphasis() {
    let tok = sd1();
    let t = tokenize_prompt(tok, "a (red:1.5) [cat], ((dog))");
    let c = &t.chunks[0];
    assert_eq!(&c.ids[..7], &[BOS_ID, id("a"), id("red"), id("cat"), id(","), id("dog"), EOS_ID]);
    let w = [1.0, 1.0, 1.5, (1.0 / 1.1) as f32, 1.0, (1.1f64 * 1.1) as f32, 1.0];
    assert_eq!(&c.weights[..7], &w);
    assert!(c.weights[7..].iter().all(|&x| x == 1.0));
    // Emphasis off: brackets are plain text, all weights 1.
    let t = tokenize_prompt_with(tok, "(red:1.5)", ChunkOptions { emphasis: false, ..Default::default() });
    assert!(t.chunks[0].weights.iter().all(|&x| x == 1.0));
    assert_eq!(t.chunks[0].ids.to_vec(), tok.encode_padded("(red:1.5)", 77));
}

#[test]
fn positive_and_negative_get_the_same_chunk_count() {
    let tok = sd1();
    let mut pos = tokenize_prompt(tok, &"cat ".repeat(160)).chunks;
    let mut neg = tokenize_prompt(tok, "blurry").chunks;
    assert_eq!((pos.len(), neg.len()), (3, 1));
    match_chunk_counts(tok, &mut pos, &mut neg);
    assert_eq!((pos.len(), neg.len()), (3, 3));
    assert_eq!(neg[1], empty_chunk(tok));
    assert_eq!(neg[2], empty_chunk(tok));
    assert_eq!(&empty_chunk(tok).ids[..3], &[BOS_ID, EOS_ID, EOS_ID]);
    // Also the other way round.
    let mut a = tokenize_prompt(tok, "x").chunks;
    let mut b = tokenize_prompt(tok, &"dog ".repeat(80)).chunks;
    match_chunk_counts(tok, &mut a, &mut b);
    assert_eq!((a.len(), b.len()), (2, 2));
}

// --- emphasis rescale ---

#[test]
fn apply_weights_restores_the_mean() {
    // z = [[1, 2], [3, 4]], weights [1, 2]: mean 2.5; z*w = [[1, 2], [6, 8]], mean 4.25;
    // times 2.5 / 4.25 = 10/17.
    let mut z = vec![1.0f32, 2.0, 3.0, 4.0];
    apply_weights(&mut z, 2, 2, &[1.0, 2.0]);
    let want = [10.0 / 17.0, 20.0 / 17.0, 60.0 / 17.0, 80.0 / 17.0];
    for (a, b) in z.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{z:?} vs {want:?}");
    }
    let mean: f32 = z.iter().sum::<f32>() / 4.0;
    assert!((mean - 2.5).abs() < 1e-6);

    // All weights 1: unchanged.
    let mut z: Vec<f32> = (0..77 * 8).map(|i| (i as f32 * 0.37).sin()).collect();
    let orig = z.clone();
    apply_weights(&mut z, 77, 8, &[1.0; 77]);
    for (a, b) in z.iter().zip(&orig) {
        assert!((a - b).abs() < 1e-6);
    }
}
