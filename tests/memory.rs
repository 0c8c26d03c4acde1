//! Memory plans (issue #10, memory): a planning context ([`Context::planner`]) must predict
//! exactly the GPU bytes a real run holds. Each check runs the same call for real and planned,
//! each on a fresh context (tests in one binary run in parallel and would share a pool), and
//! compares the pool's live and held peaks byte for byte: the plan is the same code with
//! virtual buffers, so any difference is an accounting bug, not noise. The generation checks
//! compare every phase (text encoder, vae encode, unet, vae decode) of txt2img and img2img.

mod common;
use common::*;
use pigment::gpu::{AdapterChoice, Context, PoolStats};
use pigment::models::unet::UNet2DConditionModel;
use pigment::models::vae::Vae;
use pigment::pipeline::{GenerateOptions, Image, StableDiffusion};
use pigment::weights::Weights;
use pigment::{DType, Tensor};

fn fresh() -> Context {
    Context::new_blocking(&AdapterChoice::from_env()).expect("a wgpu adapter")
}

/// Load with `load`, then measure `call`'s peaks from the loaded state.
fn measure<M>(ctx: &Context, load: impl Fn(&Context) -> M, call: impl Fn(&Context, &M)) -> (u64, PoolStats) {
    let m = load(ctx);
    ctx.trim_pool();
    ctx.reset_peak();
    let (weights, made) = (ctx.pool_stats().held, ctx.pool_stats().created);
    call(ctx, &m);
    ctx.sync().unwrap();
    // `created` counts from the context's start: compare the call's own.
    let s = ctx.pool_stats();
    (weights, PoolStats { created: s.created - made, ..s })
}

fn tiny() -> Weights {
    Weights::open(fixtures().join("sd15-tiny")).unwrap()
}

#[test]
fn planned_model_calls_hold_what_real_calls_hold() {
    let real = fresh();
    let w = tiny();
    for dtype in dtypes() {
        let unet = |c: &Context| UNet2DConditionModel::load(c, w.unet().unwrap(), dtype).unwrap();
        let step = |c: &Context, m: &UNet2DConditionModel| {
            let x = Tensor::from_f32(c, &rand_vec(2 * 4 * 8 * 8, 1), &[2, 4, 8, 8], dtype).unwrap();
            let text = Tensor::from_f32(c, &rand_vec(2 * 77 * 32, 2), &[2, 77, 32], dtype).unwrap();
            let out = m.forward(c, &x, 500.0, &text).unwrap();
            // A readback, as the pipeline does: zeros in a plan, but the same buffers.
            assert_eq!(out.to_vec(c).unwrap().len(), 2 * 4 * 64);
        };
        let got = measure(&real.planner(), unet, step);
        let want = measure(&real, unet, step);
        eprintln!("unet {dtype:?}: weights {} B, {:?}", want.0, want.1);
        assert!(want.1.peak_held > want.0, "the call allocates activations");
        assert_eq!(got, want, "unet {dtype:?}: planned (weights, stats) vs real");

        let vae = |c: &Context| Vae::load_decoder(c, w.vae().unwrap(), dtype).unwrap();
        let decode = |c: &Context, v: &Vae| {
            let z = Tensor::from_f32(c, &rand_vec(4 * 16 * 16, 3), &[1, 4, 16, 16], dtype).unwrap();
            v.decode(c, &z).unwrap();
        };
        let (got, want) = (measure(&real.planner(), vae, decode), measure(&real, vae, decode));
        assert_eq!(got, want, "vae decode {dtype:?}: planned vs real");
    }
}

fn options(init: bool) -> GenerateOptions {
    let init_image = init.then(|| {
        let (width, height, rgb) = read_png(&fixtures().join("golden/img2img/init.png"));
        Image { width, height, rgb }
    });
    GenerateOptions { steps: 3, init_image, strength: 0.7, ..txt2img_options(pigment::schedulers::SamplerKind::Euler) }
}

#[test]
fn generation_plan_matches_the_real_run_phase_by_phase() {
    for init in [false, true] {
        let ctx = fresh();
        let sd = StableDiffusion::load(&ctx, &fixtures().join("sd15-tiny"), false).unwrap();
        let o = options(init);
        let plan = sd.plan(&ctx, &o).unwrap();
        ctx.trim_pool();
        ctx.reset_peak();
        assert_eq!(ctx.pool_stats().held, plan.weights, "init {init}: weights resident");
        sd.generate(&ctx, &o, |_, _| {}).unwrap();
        let names: Vec<String> = ctx.phases().iter().map(|p| p.name.clone()).collect();
        eprintln!("init {init}: {names:?}\n{}", plan.describe());
        let want = if init { vec!["text encoder", "vae encode", "unet", "vae decode"] } else { vec!["text encoder", "unet", "vae decode"] };
        assert_eq!(names, want);
        assert_eq!(plan.phases, ctx.phases(), "init {init}: planned phases vs real");
        assert_eq!(plan.peak_held, ctx.pool_stats().peak_held);
        // The VAE encoder is loaded by img2img only (and stays for the next one).
        let encoder = sd.encoder_vae(&ctx).is_ok();
        assert!(encoder);
    }
}

#[test]
fn txt2img_does_not_load_the_vae_encoder() {
    let ctx = fresh();
    let sd = StableDiffusion::load(&ctx, &fixtures().join("sd15-tiny"), false).unwrap();
    assert!(sd.vae.encoder.is_none(), "the encoder waits for img2img");
    let before = ctx.pool_stats().live;
    let full = sd.encoder_vae(&ctx).unwrap();
    assert!(full.encoder.is_some());
    assert!(ctx.pool_stats().live > before, "the encoder's weights were uploaded then");
    let again = ctx.pool_stats().live;
    sd.encoder_vae(&ctx).unwrap();
    assert_eq!(ctx.pool_stats().live, again, "and only once");
}

#[test]
fn planned_tensors_are_refused_by_a_real_context() {
    let real = fresh();
    let p = real.planner();
    let a = Tensor::from_f32(&p, &rand_vec(64 * 64, 1), &[64, 64], DType::F32).unwrap();
    assert_eq!(a.to_vec(&p).unwrap(), vec![0.0; 64 * 64], "plans read zeros");
    let err = pigment::ops::elementwise::scale(&real, &a, 2.0, 0.0).unwrap_err().to_string();
    assert!(err.contains("planned"), "{err}");
    // Limits are checked in plans as in real runs.
    let huge = Tensor::empty(&p, &[(p.limits.max_buffer_size / 4 + 1) as usize], DType::F32);
    assert!(huge.is_err());
}
