//! The fuzz targets' regression corpora on stable: every file in `tests/fixtures/fuzz/<target>/`
//! (inputs that once crashed a target, minimized, plus a few seeds) runs through the same
//! function the target calls (`fuzz/harness.rs`) and must return, not panic. A file named
//! `err-*` must also be refused (an error a user can read) and `ok-*` accepted, so a fix that
//! turns a panic into a wrong answer fails too.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn corpus(target: &str) {
    corpus_in("tests/fixtures/fuzz", target)
}

fn corpus_in(root: &str, target: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(root).join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no seeds", dir.display());
    let mut failures = Vec::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(f).unwrap();
        let r = std::panic::catch_unwind(|| harness::run(target, &data));
        if std::env::var_os("FUZZ_VERBOSE").is_some() {
            eprintln!("{target}/{name}: {:?}", r.as_ref().map(|r| r.as_ref().err()));
        }
        match r {
            Err(p) => {
                let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                failures.push(format!("{name}: panicked: {}", msg.unwrap_or_default()));
            }
            Ok(Ok(())) if name.starts_with("err-") => failures.push(format!("{name}: accepted, but it must be refused")),
            Ok(Err(e)) if name.starts_with("ok-") => failures.push(format!("{name}: refused ({e}), but it must be accepted")),
            Ok(Err(e)) if e.is_empty() => failures.push(format!("{name}: refused with an empty message")),
            Ok(_) => {}
        }
    }
    assert!(failures.is_empty(), "{target}: {} of {} inputs failed:\n{}", failures.len(), files.len(), failures.join("\n"));
}

#[test]
fn safetensors() {
    corpus("safetensors");
}

#[test]
fn single_file() {
    corpus("single_file");
}

#[test]
fn loaders() {
    corpus("loaders");
}

#[test]
fn prompt() {
    corpus("prompt");
}

#[test]
fn tokenizer() {
    corpus("tokenizer");
}

#[test]
fn image() {
    corpus("image");
}

#[test]
fn serve_request() {
    corpus("serve_request");
}

/// Header inputs main's hand-written safetensors parser accepts or overflows on (unchecked
/// `numel * size`, unsized unknown dtypes, `base + begin`); the `hostile` branch's parser (the
/// safetensors crate) refuses them.
#[test]
fn safetensors_header_after_hostile() {
    corpus_in("tests/fixtures/fuzz-after-hostile", "safetensors");
}

#[test]
fn every_target_has_a_test() {
    assert_eq!(harness::TARGETS, ["safetensors", "single_file", "loaders", "prompt", "tokenizer", "image", "serve_request"]);
}
