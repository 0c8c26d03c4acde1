//! `pigment generate` without `--model` and with `--model org/name`: files come from a hub
//! endpoint (here a local mock of the Hugging Face API, through `HF_ENDPOINT`) into the hub cache
//! (`HF_HOME`), the fp16 variant where asked and present, and a second run makes no request.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The fixture folder's files, served under the names a hub repository lists.
struct Repo {
    id: &'static str,
    files: Vec<(String, PathBuf)>,
}

fn sd15_repo(id: &'static str, fp16: bool) -> Repo {
    let root = fixtures().join("sd15-tiny");
    let mut files = Vec::new();
    for entry in walk(&root) {
        let rel = entry.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
        if fp16 && rel.ends_with(".safetensors") {
            files.push((rel.replace(".safetensors", ".fp16.safetensors"), entry.clone()));
        }
        files.push((rel, entry));
    }
    // What a real SD repository also holds and Pigment must not fetch.
    files.push(("safety_checker/model.safetensors".into(), root.join("unet/config.json")));
    files.push(("unet/diffusion_pytorch_model.bin".into(), root.join("unet/config.json")));
    Repo { id, files }
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A minimal Hugging Face endpoint: `/api/models/{id}/revision/main` and
/// `/{id}/resolve/main/{file}` with the headers hf-hub reads. Records every request path.
struct MockHub {
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl MockHub {
    fn start(repos: Vec<Repo>) -> MockHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let repos = Arc::new(repos);
        let l = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (repos, log) = (repos.clone(), l.clone());
                std::thread::spawn(move || serve(stream, &repos, &log));
            }
        });
        MockHub { url, log }
    }
    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn serve(mut stream: std::net::TcpStream, repos: &[Repo], log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range_start = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range_start = v.trim().split('-').next().and_then(|s| s.parse::<usize>().ok()).map(|s| (s, v.trim().ends_with("-0")));
        }
    }
    log.lock().unwrap().push(path.clone());
    let respond = |stream: &mut std::net::TcpStream, status: &str, headers: &[(String, String)], body: &[u8]| {
        let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
        for (k, v) in headers {
            head += &format!("{k}: {v}\r\n");
        }
        head += "\r\n";
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
    };
    for repo in repos {
        if path == format!("/api/models/{}/revision/main", repo.id) {
            let siblings: Vec<_> = repo.files.iter().map(|(n, _)| serde_json::json!({ "rfilename": n })).collect();
            let body = serde_json::json!({ "siblings": siblings, "sha": "0123456789abcdef0123456789abcdef01234567" }).to_string();
            return respond(&mut stream, "200 OK", &[("Content-Type".into(), "application/json".into())], body.as_bytes());
        }
        let prefix = format!("/{}/resolve/main/", repo.id);
        if let Some(file) = path.strip_prefix(&prefix) {
            let Some((name, local)) = repo.files.iter().find(|(n, _)| n == file) else { break };
            let mut bytes = Vec::new();
            std::fs::File::open(local).unwrap().read_to_end(&mut bytes).unwrap();
            let (start, first_only) = range_start.unwrap_or((0, false));
            let end = if first_only { 1.min(bytes.len()) } else { bytes.len() };
            let headers = [
                // the etag names the blob in the cache: one per served name
                ("ETag".to_string(), format!("\"{:016x}\"", fnv(name.as_bytes()))),
                ("X-Repo-Commit".into(), "0123456789abcdef0123456789abcdef01234567".into()),
                ("Content-Range".into(), format!("bytes {start}-{}/{}", end.max(1) - 1, bytes.len())),
            ];
            return respond(&mut stream, "206 Partial Content", &headers, &bytes[start.min(end)..end]);
        }
    }
    respond(&mut stream, "404 Not Found", &[], b"{\"error\":\"not found\"}");
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &c| (h ^ c as u64).wrapping_mul(0x100000001b3))
}

fn pigment(hub: &str, home: &std::path::Path, args: &[&str], out: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pigment"))
        .env("HF_ENDPOINT", hub)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_OFFLINE")
        .arg("generate")
        .args(args)
        .args(["a photograph of an astronaut riding a horse", "--negative-prompt", "blurry, low quality"])
        .args(["--seed", "42", "--width", "64", "--height", "64", "--steps", "4", "--cfg", "7.5", "--sampler", "pndm"])
        .arg("--output")
        .arg(out)
        .output()
        .unwrap()
}

fn check_image(out: &std::path::Path, what: &str) {
    let (_, _, got) = read_png(out);
    let (_, _, want) = read_png(&fixtures().join("golden/sd15-tiny/txt2img.png"));
    let (mean, max) = image_diff(&got, &want);
    assert!(mean <= 1.0 && max <= 8, "{what}: mean {mean:.3} max {max}");
}

#[test]
fn default_model_and_hub_ids_download_once_into_the_cache() {
    let hub = MockHub::start(vec![
        sd15_repo("stable-diffusion-v1-5/stable-diffusion-v1-5", true),
        sd15_repo("someone/plain-only", false),
        Repo { id: "someone/not-a-model", files: vec![("README.md".into(), fixtures().join("sd15-tiny/model_index.json"))] },
    ]);
    let tmp = std::env::temp_dir().join(format!("pigment-hub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let (home, out) = (tmp.join("hf"), tmp.join("out.png"));
    std::fs::create_dir_all(&home).unwrap();

    // 1. No --model: the default model, its fp16 weight files only, nothing else of the repo.
    let o = pigment(&hub.url, &home, &[], &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("stable-diffusion-v1-5/stable-diffusion-v1-5"), "names the default model: {stderr}");
    check_image(&out, "default model");
    let first = hub.requests();
    let fetched: Vec<&String> = first.iter().filter(|p| p.contains("/resolve/")).collect();
    for want in ["unet/diffusion_pytorch_model.fp16.safetensors", "text_encoder/model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors", "tokenizer/vocab.json"] {
        assert!(fetched.iter().any(|p| p.ends_with(want)), "{want} fetched: {fetched:?}");
    }
    assert!(!fetched.iter().any(|p| p.ends_with("/model.safetensors") || p.ends_with("/diffusion_pytorch_model.safetensors") || p.contains("safety_checker") || p.ends_with(".bin")), "only what Pigment reads: {fetched:?}");

    // 2. Again: everything comes from the cache, no request at all.
    let o = pigment(&hub.url, &home, &[], &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(hub.requests().len(), first.len(), "second run made requests: {:?}", &hub.requests()[first.len()..]);
    check_image(&out, "default model from the cache");

    // 3. A hub id without the asked variant: the plain files, with a notice.
    let o = pigment(&hub.url, &home, &["--model", "someone/plain-only", "--variant", "fp16"], &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("no fp16 variant"), "{stderr}");
    check_image(&out, "plain-only repository");

    // 4. Not a Stable Diffusion repository: the error names what is missing.
    let o = pigment(&hub.url, &home, &["--model", "someone/not-a-model"], &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("someone/not-a-model has no") && stderr.contains("README.md"), "{stderr}");

    // 5. Offline with an empty cache: what to download, and where.
    let o = pigment("http://127.0.0.1:9", &tmp.join("empty"), &[], &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    for want in ["cannot reach the Hugging Face hub", "unet/diffusion_pytorch_model.fp16.safetensors", "--model FOLDER", "huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5"] {
        assert!(stderr.contains(want), "offline error names {want}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The files fetched for a hub id follow its `model_index.json`: SD 1.5's usual set (no safety
/// checker), SDXL's second encoder and tokenizer, a refiner's bigG alone; a model without a
/// UNet is not a pipeline Pigment fetches this way.
#[test]
fn fetched_files_follow_model_index() {
    let index = |p: &std::path::Path| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let assets = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/synthetic");
    let (files, weights) = pigment::hub::pipeline_files(&index(&fixtures().join("sd15-tiny/model_index.json"))).unwrap();
    assert_eq!(weights, ["text_encoder/model", "unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model"]);
    assert!(files.contains(&"tokenizer/merges.txt".to_string()) && files.contains(&"scheduler/scheduler_config.json".to_string()), "{files:?}");
    assert!(!files.iter().any(|f| f.contains("safety_checker") || f.contains("feature_extractor")), "{files:?}");
    let (files, weights) = pigment::hub::pipeline_files(&index(&assets.join("sdxl-tiny/model_index.json"))).unwrap();
    assert_eq!(weights, ["text_encoder/model", "text_encoder_2/model", "unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model"]);
    assert!(files.contains(&"tokenizer_2/vocab.json".to_string()) && files.contains(&"text_encoder_2/config.json".to_string()), "{files:?}");
    let (files, weights) = pigment::hub::pipeline_files(&index(&assets.join("sdxl-refiner-tiny/model_index.json"))).unwrap();
    assert_eq!(weights, ["text_encoder_2/model", "unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model"]);
    assert!(!files.iter().any(|f| f.starts_with("tokenizer/") || f.starts_with("text_encoder/")), "{files:?}");
    assert!(pigment::hub::pipeline_files(&serde_json::json!({"transformer": ["diffusers", "DiTTransformer2DModel"]})).is_none());
}

/// An SDXL hub id: `text_encoder_2` and `tokenizer_2` are fetched as its `model_index.json`
/// lists them, and the model generates (the mock serves the tiny SDXL folder).
#[test]
fn sdxl_hub_id_fetches_the_second_encoder() {
    let root = common::sdxl::sdxl_tiny();
    let files = walk(&root).into_iter().map(|p| (p.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/"), p)).collect();
    let hub = MockHub::start(vec![Repo { id: "someone/sdxl-tiny", files }]);
    let tmp = std::env::temp_dir().join(format!("pigment-hub-sdxl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("hf")).unwrap();
    let o = pigment(&hub.url, &tmp.join("hf"), &["--model", "someone/sdxl-tiny"], &tmp.join("out.png"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fetched = hub.requests();
    for want in ["text_encoder_2/model.safetensors", "tokenizer_2/vocab.json", "tokenizer_2/tokenizer_config.json", "unet/diffusion_pytorch_model.safetensors"] {
        assert!(fetched.iter().any(|p| p.ends_with(want)), "{want} fetched: {fetched:?}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
