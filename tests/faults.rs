//! GPU faults as errors (issue #16, item 5), through the runtime's test hook
//! (`Context::inject_fault`): a failing allocation, a lost device (wgpu's `Device::destroy`,
//! reported by its device-lost callback) and a real wgpu validation error each become an
//! `Error` naming the adapter, the op and a hint; after a loss a new `Context` runs again, and
//! `pigment serve` re-creates its device by itself and serves the next job.

mod common;
mod serve_common;
use common::fixtures;
use pigment::gpu::{AdapterChoice, Context, Fault};
use pigment::pipeline::{GenerateOptions, StableDiffusion};
use pigment::schedulers::SamplerKind;
use pigment::{DType, Error, Tensor};
use serde_json::json;

/// Each test has its own context: an injected fault or a recorded error must reach the test
/// that caused it, not one running beside it.
fn own_ctx() -> Context {
    Context::new_blocking(&AdapterChoice::from_env()).unwrap()
}

fn opts() -> GenerateOptions {
    GenerateOptions { prompt: "a red square".into(), seed: 3, width: 32, height: 32, steps: 2, sampler: SamplerKind::Euler, ..Default::default() }
}

#[test]
fn a_failed_allocation_is_an_error_and_the_next_one_works() {
    let c = &own_ctx();
    c.inject_fault(Fault::NextAllocation);
    let e = Tensor::empty(c, &[4, 64], DType::F32).unwrap_err();
    assert!(matches!(e, Error::OutOfMemory { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&c.info.name) && msg.contains("tensor [4, 64]") && msg.contains("smaller --width/--height"), "{msg}");
    Tensor::empty(c, &[4, 64], DType::F32).expect("the fault was for one allocation");

    // Inside a generation: the job fails with the same error, the next one runs.
    let sd = StableDiffusion::load(c, &fixtures().join("sd15-tiny"), false).unwrap();
    c.inject_fault(Fault::NextAllocation);
    let e = sd.generate(c, &opts(), |_, _| {}).unwrap_err();
    assert!(matches!(e, Error::OutOfMemory { .. }), "{e}");
    sd.generate(c, &opts(), |_, _| {}).unwrap();
}

#[test]
fn a_wgpu_validation_error_is_an_error_not_a_panic() {
    let c = &own_ctx();
    // MAP_READ with STORAGE is refused by WebGPU's rules: wgpu reports it as uncaptured.
    let _bad = c.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bad"),
        size: 256,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let e = c.check_faults("making a test buffer").unwrap_err();
    assert!(matches!(e, Error::Validation { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&c.info.name) && msg.contains("validation"), "{msg}");
    c.check_faults("the next check").expect("reported once");
}

#[test]
fn a_lost_device_is_an_error_and_a_new_context_runs() {
    let lost = own_ctx();
    let sd = StableDiffusion::load(&lost, &fixtures().join("sd15-tiny"), false).unwrap();
    let before = sd.generate(&lost, &opts(), |_, _| {}).unwrap();
    lost.inject_fault(Fault::DeviceLost);
    assert!(lost.is_lost());
    let e = sd.generate(&lost, &opts(), |_, _| {}).unwrap_err();
    assert!(matches!(e, Error::DeviceLost { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&lost.info.name) && msg.contains("lost") && msg.contains("re-created"), "{msg}");
    assert!(matches!(Tensor::empty(&lost, &[8], DType::F32), Err(Error::DeviceLost { .. })));
    drop(sd);
    drop(lost);
    let fresh = own_ctx();
    let sd = StableDiffusion::load(&fresh, &fixtures().join("sd15-tiny"), false).unwrap();
    let after = sd.generate(&fresh, &opts(), |_, _| {}).unwrap();
    assert_eq!(before.rgb, after.rgb, "the same image on the new device");
}

#[test]
fn serve_recreates_its_device_and_serves_the_next_job() {
    // SAFETY (edition 2021): set before the server process starts; read only by that child.
    std::env::set_var("PIGMENT_INJECT_DEVICE_LOSS", "1");
    let model = fixtures().join("sd15-tiny").to_string_lossy().into_owned();
    let s = serve_common::Server::start("device-loss", &["--model", &model]);
    std::env::remove_var("PIGMENT_INJECT_DEVICE_LOSS");
    let body = json!({"prompt": "a red square", "seed": 3, "width": 32, "height": 32, "steps": 2, "sampler_name": "Euler"});
    let (status, r) = s.post("/sdapi/v1/txt2img", &body);
    assert_eq!(status, 500, "{r}");
    let detail = r["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("device lost"), "{r}");
    let (status, r) = s.post("/sdapi/v1/txt2img", &body);
    assert_eq!(status, 200, "{r}\n{}", s.log());
    assert!(r["images"][0].as_str().is_some_and(|i| !i.is_empty()));
    let log = s.log();
    assert!(log.contains("re-creating it") && log.matches("adapter:").count() >= 2, "{log}");
}
