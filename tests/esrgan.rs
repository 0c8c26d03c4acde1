//! Real-ESRGAN (RRDBNet) against basicsr's architecture in PyTorch on the same random weights
//! (`tools/fixtures_esrgan.py`: num_feat 16, num_grow_ch 8, 2 blocks, a 12x10 image), whole and
//! tiled as Real-ESRGAN's `tile_process` (tile 4, pad 2: a 3x3 grid, seams inside).

mod common;
use common::*;
use pigment::models::esrgan::{EsrganConfig, RealEsrgan};
use pigment::pipeline::upscale::{plan_tiles, upscale_chw};
use pigment::weights::SafetensorsFile;
use pigment::DType;

const W: usize = 12;
const H: usize = 10;

fn golden() -> SafetensorsFile {
    SafetensorsFile::open(fixtures().join("golden/esrgan/rrdbnet.safetensors")).expect("run tools/fixtures_esrgan.py")
}

fn config(scale: usize) -> EsrganConfig {
    EsrganConfig { scale, num_feat: 16, num_grow_ch: 8, num_block: 2 }
}

/// The golden's RGB8 input as planar f32 in [0, 1], as the upscaler feeds it.
fn input(g: &SafetensorsFile) -> Vec<f32> {
    let hwc = g.get("input_rgb8").unwrap().to_f32().unwrap();
    let mut chw = vec![0.0; 3 * W * H];
    for i in 0..W * H {
        for c in 0..3 {
            chw[c * W * H + i] = hwc[3 * i + c] / 255.0;
        }
    }
    chw
}

/// Outputs are up to ~0.07 in magnitude; whole and tiled outputs differ by up to 0.03 (the
/// seams), so these bounds tell a tiling mistake apart. f32: the convolutions sum in another
/// order than PyTorch's (measured max 7e-8); f16: every intermediate is rounded to 11 bits
/// through 36 convolutions (measured max 6.3e-5, ~1 f16 ulp of the largest outputs).
fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 5e-7,
        DType::F16 => 3e-4,
    }
}

fn max_err(got: &[f32], want: &[f32]) -> f32 {
    got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0, f32::max)
}

fn check(model: &RealEsrgan, tile: usize, pad: usize, golden_name: &str) {
    let g = golden();
    let plan = plan_tiles(ctx(), model, W, H, tile, pad).unwrap();
    assert_eq!(plan.note, None);
    if tile > 0 {
        assert_eq!(plan.grid, (3, 3));
    }
    let got = upscale_chw(ctx(), model, &input(&g), W, H, &plan).unwrap();
    let want = g.get(golden_name).unwrap().to_f32().unwrap();
    let tol = tolerance(model.dtype);
    eprintln!("{golden_name} {:?}: max |err| {:.3e} (tolerance {tol:e})", model.dtype, max_err(&got, &want));
    assert_close(&got, &want, tol, 0.0, &format!("{golden_name} {:?}", model.dtype));
}

#[test]
fn x4_and_x2_whole_and_tiled_match_pytorch() {
    let _g = LIMIT.read().unwrap();
    for dtype in dtypes() {
        for scale in [4, 2] {
            let model = RealEsrgan::synthetic(ctx(), config(scale), dtype).unwrap();
            assert_eq!(model.config, config(scale));
            check(&model, 0, 0, &format!("x{scale}_whole"));
            check(&model, 4, 2, &format!("x{scale}_tiled"));
        }
    }
}

/// A tile whose tensors exceed the binding limit is shrunk, and says so: asking for 8 px tiles
/// under a limit that only 4 px tiles (8 px with padding) fit gives the tile-4 golden.
#[test]
fn oversized_tile_is_shrunk_to_fit_the_binding_limit() {
    let _l = Lowered::new();
    let model = RealEsrgan::synthetic(ctx(), config(4), DType::F32).unwrap();
    let align = ctx().limits.min_storage_buffer_offset_alignment.max(4) as u64;
    ctx().set_max_binding_for_tests(model.config.peak_tensor_bytes(8, 8, DType::F32) + align);
    let plan = plan_tiles(ctx(), &model, W, H, 8, 2).unwrap();
    assert_eq!(plan.tile, 4);
    let note = plan.note.clone().expect("a note on the shrunk tile");
    assert!(note.contains("tile 8") && note.contains("using tile 4"), "{note}");
    let g = golden();
    let got = upscale_chw(ctx(), &model, &input(&g), W, H, &plan).unwrap();
    assert_close(&got, &g.get("x4_tiled").unwrap().to_f32().unwrap(), tolerance(DType::F32), 0.0, "shrunk tiles");
}

/// A safetensors file of `tensors` (name, shape, f32 values).
fn file(name: &str, tensors: Vec<(String, Vec<usize>, Vec<f32>)>) -> SafetensorsFile {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors.into_iter().map(|(n, s, v)| (n, s, bytemuck::cast_slice(&v).to_vec())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        bytes.iter().map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())).collect();
    SafetensorsFile::from_bytes(name, safetensors::serialize(views, None).unwrap()).unwrap()
}

/// The basicsr-named synthetic tensors, renamed by `rename`.
fn renamed(cfg: EsrganConfig, rename: impl Fn(&str) -> String) -> SafetensorsFile {
    let src = SafetensorsFile::from_bytes("synthetic", pigment::weights::synthetic::safetensors_bytes(&cfg.tensors())).unwrap();
    let tensors = cfg.tensors().into_iter().map(|(n, s)| (rename(&n), s, src.get(&n).unwrap().to_f32().unwrap())).collect();
    file("renamed.safetensors", tensors)
}

/// The original ESRGAN repository's names (what spandrel maps to basicsr's), for x4.
fn old_name(n: &str, num_block: usize) -> String {
    let (stem, suffix) = n.rsplit_once('.').unwrap();
    let stem = match stem {
        "conv_first" => "model.0".to_string(),
        "conv_body" => format!("model.1.sub.{num_block}"),
        "conv_up1" => "model.3".into(),
        "conv_up2" => "model.6".into(),
        "conv_hr" => "model.8".into(),
        "conv_last" => "model.10".into(),
        s => {
            let rest = s.strip_prefix("body.").unwrap();
            let (b, rest) = rest.split_once('.').unwrap();
            format!("model.1.sub.{b}.{}.0", rest.replace("rdb", "RDB"))
        }
    };
    format!("{stem}.{suffix}")
}

#[test]
fn old_esrgan_and_prefixed_names_load_the_same_model() {
    let _g = LIMIT.read().unwrap();
    let g = golden();
    let cfg = config(4);
    for f in [renamed(cfg, |n| old_name(n, 2)), renamed(cfg, |n| format!("params_ema.{n}"))] {
        assert_eq!(RealEsrgan::inspect(&f).unwrap(), cfg);
        let model = RealEsrgan::load(ctx(), &f, DType::F32).unwrap();
        let plan = plan_tiles(ctx(), &model, W, H, 0, 0).unwrap();
        let got = upscale_chw(ctx(), &model, &input(&g), W, H, &plan).unwrap();
        assert_close(&got, &g.get("x4_whole").unwrap().to_f32().unwrap(), tolerance(DType::F32), 0.0, "renamed");
    }
}

#[test]
fn other_files_are_refused_by_name() {
    let _g = LIMIT.read().unwrap();
    let unet = file("unet.safetensors", vec![("conv_in.weight".into(), vec![4, 4, 3, 3], vec![0.0; 144])]);
    let err = RealEsrgan::load(ctx(), &unet, DType::F32).err().unwrap().to_string();
    assert!(err.contains("unet.safetensors") && err.contains("not an RRDBNet") && err.contains("conv_first.weight"), "{err}");
    // A missing tensor is named, with the block count that needs it.
    let cfg = config(4);
    let src = SafetensorsFile::from_bytes("s", pigment::weights::synthetic::safetensors_bytes(&cfg.tensors())).unwrap();
    let tensors = cfg.tensors().into_iter().filter(|(n, _)| n != "conv_hr.bias").map(|(n, s)| (n.clone(), s, src.get(&n).unwrap().to_f32().unwrap())).collect();
    let err = RealEsrgan::load(ctx(), &file("partial.safetensors", tensors), DType::F32).err().unwrap().to_string();
    assert!(err.contains("partial.safetensors") && err.contains("conv_hr.bias"), "{err}");
    // A grayscale RRDBNet (1 input channel) is not an RGB upscaler.
    let gray = file("gray.safetensors", vec![("conv_first.weight".into(), vec![16, 1, 3, 3], vec![0.0; 144])]);
    let err = RealEsrgan::load(ctx(), &gray, DType::F32).err().unwrap().to_string();
    assert!(err.contains("3 (x4), 12 (x2) or 48 (x1)"), "{err}");
}

/// The golden input as an RGB8 image, and the x4 golden as Real-ESRGAN writes it (clamped,
/// rounded to 8 bits).
fn golden_images(g: &SafetensorsFile) -> (pigment::pipeline::Image, Vec<u8>) {
    let rgb = g.get("input_rgb8").unwrap().to_f32().unwrap().iter().map(|&v| v as u8).collect();
    let want = g.get("x4_whole").unwrap().to_f32().unwrap();
    let (n, mut out) = (want.len() / 3, vec![0u8; want.len()]);
    for i in 0..n {
        for c in 0..3 {
            out[3 * i + c] = (want[c * n + i].clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    (pigment::pipeline::Image { width: W, height: H, rgb }, out)
}

/// The test model as a file in `dir` (basicsr names), for the CLI and the server.
pub fn write_model(dir: &std::path::Path, scale: usize) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("tiny-x{scale}.safetensors"));
    std::fs::write(&path, pigment::weights::synthetic::safetensors_bytes(&config(scale).tensors())).unwrap();
    path
}

/// `pigment upscale` end to end: the x4 golden within one 8-bit level (f16 on an f16 adapter),
/// and `--scale 2` on the x4 model is its output Lanczos-resized to 2x.
#[test]
fn cli_upscale_writes_the_golden_png() {
    let g = golden();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("esrgan-cli-{}", std::process::id()));
    let model = write_model(&dir, 4);
    let (img, want) = golden_images(&g);
    let input = dir.join("in.png");
    pigment::imageio::write_png(&input, &img, "").unwrap();
    let run = |extra: &[&str], out: &std::path::Path| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_pigment"))
            .args(["upscale", input.to_str().unwrap(), "--model", model.to_str().unwrap(), "--tile", "0", "--out", out.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        pigment::imageio::read_image(out, "output").unwrap()
    };
    let x4 = run(&[], &dir.join("x4.png"));
    assert_eq!((x4.width, x4.height), (4 * W, 4 * H));
    let max = x4.rgb.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(max <= 1, "x4 PNG: {max} levels off the golden");
    let x2 = run(&["--scale", "2"], &dir.join("x2.png"));
    assert_eq!(x2.rgb, pigment::imageio::resize_rgb(&x4, 2 * W, 2 * H).rgb);
    // A file that is no upscaler is refused by name.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pigment"))
        .args(["upscale", input.to_str().unwrap(), "--model", input.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("in.png"), "{err}");
}
