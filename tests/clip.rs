//! The CLIP text encoder against transformers 4.57 (CPU, f32) goldens for both tiny variants
//! (`tests/fixtures/golden/<variant>/text.safetensors`), loaded from the diffusers folder and from
//! the single-file checkpoint.
//!
//! Tolerance (f32): max |got - want| ≤ 1e-4 · max|want| per tensor. Both sides compute in f32
//! with the same formulas; they differ only in summation order (tiled GEMM, online softmax,
//! layer-norm reductions) and the erf approximation, ~1e-7 relative per op over ~30 ops.
//! Measured worst on lavapipe: 5.2e-7 (both variants, folder and single file), so 1e-4 leaves
//! ~200× headroom, while a real mistake is far larger: quick_gelu swapped for gelu moves the
//! sd15 output by 1.0e-2 of its scale (`activation_swap_is_detected`), a wrong mask, scale or
//! layer order by O(1).
//!
//! f16 (where the adapter has SHADER_F16): weights and every intermediate tensor are stored in
//! f16 (relative rounding 2^-11 ≈ 4.9e-4 per store, a few stores per sub-layer, accumulating
//! through 4–5 residual layers and re-amplified by each layer norm). Measured worst: 1.2e-3
//! (sd15) / 1.7e-3 (sd21) of the scale; tolerance 5e-3 (3× headroom), still half the
//! activation-swap difference, so the f16 check would catch that mistake too.

mod common;

use common::*;
use pigment::models::clip::{ClipConfig, ClipTextModel};
use pigment::ops::elementwise::Activation;
use pigment::prompt;
use pigment::tokenizer::ClipTokenizer;
use pigment::weights::Weights;
use pigment::DType;
use safetensors::SafeTensors;

const VARIANTS: [&str; 2] = ["sd15-tiny", "sd21-tiny"];
const PROMPT: &str = "a photograph of an astronaut riding a horse";
const NEGATIVE: &str = "blurry, low quality";
const TOL_F32: f32 = 1e-4;
const TOL_F16: f32 = 5e-3;

struct Golden(Vec<u8>);

impl Golden {
    fn load(variant: &str) -> Golden {
        Golden(std::fs::read(fixtures().join("golden").join(variant).join("text.safetensors")).unwrap())
    }
    fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        (bytemuck::pod_collect_to_vec(t.data()), t.shape().to_vec())
    }
    fn ids(&self, name: &str) -> Vec<u32> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name}");
        bytemuck::pod_collect_to_vec::<u8, i64>(t.data()).into_iter().map(|i| i as u32).collect()
    }
}

fn check(got: &[f32], want: &[f32], tol: f32, what: &str) -> f32 {
    let e = rel_err(got, want);
    assert!(e <= tol, "{what}: max error {e:.3e} of the tensor's scale exceeds {tol:.1e}");
    e
}

/// Every golden output of one model in one dtype; returns the worst relative error.
fn check_model(model: &ClipTextModel, g: &Golden, tol: f32, what: &str) -> f32 {
    let c = ctx();
    let d = model.config.hidden;
    let mut worst = 0f32;
    for which in ["prompt", "negative"] {
        let ids = g.ids(&format!("{which}.input_ids"));
        let what = format!("{what} {which}");
        let out = model.forward(c, &ids, 77, 1, true).unwrap();
        let (hs, shape) = g.f32(&format!("{which}.hidden_states"));
        assert_eq!(out.hidden_states.len(), shape[0], "{what}: number of hidden states");
        for (i, h) in out.hidden_states.iter().enumerate() {
            assert_eq!(h.shape(), &[1, 77, d]);
            let want = &hs[i * 77 * d..(i + 1) * 77 * d];
            worst = worst.max(check(&h.to_vec(c).unwrap(), want, tol, &format!("{what} hidden_states[{i}]")));
        }
        let (emb, _) = g.f32(&format!("{which}.embeddings"));
        worst = worst.max(check(&out.hidden_states[0].to_vec(c).unwrap(), &emb, tol, &format!("{what} embeddings")));
        let (last, _) = g.f32(&format!("{which}.last_hidden_state"));
        worst = worst.max(check(&out.last_hidden_state.to_vec(c).unwrap(), &last, tol, &format!("{what} last_hidden_state")));
        let (pooled, _) = g.f32(&format!("{which}.pooled"));
        let p = out.pooled(0).unwrap();
        assert_eq!(p.shape(), &[1, d]);
        worst = worst.max(check(&p.to_vec(c).unwrap(), &pooled, tol, &format!("{what} pooled")));
        // CLIP skip 2 (A1111) = diffusers clip_skip 1 = final LN of the penultimate layer.
        let ids77: [u32; 77] = ids.clone().try_into().unwrap();
        let (pen_ln, _) = g.f32(&format!("{which}.penultimate_ln"));
        let skip2 = model.encode_ids(c, &ids77, 2).unwrap();
        assert_eq!(skip2.shape(), &[1, 77, d]);
        worst = worst.max(check(&skip2.to_vec(c).unwrap(), &pen_ln, tol, &format!("{what} clip skip 2")));
        let (pen, _) = g.f32(&format!("{which}.penultimate"));
        let out2 = model.forward(c, &ids, 77, 2, true).unwrap();
        worst = worst.max(check(&out2.hidden_states.last().unwrap().to_vec(c).unwrap(), &pen, tol, &format!("{what} penultimate")));
        // Skip 1 and 0 are the normal output.
        worst = worst.max(check(&model.encode_ids(c, &ids77, 0).unwrap().to_vec(c).unwrap(), &last, tol, &format!("{what} skip 0")));
    }
    worst
}

#[test]
fn token_ids_match_golden() {
    for variant in VARIANTS {
        let g = Golden::load(variant);
        let tok = ClipTokenizer::from_dir(fixtures().join(variant).join("tokenizer")).unwrap();
        for (which, text) in [("prompt", PROMPT), ("negative", NEGATIVE)] {
            let want = g.ids(&format!("{which}.input_ids"));
            assert_eq!(tok.encode_padded(text, 77), want, "{variant} {which}: encode_padded");
            let chunks = prompt::tokenize_prompt(&tok, text).chunks;
            assert_eq!(chunks.len(), 1);
            assert_eq!(chunks[0].ids.to_vec(), want, "{variant} {which}: A1111 chunk");
        }
    }
}

#[test]
fn clip_f32_matches_transformers() {
    for variant in VARIANTS {
        let g = Golden::load(variant);
        for (source, w) in sources(variant) {
            let te = w.text_encoder().unwrap();
            let model = ClipTextModel::load(ctx(), te, DType::F32).unwrap();
            let worst = check_model(&model, &g, TOL_F32, &format!("{variant} {source} f32"));
            eprintln!("{variant} {source} f32: worst error {worst:.2e} of scale");
        }
    }
}

#[test]
fn clip_f16_matches_transformers() {
    if !ctx().f16 {
        eprintln!("adapter has no SHADER_F16: f16 CLIP test skipped");
        return;
    }
    for variant in VARIANTS {
        let g = Golden::load(variant);
        let w = Weights::open(fixtures().join(variant)).unwrap();
        let model = ClipTextModel::load(ctx(), w.text_encoder().unwrap(), DType::F16).unwrap();
        assert_eq!(model.layers[0].fc1.weight_t.dtype(), DType::F16);
        let worst = check_model(&model, &g, TOL_F16, &format!("{variant} f16"));
        eprintln!("{variant} f16: worst error {worst:.2e} of scale");
    }
}

/// quick_gelu (SD1) and gelu (SD2) must not be interchangeable under the test's tolerance.
#[test]
fn activation_swap_is_detected() {
    for variant in VARIANTS {
        let g = Golden::load(variant);
        let w = Weights::open(fixtures().join(variant)).unwrap();
        let te = w.text_encoder().unwrap();
        let mut cfg = ClipConfig::for_component(te).unwrap();
        let right = cfg.act;
        assert_eq!(right, if variant == "sd15-tiny" { Activation::QuickGelu } else { Activation::Gelu });
        cfg.act = if right == Activation::QuickGelu { Activation::Gelu } else { Activation::QuickGelu };
        let model = ClipTextModel::load_with(ctx(), te, cfg, DType::F32).unwrap();
        let ids = g.ids("prompt.input_ids");
        let out = model.forward(ctx(), &ids, 77, 1, false).unwrap().last_hidden_state.to_vec(ctx()).unwrap();
        let (want, _) = g.f32("prompt.last_hidden_state");
        let e = rel_err(&out, &want);
        eprintln!("{variant}: swapped activation error {e:.2e} of scale");
        assert!(e > TOL_F16, "{variant}: swapping the activation moved the output by only {e:.2e}");
    }
}

/// A1111 prompts: plain text equals the golden; emphasis scales by `apply_weights`; BREAK and
/// long prompts concatenate 77-token chunks.
#[test]
fn encode_prompt_chunks_and_weights() {
    let c = ctx();
    for variant in VARIANTS {
        let g = Golden::load(variant);
        let dir = fixtures().join(variant);
        let tok = ClipTokenizer::from_dir(dir.join("tokenizer")).unwrap();
        let w = Weights::open(&dir).unwrap();
        let model = ClipTextModel::load(c, w.text_encoder().unwrap(), DType::F32).unwrap();
        let d = model.config.hidden;
        let (last, _) = g.f32("prompt.last_hidden_state");

        let plain = model.encode_prompt(c, &tok, PROMPT, 1).unwrap();
        assert_eq!(plain.shape(), &[1, 77, d]);
        check(&plain.to_vec(c).unwrap(), &last, TOL_F32, &format!("{variant} encode_prompt"));

        // Same tokens, one word weighted 1.5: the golden hidden state scaled as A1111 does.
        let weighted = "a (photograph:1.5) of an astronaut riding a horse";
        let chunk = prompt::tokenize_prompt(&tok, weighted).chunks[0];
        assert_eq!(chunk.ids.to_vec(), g.ids("prompt.input_ids"));
        assert!(chunk.weights.contains(&1.5));
        let mut want = last.clone();
        prompt::apply_weights(&mut want, 77, d, &chunk.weights);
        let got = model.encode_prompt(c, &tok, weighted, 1).unwrap().to_vec(c).unwrap();
        check(&got, &want, TOL_F32, &format!("{variant} weighted prompt"));
        assert!(rel_err(&got, &last) > 1e-2, "{variant}: emphasis had no effect");

        // BREAK: two chunks, the first equal to the plain prompt's encoding.
        let two = model.encode_prompt(c, &tok, &format!("{PROMPT} BREAK {NEGATIVE}"), 1).unwrap();
        assert_eq!(two.shape(), &[1, 154, d]);
        let two = two.to_vec(c).unwrap();
        check(&two[..77 * d], &last, TOL_F32, &format!("{variant} BREAK chunk 0"));
        let neg_alone = model.encode_prompt(c, &tok, NEGATIVE, 1).unwrap().to_vec(c).unwrap();
        check(&two[77 * d..], &neg_alone, TOL_F32, &format!("{variant} BREAK chunk 1"));

        // Clip skip through encode_prompt.
        let (pen_ln, _) = g.f32("prompt.penultimate_ln");
        let skip2 = model.encode_prompt(c, &tok, PROMPT, 2).unwrap().to_vec(c).unwrap();
        check(&skip2, &pen_ln, TOL_F32, &format!("{variant} encode_prompt skip 2"));
        assert!(model.encode_prompt(c, &tok, PROMPT, model.config.layers + 1).is_err());
    }
}

/// Textual inversion, checked against the golden by construction: an embedding whose vectors
/// are the token rows of "photograph" (one vector) or "astronaut riding" (two vectors) must
/// encode exactly like those words. Also: wrong-width and non-embedding files are refused.
#[test]
fn textual_inversion_replaces_words_with_its_vectors() {
    let c = ctx();
    let tmp = std::env::temp_dir().join(format!("pigment-ti-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for variant in VARIANTS {
        let g = Golden::load(variant);
        let (last, _) = g.f32("prompt.last_hidden_state");
        let dir = fixtures().join(variant);
        let mut tok = ClipTokenizer::from_dir(dir.join("tokenizer")).unwrap();
        let w = Weights::open(&dir).unwrap();
        let mut model = ClipTextModel::load(c, w.text_encoder().unwrap(), DType::F32).unwrap();
        let d = model.config.hidden;
        let table = w.text_encoder().unwrap().get("text_model.embeddings.token_embedding.weight").unwrap();
        let plain_tok = ClipTokenizer::from_dir(dir.join("tokenizer")).unwrap();
        let write = |file: &str, key: &str, words: &str, shape: Vec<usize>| {
            let ids = plain_tok.encode(words);
            let rows = table.gather_rows(&ids).unwrap();
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, bytemuck::cast_slice(&rows)).unwrap();
            let path = tmp.join(file);
            safetensors::serialize_to_file([(key, view)], None, &path).unwrap();
            path
        };
        let one = write("one.safetensors", "emb_params", "photograph", vec![1, d]);
        let two = write("two.safetensors", "<my-token>", "astronaut riding", vec![2, d]);
        assert_eq!(model.load_textual_inversion(&mut tok, &one, "MyWord").unwrap(), 1);
        assert_eq!(model.load_textual_inversion(&mut tok, &two, "rider").unwrap(), 2);
        let got = model.encode_prompt(c, &tok, "a myword of an rider a horse", 1).unwrap().to_vec(c).unwrap();
        check(&got, &last, TOL_F32, &format!("{variant} textual inversion"));
        // Only whole words: "mywords" stays ordinary text.
        assert_ne!(tok.encode("mywords"), tok.encode("myword"));

        let wide = tmp.join("wide.safetensors");
        let v = vec![0f32; d + 4];
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, d + 4], bytemuck::cast_slice(&v)).unwrap();
        safetensors::serialize_to_file([("emb_params", view)], None, &wide).unwrap();
        let e = model.load_textual_inversion(&mut tok, &wide, "wide").unwrap_err().to_string();
        assert!(e.contains("wide") && e.contains(&d.to_string()), "{e}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
