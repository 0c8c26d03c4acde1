//! `pigment serve`'s later items (issues #13, #14) over real HTTP with the tiny fixtures: CORS
//! for pages from another origin (preflights without the key), real checkpoint hashes in
//! `/sdapi/v1/sd-models`, the hires fix (`enable_hr` & co.) against the CLI's image and
//! diffusers' golden, and `--taesd` previews against the CLI's TAESD preview.

mod common;
mod serve_common;
use common::{fixtures, read_png};
use serde_json::{json, Value};
use serve_common::*;
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("serve-extras-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn model() -> String {
    fixtures().join("sd15-tiny").to_string_lossy().into_owned()
}

/// `pigment generate` on sd15-tiny with `args`, returning the image (and the preview file when
/// one was asked for).
fn cli(name: &str, args: &[&str]) -> (pigment::pipeline::Image, Option<pigment::pipeline::Image>) {
    let out = tmp("cli").join(format!("{name}.png"));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pigment"))
        .args(["generate", "--model", &model(), "--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--seed", "42", "--cfg", "7.5", "--output"])
        .arg(&out)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "pigment generate {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    let read = |p: &std::path::Path| pigment::imageio::decode_image(&std::fs::read(p).unwrap()).unwrap();
    let preview = out.with_file_name(format!("{name}-preview.png"));
    (read(&out), preview.exists().then(|| read(&preview)))
}

/// A request with a method and headers; (status, headers we look at, body text).
fn raw(method: &str, url: &str, headers: &[(&str, &str)]) -> (u16, Option<String>, String) {
    let mut r = ureq::request(method, url);
    for (k, v) in headers {
        r = r.set(k, v);
    }
    let resp = match r.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let allow = resp.header("access-control-allow-origin").map(str::to_string);
    (resp.status(), allow, resp.into_string().unwrap_or_default())
}

/// `--cors-origin`: a preflight from that origin is answered without the API key (browsers
/// never send it there), the real call then needs the key and carries the allow header (401s
/// too, so the page can show why); other origins and servers without the flag get no header.
#[test]
fn cors_preflight_without_key_and_allowed_origins_only() {
    let page = "http://192.168.1.5:8080";
    let s = Server::start("cors", &["--model", &model(), "--api-key", "k3y", "--cors-origin", page]);
    let url = s.url("/sdapi/v1/txt2img");
    let pre = [("Origin", page), ("Access-Control-Request-Method", "POST"), ("Access-Control-Request-Headers", "authorization,content-type")];
    let (status, allow, _) = raw("OPTIONS", &url, &pre);
    assert!((200..300).contains(&status), "preflight: {status}");
    assert_eq!(allow.as_deref(), Some(page));
    let (status, allow, _) = raw("GET", &s.url("/sdapi/v1/samplers"), &[("Origin", page), ("Authorization", "Bearer k3y")]);
    assert_eq!((status, allow.as_deref()), (200, Some(page)));
    let (status, allow, body) = raw("GET", &s.url("/sdapi/v1/samplers"), &[("Origin", page)]);
    assert_eq!((status, allow.as_deref()), (401, Some(page)), "{body}");
    let (_, allow, _) = raw("OPTIONS", &url, &[("Origin", "http://evil.example"), ("Access-Control-Request-Method", "POST")]);
    assert_eq!(allow, None, "another origin");
    drop(s);
    let s = Server::start("nocors", &["--model", &model()]);
    let (_, allow, _) = raw("OPTIONS", &s.url("/sdapi/v1/txt2img"), &pre);
    assert_eq!(allow, None, "no --cors-origin: no CORS");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pigment")).args(["serve", "--model", &model(), "--cors-origin", "192.168.1.5"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--cors-origin 192.168.1.5") && err.contains("scheme://host"), "{err}");
}

/// `sha256sum tests/fixtures/golden/esrgan/rrdbnet.safetensors` (any file does: the listing
/// only reads it).
const RRDBNET_SHA256: &str = "4f99fb4304616b3645bb178d9731887561fabe7738cd76dde19180c83dd3742d";

/// A1111's `hash` (10 hex digits), `sha256` and `title [hash]` for single-file checkpoints,
/// against a hash computed by another program; folders have none. A changed file is rehashed.
#[test]
fn sd_models_hashes_are_the_files_sha256() {
    let dir = tmp("models");
    let file = dir.join("tiny.safetensors");
    std::fs::copy(fixtures().join("golden/esrgan/rrdbnet.safetensors"), &file).unwrap();
    let d = dir.to_string_lossy().into_owned();
    let s = Server::start("hashes", &["--model", &model(), "--models-dir", &d]);
    let (status, v) = s.get("/sdapi/v1/sd-models");
    assert_eq!(status, 200, "{v}");
    let rows = v.as_array().unwrap();
    let row = |t: &str| rows.iter().find(|r| r["model_name"] == t).unwrap_or_else(|| panic!("{t} in {v}")).clone();
    let tiny = row("tiny");
    assert_eq!(tiny["sha256"], RRDBNET_SHA256);
    assert_eq!(tiny["hash"], &RRDBNET_SHA256[..10]);
    assert_eq!(tiny["title"], format!("tiny.safetensors [{}]", &RRDBNET_SHA256[..10]));
    let folder = row("sd15-tiny");
    assert_eq!((&folder["hash"], &folder["sha256"], &folder["title"]), (&Value::Null, &Value::Null, &json!("sd15-tiny")));
    std::fs::write(&file, b"changed").unwrap();
    let (_, v) = s.get("/sdapi/v1/sd-models");
    let changed = v.as_array().unwrap().iter().find(|r| r["model_name"] == "tiny").unwrap().clone();
    assert_eq!(changed["sha256"], sha_of(b"changed"), "rehashed after a change");
}

/// SHA-256 as `sha256sum` prints it, through the `sha2` crate (the server reads files in
/// chunks; this hashes the bytes at once).
fn sha_of(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// tests/hires.rs's settings: 32x32 Euler (4 steps) → ×2 → 64x64 (4 steps at 0.5, 2 run).
fn hires_body(upscaler: &str) -> Value {
    json!({"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": 42, "width": 32, "height": 32, "steps": 4, "cfg_scale": 7.5,
           "sampler_name": "Euler", "enable_hr": true, "hr_scale": 2, "hr_second_pass_steps": 4, "denoising_strength": 0.5, "hr_upscaler": upscaler})
}

/// The hires fix in serve: the CLI's image for the same flags, to the bit, and diffusers'
/// golden (tools/fixtures_hires.py) within issue #4's bound; `hr_resize_x` as A1111 maps it;
/// a model upscaler from --upscaler-dir; bad values are 422s naming the field.
#[test]
fn hires_fix_matches_the_cli_and_diffusers() {
    let up = tmp("upscalers");
    let cfg = pigment::models::esrgan::EsrganConfig { scale: 4, num_feat: 16, num_grow_ch: 8, num_block: 2 };
    std::fs::write(up.join("tiny-x4.safetensors"), pigment::weights::synthetic::safetensors_bytes(&cfg.tensors())).unwrap();
    let s = Server::start("hires", &["--model", &model(), "--upscaler-dir", up.to_str().unwrap()]);
    let flags = ["--width", "32", "--height", "32", "--steps", "4", "--sampler", "euler", "--hires-scale", "2", "--hires-steps", "4", "--hires-denoise", "0.5", "--hires-upscaler"];
    let model_path = up.join("tiny-x4.safetensors").to_string_lossy().into_owned();
    for (name, golden, cli_name) in [("Latent", Some("latent"), "latent"), ("Lanczos", Some("lanczos"), "lanczos"), ("tiny-x4", None, model_path.as_str())] {
        let t = std::time::Instant::now();
        let (status, r) = s.post("/sdapi/v1/txt2img", &hires_body(name));
        assert_eq!(status, 200, "{name}: {r}");
        eprintln!("hires {name}: {:.1} s", t.elapsed().as_secs_f64());
        let got = rgb_of(&r["images"][0]);
        assert_eq!((got.width, got.height), (64, 64), "{name}");
        let mut args = flags.to_vec();
        args.push(cli_name);
        let (want, _) = cli(&format!("hires-{}", name.to_lowercase()), &args);
        assert!(got.rgb == want.rgb, "{name}: the server's image differs from the CLI's");
        if let Some(g) = golden {
            let (_, _, rgb) = read_png(&fixtures().join(format!("golden/hires/{g}.png")));
            assert_image(&got, &rgb, &format!("hires {name} vs diffusers"));
        }
        let info: Value = serde_json::from_str(r["info"].as_str().unwrap()).unwrap();
        let text = info["infotexts"][0].as_str().unwrap();
        assert!(text.ends_with(&format!("Denoising strength: 0.5, Hires upscale: 2, Hires steps: 4, Hires upscaler: {name}")), "{text}");
    }
    // hr_resize_x 64 is ×2 here.
    let mut b = hires_body("Latent");
    b["hr_resize_x"] = json!(64);
    let (status, r) = s.post("/sdapi/v1/txt2img", &b);
    assert_eq!(status, 200, "{r}");
    let (_, _, rgb) = read_png(&fixtures().join("golden/hires/latent.png"));
    assert_image(&rgb_of(&r["images"][0]), &rgb, "hr_resize_x");
    for (k, v, words) in [
        ("hr_upscaler", json!("ESRGAN_4x"), &["hr_upscaler", "ESRGAN_4x", "tiny-x4", "Lanczos"][..]),
        ("hr_resize_y", json!(96), &["hr_resize_x", "aspect"]),
        ("denoising_strength", json!(1.5), &["denoising_strength"]),
        ("hr_scale", json!(9), &["hr_scale"]),
        ("hr_sampler_name", json!("DPM++ 2M"), &["hr_sampler_name"]),
    ] {
        let mut b = hires_body("Latent");
        b[k] = v.clone();
        if k == "hr_resize_y" {
            b["hr_resize_x"] = json!(64);
        }
        let (status, r) = s.post("/sdapi/v1/txt2img", &b);
        assert_eq!(status, 422, "{k}={v}: {r}");
        let d = detail(&r);
        assert!(words.iter().all(|w| d.contains(w)), "{k}={v}: {d}");
    }
    let (_, v) = s.get("/sdapi/v1/latent-upscale-modes");
    assert_eq!(v, json!([{"name": "Latent"}, {"name": "Latent (nearest)"}]));
}

/// The random-weight TAESD of tests/taesd.rs as a diffusers AutoencoderTiny folder.
fn taesd_dir() -> PathBuf {
    let dir = tmp("taesd");
    let text = std::fs::read_to_string(fixtures().join("golden/taesd/tensors.txt")).unwrap();
    let list: Vec<(String, Vec<usize>)> = text
        .lines()
        .map(|l| {
            let (n, s) = l.split_once('\t').unwrap();
            (n.to_string(), s.split(',').map(|d| d.parse().unwrap()).collect())
        })
        .collect();
    std::fs::write(dir.join("diffusion_pytorch_model.safetensors"), pigment::weights::synthetic::safetensors_bytes(&list)).unwrap();
    std::fs::copy(fixtures().join("golden/taesd/config.json"), dir.join("config.json")).unwrap();
    dir
}

/// `--taesd`: a job's `current_image` (the SSE stream of its progress) is the TAESD decode the
/// CLI's `--preview taesd` writes for the same step, to the bit, not the VAE's; the final image
/// stays the VAE's (the golden).
#[test]
fn taesd_previews_are_the_clis() {
    let t = taesd_dir();
    let ts = t.to_string_lossy().into_owned();
    // Euler, 4 steps, a preview every 3 evaluations: one preview, after step 3.
    let s = Server::start("taesd", &["--model", &model(), "--taesd", &ts, "--preview-every", "3"]);
    let body = json!({"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": 42, "width": 64, "height": 64, "steps": 4, "cfg_scale": 7.5, "sampler_name": "Euler"});
    let (status, j) = s.post("/pigment/v1/jobs", &body);
    assert_eq!(status, 202, "{j}");
    let id = j["id"].as_u64().unwrap();
    let text = ureq::get(&s.url(&format!("/pigment/v1/jobs/{id}/events"))).call().unwrap().into_string().unwrap();
    let preview = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v.get("current_image").cloned())
        .last()
        .unwrap_or_else(|| panic!("no current_image in {}", &text[..text.len().min(400)]));
    let got = rgb_of(&preview);
    let args = ["--width", "64", "--height", "64", "--steps", "4", "--sampler", "euler", "--preview-every", "3", "--taesd", &ts, "--preview"];
    let (_, want) = cli("taesd-preview", &[&args[..], &["taesd"]].concat());
    let want = want.expect("the CLI's preview file");
    assert!(got.rgb == want.rgb, "the server's preview differs from the CLI's TAESD preview");
    let (_, full) = cli("vae-preview", &[&args[..], &["full"]].concat());
    let (mean, _) = common::image_diff(&got.rgb, &full.unwrap().rgb);
    assert!(mean > 5.0, "a TAESD preview, not the VAE's (mean {mean:.1} levels apart)");
    let (_, j) = s.get(&format!("/pigment/v1/jobs/{id}"));
    let (_, _, golden) = read_png(&fixtures().join("golden/sd15-tiny/sampler_euler.png"));
    assert_image(&rgb_of(&j["images"][0]), &golden, "final image (VAE)");
}

/// `--hypernetwork-dir`: `/sdapi/v1/hypernetworks` lists it, and `<hypernet:NAME:W>` tags in a
/// prompt make tests/hypernetwork.rs's golden (diffusers with A1111's modules); the next
/// request without tags is the plain image again (the modules are removed).
#[test]
fn hypernetwork_tags_match_the_golden() {
    let s = Server::start("hypernet", &["--model", &model(), "--hypernetwork-dir", &fixtures().join("hypernetwork").to_string_lossy()]);
    let (_, v) = s.get("/sdapi/v1/hypernetworks");
    let names: Vec<&str> = v.as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["hn-a", "hn-b"], "{v}");
    let body = |prompt: &str| {
        json!({"prompt": prompt, "negative_prompt": NEGATIVE, "seed": 42, "width": 32, "height": 32, "steps": 4, "cfg_scale": 7.5, "sampler_name": "Euler"})
    };
    let (_, _, want) = read_png(&fixtures().join("golden/sd15-tiny/hypernet.png"));
    let (status, r) = s.post("/sdapi/v1/txt2img", &body(&format!("{PROMPT} <hypernet:hn-a:0.8> <hypernet:hn-b:0.5>")));
    assert_eq!(status, 200, "{r}");
    let got = rgb_of(&r["images"][0]);
    assert_image(&got, &want, "served with hypernetworks");
    let (status, r) = s.post("/sdapi/v1/txt2img", &body(PROMPT));
    assert_eq!(status, 200, "{r}");
    assert!(rgb_of(&r["images"][0]).rgb != got.rgb, "the next request without tags still had the hypernetworks");
    let (status, r) = s.post("/sdapi/v1/txt2img", &body(&format!("{PROMPT} <hypernet:nope>")));
    assert_eq!(status, 422, "{r}");
    assert!(r.to_string().contains("nope.safetensors"), "{r}");
}

/// A1111's `refiner_checkpoint` / `refiner_switch_at`: the SDXL base hands its latents to the
/// refiner (a listed model) as `pigment generate --refiner` does, and the image is diffusers'
/// ensemble-of-experts golden (tests/sdxl_refiner.rs); the infotext names the refiner.
#[test]
fn refiner_checkpoint_matches_the_handoff_golden() {
    let (base, refiner) = (common::sdxl::sdxl_tiny(), common::sdxl::sdxl_refiner_tiny());
    let dir = refiner.parent().unwrap().to_string_lossy().into_owned();
    let s = Server::start("refiner", &["--model", &base.to_string_lossy(), "--models-dir", &dir]);
    let body = |refiner: &str, switch: f64| {
        json!({"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": 42, "width": 64, "height": 64, "steps": 5, "cfg_scale": 5,
               "sampler_name": "Euler", "refiner_checkpoint": refiner, "refiner_switch_at": switch})
    };
    let (status, r) = s.post("/sdapi/v1/txt2img", &body("sdxl-refiner-tiny", 0.5));
    assert_eq!(status, 200, "{r}");
    let (_, _, want) = read_png(&fixtures().join("golden/sdxl-refiner-tiny/handoff5_euler.png"));
    assert_image(&rgb_of(&r["images"][0]), &want, "served base + refiner at 0.5");
    let info: Value = serde_json::from_str(r["info"].as_str().unwrap()).unwrap();
    assert!(info["infotexts"][0].as_str().unwrap().contains("Refiner: sdxl-refiner-tiny, Refiner switch at: 0.5"), "{info}");
    for (b, field) in [(body("nope", 0.5), "refiner_checkpoint"), (body("sdxl-refiner-tiny", 1.5), "refiner_switch_at"), (body("sdxl-tiny", 0.8), "refiner")] {
        let (status, r) = s.post("/sdapi/v1/txt2img", &b);
        assert_eq!(status, 422, "{r}");
        assert!(r.to_string().contains(field), "{field}: {r}");
    }
}
