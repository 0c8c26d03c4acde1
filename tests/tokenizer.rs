//! The CLIP tokenizer against HF's slow `CLIPTokenizer` (tests/fixtures/tokenizer_cases.json),
//! for the embedded merges and for the diffusers folders, SD1 (pad `<|endoftext|>`) and SD2
//! (pad `!`). CPU only.

use pigment::tokenizer::{bytes_to_unicode, clean_text, fix_text, ClipTokenizer, PadToken, BOS_ID, EOS_ID, VOCAB_SIZE};
use serde_json::Value;
use std::sync::OnceLock;

const SD15_DIR: &str = "tests/fixtures/sd15-tiny/tokenizer";
const SD21_DIR: &str = "tests/fixtures/sd21-tiny/tokenizer";

struct Case {
    text: String,
    ids: Vec<u32>,
    ids_padded_77: Vec<u32>,
    ids_pad0: Vec<u32>,
    ids_padded_77_pad0: Vec<u32>,
    tokens: Vec<String>,
}

fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let s = std::fs::read_to_string("tests/fixtures/tokenizer_cases.json").expect("read tokenizer_cases.json");
        let v: Value = serde_json::from_str(&s).expect("parse tokenizer_cases.json");
        let ids = |c: &Value, k: &str| -> Vec<u32> {
            c[k].as_array().unwrap_or_else(|| panic!("{k}")).iter().map(|x| x.as_u64().unwrap() as u32).collect()
        };
        v.as_array()
            .expect("array of cases")
            .iter()
            .map(|c| Case {
                text: c["text"].as_str().unwrap().to_string(),
                ids: ids(c, "ids"),
                ids_padded_77: ids(c, "ids_padded_77"),
                ids_pad0: ids(c, "ids_pad0"),
                ids_padded_77_pad0: ids(c, "ids_padded_77_pad0"),
                tokens: c["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect(),
            })
            .collect()
    })
}

// Every fixture case matches exactly, including the ftfy ones (HTML entities, curly quotes,
// full-width forms, the `Ã©tÃ©` mojibake and the `ﬁ` ligature): no known differences here.

fn check_all(tok: &ClipTokenizer, sd2: bool, label: &str) {
    let mut failures = Vec::new();
    for c in cases() {
        let (want, want77) = if sd2 { (&c.ids_pad0, &c.ids_padded_77_pad0) } else { (&c.ids, &c.ids_padded_77) };
        let got = tok.encode_with_special(&c.text);
        if &got != want {
            failures.push(format!(
                "{label} ids {:?}\n  got  {got:?}\n  want {want:?}\n  tokens want {:?}",
                c.text, c.tokens
            ));
        }
        let got77 = tok.encode_padded(&c.text, 77);
        if &got77 != want77 {
            failures.push(format!("{label} padded {:?}\n  got  {got77:?}\n  want {want77:?}", c.text));
        }
        if !sd2 {
            let mut toks = vec!["<|startoftext|>".to_string()];
            toks.extend(tok.tokenize(&c.text));
            toks.push("<|endoftext|>".to_string());
            if toks != c.tokens {
                failures.push(format!("{label} tokens {:?}\n  got  {toks:?}\n  want {:?}", c.text, c.tokens));
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn embedded_sd1_matches_hf() {
    let tok = ClipTokenizer::embedded(PadToken::EndOfText);
    assert_eq!((tok.bos(), tok.eos(), tok.pad()), (BOS_ID, EOS_ID, EOS_ID));
    check_all(&tok, false, "embedded/sd1");
}

#[test]
fn embedded_sd2_matches_hf() {
    let tok = ClipTokenizer::embedded(PadToken::Exclamation);
    assert_eq!((tok.bos(), tok.eos(), tok.pad()), (BOS_ID, EOS_ID, 0));
    check_all(&tok, true, "embedded/sd2");
}

#[test]
fn from_dir_sd15_matches_hf() {
    let tok = ClipTokenizer::from_dir(SD15_DIR).expect("load sd15 tokenizer");
    assert_eq!((tok.bos(), tok.eos(), tok.pad()), (BOS_ID, EOS_ID, EOS_ID));
    check_all(&tok, false, "dir/sd15");
}

#[test]
fn from_dir_sd21_matches_hf() {
    let tok = ClipTokenizer::from_dir(SD21_DIR).expect("load sd21 tokenizer");
    assert_eq!((tok.bos(), tok.eos(), tok.pad()), (BOS_ID, EOS_ID, 0));
    check_all(&tok, true, "dir/sd21");
}

#[test]
fn embedded_vocab_equals_vocab_json() {
    let emb = ClipTokenizer::embedded(PadToken::EndOfText);
    let dir = ClipTokenizer::from_dir(SD15_DIR).unwrap();
    assert_eq!(emb.vocab_size(), VOCAB_SIZE);
    assert_eq!(dir.vocab_size(), VOCAB_SIZE);
    let (a, b) = (emb.vocab(), dir.vocab());
    assert_eq!(a.len(), b.len());
    for (k, v) in &b {
        assert_eq!(a.get(k), Some(v), "token {k:?}");
    }
    assert_eq!(emb.token_to_id("!"), Some(0));
    assert_eq!(emb.token_to_id(",</w>"), Some(267));
    assert_eq!(emb.id_to_token(49406).as_deref(), Some("<|startoftext|>"));
    let b2u = bytes_to_unicode();
    assert_eq!(b2u.len(), 256);
    assert_eq!(b2u[0], (b'!', '!'));
    assert_eq!(b2u.iter().find(|(b, _)| *b == b' ').unwrap().1, '\u{120}');
}

#[test]
fn truncation_to_77() {
    let tok = ClipTokenizer::embedded(PadToken::EndOfText);
    let long = "cat ".repeat(100);
    let ids = tok.encode(&long);
    assert_eq!(ids.len(), 100);
    let p = tok.encode_padded(&long, 77);
    assert_eq!(p.len(), 77);
    assert_eq!(p[0], BOS_ID);
    assert_eq!(p[76], EOS_ID);
    assert!(p[1..76].iter().all(|&i| i == ids[0]));
    let empty = tok.encode_padded("", 77);
    assert_eq!(&empty[..2], &[BOS_ID, EOS_ID]);
    let sd2 = ClipTokenizer::embedded(PadToken::Exclamation);
    let e2 = sd2.encode_padded("", 77);
    assert_eq!(&e2[..2], &[BOS_ID, EOS_ID]);
    assert!(e2[2..].iter().all(|&i| i == 0));
}

#[test]
fn ftfy_subset() {
    assert_eq!(fix_text("a &amp; b &lt;3 &quot;q&quot; &#39;s&#x41;&#65; &nbsp;x"), "a & b <3 \"q\" 'sAA \u{a0}x");
    // With a literal '<' ftfy leaves entities alone (unescape_html="auto").
    assert_eq!(fix_text("<b> &amp;"), "<b> &amp;");
    // Unknown entity and a numeric reference that decodes to ';' stay as written.
    assert_eq!(fix_text("&bogus; &#59;"), "&bogus; &#59;");
    assert_eq!(fix_text("&EACUTE;"), "É");
    assert_eq!(fix_text("“a” ‘b’"), "\"a\" 'b'");
    assert_eq!(fix_text("ＡＢＣ１２３　！"), "ABC123 !");
    assert_eq!(fix_text("ﬁne ﬂow"), "fine flow");
    assert_eq!(fix_text("Ã©tÃ© â€œhiâ€\u{9d}"), "été \"hi\"");
    assert_eq!(fix_text("ðŸ˜€"), "😀");
    assert_eq!(fix_text("cafe\u{301}"), "café");
    assert_eq!(fix_text("a\u{1b}[31mred\u{1b}[0m\u{feff}\u{7}"), "ared");
    assert_eq!(fix_text("São Paulo, naïve, âge"), "São Paulo, naïve, âge");
    assert_eq!(clean_text("  Hello\t\tWORLD \n "), "hello world");
}

#[test]
fn sd2_bang_is_special_but_fullwidth_bang_is_not() {
    let sd2 = ClipTokenizer::embedded(PadToken::Exclamation);
    let sd1 = ClipTokenizer::embedded(PadToken::EndOfText);
    assert_eq!(sd2.encode("wow!"), vec![sd1.encode("wow")[0], 0]);
    assert_eq!(sd1.encode("wow!"), vec![sd1.encode("wow")[0], 256]);
    // HF splits on the raw text, before ftfy turns U+FF01 into '!'.
    assert_eq!(sd2.encode("wow！"), sd1.encode("wow!"));
}

#[test]
fn from_dir_reads_tokenizer_json() {
    // A folder with only tokenizer.json (fast-tokenizer layout; merges as "a b" strings in one
    // file, [a, b] pairs in the other) + the SD2 special-token config.
    let vocab: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{SD21_DIR}/vocab.json")).unwrap()).unwrap();
    let merges_txt = std::fs::read_to_string(format!("{SD21_DIR}/merges.txt")).unwrap();
    let merges: Vec<&str> = merges_txt.lines().skip(1).filter(|l| !l.is_empty()).collect();
    for (k, pairs) in [("strings", false), ("pairs", true)] {
        let dir = std::env::temp_dir().join(format!("pigment-tokjson-{}-{k}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let merges: Vec<Value> = merges
            .iter()
            .map(|m| if pairs { serde_json::json!(m.split(' ').collect::<Vec<_>>()) } else { serde_json::json!(m) })
            .collect();
        let tj = serde_json::json!({ "model": { "type": "BPE", "vocab": vocab, "merges": merges } });
        std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
        std::fs::copy(format!("{SD21_DIR}/tokenizer_config.json"), dir.join("tokenizer_config.json")).unwrap();
        let tok = ClipTokenizer::from_dir(&dir).expect("load tokenizer.json");
        assert_eq!(tok.pad(), 0);
        check_all(&tok, true, "tokenizer.json");
        std::fs::remove_dir_all(&dir).ok();
    }
    assert!(ClipTokenizer::from_dir("tests/fixtures").is_err(), "not a tokenizer folder");
}

#[test]
fn odd_inputs_do_not_panic() {
    let tok = ClipTokenizer::embedded(PadToken::EndOfText);
    let sd2 = ClipTokenizer::embedded(PadToken::Exclamation);
    let cat = tok.encode("cat")[0];
    for text in [
        "\0",
        "&#0;",
        "&#x110000;",
        "&#xD800;",
        "&#99999999999999999999999;",
        "&;",
        "&#;",
        "<|endoftext|",
        "ｶﾞｷﾞ",
        "🏴\u{e0067}\u{e0062}\u{e0065}\u{e006e}\u{e0067}\u{e007f}",
        "\u{1b}[",
        "ð\u{80}\u{80}\u{80}",
        "Ã",
        "\r\n\u{2028}\u{85}",
        "!!!",
        "a\u{301}\u{301}\u{301}",
    ] {
        let ids = tok.encode(text);
        assert!(ids.iter().all(|&i| (i as usize) < VOCAB_SIZE), "{text:?}");
        let _ = sd2.encode_padded(text, 77);
    }
    let long = "x".repeat(5000);
    assert!(!tok.encode(&long).is_empty());
    // Special tokens inside text map to their ids, case-sensitively before cleaning.
    assert_eq!(tok.encode("cat<|endoftext|>cat"), vec![cat, EOS_ID, cat]);
    assert_eq!(tok.encode("cat <|ENDOFTEXT|> cat"), vec![cat, EOS_ID, cat]);
}
