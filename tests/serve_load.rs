//! `pigment serve` under load, with an API key, and shutting down on SIGTERM (issue #13).
//!
//! Load: 50 txt2img requests from 10 concurrent clients; every one answered 200, none lost
//! (50 distinct job ids), every image equal to the library's image for its seed (generated in
//! this process, same dtype: the server's f16 where the adapter has it), and the queue length
//! seen above 1 while they wait. Prints the latency percentiles.

mod common;
mod serve_common;
use common::{ctx, fixtures};
use pigment::pipeline::{GenerateOptions, StableDiffusion};
use pigment::schedulers::{SamplerKind, SigmaSchedule};
use serde_json::{json, Value};
use serve_common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const CLIENTS: usize = 10;
const PER_CLIENT: usize = 5;
const SEEDS: u64 = 5;

fn body(seed: u64) -> Value {
    json!({"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": seed, "width": 32, "height": 32, "steps": 2,
           "cfg_scale": 7.5, "sampler_name": "Euler", "scheduler": "Uniform"})
}

#[test]
fn load_50_requests_10_clients_none_lost() {
    let model = fixtures().join("sd15-tiny");
    let s = Arc::new(Server::start("load", &["--model", model.to_str().unwrap(), "--preview-every", "0"]));
    // The library's images for the seeds the clients use.
    let sd = StableDiffusion::load(ctx(), &model, true).unwrap();
    let want: Vec<Vec<u8>> = (0..SEEDS)
        .map(|seed| {
            let o = GenerateOptions {
                prompt: PROMPT.into(),
                negative_prompt: NEGATIVE.into(),
                seed,
                width: 32,
                height: 32,
                steps: 2,
                guidance: 7.5,
                sampler: SamplerKind::Euler,
                schedule: SigmaSchedule::Normal,
                ..Default::default()
            };
            sd.generate(ctx(), &o, |_, _| {}).unwrap().rgb
        })
        .collect();
    let (distinct_a, distinct_b) = (common::image_diff(&want[0], &want[1]).0, common::image_diff(&want[1], &want[2]).0);
    assert!(distinct_a > 5.0 && distinct_b > 5.0, "the seeds' images must differ for the check to mean anything");

    // One request first, so the figures leave out the server's first-use shader compiles.
    assert_eq!(s.post("/sdapi/v1/txt2img", &body(0)).0, 200);
    let done = Arc::new(AtomicBool::new(false));
    let max_queue = Arc::new(AtomicU64::new(0));
    let poller = {
        let (s, done, max_queue) = (s.clone(), done.clone(), max_queue.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let (_, v) = s.get("/pigment/v1/jobs");
                max_queue.fetch_max(v["queue_length"].as_u64().unwrap_or(0), Ordering::SeqCst);
                let (_, p) = s.get("/sdapi/v1/progress");
                max_queue.fetch_max(p["queue_length"].as_u64().unwrap_or(0), Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
        })
    };
    let start = std::time::Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let s = s.clone();
            std::thread::spawn(move || {
                (0..PER_CLIENT)
                    .map(|k| {
                        let seed = ((c * PER_CLIENT + k) as u64) % SEEDS;
                        let t = std::time::Instant::now();
                        let resp = ureq::post(&s.url("/sdapi/v1/txt2img")).send_string(&body(seed).to_string()).expect("answered");
                        let job: u64 = resp.header("x-pigment-job").and_then(|h| h.parse().ok()).expect("a job id header");
                        let v: Value = serde_json::from_reader(resp.into_reader()).unwrap();
                        (seed, job, t.elapsed().as_secs_f64(), v)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<(u64, u64, f64, Value)> = clients.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let wall = start.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    poller.join().unwrap();
    assert_eq!(results.len(), CLIENTS * PER_CLIENT);
    let mut ids: Vec<u64> = results.iter().map(|r| r.1).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), CLIENTS * PER_CLIENT, "every request its own job: none lost or merged");
    for (seed, job, _, v) in &results {
        let info: Value = serde_json::from_str(v["info"].as_str().unwrap()).unwrap();
        assert_eq!(info["all_seeds"], json!([seed]), "job {job}");
        assert_image(&rgb_of(&v["images"][0]), &want[*seed as usize], &format!("job {job} seed {seed}"));
    }
    let mut lat: Vec<f64> = results.iter().map(|r| r.2).collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    let q = max_queue.load(Ordering::SeqCst);
    eprintln!(
        "serve load: {} requests, {CLIENTS} clients, 32x32 2 steps Euler sd15-tiny: wall {wall:.2} s, {:.1} req/s, latency p50 {:.3} s p95 {:.3} s max {:.3} s, max queue length seen {q}, 0 lost",
        lat.len(),
        lat.len() as f64 / wall,
        pct(0.5),
        pct(0.95),
        lat[lat.len() - 1]
    );
    assert!(q > 1, "queue length seen while the clients wait: {q}");
}

/// `--api-key`: every route needs the bearer token (or Basic with it as the password); a
/// non-loopback `--listen` without a key does not start. SIGTERM: the running job finishes and
/// is answered, the queued one gets 503, the process exits 0.
#[test]
fn api_key_and_sigterm() {
    let model = fixtures().join("sd15-tiny");
    let model = model.to_str().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pigment")).args(["serve", "--model", model, "--listen", "0.0.0.0:0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-key"), "{}", String::from_utf8_lossy(&out.stderr));

    let mut s = Server::start("auth", &["--model", model, "--api-key", "s3cret"]);
    let url = s.url("/sdapi/v1/options");
    let (status, v) = request(ureq::get(&url), None);
    assert_eq!(status, 401, "{v}");
    assert!(detail(&v).contains("Bearer"), "{v}");
    assert_eq!(request(ureq::get(&url).set("Authorization", "Bearer wrong"), None).0, 401);
    assert_eq!(request(ureq::get(&s.url("/nothing")), None).0, 401, "even unknown routes");
    assert_eq!(request(ureq::get(&url).set("Authorization", "Bearer s3cret"), None).0, 200);
    assert_eq!(request(ureq::get(&url).set("Authorization", "Basic dXNlcjpzM2NyZXQ="), None).0, 200, "user:s3cret");

    let auth = |r: ureq::Request| r.set("Authorization", "Bearer s3cret");
    let long = json!({"prompt": PROMPT, "seed": 1, "width": 32, "height": 32, "steps": 40, "sampler_name": "Euler"});
    let post = |body: Value| {
        let r = auth(ureq::post(&s.url("/sdapi/v1/txt2img")));
        std::thread::spawn(move || request(r, Some(body.to_string())))
    };
    let running = post(long.clone());
    let progress = || request(auth(ureq::get(&s.url("/sdapi/v1/progress"))), None).1;
    let t = std::time::Instant::now();
    while progress()["state"]["sampling_step"].as_u64().unwrap_or(0) < 1 {
        assert!(t.elapsed().as_secs() < 60, "the first job never started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let queued = post(long);
    while progress()["queue_length"].as_u64().unwrap_or(0) < 1 {
        assert!(t.elapsed().as_secs() < 60, "the second job never queued");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let kill = std::process::Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let (status, v) = running.join().unwrap();
    assert_eq!(status, 200, "the running job finishes: {v}");
    assert_eq!(v["images"].as_array().map(Vec::len), Some(1));
    let (status, v) = queued.join().unwrap();
    assert_eq!(status, 503, "{v}");
    assert!(detail(&v).contains("shut down"), "{v}");
    let code = s.child.wait().unwrap();
    assert!(code.success(), "exit status {code}: {}", s.log());
}
