//! The fuzz targets on stable, in every `cargo test`: each seed of `tests/fixtures/fuzz/<target>/`
//! mutated a fixed number of times, libFuzzer-style (bit flips, interesting bytes, inserted,
//! deleted and duplicated runs, numbers in JSON headers swapped for huge ones, truncation, splices
//! with another seed), through the same `fuzz/harness.rs` function the cargo-fuzz target calls.
//! The mutations come from a fixed splitmix64 stream, so a failure repeats exactly. Each input
//! must return (Ok or an error with a message): a panic, an input slower than `HANG`, or live heap
//! past `HEAP_LIMIT` (libFuzzer's `-malloc_limit_mb=1024` as used by fuzz/ci.sh) fails the test,
//! and the input is written to `target/fuzz-mutations/` to replay with `cargo fuzz run T FILE`.
//! This is what CI runs of the fuzzers: CI has no nightly toolchain for cargo-fuzz itself.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Live heap, across all threads, past which an input fails (1 GiB, as libFuzzer's bound).
const HEAP_LIMIT: usize = 1 << 30;
/// An input taking longer than this is a hang (libFuzzer's `-timeout=10`).
const HANG: Duration = Duration::from_secs(10);

/// The system allocator, counting live bytes: per thread, for each input's peak (tests run
/// side by side on other threads), and in all, for the hard refusal.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    // const-initialized Cells without destructors: safe to touch from inside the allocator
    static LIVE_T: Cell<isize> = const { Cell::new(0) };
    static PEAK_T: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE_T.try_with(|l| {
        let now = l.get() + delta;
        l.set(now);
        let _ = PEAK_T.try_with(|p| p.set(p.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // Past 4x the bound, refused (the test process aborts: "memory allocation failed")
        // rather than handed to the OS, so a claimed 100 GB cannot swap the machine.
        if LIVE.fetch_add(l.size(), Relaxed) + l.size() > 4 * HEAP_LIMIT {
            LIVE.fetch_sub(l.size(), Relaxed);
            return std::ptr::null_mut();
        }
        count(l.size() as isize);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Relaxed);
        count(-(l.size() as isize));
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > l.size() && LIVE.fetch_add(new - l.size(), Relaxed) + (new - l.size()) > 4 * HEAP_LIMIT {
            LIVE.fetch_sub(new - l.size(), Relaxed);
            return std::ptr::null_mut();
        }
        if new < l.size() {
            LIVE.fetch_sub(l.size() - new, Relaxed);
        }
        count(new as isize - l.size() as isize);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// splitmix64: a fixed stream of mutation choices.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

const INTERESTING: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, b'"', b',', b'[', b']', b'{', b'}', b'-', b'0', b'9', b'.', b'e'];
/// Numbers that break size arithmetic when they land in a header's shapes or offsets.
const HUGE: &[&str] = &["18446744073709551615", "9223372036854775807", "4294967296", "100000000000", "-1", "0", "1e30", "65536"];

/// One libFuzzer-style mutation of `d` (`other`: another seed of the target, for splices).
fn mutate(d: &mut Vec<u8>, other: &[u8], r: &mut Rng) {
    let n = d.len();
    match r.below(10) {
        0 if n > 0 => {
            let i = r.below(n);
            d[i] ^= 1 << r.below(8);
        }
        1 if n > 0 => {
            let i = r.below(n);
            d[i] = INTERESTING[r.below(INTERESTING.len())];
        }
        2 => {
            let at = r.below(n + 1);
            let k = 1 + r.below(16);
            let bytes: Vec<u8> = (0..k).map(|_| r.next() as u8).collect();
            d.splice(at..at, bytes);
        }
        3 if n > 0 => {
            let at = r.below(n);
            let k = (1 + r.below(64)).min(n - at);
            d.drain(at..at + k);
        }
        4 if n > 0 => {
            // duplicate a run (repeated JSON entries, doubled tensors)
            let at = r.below(n);
            let k = (1 + r.below(256)).min(n - at);
            let run = d[at..at + k].to_vec();
            let to = r.below(n + 1);
            d.splice(to..to, run);
        }
        5 => {
            // a decimal number (a header's shape or offset) replaced by a huge one
            let digits: Vec<usize> = (0..n).filter(|&i| d[i].is_ascii_digit() && (i == 0 || !d[i - 1].is_ascii_digit())).collect();
            if !digits.is_empty() {
                let s = digits[r.below(digits.len())];
                let e = (s..n).find(|&i| !d[i].is_ascii_digit()).unwrap_or(n);
                d.splice(s..e, HUGE[r.below(HUGE.len())].bytes());
            }
        }
        6 if n > 0 => d.truncate(r.below(n)),
        8 => {
            // a JSON list (a header's shape or offsets) replaced by a short or empty one
            let opens: Vec<usize> = (0..n).filter(|&i| d[i] == b'[').collect();
            if !opens.is_empty() {
                let s = opens[r.below(opens.len())];
                if let Some(e) = (s..n).find(|&i| d[i] == b']') {
                    d.splice(s..=e, [&b"[]"[..], b"[0]", b"[1]", b"[0,0]", b"[1,1,1,1,1]"][r.below(5)].iter().copied());
                }
            }
        }
        7 if !other.is_empty() => {
            // splice: our head, the other seed's tail
            let (a, b) = (r.below(n + 1), r.below(other.len()));
            d.truncate(a);
            d.extend_from_slice(&other[b..]);
        }
        _ if n >= 8 => {
            // an 8-byte little-endian word (safetensors' header length) set to an edge value
            let i = r.below(n - 7);
            let v: u64 = [0, 1, u64::MAX, u32::MAX as u64, n as u64, (n as u64).wrapping_add(1)][r.below(6)];
            d[i..i + 8].copy_from_slice(&v.to_le_bytes());
        }
        _ => d.push(r.next() as u8),
    }
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.into_iter().map(|f| (f.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&f).unwrap())).collect()
}

/// `per_seed` mutated inputs (1-4 stacked mutations each) of every seed of `target`.
fn fuzz(target: &str, per_seed: usize) {
    let seeds = seeds(target);
    assert!(!seeds.is_empty());
    let (mut failures, mut count, t0) = (Vec::new(), 0usize, Instant::now());
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-mutations");
    for (si, (name, seed)) in seeds.iter().enumerate() {
        let other = &seeds[(si + 1) % seeds.len()].1;
        for k in 0..per_seed {
            let mut r = Rng((si as u64) << 32 | k as u64);
            let mut d = seed.clone();
            for _ in 0..1 + r.below(4) {
                mutate(&mut d, other, &mut r);
            }
            let base = LIVE_T.with(Cell::get);
            PEAK_T.with(|p| p.set(base));
            let start = Instant::now();
            let res = std::panic::catch_unwind(|| harness::run(target, &d));
            let (took, peak) = (start.elapsed(), (PEAK_T.with(Cell::get) - base).max(0) as usize);
            count += 1;
            let why = match &res {
                Err(p) => Some(format!(
                    "panicked: {}",
                    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
                )),
                Ok(Err(e)) if e.is_empty() => Some("refused with an empty message".into()),
                _ if took > HANG => Some(format!("took {took:?} (hang bound {HANG:?})")),
                _ if peak > HEAP_LIMIT => Some(format!("peak heap {} MiB over the {} MiB bound", peak >> 20, HEAP_LIMIT >> 20)),
                _ => None,
            };
            if let Some(why) = why {
                std::fs::create_dir_all(&out).unwrap();
                let file = out.join(format!("{target}-{name}-{k}"));
                std::fs::write(&file, &d).unwrap();
                failures.push(format!("{name} mutation {k}: {why} (input: {})", file.display()));
            }
        }
    }
    eprintln!("{target}: {count} mutated inputs of {} seeds in {:.1} s, {} failed", seeds.len(), t0.elapsed().as_secs_f64(), failures.len());
    assert!(failures.is_empty(), "{target}: {} of {count} inputs failed:\n{}", failures.len(), failures.join("\n"));
}

// Counts sized so each target takes a few seconds on CI's machine (the slow ones merge LoRAs
// or tokenize copies).

#[test]
fn safetensors() {
    fuzz("safetensors", 30000);
}

#[test]
fn single_file() {
    fuzz("single_file", 10000);
}

#[test]
fn loaders() {
    fuzz("loaders", 1500);
}

#[test]
fn prompt() {
    fuzz("prompt", 3000);
}

#[test]
fn tokenizer() {
    fuzz("tokenizer", 250);
}

#[test]
fn image() {
    fuzz("image", 3000);
}

#[test]
fn serve_request() {
    fuzz("serve_request", 4000);
}

#[test]
fn the_mutations_reach_the_error_paths() {
    // A mutator that only ever produced valid inputs would test nothing: most safetensors
    // mutations must be refused, with messages that name the file.
    let (_, seed) = &seeds("safetensors")[0];
    let mut refused = 0;
    for k in 0..200 {
        let mut r = Rng(k);
        let mut d = seed.clone();
        mutate(&mut d, seed, &mut r);
        if let Err(e) = harness::run("safetensors", &d) {
            assert!(e.contains("fuzz.safetensors"), "{e}");
            refused += 1;
        }
    }
    assert!(refused > 50, "only {refused} of 200 mutations were refused");
}
