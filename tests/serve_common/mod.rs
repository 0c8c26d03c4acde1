//! `pigment serve` test helpers: a server process on a loopback port (killed when dropped) and
//! a blocking HTTP client (ureq) that returns every status, 4xx/5xx included.
#![allow(dead_code)]

use base64::Engine;
use serde_json::Value;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};

pub const PROMPT: &str = "a photograph of an astronaut riding a horse";
pub const NEGATIVE: &str = "blurry, low quality";

pub struct Server {
    pub child: Child,
    pub base: String,
    pub log: std::path::PathBuf,
}

impl Server {
    /// `pigment serve --listen 127.0.0.1:0 ARGS`, once it prints its address.
    pub fn start(name: &str, args: &[&str]) -> Server {
        let log = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("serve-{name}-{}.log", std::process::id()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_pigment"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                let _ = child.wait();
                panic!("pigment serve {args:?} exited before listening:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            if let Some(addr) = line.trim().strip_prefix("pigment serve: listening on ") {
                let base = addr.to_string();
                // keep draining stdout so the server never blocks on a full pipe
                std::thread::spawn(move || for _ in out.lines() {});
                return Server { child, base, log };
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        request(ureq::get(&self.url(path)), None)
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        request(ureq::post(&self.url(path)), Some(body.to_string()))
    }

    pub fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        request(ureq::post(&self.url(path)), Some(body.to_string()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send, returning (status, JSON body) for every status.
pub fn request(req: ureq::Request, body: Option<String>) -> (u16, Value) {
    let req = req.timeout(std::time::Duration::from_secs(300));
    let res = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(&b),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("HTTP transport error: {e}"),
    };
    let status = resp.status();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut resp.into_reader(), &mut text).unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

pub fn b64_png(b64: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
}

/// A base64 PNG from a response as RGB.
pub fn rgb_of(b64: &Value) -> pigment::pipeline::Image {
    pigment::imageio::decode_image(&b64_png(b64.as_str().expect("a base64 string"))).unwrap()
}

pub fn file_b64(path: &std::path::Path) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
}

/// The issue #4 bound: within a level on average, 8 at most (a wrong seed or sampler is tens).
pub fn assert_image(got: &pigment::pipeline::Image, want: &[u8], what: &str) {
    assert_eq!(got.rgb.len(), want.len(), "{what}: size");
    let (mut sum, mut max) = (0u64, 0u8);
    for (a, b) in got.rgb.iter().zip(want) {
        let d = a.abs_diff(*b);
        sum += d as u64;
        max = max.max(d);
    }
    let mean = sum as f64 / want.len() as f64;
    assert!(mean <= 1.0 && max <= 8, "{what}: mean {mean:.3} max {max} levels off");
}

/// The error message of a 4xx/5xx answer (A1111 `detail` or OpenAI `error.message`).
pub fn detail(v: &Value) -> String {
    v["detail"].as_str().or_else(|| v["error"]["message"].as_str()).unwrap_or_default().to_string()
}
