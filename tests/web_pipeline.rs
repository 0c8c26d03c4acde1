//! Whole generation in the browser through the JS-facing API (src/web.rs): the tiny SD 1.5
//! fixture loaded from bytes (diffusers folder files; the single-file checkpoint, assembled from
//! them by its manifest, with their configs), generated on WebGPU, against the PNG diffusers
//! made for the same seed.
//! Run with `web/test.sh`; compiles to nothing natively.
//!
//! Tolerance as tests/pipeline.rs (issue #4): mean <= 1 level, max <= 8. The browser runs f32
//! (SwiftShader has no shader-f16), so both sides differ only by summation order and the GPU's
//! transcendental functions; a wrong sampler, seed, guidance or batch order is off by tens.
#![cfg(target_arch = "wasm32")]

use pigment::web::{Bytes, Model, ModelLoader, Pigment};
use wasm_bindgen::{JsError, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[path = "common/single_file.rs"]
mod single_file;

macro_rules! fixture {
    ($p:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/", $p))
    };
}

fn ok<T>(r: Result<T, JsError>) -> T {
    r.map_err(JsValue::from).unwrap()
}

fn bytes(b: &[u8]) -> Bytes {
    let mut out = ok(Bytes::new(b.len()));
    // In chunks, as the page writes them.
    for (i, c) in b.chunks(1 << 20).enumerate() {
        ok(out.write(i << 20, &js_sys::Uint8Array::from(c)));
    }
    out
}

fn read_png(b: &[u8]) -> Vec<u8> {
    let mut reader = png::Decoder::new(std::io::Cursor::new(b)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    buf
}

fn configs(l: &mut ModelLoader) {
    ok(l.set_config("text_encoder", std::str::from_utf8(fixture!("sd15-tiny/text_encoder/config.json")).unwrap()));
    ok(l.set_config("unet", std::str::from_utf8(fixture!("sd15-tiny/unet/config.json")).unwrap()));
    ok(l.set_config("vae", std::str::from_utf8(fixture!("sd15-tiny/vae/config.json")).unwrap()));
    ok(l.set_config("scheduler", std::str::from_utf8(fixture!("sd15-tiny/scheduler/scheduler_config.json")).unwrap()));
    ok(l.set_config("tokenizer", std::str::from_utf8(fixture!("sd15-tiny/tokenizer/tokenizer_config.json")).unwrap()));
}

async fn generate(model: &Model, sampler: &str) -> (Vec<u8>, Vec<(u32, u32)>) {
    let opts = format!(
        r#"{{"prompt":"a photograph of an astronaut riding a horse","negativePrompt":"blurry, low quality",
            "seed":42,"width":64,"height":64,"steps":4,"guidance":7.5,"sampler":"{sampler}"}}"#
    );
    let steps = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let s2 = steps.clone();
    let cb = wasm_bindgen::closure::Closure::<dyn FnMut(u32, u32)>::new(move |i, n| s2.borrow_mut().push((i, n)));
    let f: &js_sys::Function = wasm_bindgen::JsCast::unchecked_ref(cb.as_ref());
    let out = JsFuture::from(model.generate(&opts, Some(f.clone()), None, None, None)).await.unwrap();
    let rgba = js_sys::Uint8Array::new(&out).to_vec();
    let steps = steps.borrow().clone();
    (rgba, steps)
}

fn compare(rgba: &[u8], golden: &[u8], what: &str) {
    let want = read_png(golden);
    assert_eq!(rgba.len(), 64 * 64 * 4, "{what}: RGBA size");
    let (mut sum, mut max) = (0u64, 0u8);
    for (px, w) in rgba.chunks_exact(4).zip(want.chunks_exact(3)) {
        assert_eq!(px[3], 255);
        for c in 0..3 {
            let d = px[c].abs_diff(w[c]);
            sum += d as u64;
            max = max.max(d);
        }
    }
    let mean = sum as f64 / want.len() as f64;
    web_sys::console::log_1(&format!("{what}: mean {mean:.3} max {max} levels off diffusers").into());
    assert!(mean <= 1.0 && max <= 8, "{what}: mean {mean:.3} max {max} levels off diffusers");
}

#[wasm_bindgen_test]
async fn folder_files_generate_diffusers_png() {
    let gpu = ok(Pigment::open(true).await);
    web_sys::console::log_1(&format!("adapter: {}", gpu.adapter()).into());
    let mut l = gpu.loader();
    configs(&mut l);
    ok(l.add_component("text_encoder", "text_encoder/model.safetensors", bytes(fixture!("sd15-tiny/text_encoder/model.safetensors")), true));
    ok(l.add_component("unet", "unet.safetensors", bytes(fixture!("sd15-tiny/unet/diffusion_pytorch_model.safetensors")), true));
    ok(l.add_component("vae", "vae.safetensors", bytes(fixture!("sd15-tiny/vae/diffusion_pytorch_model.safetensors")), true));
    let model = ok(l.finish("sd15-tiny"));
    // The scheduler config's class is PNDM: what diffusers used for txt2img.png.
    let (rgba, steps) = generate(&model, "pndm").await;
    // One call per UNet evaluation: PNDM (PLMS) evaluates 5 times for 4 steps, as diffusers does.
    assert_eq!(steps, (1..=5).map(|i| (i, 5)).collect::<Vec<_>>(), "one progress call per evaluation");
    compare(&rgba, fixture!("golden/sd15-tiny/txt2img.png"), "folder, pndm");
}

/// A single file whole (the page hands it over one component at a time: web/e2e.mjs generates
/// from that): every part loads, with the folder's configs.
#[wasm_bindgen_test]
async fn single_file_loads_every_part() {
    let gpu = ok(Pigment::open(true).await);
    let mut l = gpu.loader();
    configs(&mut l);
    // Not committed: assembled from the folder files by its manifest, as the native tests do.
    let source = |p: &str| match p {
        "sd15-tiny/text_encoder/model.safetensors" => fixture!("sd15-tiny/text_encoder/model.safetensors").to_vec(),
        "sd15-tiny/unet/diffusion_pytorch_model.safetensors" => fixture!("sd15-tiny/unet/diffusion_pytorch_model.safetensors").to_vec(),
        "sd15-tiny/vae/diffusion_pytorch_model.safetensors" => fixture!("sd15-tiny/vae/diffusion_pytorch_model.safetensors").to_vec(),
        p => panic!("sd15-tiny.manifest.json: source {p} is not included in this test"),
    };
    let file = single_file::assemble(std::str::from_utf8(fixture!("sd15-tiny.manifest.json")).unwrap(), &source).unwrap();
    ok(l.add_single_file("sd15-tiny.safetensors", bytes(&file), true));
    ok(l.finish("sd15-tiny"));
}

#[wasm_bindgen_test]
async fn bad_input_is_a_clear_error() {
    let gpu = ok(Pigment::open(true).await);
    let mut l = gpu.loader();
    let e = JsValue::from(l.add_component("unet", "x.safetensors", bytes(b"PK\x03\x04 not safetensors"), true).unwrap_err());
    let msg = format!("{:?}", e);
    assert!(msg.contains("pickle"), "{msg}");
    let e = JsValue::from(l.finish("x").err().unwrap());
    assert!(format!("{e:?}").contains("text encoder"), "{e:?}");
    let e = pigment::web::parse_options(r#"{"sampler":"ddim","karras":true}"#).unwrap_err().to_string();
    assert!(e.contains("karras") && e.contains("ddim"), "{e}");
    let e = pigment::web::parse_options(r#"{"sampler":"lcm","schedule":"exponential"}"#).unwrap_err().to_string();
    assert!(e.contains("exponential") && e.contains("lcm"), "{e}");
    let o = pigment::web::parse_options(r#"{"sampler":"unipc","schedule":"karras"}"#).unwrap();
    assert_eq!((o.sampler.name(), o.schedule.name()), ("unipc", "karras"));
    // The page's extras' options: hires as the CLI's --hires-*, preview as --preview.
    let o = pigment::web::parse_options(r#"{"width":32,"height":48,"preview":"taesd","hires":{"scale":2,"steps":3,"denoise":0.5,"upscaler":"lanczos"}}"#).unwrap();
    let h = o.hires.as_ref().unwrap();
    assert_eq!((h.target(o.width, o.height), h.steps, h.denoise, h.upscaler.a1111_name()), ((64, 96), 3, 0.5, "Lanczos"));
    assert_eq!(o.preview_decoder, pigment::pipeline::VaeDecoder::Taesd);
    let e = pigment::web::parse_options(r#"{"hires":{"upscaler":"RealESRGAN_x4plus"}}"#).unwrap_err().to_string();
    assert!(e.contains("RealESRGAN_x4plus") && e.contains("lanczos"), "{e}");
    let e = pigment::web::parse_options(r#"{"preview":"tiny"}"#).unwrap_err().to_string();
    assert!(e.contains("full, taesd or off"), "{e}");
}

/// Model files are held in the JS heap, not in wasm memory (4 GiB at most, shared with all the
/// rest): filling a 64 MiB `Bytes` from JS chunks must not grow wasm memory by anything like it.
#[wasm_bindgen_test]
fn model_files_stay_out_of_wasm_memory() {
    use wasm_bindgen::JsCast;
    let wasm_bytes = || wasm_bindgen::memory().unchecked_into::<js_sys::WebAssembly::Memory>().buffer().unchecked_into::<js_sys::ArrayBuffer>().byte_length();
    let before = wasm_bytes();
    let len = 64 << 20;
    let mut b = ok(Bytes::new(len));
    let chunk = js_sys::Uint8Array::new_with_length(1 << 20);
    chunk.fill(7, 0, 1 << 20);
    for off in (0..len).step_by(1 << 20) {
        ok(b.write(off, &chunk));
    }
    let grown = wasm_bytes() - before;
    assert!(grown < 8 << 20, "wasm memory grew by {} MiB for a 64 MiB file", grown >> 20);
    let e = JsValue::from(b.write(len - 10, &chunk).unwrap_err());
    assert!(format!("{e:?}").contains("past the end"), "{e:?}");
}
