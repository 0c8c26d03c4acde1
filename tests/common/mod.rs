//! Shared test helpers: one GPU context per test binary, seeded random data, tolerant compares.
#![allow(dead_code)]

use pigment::gpu::{AdapterChoice, Context};
use pigment::{DType, Tensor};
use rand::{Rng, SeedableRng};
use std::sync::OnceLock;

pub fn ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        let ctx = Context::new_blocking(&AdapterChoice::from_env()).expect("a wgpu adapter (install mesa-vulkan-drivers)");
        eprintln!("adapter: {}", ctx.describe());
        ctx
    })
}

/// The storage dtypes this adapter can run: f32 always, f16 where SHADER_F16 is offered.
pub fn dtypes() -> Vec<DType> {
    if ctx().f16 { vec![DType::F32, DType::F16] } else { vec![DType::F32] }
}

pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Round through f16 the way an f16 upload does, so CPU references see the same inputs.
pub fn quantize(v: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => v.to_vec(),
        DType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
    }
}

pub fn upload(v: &[f32], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_f32(ctx(), v, shape, dtype).unwrap()
}

/// Max |got - want| must be under `atol + rtol * |want|` elementwise; reports the worst index.
pub fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if !(excess <= worst.1) || g.is_nan() {
            worst = (i, if g.is_nan() { f32::INFINITY } else { excess });
        }
    }
    assert!(
        worst.1 <= 0.0,
        "{what}: element {} got {} want {} (atol {atol}, rtol {rtol})",
        worst.0,
        got[worst.0],
        want[worst.0]
    );
}

/// Tolerance for outputs stored in `dtype`: f32 results differ from the CPU only by summation
/// order; f16 storage rounds each output to 11 significant bits (relative 2^-11 ≈ 4.9e-4).
pub fn tol(dtype: DType, f32_tol: f32) -> (f32, f32) {
    match dtype {
        DType::F32 => (f32_tol, f32_tol),
        DType::F16 => (2e-3_f32.max(f32_tol), 2e-3_f32.max(f32_tol)),
    }
}

/// The committed diffusers fixtures (`tools/make_fixtures.py`).
pub fn fixtures() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub mod single_file;
pub mod sdxl;

/// The single-file checkpoint `<name>.safetensors` (sd15-tiny, sd21-tiny, sd15-tiny-controlnet),
/// assembled from `tests/fixtures/<name>.manifest.json` and the folder files into the target's
/// temp dir, once per test binary (written to a temporary name and renamed, so a reader never
/// sees half a file).
pub fn single_file(name: &str) -> std::path::PathBuf {
    static DONE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    let path = dir.join(format!("{name}.safetensors"));
    if !done.iter().any(|d| d == name) {
        let manifest = fixtures().join(format!("{name}.manifest.json"));
        let text = std::fs::read_to_string(&manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        let read = |p: &str| std::fs::read(fixtures().join(p)).unwrap_or_else(|e| panic!("{}: {p}: {e}", manifest.display()));
        let bytes = single_file::assemble(&text, &read).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!("{name}.{}.part", std::process::id()));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        done.push(name.to_string());
    }
    path
}

/// The variant's weights from its folder and from its single file (with the folder's configs,
/// as `from_single_file(path, config=folder)`: the tiny models' head dims are not 64).
pub fn sources(variant: &str) -> Vec<(&'static str, pigment::weights::Weights)> {
    use pigment::weights::{OpenOptions, Weights};
    let folder = fixtures().join(variant);
    let single = single_file(variant);
    vec![
        ("folder", Weights::open(&folder).unwrap()),
        ("single file", Weights::open_with(&single, &OpenOptions { config_dir: Some(folder) }).unwrap()),
    ]
}

/// Max |got - want| / max |want| (NaN counts as infinitely wrong).
pub fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    got.iter().zip(want).fold(0f32, |m, (g, w)| if g.is_nan() { f32::INFINITY } else { m.max((g - w).abs()) }) / scale
}

/// One golden safetensors file of `tests/fixtures/golden/<variant>/`.
pub struct Golden(Vec<u8>);

impl Golden {
    pub fn load(variant: &str, file: &str) -> Golden {
        Golden(std::fs::read(fixtures().join("golden").join(variant).join(file)).unwrap())
    }
    pub fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let v = match t.dtype() {
            safetensors::Dtype::F32 => bytemuck::pod_collect_to_vec(t.data()),
            // inputs rounded to f16 before use, stored so to fit the budget (pix2pix_zero)
            safetensors::Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, u16>(t.data()).into_iter().map(|b| half::f16::from_bits(b).to_f32()).collect(),
            d => panic!("{name}: {d:?}, expected F32 or F16"),
        };
        (v, t.shape().to_vec())
    }
    /// An I64 tensor (token ids) as u32.
    pub fn ids(&self, name: &str) -> Vec<u32> {
        let st = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name}");
        bytemuck::pod_collect_to_vec::<u8, i64>(t.data()).into_iter().map(|x| x as u32).collect()
    }
    pub fn u8(&self, name: &str) -> Vec<u8> {
        let st = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::U8, "{name}");
        t.data().to_vec()
    }
    pub fn upload(&self, name: &str, dtype: DType) -> Tensor {
        let (v, shape) = self.f32(name);
        Tensor::from_f32(ctx(), &v, &shape, dtype).unwrap()
    }
}

/// A PNG as `(width, height, 8-bit RGB)`; grayscale is spread to three channels (masks).
pub fn read_png(path: &std::path::Path) -> (usize, usize, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let rgb = match info.color_type {
        png::ColorType::Rgb => buf,
        png::ColorType::Grayscale => buf.iter().flat_map(|&v| [v, v, v]).collect(),
        c => panic!("{}: {c:?} (expected RGB or grayscale)", path.display()),
    };
    (info.width as usize, info.height as usize, rgb)
}

/// (mean, max) absolute difference of two 8-bit images, in levels.
pub fn image_diff(a: &[u8], b: &[u8]) -> (f64, u8) {
    assert_eq!(a.len(), b.len(), "image sizes differ");
    let (mut sum, mut max) = (0u64, 0u8);
    for (x, y) in a.iter().zip(b) {
        let d = x.abs_diff(*y);
        sum += d as u64;
        max = max.max(d);
    }
    (sum as f64 / a.len().max(1) as f64, max)
}

/// Tests that lower the binding limit hold this for writing; the others read it, so a lowered
/// limit never leaks into a test that does not expect it (one lock per test binary).
pub static LIMIT: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Holds the write lock while the binding limit is lowered, and restores the device limit when
/// dropped (also when a failing assertion unwinds), so a failure never leaks a lowered limit.
pub struct Lowered(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>);
impl Lowered {
    pub fn new() -> Self {
        Lowered(LIMIT.write().unwrap_or_else(|e| e.into_inner()))
    }
}
impl Drop for Lowered {
    fn drop(&mut self) {
        ctx().set_max_binding_for_tests(0);
    }
}

/// An RGB PNG as a pipeline image.
pub fn read_image(path: &std::path::Path) -> pigment::pipeline::Image {
    let (width, height, rgb) = read_png(path);
    pigment::pipeline::Image { width, height, rgb }
}

/// The txt2img goldens' settings (tools/make_fixtures.py: PROMPT, NEGATIVE, SEED, 64x64, STEPS,
/// GUIDANCE) with `sampler`.
pub fn txt2img_options(sampler: pigment::schedulers::SamplerKind) -> pigment::pipeline::GenerateOptions {
    pigment::pipeline::GenerateOptions {
        prompt: "a photograph of an astronaut riding a horse".into(),
        negative_prompt: "blurry, low quality".into(),
        seed: 42,
        width: 64,
        height: 64,
        steps: 4,
        guidance: 7.5,
        sampler,
        ..Default::default()
    }
}

/// The settings of the img2img / inpainting goldens (tools/fixtures_img2img.py, reused by
/// tools/fixtures_taesd.py): seed 42, 64x64, 5 steps, cfg 7.5, `golden/img2img/init.png` and,
/// with `mask`, `mask.png`.
pub fn img2img_options(sampler: pigment::schedulers::SamplerKind, strength: f32, mask: bool) -> pigment::pipeline::GenerateOptions {
    let dir = fixtures().join("golden").join("img2img");
    pigment::pipeline::GenerateOptions {
        steps: 5,
        init_image: Some(read_image(&dir.join("init.png"))),
        mask: mask.then(|| read_image(&dir.join("mask.png"))),
        strength,
        ..txt2img_options(sampler)
    }
}

/// A copy of the folder `src` (a diffusers model) at `dst`, recursively.
#[allow(dead_code)]
pub fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let d = dst.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &d);
        } else {
            std::fs::copy(&p, &d).unwrap();
        }
    }
}
