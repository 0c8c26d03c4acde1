//! Pigment's safetensors reader against the `safetensors` crate's own `SafeTensors::deserialize`
//! (the reference implementation, on the whole file): on every fixture file in the tree and on
//! hand-made hostile headers, both accept or both refuse, and where they accept they agree on
//! every tensor's dtype, shape and bytes. Pigment's errors name the file and, where one is at
//! fault, the tensor.

use pigment::weights::SafetensorsFile;
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

fn all_fixture_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        // The fuzz corpora (tests/fixtures/fuzz*) are hostile on purpose: tests/fuzz_regressions.rs
        // holds Pigment to them; every other fixture is a real model file.
        if p.is_dir() && p.file_name().is_some_and(|f| f.to_string_lossy().starts_with("fuzz")) {
            continue;
        }
        if p.is_dir() {
            all_fixture_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "safetensors") {
            out.push(p);
        }
    }
}

/// Both parsers on `bytes`: `Ok(())` when they agree (both refuse, or both accept the same
/// tensors), else what differs. Returns Pigment's error text when it refused.
fn compare(name: &str, bytes: &[u8]) -> Result<Option<String>, String> {
    let reference = SafeTensors::deserialize(bytes);
    let ours = SafetensorsFile::from_bytes(name, bytes.to_vec());
    match (reference, ours) {
        (Err(_), Err(e)) => Ok(Some(e.to_string())),
        (Ok(st), Ok(f)) => {
            let mut want: Vec<&str> = st.names();
            let mut got: Vec<&str> = f.names();
            want.sort_unstable();
            got.sort_unstable();
            if want != got {
                return Err(format!("{name}: names differ: crate {want:?}, pigment {got:?}"));
            }
            for n in want {
                let (a, b) = (st.tensor(n).unwrap(), f.get(n).unwrap());
                if format!("{:?}", a.dtype()) != b.dtype.name() || a.shape() != b.shape.as_slice() || a.data() != &b.data[..] {
                    return Err(format!("{name}: tensor {n} differs ({:?} {:?} vs {} {:?})", a.dtype(), a.shape(), b.dtype.name(), b.shape));
                }
            }
            let meta: std::collections::BTreeMap<String, String> = st_metadata(bytes);
            if &meta != f.metadata() {
                return Err(format!("{name}: __metadata__ differs"));
            }
            Ok(None)
        }
        (Ok(_), Err(e)) => Err(format!("{name}: the crate accepts it, Pigment refuses: {e}")),
        (Err(e), Ok(_)) => Err(format!("{name}: the crate refuses it ({e}), Pigment accepts it")),
    }
}

fn st_metadata(bytes: &[u8]) -> std::collections::BTreeMap<String, String> {
    let (_, m) = SafeTensors::read_metadata(bytes).unwrap();
    m.metadata().clone().unwrap_or_default().into_iter().collect()
}

/// A file from a raw header string and `data_len` bytes of data (0, 1, 2, ...).
fn raw(header: &str, data_len: usize) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend(header.as_bytes());
    v.extend((0..data_len).map(|i| i as u8));
    v
}

#[test]
fn every_fixture_file_parses_as_the_crate_parses_it() {
    let mut files = Vec::new();
    all_fixture_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"), &mut files);
    assert!(files.len() >= 20, "found only {} fixture files", files.len());
    for p in &files {
        let bytes = std::fs::read(p).unwrap();
        let name = p.display().to_string();
        assert_eq!(compare(&name, &bytes), Ok(None), "{name}: the crate and Pigment must both accept it");
        // Cut inside the data, inside the header and after the length: both refuse, and
        // Pigment names the file.
        let n = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for cut in [bytes.len() - 1, n + (bytes.len() - n) / 2, n - 1, 4] {
            if cut >= bytes.len() {
                continue;
            }
            let e = compare(&name, &bytes[..cut]).unwrap().expect("a cut file is refused");
            assert!(e.contains(&name), "{e}");
        }
        let mut longer = bytes.clone();
        longer.extend([0u8; 3]);
        compare(&name, &longer).unwrap().expect("trailing bytes are refused");
    }
}

#[test]
fn hostile_headers_are_refused_by_both_naming_the_tensor() {
    let t = |d: &str, shape: &str, b: usize, e: usize| format!(r#""{d}":{{"dtype":"F32","shape":{shape},"data_offsets":[{b},{e}]}}"#);
    let ok = format!("{{{},{}}}", t("a", "[2]", 0, 8), t("b", "[1,2]", 8, 16));
    assert_eq!(compare("ok", &raw(&ok, 16)), Ok(None));
    let with_meta = format!(r#"{{"__metadata__":{{"format":"pt"}},{}}}"#, t("a", "[2]", 0, 8));
    assert_eq!(compare("meta", &raw(&with_meta, 8)), Ok(None));
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("overlap", raw(&format!("{{{},{}}}", t("a", "[2]", 0, 8), t("b", "[2]", 4, 12)), 12), &["'b'", "overlap"]),
        ("gap", raw(&format!("{{{},{}}}", t("a", "[2]", 0, 8), t("b", "[2]", 12, 20)), 20), &["'b'", "gap"]),
        ("reversed", raw(&format!("{{{}}}", t("a", "[0]", 8, 0)), 8), &["'a'"]),
        ("size", raw(&format!("{{{}}}", t("a", "[3]", 0, 8)), 8), &["'a'", "[3]", "12 expected"]),
        ("overflow", raw(&format!("{{{}}}", t("a", "[4294967296,4294967296,16]", 0, 8)), 8), &["'a'", "overflows"]),
        ("100 GB", raw(&format!("{{{}}}", t("a", "[25000000000]", 0, 100_000_000_000)), 64), &["'a'", "truncated"]),
        ("past end", raw(&format!("{{{},{}}}", t("a", "[2]", 0, 8), t("b", "[2]", 8, 16)), 12), &["'b'", "truncated"]),
        ("dtype", raw(r#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}}"#, 2), &["'a'", "Q4"]),
        ("no offsets", raw(r#"{"a":{"dtype":"F32","shape":[2]}}"#, 8), &["'a'", "data_offsets"]),
        ("negative", raw(r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, 8), &["'a'", "shape"]),
        ("json", raw("{not json", 0), &["JSON"]),
        ("not object", raw("[1,2]", 0), &["header"]),
        ("meta type", raw(&format!(r#"{{"__metadata__":{{"n":1}},{}}}"#, t("a", "[2]", 0, 8)), 8), &["header"]),
        ("huge header", 200_000_000u64.to_le_bytes().iter().copied().chain(*b"{}").collect(), &["header length", "implausible"]),
        ("header past end", 64u64.to_le_bytes().iter().copied().chain(*b"{}").collect(), &["truncated"]),
        ("short", vec![1, 0, 0], &["truncated"]),
        ("utf8", [4u64.to_le_bytes().to_vec(), vec![b'{', 0xff, 0xfe, b'}']].concat(), &["header"]),
    ];
    for (name, bytes, want) in cases {
        let e = compare(name, &bytes).unwrap_or_else(|d| panic!("{d}")).unwrap_or_else(|| panic!("{name}: accepted"));
        assert!(e.starts_with(name), "{name}: the error names the file: {e}");
        for w in want {
            assert!(e.contains(w), "{name}: wanted '{w}' in: {e}");
        }
    }
}
