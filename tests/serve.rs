//! `pigment serve` over real HTTP on a loopback port with the tiny fixtures (issue #13): every
//! endpoint; images against diffusers' goldens for the same parameters (what the CLI and the
//! library make, within issue #4's bound: mean <= 1 level, max <= 8; a wrong seed, sampler or
//! model is tens of levels off); bad inputs get a 4xx naming the field; interrupt, skip, jobs,
//! SSE. Each test runs its own server.

mod common;
mod serve_common;
use common::{fixtures, read_png};
use serde_json::{json, Value};
use serve_common::*;

fn golden(rel: &str) -> Vec<u8> {
    read_png(&fixtures().join("golden").join(rel)).2
}

fn fixtures_str() -> String {
    fixtures().to_string_lossy().into_owned()
}

/// sd15-tiny, with every fixture folder for models, LoRAs and ControlNets.
fn server(name: &str, extra: &[&str]) -> Server {
    let f = fixtures_str();
    let (model, lora) = (format!("{f}/sd15-tiny"), format!("{f}/lora"));
    let mut args = vec!["--model", &model, "--models-dir", &f, "--lora-dir", &lora, "--controlnet-dir", &f];
    args.extend_from_slice(extra);
    Server::start(name, &args)
}

fn txt2img_body() -> Value {
    json!({"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": 42, "width": 64, "height": 64, "steps": 4,
           "cfg_scale": 7.5, "sampler_name": "PLMS", "some_field_a1111_lacks": {"ignored": true}})
}

/// txt2img as A1111 answers it: the golden image, `parameters` echoing the request with
/// defaults, `info` a JSON string with seeds and infotexts, the PNG carrying the infotext (read
/// back by png-info); batches with seeds seed, seed+1, ...
#[test]
fn txt2img_matches_golden_with_a1111_response() {
    let s = server("txt2img", &[]);
    let (status, r) = s.post("/sdapi/v1/txt2img", &txt2img_body());
    assert_eq!(status, 200, "{r}");
    assert_image(&rgb_of(&r["images"][0]), &golden("sd15-tiny/txt2img.png"), "txt2img PLMS");
    assert_eq!(r["parameters"]["prompt"], PROMPT);
    assert_eq!(r["parameters"]["n_iter"], 1, "defaults filled in");
    let info: Value = serde_json::from_str(r["info"].as_str().expect("info is a JSON string")).unwrap();
    assert_eq!(info["all_seeds"], json!([42]));
    assert_eq!(info["sampler_name"], "PLMS");
    assert_eq!(info["sd_model_name"], "sd15-tiny");
    let infotext = info["infotexts"][0].as_str().unwrap();
    assert!(infotext.starts_with(&format!("{PROMPT}\nNegative prompt: {NEGATIVE}\nSteps: 4, Sampler: PLMS, CFG scale: 7.5, Seed: 42, Size: 64x64, Model: sd15-tiny")), "{infotext}");
    let (status, p) = s.post("/sdapi/v1/png-info", &json!({"image": r["images"][0]}));
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["info"], infotext);
    assert_eq!(p["parameters"]["Seed"], "42");
    assert_eq!(p["parameters"]["Negative prompt"], NEGATIVE);

    // batch_size 2 × n_iter 1: seeds 41 and 42, the second the golden; Euler's golden by the
    // old A1111 "Euler" name with the schedule in `scheduler`.
    let mut b = txt2img_body();
    b["seed"] = json!(41);
    b["batch_size"] = json!(2);
    let (status, r) = s.post("/sdapi/v1/txt2img", &b);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["images"].as_array().unwrap().len(), 2);
    let info: Value = serde_json::from_str(r["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["all_seeds"], json!([41, 42]));
    assert_image(&rgb_of(&r["images"][1]), &golden("sd15-tiny/txt2img.png"), "second image of a batch");
    let first = rgb_of(&r["images"][0]);
    let (mean, _) = common::image_diff(&first.rgb, &golden("sd15-tiny/txt2img.png"));
    assert!(mean > 5.0, "seed 41 must differ from seed 42 (mean {mean})");
    for (sampler, scheduler, file) in [("Euler", "Karras", "sampler_euler_karras"), ("DPM++ 2M Karras", "Automatic", "sampler_dpmpp_2m_karras"), ("Euler a", "Automatic", "sampler_euler_a")] {
        let mut b = txt2img_body();
        b["sampler_name"] = json!(sampler);
        b["scheduler"] = json!(scheduler);
        let (status, r) = s.post("/sdapi/v1/txt2img", &b);
        assert_eq!(status, 200, "{r}");
        assert_image(&rgb_of(&r["images"][0]), &golden(&format!("sd15-tiny/{file}.png")), sampler);
    }
}

/// img2img (init image, denoising_strength) and inpainting (mask, mask_blur 0) against the
/// diffusers goldens; a `<lora:…>` tag and an A1111 ControlNet unit against theirs.
#[test]
fn img2img_inpaint_lora_controlnet_match_goldens() {
    let s = server("img2img", &[]);
    let init = file_b64(&fixtures().join("golden/img2img/init.png"));
    let mask = file_b64(&fixtures().join("golden/img2img/mask.png"));
    let base = json!({"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": 42, "width": 64, "height": 64, "steps": 5,
                      "cfg_scale": 7.5, "sampler_name": "Euler", "scheduler": "Uniform", "init_images": [init]});
    let mut b = base.clone();
    b["denoising_strength"] = json!(0.6);
    let (status, r) = s.post("/sdapi/v1/img2img", &b);
    assert_eq!(status, 200, "{r}");
    assert_image(&rgb_of(&r["images"][0]), &golden("img2img/img2img_euler.png"), "img2img Euler 0.6");
    assert_eq!(r["parameters"]["init_images"], Value::Null);
    let info: Value = serde_json::from_str(r["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["denoising_strength"], json!(0.6));
    let mut b = base.clone();
    b["denoising_strength"] = json!(0.75);
    b["mask"] = json!(format!("data:image/png;base64,{mask}"));
    b["mask_blur"] = json!(0);
    let (status, r) = s.post("/sdapi/v1/img2img", &b);
    assert_eq!(status, 200, "{r}");
    assert_image(&rgb_of(&r["images"][0]), &golden("img2img/inpaint4_euler.png"), "inpaint Euler 0.75");

    let b = json!({"prompt": format!("{PROMPT} <lora:sd15-tiny-kohya:0.8>"), "negative_prompt": NEGATIVE, "seed": 42, "width": 64,
                   "height": 64, "steps": 4, "cfg_scale": 7.5, "sampler_name": "Euler", "scheduler": "Uniform"});
    let (status, r) = s.post("/sdapi/v1/txt2img", &b);
    assert_eq!(status, 200, "{r}");
    assert_image(&rgb_of(&r["images"][0]), &golden("sd15-tiny/lora_kohya.png"), "LoRA tag");

    let control = file_b64(&fixtures().join("golden/sd15-tiny/controlnet_control.png"));
    let mut b = txt2img_body();
    b["alwayson_scripts"] = json!({"controlnet": {"args": [{"enabled": true, "image": control, "module": "none",
                                   "model": "sd15-tiny-controlnet [abcd1234]", "weight": 0.8}]}});
    let (status, r) = s.post("/sdapi/v1/txt2img", &b);
    assert_eq!(status, 200, "{r}");
    assert_image(&rgb_of(&r["images"][0]), &golden("sd15-tiny/controlnet_txt2img.png"), "ControlNet unit");
    let info: Value = serde_json::from_str(r["info"].as_str().unwrap()).unwrap();
    assert!(info["infotexts"][0].as_str().unwrap().contains("ControlNet 0: \"Module: none, Model: sd15-tiny-controlnet, Weight: 0.8"), "{info}");
    // and without the unit the LoRA and ControlNet are gone again: the plain golden
    let (status, r) = s.post("/sdapi/v1/txt2img", &txt2img_body());
    assert_eq!(status, 200, "{r}");
    assert_image(&rgb_of(&r["images"][0]), &golden("sd15-tiny/txt2img.png"), "plain after LoRA/ControlNet");
}

/// OpenAI's shape; listings; options and model switching (POST options and per-request
/// override_settings, restored afterwards).
#[test]
fn openai_listings_options_and_model_switching() {
    let s = server("openai", &[]);
    // No `size`: the model's own (sd15-tiny's unet sample_size 8 → 64x64), not a fixed 512.
    let b = json!({"prompt": PROMPT, "negative_prompt": NEGATIVE, "n": 1, "response_format": "b64_json",
                   "model": "dall-e-3", "seed": 42, "steps": 4, "cfg_scale": 7.5, "sampler_name": "PLMS"});
    let (status, r) = s.post("/v1/images/generations", &b);
    assert_eq!(status, 200, "{r}");
    assert!(r["created"].as_u64().is_some());
    assert_image(&rgb_of(&r["data"][0]["b64_json"]), &golden("sd15-tiny/txt2img.png"), "OpenAI");

    let (_, v) = s.get("/sdapi/v1/samplers");
    let names: Vec<&str> = v.as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"Euler a") && names.contains(&"DPM++ 2M") && names.len() == 12, "{names:?}");
    let (_, v) = s.get("/sdapi/v1/schedulers");
    assert!(v.as_array().unwrap().iter().any(|x| x["label"] == "Karras"), "{v}");
    let (_, v) = s.get("/sdapi/v1/sd-models");
    let titles: Vec<&str> = v.as_array().unwrap().iter().map(|x| x["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["sd15-tiny", "sd15-tiny-inpaint", "sd21-tiny"]);
    let (_, v) = s.get("/sdapi/v1/loras");
    assert_eq!(v.as_array().unwrap().len(), 4, "{v}");
    for name in ["sd15-tiny-kohya", "sd15-tiny-lycoris"] {
        assert!(v.as_array().unwrap().iter().any(|x| x["name"] == name), "{name}: {v}");
    }
    let (_, v) = s.get("/sdapi/v1/embeddings");
    assert_eq!(v, json!({"loaded": {}, "skipped": {}}));
    let (_, v) = s.get("/sdapi/v1/upscalers");
    let names: Vec<&str> = v.as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["None", "Lanczos", "Nearest"], "built-ins only without --upscaler-dir");
    assert_eq!(s.get("/sdapi/v1/sd-vae"), (200, json!([])));
    assert_eq!(s.get("/sdapi/v1/latent-upscale-modes"), (200, json!([{"name": "Latent"}, {"name": "Latent (nearest)"}])));
    let (_, v) = s.get("/controlnet/model_list");
    assert_eq!(v["model_list"], json!(["sd15-tiny-controlnet"]));
    let (_, v) = s.get("/sdapi/v1/options");
    assert_eq!(v["sd_model_checkpoint"], "sd15-tiny");

    // per request, restored afterwards
    let mut b = txt2img_body();
    b["sampler_name"] = json!("DDIM");
    b["override_settings"] = json!({"sd_model_checkpoint": "sd21-tiny"});
    // no width/height: the size of the model the request switches to (sd21-tiny: 64x64)
    let o = b.as_object_mut().unwrap();
    o.remove("width");
    o.remove("height");
    let (status, r) = s.post("/sdapi/v1/txt2img", &b);
    assert_eq!(status, 200, "{r}");
    assert_image(&rgb_of(&r["images"][0]), &golden("sd21-tiny/txt2img.png"), "override_settings model");
    assert_eq!(s.get("/sdapi/v1/options").1["sd_model_checkpoint"], "sd15-tiny");
    // switched for good
    let (status, v) = s.post("/sdapi/v1/options", &json!({"sd_model_checkpoint": "sd21-tiny [0123456789]"}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(s.get("/sdapi/v1/options").1["sd_model_checkpoint"], "sd21-tiny");
    b.as_object_mut().unwrap().remove("override_settings");
    let (_, r) = s.post("/sdapi/v1/txt2img", &b);
    assert_image(&rgb_of(&r["images"][0]), &golden("sd21-tiny/txt2img.png"), "after POST options");
    let (status, v) = s.post("/sdapi/v1/options", &json!({"sd_model_checkpoint": "nope"}));
    assert_eq!(status, 422);
    assert!(detail(&v).contains("sd_model_checkpoint") && detail(&v).contains("sd21-tiny"), "{v}");
}

/// Bad input: 4xx naming the field (and the fix), never a 5xx; a job that fails in the worker
/// fails alone and the next one is served.
#[test]
fn bad_inputs_get_4xx_naming_the_field() {
    let s = server("bad", &["--body-limit-mb", "1"]);
    let with = |k: &str, v: Value| {
        let mut b = txt2img_body();
        b[k] = v;
        b
    };
    let cases: Vec<(&str, Value, u16, &[&str])> = vec![
        ("/sdapi/v1/txt2img", with("width", json!(100)), 422, &["width", "multiple of 8", "96 or 104"]),
        ("/sdapi/v1/txt2img", with("height", json!(0)), 422, &["height", "out of range"]),
        ("/sdapi/v1/txt2img", with("steps", json!("many")), 422, &["steps", "integer"]),
        ("/sdapi/v1/txt2img", with("cfg_scale", json!([1])), 422, &["cfg_scale", "number"]),
        ("/sdapi/v1/txt2img", with("sampler_name", json!("DPM2 a")), 422, &["sampler_name", "DPM2 a", "Euler a"]),
        ("/sdapi/v1/txt2img", with("scheduler", json!("Beta")), 422, &["scheduler", "Beta", "Karras"]),
        ("/sdapi/v1/txt2img", with("scheduler", json!("Karras")), 422, &["scheduler", "PLMS", "fixed schedule"]),
        // Hires fix is served now (tests/serve_extras.rs); an upscaler it lacks is named.
        ("/sdapi/v1/txt2img", {
            let mut b = with("enable_hr", json!(true));
            b["hr_upscaler"] = json!("4x-UltraSharp");
            b
        }, 422, &["hr_upscaler", "4x-UltraSharp", "--upscaler-dir"]),
        ("/sdapi/v1/txt2img", with("restore_faces", json!(true)), 422, &["restore_faces"]),
        ("/sdapi/v1/txt2img", with("override_settings", json!({"sd_vae": "vae-ft-mse"})), 422, &["override_settings.sd_vae"]),
        ("/sdapi/v1/txt2img", with("alwayson_scripts", json!({"ADetailer": {"args": [true]}})), 422, &["alwayson_scripts.ADetailer"]),
        ("/sdapi/v1/txt2img", with("batch_size", json!(101)), 422, &["batch_size"]),
        ("/sdapi/v1/img2img", txt2img_body(), 422, &["init_images"]),
        ("/sdapi/v1/img2img", with("init_images", json!(["not base64!"])), 422, &["init_images[0]", "base64"]),
        ("/sdapi/v1/img2img", with("init_images", json!(["aGVsbG8="])), 422, &["init_images[0]", "image"]),
        ("/v1/images/generations", json!({"prompt": "x", "size": "1001x512"}), 422, &["size", "multiple of 8"]),
        ("/v1/images/generations", json!({"prompt": "x", "response_format": "url"}), 422, &["response_format", "b64_json"]),
        ("/v1/images/generations", json!({"n": 1}), 422, &["prompt"]),
        ("/sdapi/v1/png-info", json!({"image": "aGVsbG8="}), 422, &["image"]),
    ];
    for (path, body, want, words) in cases {
        let (status, v) = s.post(path, &body);
        let d = detail(&v);
        assert_eq!(status, want, "{path} {body}: {v}");
        for w in words {
            assert!(d.contains(w), "{path}: '{d}' should name '{w}'");
        }
    }
    let (_, v) = s.post("/v1/images/generations", &json!({"prompt": "x", "response_format": "url"}));
    assert_eq!(v["error"]["param"], "response_format", "OpenAI's error shape: {v}");
    let (status, v) = s.post_raw("/sdapi/v1/txt2img", "{\"prompt\": ");
    assert_eq!(status, 400, "{v}");
    assert!(detail(&v).contains("not valid JSON"), "{v}");
    let (status, v) = s.post_raw("/sdapi/v1/txt2img", "[1, 2]");
    assert_eq!(status, 422, "{v}");
    // Far over the socket buffers: a server that answered mid-upload and closed would show the
    // client a broken pipe, not the 413.
    let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(12_000_000));
    let (status, v) = s.post_raw("/sdapi/v1/txt2img", &big);
    assert_eq!(status, 413, "{v}");
    assert!(detail(&v).contains("--body-limit-mb"), "{v}");
    let (status, v) = s.get("/sdapi/v1/nothing-here");
    assert_eq!(status, 404, "{v}");
    // Fails in the worker (the LoRA is looked up there), alone: the next job is served.
    let (status, v) = s.post("/sdapi/v1/txt2img", &with("prompt", json!("a cat <lora:no-such-lora:1>")));
    assert_eq!(status, 422, "{v}");
    assert!(detail(&v).contains("no-such-lora") && detail(&v).contains("sd15-tiny-kohya"), "{v}");
    let (status, r) = s.post("/sdapi/v1/txt2img", &txt2img_body());
    assert_eq!(status, 200, "{r}");
    assert_image(&rgb_of(&r["images"][0]), &golden("sd15-tiny/txt2img.png"), "after a failed job");
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(t.elapsed().as_secs() < 120, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The job API, the SSE stream, progress with previews, interrupt and skip.
#[test]
fn jobs_progress_sse_interrupt_skip() {
    let s = server("jobs", &["--preview-every", "1"]);
    // A long job, submitted without waiting; its SSE stream; progress with a preview.
    let mut b = txt2img_body();
    b["steps"] = json!(400);
    b["n_iter"] = json!(3);
    let (status, j) = s.post("/pigment/v1/jobs", &b);
    assert_eq!(status, 202, "{j}");
    let id = j["id"].as_u64().unwrap();
    let sse = {
        let url = s.url(&format!("/pigment/v1/jobs/{id}/events"));
        std::thread::spawn(move || {
            let r = ureq::get(&url).call().unwrap();
            assert_eq!(r.header("content-type"), Some("text/event-stream"));
            let mut text = String::new();
            std::io::Read::read_to_string(&mut r.into_reader(), &mut text).unwrap();
            text
        })
    };
    wait_for("a step with a preview", || {
        let p = s.get("/sdapi/v1/progress").1;
        p["state"]["sampling_step"].as_u64().unwrap_or(0) >= 2 && p["current_image"].is_string()
    });
    let p = s.get("/sdapi/v1/progress").1;
    assert_eq!(p["state"]["job"], format!("task({id})"));
    // PLMS evaluates the model once more than its steps (diffusers' PNDM warm-up)
    assert_eq!(p["state"]["sampling_steps"], 401);
    assert!(p["progress"].as_f64().unwrap() > 0.0 && p["eta_relative"].as_f64().unwrap() > 0.0, "{p}");
    let preview = rgb_of(&p["current_image"]);
    assert_eq!((preview.width, preview.height), (64, 64));
    // skip: image 0 ends now, image 1 starts; interrupt: image 1 ends, image 2 is not made
    assert_eq!(s.post("/sdapi/v1/skip", &json!({})).0, 200);
    wait_for("the second image", || s.get(&format!("/pigment/v1/jobs/{id}")).1["image"] == 1);
    assert_eq!(s.post("/sdapi/v1/interrupt", &json!({})).0, 200);
    wait_for("the interrupted job", || s.get(&format!("/pigment/v1/jobs/{id}")).1["state"] == "done");
    let (_, j) = s.get(&format!("/pigment/v1/jobs/{id}"));
    assert_eq!(j["interrupted"], true, "{j}");
    assert_eq!(j["images"].as_array().unwrap().len(), 2, "skip keeps a partial image 0, interrupt a partial image 1: {}", j["infotexts"]);
    assert_eq!(j["seeds"], json!([42, 43]));
    let text = sse.join().unwrap();
    assert!(text.contains("event: progress") && text.contains("\"current_image\""), "{}", &text[..text.len().min(500)]);
    assert!(text.trim_end().lines().rev().find(|l| l.starts_with("event:")) == Some("event: done"), "the stream ends with done");
    // A normal job after an interrupt runs in full and gives the golden image.
    let (status, r) = s.post("/sdapi/v1/txt2img", &txt2img_body());
    assert_eq!(status, 200, "{r}");
    assert_image(&rgb_of(&r["images"][0]), &golden("sd15-tiny/txt2img.png"), "after interrupt");
    let (_, l) = s.get("/pigment/v1/jobs");
    assert_eq!(l["queue_length"], 0);
    assert!(l["jobs"].as_array().unwrap().iter().any(|x| x["id"] == id), "{l}");
    assert_eq!(s.get("/pigment/v1/jobs/99999").0, 404);
}

/// `--upscaler-dir`: the Real-ESRGAN files are listed with their scale (other files are not),
/// and `extra-single-image` runs one in the worker: the x4 golden of tests/esrgan.rs within a
/// level (`tools/fixtures_esrgan.py`), `upscaling_resize` 2 its Lanczos resize, the built-ins
/// resize; unknown upscalers and unsupported fields get a 422 naming the field.
#[test]
fn upscalers_listed_and_extra_single_image_runs_them() {
    use pigment::models::esrgan::EsrganConfig;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("upscalers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = EsrganConfig { scale: 4, num_feat: 16, num_grow_ch: 8, num_block: 2 };
    std::fs::write(dir.join("tiny-x4.safetensors"), pigment::weights::synthetic::safetensors_bytes(&cfg.tensors())).unwrap();
    std::fs::write(dir.join("not-an-upscaler.safetensors"), pigment::weights::synthetic::safetensors_bytes(&[("conv_in.weight".into(), vec![4, 4, 3, 3])])).unwrap();
    let s = server("upscale", &["--upscaler-dir", dir.to_str().unwrap()]);
    let (_, v) = s.get("/sdapi/v1/upscalers");
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 4, "{v}");
    assert_eq!(list[3]["name"], "tiny-x4");
    assert_eq!(list[3]["scale"], 4);

    let g = pigment::weights::SafetensorsFile::open(fixtures().join("golden/esrgan/rrdbnet.safetensors")).unwrap();
    let (w, h) = (12, 10);
    let rgb: Vec<u8> = g.get("input_rgb8").unwrap().to_f32().unwrap().iter().map(|&v| v as u8).collect();
    let img = pigment::pipeline::Image { width: w, height: h, rgb };
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pigment::imageio::encode_png(&img, "").unwrap());
    let want = g.get("x4_whole").unwrap().to_f32().unwrap();
    let n = want.len() / 3;
    let want: Vec<u8> = (0..n).flat_map(|i| (0..3).map(move |c| (c, i))).map(|(c, i)| (want[c * n + i].clamp(0.0, 1.0) * 255.0).round() as u8).collect();

    let (status, r) = s.post("/sdapi/v1/extra-single-image", &json!({"image": b64, "upscaler_1": "tiny-x4", "upscaling_resize": 4}));
    assert_eq!(status, 200, "{r}");
    let x4 = rgb_of(&r["image"]);
    assert_eq!((x4.width, x4.height), (4 * w, 4 * h));
    let max = x4.rgb.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(max <= 1, "x4: {max} levels off the golden");
    let (status, r) = s.post("/sdapi/v1/extra-single-image", &json!({"image": b64, "upscaler_1": "tiny-x4"}));
    assert_eq!(status, 200, "{r}");
    assert_eq!(rgb_of(&r["image"]).rgb, pigment::imageio::resize_rgb(&x4, 2 * w, 2 * h).rgb, "default upscaling_resize 2");
    let (status, r) = s.post("/sdapi/v1/extra-single-image", &json!({"image": b64, "upscaler_1": "Lanczos", "upscaling_resize": 3}));
    assert_eq!(status, 200, "{r}");
    assert_eq!(rgb_of(&r["image"]).rgb, pigment::imageio::resize_rgb(&img, 3 * w, 3 * h).rgb);

    for (body, words) in [
        (json!({"image": b64, "upscaler_1": "R-ESRGAN 4x+"}), &["upscaler_1", "R-ESRGAN 4x+", "tiny-x4"][..]),
        (json!({"upscaler_1": "tiny-x4"}), &["image"]),
        (json!({"image": b64, "upscaling_resize": 0}), &["upscaling_resize"]),
        (json!({"image": b64, "gfpgan_visibility": 0.5}), &["gfpgan_visibility"]),
        (json!({"image": b64, "resize_mode": 1}), &["resize_mode"]),
    ] {
        let (status, r) = s.post("/sdapi/v1/extra-single-image", &body);
        assert_eq!(status, 422, "{body}: {r}");
        let d = detail(&r);
        assert!(words.iter().all(|w| d.contains(w)), "{body}: {d}");
    }
}
