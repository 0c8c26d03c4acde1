//! `pigment serve`: an HTTP server speaking AUTOMATIC1111's API (`/sdapi/v1/...`), OpenAI's
//! `POST /v1/images/generations` and Pigment's job API (`/pigment/v1/jobs`), on axum/tokio.
//!
//! One GPU worker thread ([`jobs::worker`]) owns the `Context` and the model and takes jobs from
//! a FIFO queue ([`jobs::queue`]); HTTP handlers parse and check requests, decode images on the
//! CPU, queue the job and wait for its answer, and never touch the GPU.

pub mod auth;
pub mod catalog;
pub mod errors;
pub mod hires;
pub mod jobs;
pub mod oversize;
pub mod request;
pub mod routes;

use jobs::queue::{JobInfo, Queue};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};

/// How the server runs (the `pigment serve` flags).
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    /// Bearer token every route requires; needed for a non-loopback `listen`.
    pub api_key: Option<String>,
    pub models_dir: Option<PathBuf>,
    /// The model loaded first (default: the first under `models_dir`).
    pub model: Option<PathBuf>,
    pub lora_dir: Option<PathBuf>,
    /// Hypernetworks for `<hypernet:NAME:W>` prompt tags (`/sdapi/v1/hypernetworks`).
    pub hypernetwork_dir: Option<PathBuf>,
    pub embeddings_dir: Option<PathBuf>,
    /// ControlNets for `alwayson_scripts.controlnet` (by file or folder name).
    pub controlnet_dir: Option<PathBuf>,
    /// Real-ESRGAN models for `/sdapi/v1/upscalers` and `/sdapi/v1/extra-single-image`.
    pub upscaler_dir: Option<PathBuf>,
    /// Largest request body in bytes.
    pub body_limit: usize,
    /// A preview (VAE decode) every N model evaluations for `current_image`; 0 = none.
    pub preview_every: usize,
    /// TAESD weights: previews are TAESD decodes (~100x cheaper than the VAE's) instead.
    pub taesd: Option<PathBuf>,
    /// Origins whose pages may call the API (CORS); `*` = any. Empty: none (same origin only).
    pub cors_origins: Vec<String>,
    pub want_f16: bool,
}

/// The model the worker has loaded, for `/sdapi/v1/options` and `/sdapi/v1/embeddings`.
#[derive(Clone, Debug)]
pub struct ModelState {
    pub entry: catalog::ModelEntry,
    pub embeddings_loaded: Vec<(String, usize)>,
    pub embeddings_skipped: Vec<(String, String)>,
    pub text_width: usize,
}

/// What the handlers and the worker share.
pub struct Shared {
    pub opts: Options,
    pub queue: Queue,
    /// The job the worker is running.
    pub running: Mutex<Option<Arc<JobInfo>>>,
    /// `/sdapi/v1/interrupt` and `/sdapi/v1/skip` for the running job (reset when a job starts).
    pub interrupt: AtomicBool,
    pub skip: AtomicBool,
    pub model: RwLock<ModelState>,
    /// `CLIP_stop_at_last_layers` set through `/sdapi/v1/options` (the default for requests).
    pub clip_skip: AtomicUsize,
    pub started: std::time::SystemTime,
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Start the worker, bind, and serve until ctrl-c or SIGTERM; then finish the running job,
/// answer the queued ones 503, and return.
pub fn run(opts: Options, adapter: crate::gpu::AdapterChoice) -> anyhow::Result<()> {
    if !is_loopback(&opts.listen) && opts.api_key.as_deref().is_none_or(str::is_empty) {
        anyhow::bail!(
            "--listen {} is reachable from the network, where anyone could spend this GPU: give --api-key KEY too (clients then send `Authorization: Bearer KEY`), or listen on 127.0.0.1",
            opts.listen
        );
    }
    routes::cors_layer(&opts.cors_origins)?;
    if opts.body_limit < 1024 {
        anyhow::bail!("--body-limit-mb: at least 1 (MiB); requests carry base64 images");
    }
    for (flag, dir) in [("--models-dir", &opts.models_dir), ("--lora-dir", &opts.lora_dir), ("--hypernetwork-dir", &opts.hypernetwork_dir), ("--embeddings-dir", &opts.embeddings_dir), ("--controlnet-dir", &opts.controlnet_dir), ("--upscaler-dir", &opts.upscaler_dir)] {
        if let Some(d) = dir {
            if !d.is_dir() {
                anyhow::bail!("{flag} {}: not a folder", d.display());
            }
        }
    }
    if let Some(t) = opts.taesd.as_deref().filter(|t| !t.exists()) {
        anyhow::bail!("--taesd {}: no such file or folder (taesd_decoder.safetensors, or a diffusers AutoencoderTiny folder such as madebyollin/taesd)", t.display());
    }
    let list = catalog::models(opts.models_dir.as_deref(), opts.model.as_deref());
    let first = match &opts.model {
        Some(m) => catalog::ModelEntry::for_path(m),
        None => list.first().cloned().ok_or_else(|| match &opts.models_dir {
            Some(d) => anyhow::anyhow!("--models-dir {} holds no model (diffusers folders or .safetensors checkpoints); add one or give --model", d.display()),
            None => anyhow::anyhow!("no model: give --model M (a diffusers folder, .safetensors or synthetic:sd15) or --models-dir DIR"),
        })?,
    };
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        queue: Queue::default(),
        running: Mutex::new(None),
        interrupt: AtomicBool::new(false),
        skip: AtomicBool::new(false),
        model: RwLock::new(ModelState { entry: first.clone(), embeddings_loaded: Vec::new(), embeddings_skipped: Vec::new(), text_width: 0 }),
        clip_skip: AtomicUsize::new(1),
        started: std::time::SystemTime::now(),
    });
    let worker = jobs::worker::spawn(shared.clone(), adapter, opts.want_f16, first)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(opts.listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", opts.listen))?;
        let addr = listener.local_addr()?;
        // Tests and scripts read this line for the port (`--listen 127.0.0.1:0`).
        println!("pigment serve: listening on http://{addr}");
        let app = routes::router(shared.clone());
        let stopping = shared.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                eprintln!("shutting down: finishing the running job; queued jobs get 503");
                stopping.queue.close();
            })
            .await?;
        anyhow::Ok(())
    })?;
    shared.queue.close();
    worker.join().map_err(|_| anyhow::anyhow!("the GPU worker panicked"))?;
    eprintln!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
