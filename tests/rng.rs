//! `TorchRng` against torch: the goldens' `noise` is `torch.randn([1,4,8,8],
//! generator=torch.Generator("cpu").manual_seed(42))` and Euler a's `ancestral_noise` are the
//! four per-step draws that follow from the same generator. Both must match bit for bit.

use pigment::rng::TorchRng;
use safetensors::SafeTensors;
use std::path::PathBuf;

fn golden(variant: &str, file: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden").join(variant).join(file);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn tensor(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    let v = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (t.shape().to_vec(), v)
}

fn assert_bitwise(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i].to_bits() != want[i].to_bits()).collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} differ, first at {}: got {:e} want {:e}",
        bad.len(),
        got.len(),
        bad[0],
        got[bad[0]],
        want[bad[0]]
    );
}

#[test]
fn initial_noise_matches_torch_bitwise() {
    for variant in ["sd15-tiny", "sd21-tiny"] {
        for file in ["txt2img.safetensors", "sampler_ddim.safetensors", "sampler_euler.safetensors"] {
            let bytes = golden(variant, file);
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let (shape, want) = tensor(&st, "noise");
            assert_eq!(shape, vec![1, 4, 8, 8]);
            let got = TorchRng::new(42).randn(want.len());
            assert_bitwise(&format!("{variant}/{file} noise"), &got, &want);
        }
    }
}

#[test]
fn ancestral_noise_follows_from_the_same_generator() {
    for variant in ["sd15-tiny", "sd21-tiny"] {
        let bytes = golden(variant, "sampler_euler_a.safetensors");
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (_, noise) = tensor(&st, "noise");
        let (shape, anc) = tensor(&st, "ancestral_noise");
        assert_eq!(shape, vec![4, 1, 4, 8, 8]);
        let mut rng = TorchRng::new(42);
        assert_bitwise("noise", &rng.randn(noise.len()), &noise);
        for (s, want) in anc.chunks_exact(noise.len()).enumerate() {
            assert_bitwise(&format!("{variant} ancestral_noise[{s}]"), &rng.randn(want.len()), want);
        }
    }
}

#[test]
fn different_seeds_and_draws_differ() {
    let a = TorchRng::new(42).randn(256);
    let b = TorchRng::new(43).randn(256);
    assert_ne!(a, b);
    let mut r = TorchRng::new(42);
    let first = r.randn(256);
    let second = r.randn(256);
    assert_eq!(first, a);
    assert_ne!(first, second);
    let mean = a.iter().map(|&x| x as f64).sum::<f64>() / 256.0;
    let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / 256.0;
    assert!(mean.abs() < 0.25 && (var - 1.0).abs() < 0.3, "mean {mean} var {var}");
}

#[test]
fn engine_matches_std_mt19937() {
    // std::mt19937 seeded with 5489 (the C++ default): first outputs.
    let mut r = TorchRng::new(5489);
    assert_eq!(r.next_u32(), 3_499_211_612);
    assert_eq!(r.next_u32(), 581_869_302);
    // torch.Generator().manual_seed(42): the first uniform float of torch.rand(1) is
    // (1608637542 & 0xffffff) / 2^24.
    let mut r = TorchRng::new(42);
    assert_eq!(r.next_u32(), 1_608_637_542);
}

#[test]
fn small_tensors_take_the_scalar_path() {
    // < 16 elements: double Box-Muller with the second value cached; pairs come out as
    // (r cos, r sin) of the same uniforms.
    let mut r = TorchRng::new(7);
    let v = r.randn(4);
    let mut q = TorchRng::new(7);
    let u1 = q.uniform_f64();
    let u2 = q.uniform_f64();
    let rad = (-2.0 * (-u2).ln_1p()).sqrt();
    let th = 2.0 * std::f64::consts::PI * u1;
    assert_eq!(v[0], (rad * th.cos()) as f32);
    assert_eq!(v[1], (rad * th.sin()) as f32);
    assert!(v.iter().all(|x| x.is_finite()));
    // Lengths that are not multiples of 16 recompute the tail and stay finite.
    let w = TorchRng::new(1).randn(37);
    assert!(w.iter().all(|x| x.is_finite()));
}
