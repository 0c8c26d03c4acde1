//! Choosing a GEMM variant per problem by measurement.
//!
//! The first use of a problem shape on a context times the candidates that can run it
//! ([`candidates`]) a couple of times each and keeps the fastest for that context; `pigment
//! tune` times them properly and caches the winners on disk (JSON in `$XDG_CACHE_HOME/pigment`
//! or `~/.cache/pigment`, keyed by adapter name, vendor/device id, driver, backend and Pigment
//! version), which later runs load instead of measuring. `PIGMENT_TUNE=0` (`--no-tune`) uses
//! the fixed ranking ([`fixed`]) and no cache; `PIGMENT_TUNE=1` measures on first use
//! everywhere. Unset, first-use measurement is on except on CPU adapters (a software
//! rasteriser's first use of a big shape would take seconds per candidate); they use the
//! cache from `pigment tune`, or the fixed ranking.

use super::gemm::{Kernel, Problem, Tile};
use super::gemm_variants::{Blocking, SUBGROUP_CANDIDATES, TILED_CANDIDATES};
use crate::error::Result;
use crate::gpu::Context;

/// `PIGMENT_TUNE`: `Some(false)` fixed ranking, `Some(true)` measure on first use, `None` default.
pub(crate) fn env_mode() -> Option<bool> {
    std::env::var("PIGMENT_TUNE").ok().map(|v| !(v == "0" || v.eq_ignore_ascii_case("off") || v.eq_ignore_ascii_case("false")))
}

/// The cache key of a problem: `f16:1x4096x320x320:nn` (dtype, batch x M x N x K, layouts).
pub fn problem_key(p: &Problem) -> String {
    let t = |x: bool| if x { 't' } else { 'n' };
    format!("{}:{}x{}x{}x{}:{}{}", p.dtype.name(), p.batch, p.m, p.n, p.k, t(p.trans_a), t(p.trans_b))
}

/// Every variant and tile worth timing for `p` on this adapter (those it can run).
pub fn candidates(ctx: &Context, p: &Problem) -> Vec<Kernel> {
    let mut out = vec![Kernel::Register(Tile::choose(ctx, p.m, p.n, p.vec4()))];
    let extra = if p.vec4() { [Tile { tm: 8, tn: 8, wg: 64 }, Tile { tm: 16, tn: 16, wg: 8 }] } else { [Tile { tm: 16, tn: 4, wg: 64 }, Tile { tm: 8, tn: 1, wg: 64 }] };
    out.extend(extra.map(Kernel::Register));
    out.extend(TILED_CANDIDATES.iter().map(|b| Kernel::Tiled(*b)));
    out.extend(SUBGROUP_CANDIDATES.iter().map(|t| Kernel::Subgroup(*t)));
    out.push(Kernel::CoopMat);
    let cpu = ctx.info.device_type == wgpu::DeviceType::Cpu;
    let mut seen = std::collections::HashSet::new();
    out.retain(|k| {
        seen.insert(*k) && k.unsupported(ctx, p).is_none() && !(cpu && k.loop_iters(p) > super::gemm::LAVAPIPE_MAX_LOOP)
    });
    out
}

/// The choice without measuring: the register kernel on CPU adapters and in the browser; on
/// native GPUs cooperative
/// matrices, else the tiled kernel for problems that fill its 64x64 block, else the register
/// kernel (narrow outputs).
pub fn fixed(ctx: &Context, p: &Problem) -> Kernel {
    let cands = candidates(ctx, p);
    let register = Kernel::Register(Tile::choose(ctx, p.m, p.n, p.vec4()));
    // In the browser nothing is measured (no blocking wait) and the variants are untested
    // there: keep the register kernel, as before the variants existed.
    if ctx.info.device_type == wgpu::DeviceType::Cpu || cfg!(target_arch = "wasm32") {
        return register;
    }
    let tiled = Kernel::Tiled(Blocking { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 });
    if cands.contains(&Kernel::CoopMat) && p.m >= 32 && p.n >= 32 {
        Kernel::CoopMat
    } else if cands.contains(&tiled) && p.m >= 64 && p.n >= 64 {
        tiled
    } else {
        register
    }
}

/// The kernel for `p`: the context's choice if made, else the disk cache's, else a quick
/// measurement (`run` runs the product with a given kernel) or the fixed ranking.
pub fn choose(ctx: &Context, p: &Problem, run: impl FnMut(Kernel) -> Result<()>) -> Kernel {
    let key = problem_key(p);
    record(p);
    if env_mode() == Some(false) {
        return fixed(ctx, p);
    }
    if let Some(k) = cached_choice(ctx, &key).and_then(|s| Kernel::parse(&s)) {
        if k.unsupported(ctx, p).is_none() {
            return k;
        }
    }
    let kernel = if measure_on_first_use(ctx) { measure_quick(ctx, p, run) } else { fixed(ctx, p) };
    ctx.gemm_choices.lock().unwrap().insert(key, kernel.name());
    kernel
}

/// The context's choice for `key` (any family), loading `pigment tune`'s disk cache on first use.
pub(crate) fn cached_choice(ctx: &Context, key: &str) -> Option<String> {
    let mut choices = ctx.gemm_choices.lock().unwrap();
    if choices.is_empty() {
        // First choice on this context: load what `pigment tune` cached for this adapter.
        choices.insert(String::new(), String::new());
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(cached) = disk::load(ctx) {
            choices.extend(cached);
        }
    }
    choices.get(key).cloned()
}

/// [`choose`] for the other families (attention, norms), whose variants are named strings:
/// `key` is family-prefixed (`attention:f16:...`), `candidates` are the names that can run,
/// `fixed` the fixed ranking's pick, `run` runs the op with a named variant.
pub(crate) fn choose_named(ctx: &Context, key: String, candidates: &[String], fixed: &str, mut run: impl FnMut(&str) -> Result<()>) -> String {
    if env_mode() == Some(false) {
        return fixed.to_string();
    }
    if let Some(name) = cached_choice(ctx, &key).filter(|n| candidates.contains(n)) {
        return name;
    }
    let measure = measure_on_first_use(ctx);
    let mut best = (fixed.to_string(), f64::INFINITY);
    if measure {
        for c in candidates {
            if let Ok(ms) = time(ctx, 2, 0.0, || run(c)) {
                if ms < best.1 {
                    best = (c.clone(), ms);
                }
            }
        }
    }
    ctx.gemm_choices.lock().unwrap().insert(key, best.0.clone());
    best.0
}

/// Whether an unchosen problem is timed on first use (not on CPU adapters unless
/// `PIGMENT_TUNE=1`; never in the browser, which cannot block on a wait).
pub(crate) fn measure_on_first_use(ctx: &Context) -> bool {
    env_mode().unwrap_or(ctx.info.device_type != wgpu::DeviceType::Cpu) && cfg!(not(target_arch = "wasm32"))
}

/// One compile-and-warm run and two timed runs per candidate (first use: fast, rough).
fn measure_quick(ctx: &Context, p: &Problem, mut run: impl FnMut(Kernel) -> Result<()>) -> Kernel {
    let mut best = (fixed(ctx, p), f64::INFINITY);
    for k in candidates(ctx, p) {
        if let Ok(ms) = time(ctx, 2, 0.0, || run(k)) {
            if ms < best.1 {
                best = (k, ms);
            }
        }
    }
    best.0
}

/// Mean milliseconds of `f` after one warm-up run (which compiles), over at least `reps` runs
/// and `min_secs` seconds. Native only (needs a blocking wait).
pub fn time(ctx: &Context, reps: usize, min_secs: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        f()?;
        ctx.sync()?;
        let start = std::time::Instant::now();
        let mut runs = 0;
        while runs < reps.max(1) || start.elapsed().as_secs_f64() < min_secs {
            f()?;
            runs += 1;
        }
        ctx.sync()?;
        Ok(start.elapsed().as_secs_f64() * 1e3 / runs as f64)
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = (ctx, reps, min_secs, &mut f);
        Err(crate::Error::Unsupported("timing needs a blocking wait (native only)".into()))
    }
}

static RECORDING: std::sync::Mutex<Option<Vec<Problem>>> = std::sync::Mutex::new(None);

/// Start (or stop, returning them) recording the distinct GEMM problems the ops run: `pigment
/// tune --model` runs a model once to learn its shapes.
pub fn set_recording(on: bool) -> Vec<Problem> {
    let mut r = RECORDING.lock().unwrap();
    let old = r.take().unwrap_or_default();
    if on {
        *r = Some(vec![]);
    }
    old
}

fn record(p: &Problem) {
    if let Some(list) = RECORDING.lock().unwrap().as_mut() {
        if !list.contains(p) {
            list.push(*p);
        }
    }
}

/// SD 1.5's UNet GEMMs at a `latent`² latent, batch 2 (classifier-free guidance), as
/// `models::unet` issues them (weights pre-transposed, so row-major operands; the batch is
/// folded into the rows).
pub fn sd15_unet_problems(latent: usize, dtype: crate::DType) -> Vec<Problem> {
    let p = |m: usize, n: usize, k: usize| Problem { batch: 1, m, n, k, trans_a: false, trans_b: false, dtype };
    let mut v = vec![p(2, 1280, 320), p(2, 1280, 1280)];
    let mut side = latent;
    for c in [320, 640, 1280, 1280] {
        let m = 2 * side * side;
        v.push(p(2, c, 1280)); // resnet time projection
        for (mm, n, k) in [(m, c, c), (m, 3 * c, c), (154, 2 * c, 768), (m, 8 * c, c), (m, c, 4 * c)] {
            v.push(p(mm, n, k)); // proj in/out, q and out; fused qkv; cross k/v; GEGLU; FF out
        }
        side = side.div_ceil(2);
    }
    v.sort_by_key(|q| (q.m, q.n, q.k));
    v.dedup();
    v
}

/// The disk cache (native only).
#[cfg(not(target_arch = "wasm32"))]
pub mod disk {
    use crate::gpu::Context;
    use std::collections::HashMap;
    use std::path::PathBuf;

    /// `$XDG_CACHE_HOME/pigment/gemm-tune.json` or `~/.cache/pigment/gemm-tune.json`.
    pub fn path() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("pigment").join("gemm-tune.json"))
    }

    /// What the cache is keyed by: adapter name, vendor/device id, driver, backend, version.
    pub fn adapter_key(info: &wgpu::AdapterInfo) -> String {
        format!(
            "{} [{:04x}:{:04x}] {} {} {:?} pigment {}",
            info.name,
            info.vendor,
            info.device,
            info.driver,
            info.driver_info,
            info.backend,
            env!("CARGO_PKG_VERSION")
        )
    }

    fn read() -> serde_json::Value {
        path().and_then(|p| std::fs::read(p).ok()).and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_else(|| serde_json::json!({}))
    }

    /// The cached choices for an adapter (problem key -> kernel name).
    pub fn load_for(info: &wgpu::AdapterInfo) -> Option<HashMap<String, String>> {
        let v = read();
        let m = v.get(adapter_key(info))?.as_object()?;
        Some(m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
    }

    pub fn load(ctx: &Context) -> Option<HashMap<String, String>> {
        load_for(&ctx.info)
    }

    /// Merge `choices` into this adapter's entry and write the file; returns its path.
    pub fn save(ctx: &Context, choices: &HashMap<String, String>) -> std::io::Result<PathBuf> {
        let path = path().ok_or_else(|| std::io::Error::other("no cache directory: set XDG_CACHE_HOME or HOME"))?;
        let mut v = read();
        if !v.is_object() {
            v = serde_json::json!({});
        }
        let entry = v
            .as_object_mut()
            .unwrap()
            .entry(adapter_key(&ctx.info))
            .or_insert_with(|| serde_json::json!({}));
        if !entry.is_object() {
            *entry = serde_json::json!({});
        }
        for (k, kernel) in choices {
            entry[k] = serde_json::Value::String(kernel.clone());
        }
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(&path, serde_json::to_vec_pretty(&v)?)?;
        Ok(path)
    }
}
