//! Composable Diffusion (A1111's `AND`), tested by construction on sd15-tiny (no diffusers
//! pipeline has it): (a) one sub-prompt is plain CFG — `"P"` and `"P :1"` give the same image
//! bit for bit, and that image matches diffusers' StableDiffusionPipeline golden; (b) two
//! sub-prompts give the image of a sampling loop driven here by hand, whose guided prediction is
//! `uncond + g·Σ wᵢ(εᵢ − uncond)` with every εᵢ from its own single-prompt UNet call; (c) the
//! parser against A1111's `re_AND` / `re_weight` on tricky cases.

mod common;
use common::*;
use pigment::pipeline::compose::{split_and, split_weight, Composed};
use pigment::pipeline::{a1111_parameters, GenerateOptions, StableDiffusion};
use pigment::rng::TorchRng;
use pigment::schedulers::{self, SamplerKind, SigmaSchedule};
use pigment::{DType, Tensor};

const PROMPT: &str = "a photograph of an astronaut riding a horse";
const NEGATIVE: &str = "blurry, low quality";

fn options(prompt: &str) -> GenerateOptions {
    GenerateOptions { prompt: prompt.into(), negative_prompt: NEGATIVE.into(), schedule: SigmaSchedule::Normal, ..txt2img_options(SamplerKind::Euler) }
}

/// (a): the tests/pipeline.rs golden (diffusers, Euler, seed 42, 4 steps, cfg 7.5); the same
/// tolerance (mean <= 1 level, max <= 8) for the plain prompt, and bit-for-bit equality for
/// the one-sub-prompt forms, which must take the very same path.
#[test]
fn one_subprompt_is_plain_cfg() {
    let c = ctx();
    let sd = StableDiffusion::load(c, &fixtures().join("sd15-tiny"), false).unwrap();
    let plain = sd.generate(c, &options(PROMPT), |_, _| {}).unwrap();
    let (_, _, want) = read_png(&fixtures().join("golden/sd15-tiny/sampler_euler.png"));
    let (mean, max) = image_diff(&plain.rgb, &want);
    eprintln!("plain vs diffusers: mean {mean:.3} max {max}");
    assert!(mean <= 1.0 && max <= 8, "plain prompt: mean {mean:.3} max {max} off diffusers");
    for p in [format!("{PROMPT} :1"), format!("{PROMPT}:1.0"), format!("{PROMPT}  ")] {
        let img = sd.generate(c, &options(&p), |_, _| {}).unwrap();
        assert!(img.rgb == plain.rgb, "{p:?} differs from the plain prompt: {:?}", image_diff(&img.rgb, &plain.rgb));
    }
}

/// (b): Pigment's composed image against a loop driven by hand with the public API: Euler,
/// the same noise, each εᵢ from a batch-1 UNet call on that sub-prompt's own encoding, and
/// `uncond + g·Σ wᵢ(εᵢ − uncond)` written out here.
#[test]
fn two_subprompts_are_the_weighted_sum_of_separate_predictions() {
    let c = ctx();
    let sd = StableDiffusion::load(c, &fixtures().join("sd15-tiny"), false).unwrap();
    let (p1, p2, w2) = ("a photograph of an astronaut", "riding a horse", 0.6f32);
    let o = options(&format!("{p1} AND {p2} :{w2}"));
    let got = sd.generate(c, &o, |_, _| {}).unwrap();

    // Each sub-prompt encoded on its own: conditioning() gives [negative, prompt].
    let rows = |p: &str| -> (Vec<f32>, Vec<f32>, Vec<usize>) {
        let (t, _) = sd.conditioning(c, &options(p)).unwrap();
        let v = t.to_vec(c).unwrap();
        let half = v.len() / 2;
        (v[..half].to_vec(), v[half..].to_vec(), vec![1, t.dim(1), t.dim(2)])
    };
    let (u, c1, shape) = rows(p1);
    let (_, c2, _) = rows(p2);
    let terms = [(&c1, 1.0f32), (&c2, w2)];
    let mut sched = schedulers::build(o.sampler, o.schedule, &sd.scheduler_config, o.steps).unwrap();
    let mut rng = TorchRng::new(o.seed);
    let n = 4 * 8 * 8;
    let mut x: Vec<f32> = rng.randn(n).into_iter().map(|v| v * sched.init_noise_sigma()).collect();
    let eps = |xin: &[f32], t: f32, text: &[f32]| -> Vec<f32> {
        let s = Tensor::from_f32(c, xin, &[1, 4, 8, 8], DType::F32).unwrap();
        let e = Tensor::from_f32(c, text, &shape, DType::F32).unwrap();
        sd.unet.forward(c, &s, t, &e).unwrap().to_vec(c).unwrap()
    };
    for i in 0..sched.timesteps().len() {
        let t = sched.timesteps()[i];
        let xin = sched.scale_model_input(&x, i);
        let eu = eps(&xin, t, &u);
        let mut guided = eu.clone();
        for (text, w) in terms {
            let ei = eps(&xin, t, text);
            for j in 0..n {
                guided[j] += o.guidance * w * (ei[j] - eu[j]);
            }
        }
        x = sched.step(&guided, i, &x, &mut rng);
    }
    let want = sd.vae.latents_to_image_u8(c, &Tensor::from_f32(c, &x, &[1, 4, 8, 8], DType::F32).unwrap()).unwrap();
    let (mean, max) = image_diff(&got.rgb, &want);
    eprintln!("AND vs hand loop: mean {mean:.4} max {max}");
    // Batch 3 vs batch 1 UNet calls differ at most by f32 summation order.
    assert!(mean <= 0.25 && max <= 2, "AND image: mean {mean:.4} max {max} off the hand-driven weighted sum");
    // And the weights matter: the same prompts at weight 1 are another image.
    let other = sd.generate(c, &options(&format!("{p1} AND {p2}")), |_, _| {}).unwrap();
    let (m2, x2) = image_diff(&other.rgb, &want);
    eprintln!("weight 1 instead of {w2}: mean {m2:.3} max {x2}");
    assert!(m2 > 1.0, "the sub-prompt weight changed nothing (mean {m2:.3})");
}

/// The combine with one term of weight 1 is schedulers::cfg_combine bit for bit.
#[test]
fn combine_of_one_term_is_cfg_combine() {
    let (u, cnd) = (rand_vec(1000, 1), rand_vec(1000, 2));
    let out: Vec<f32> = u.iter().chain(&cnd).copied().collect();
    let one = Composed::parse("a cat :1").unwrap();
    assert!(one.is_plain());
    assert_eq!(one.combine(&out, 1000, 7.5), schedulers::cfg_combine(&u, &cnd, 7.5));
}

/// At guidance <= 1 a composed prompt still runs the uncond batch (A1111 always does).
#[test]
fn composed_prompt_runs_uncond_at_low_guidance() {
    let c = ctx();
    let sd = StableDiffusion::load(c, &fixtures().join("sd15-tiny"), false).unwrap();
    let mut o = options("a cat AND a hat :0.5");
    o.guidance = 1.0;
    assert_eq!(sd.conditioning(c, &o).unwrap().0.dim(0), 3);
    o.prompt = "a cat".into();
    assert_eq!(sd.conditioning(c, &o).unwrap().0.dim(0), 1);
    // Duplicate texts share an entry; an empty sub-prompt is an error, not a panic.
    o.prompt = "a cat AND a cat".into();
    assert_eq!(sd.conditioning(c, &o).unwrap().0.dim(0), 3, "\"a cat \" and \" a cat\" are two texts, as in A1111");
    let e = sd.generate(c, &options("AND"), |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("empty") && e.contains("AND"), "{e}");
}

fn parsed(p: &str) -> (Vec<String>, Vec<(usize, f32)>) {
    let c = Composed::parse(p).unwrap();
    (c.texts, c.terms)
}

/// (c): what A1111's regexes give (worked out from `re.split(r"\bAND\b")` and `re_weight`).
#[test]
fn parser_matches_a1111() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // \b: AND inside a word (or next to `_` / digits) is text; case-sensitive.
    assert_eq!(split_and("ANDROID AND a cat"), ["ANDROID ", " a cat"]);
    assert_eq!(split_and("a_AND_b AND2 xAND"), ["a_AND_b AND2 xAND"]);
    assert_eq!(split_and("a cat and a hat"), ["a cat and a hat"]);
    assert_eq!(split_and("a,AND,b"), ["a,", ",b"]);
    assert_eq!(split_and("éAND b"), ["éAND b"]);
    // weights: with or without a space before the colon, signs, bare dots
    assert_eq!(parsed("a AND b:0.3"), (s(&["a", " b"]), vec![(0, 1.0), (1, 0.3)]));
    assert_eq!(parsed("a AND b :0.3"), (s(&["a", " b"]), vec![(0, 1.0), (1, 0.3)]));
    assert_eq!(parsed("a :-0.5 AND b : +2 "), (s(&["a", " b"]), vec![(0, -0.5), (1, 2.0)]));
    assert_eq!(split_weight("x:.5"), ("x", 0.5));
    assert_eq!(split_weight("x:5."), ("x", 5.0));
    // not numbers A1111 accepts: the text keeps them
    assert_eq!(split_weight("x:1.2.3"), ("x:1.2.3", 1.0));
    assert_eq!(split_weight("x:1e3"), ("x:1e3", 1.0));
    assert_eq!(split_weight("x:0.5 y"), ("x:0.5 y", 1.0));
    assert_eq!(split_weight("x:."), ("x:.", 1.0));
    // emphasis around AND: A1111 splits first, so `(a cat:1.2 AND b)` gives "(a cat" at
    // weight 1.2 and " b)"; a closed group keeps its emphasis weight in the text.
    assert_eq!(parsed("(a cat:1.2 AND b)"), (s(&["(a cat", " b)"]), vec![(0, 1.2), (1, 1.0)]));
    assert_eq!(parsed("(a cat:1.2) AND b"), (s(&["(a cat:1.2)", " b"]), vec![(0, 1.0), (1, 1.0)]));
    // duplicates share an index, in first-seen order
    assert_eq!(parsed("x AND y AND y :2"), (s(&["x", " y"]), vec![(0, 1.0), (1, 1.0), (1, 2.0)]));
    // extra-network tags are removed before the split
    assert_eq!(parsed("<lora:a AND b:0.5>cat"), (s(&["cat"]), vec![(0, 1.0)]));
    // a plain prompt, even empty, is one sub-prompt
    assert_eq!(parsed(""), (s(&[""]), vec![(0, 1.0)]));
    for bad in ["AND", "a AND", "AND b", "a AND  AND b", " AND :0.5"] {
        let e = Composed::parse(bad).unwrap_err().to_string();
        assert!(e.contains("empty"), "{bad:?}: {e}");
    }
    let many = vec!["x"; 40].join(" AND ");
    assert!(Composed::parse(&many).unwrap_err().to_string().contains("at most"));
}

/// The PNG `parameters` keep the prompt as written.
#[test]
fn parameters_keep_the_prompt_text() {
    let o = options("a cat AND a hat :0.5");
    assert!(a1111_parameters(&o, "m").starts_with("a cat AND a hat :0.5\nNegative prompt: "));
}
