//! The GPU worker: one thread owns the `Context` and the model and runs jobs from the queue in
//! order. A job that fails (or panics) answers its own request with an error; the worker goes
//! on with the next.

use super::queue::{Job, JobInfo, State};
use super::{GenImage, GenJob, Generated, Output, UpscaleJob, Upscaler, Work};
use crate::gpu::{AdapterChoice, Context};
use crate::models::esrgan::RealEsrgan;
use crate::pipeline::{GenerateOptions, Image, StableDiffusion};
use crate::serve::catalog::{self, ModelEntry};
use crate::serve::errors::{ApiError, ApiResult};
use crate::serve::Shared;
use base64::Engine;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

struct Worker {
    ctx: Context,
    /// How `ctx` was opened: a lost device is re-created the same way.
    choice: AdapterChoice,
    /// Jobs started (the fault-injection hook counts them).
    jobs_run: usize,
    shared: Arc<Shared>,
    want_f16: bool,
    /// `None` only after a failed switch whose fallback failed too.
    sd: Option<StableDiffusion>,
    entry: ModelEntry,
    controlnet: Option<std::path::PathBuf>,
    /// The upscaler last used, kept for the next request (~33 MiB f16 for x4plus).
    upscaler: Option<(std::path::PathBuf, RealEsrgan)>,
    /// The SDXL refiner last asked for (`refiner_checkpoint`), kept for the next request.
    refiner: Option<(std::path::PathBuf, StableDiffusion)>,
}

/// Open the adapter and load `first` on a new thread, returning once it is ready (or with the
/// error that stopped it); the thread then serves the queue until it is closed.
pub fn spawn(shared: Arc<Shared>, choice: AdapterChoice, want_f16: bool, first: ModelEntry) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new().name("pigment-gpu".into()).spawn(move || {
        let setup = (|| -> anyhow::Result<Worker> {
            let ctx = Context::new_blocking(&choice)?;
            eprintln!("adapter: {}", ctx.describe());
            let mut w = Worker { ctx, choice, jobs_run: 0, shared, want_f16, sd: None, entry: first.clone(), controlnet: None, upscaler: None, refiner: None };
            w.load(&first)?;
            Ok(w)
        })();
        match setup {
            Ok(mut w) => {
                let _ = tx.send(Ok(()));
                while let Some(job) = w.shared.queue.pop() {
                    w.run(job);
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    })?;
    rx.recv().map_err(|_| anyhow::anyhow!("the GPU worker stopped while starting"))??;
    Ok(handle)
}

/// Test hook: `PIGMENT_INJECT_DEVICE_LOSS=N` destroys the device just before the N-th job.
fn inject_device_loss_at() -> Option<usize> {
    std::env::var("PIGMENT_INJECT_DEVICE_LOSS").ok()?.parse().ok()
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "unknown panic".into())
}

impl Worker {
    fn run(&mut self, job: Job) {
        let Job { info, work, reply } = job;
        let shared = self.shared.clone();
        *shared.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.clone());
        shared.interrupt.store(false, Ordering::SeqCst);
        shared.skip.store(false, Ordering::SeqCst);
        info.update(|s| {
            s.state = State::Running;
            s.started = Some(Instant::now());
        });
        if self.ctx.is_lost() {
            self.recover();
        }
        self.jobs_run += 1;
        if inject_device_loss_at() == Some(self.jobs_run) {
            eprintln!("PIGMENT_INJECT_DEVICE_LOSS: destroying the device before job {}", self.jobs_run);
            self.ctx.inject_fault(crate::gpu::Fault::DeviceLost);
        }
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| self.execute(&info, work)))
            .unwrap_or_else(|p| Err(ApiError::internal(format!("the job failed inside Pigment (a bug: {}); the server goes on", panic_message(&*p)))))
            .map(Arc::new);
        match &result {
            Ok(out) => info.update(|s| {
                s.state = State::Done;
                s.result = Some(out.clone());
                if let Output::Images(g) = &**out {
                    s.interrupted = g.interrupted;
                }
            }),
            Err(e) => {
                eprintln!("job {} failed: {}", info.id, e.message);
                info.update(|s| {
                    s.state = State::Failed;
                    s.error = Some(e.message.clone());
                })
            }
        }
        // A lost device fails its job; the next one gets a new device and the model again.
        if self.ctx.is_lost() {
            self.recover();
        }
        *shared.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let _ = reply.send(result);
    }

    /// Re-create the device after a loss and reload the current model onto it.
    fn recover(&mut self) {
        eprintln!("the GPU device was lost: re-creating it");
        self.sd = None;
        self.controlnet = None;
        match Context::new_blocking(&self.choice) {
            Ok(ctx) => {
                eprintln!("adapter: {}", ctx.describe());
                self.ctx = ctx;
                let entry = self.entry.clone();
                if let Err(e) = self.load(&entry) {
                    eprintln!("reloading model {} on the new device failed: {e}", entry.title);
                }
            }
            Err(e) => eprintln!("re-creating the GPU device failed: {e} (the next job will try again)"),
        }
    }

    fn execute(&mut self, info: &JobInfo, work: Work) -> ApiResult<Output> {
        match work {
            Work::SwitchModel(title) => {
                self.switch(&title, "sd_model_checkpoint")?;
                Ok(Output::Switched)
            }
            Work::Upscale(u) => self.upscale(&u).map(Output::Upscaled),
            Work::Generate(g) => {
                let previous = self.entry.clone();
                let switched = match &g.model {
                    Some(t) => self.switch(t, "override_settings.sd_model_checkpoint")?,
                    None => false,
                };
                let result = self.generate(info, &g);
                if switched && g.restore_model {
                    if let Err(e) = self.load(&previous) {
                        eprintln!("could not restore model {}: {e}", previous.title);
                    }
                }
                result.map(Output::Images)
            }
        }
    }

    /// Load the model a client names; `Ok(false)` when it is the one loaded.
    fn switch(&mut self, title: &str, field: &str) -> ApiResult<bool> {
        let entry = catalog::lookup(&self.shared.opts, title).map_err(|e| ApiError::field(field, e))?;
        if entry.path == self.entry.path && self.sd.is_some() {
            return Ok(false);
        }
        let previous = self.entry.clone();
        if let Err(e) = self.load(&entry) {
            let msg = format!("loading model '{}' failed: {e}", entry.title);
            if let Err(e2) = self.load(&previous) {
                eprintln!("reloading {} failed too: {e2}", previous.title);
            }
            return Err(ApiError::field(field, msg));
        }
        Ok(true)
    }

    /// Replace the model (the old one is dropped first: two may not fit) and load the
    /// `--embeddings-dir` textual inversions into it.
    fn load(&mut self, entry: &ModelEntry) -> anyhow::Result<()> {
        self.sd = None;
        self.controlnet = None;
        self.ctx.trim_pool();
        eprintln!("loading model {} ({})", entry.title, entry.path.display());
        let t = Instant::now();
        let mut sd = StableDiffusion::load(&self.ctx, &entry.path, self.want_f16)?;
        let (mut loaded, mut skipped) = (Vec::new(), Vec::new());
        for (name, path) in catalog::files(self.shared.opts.embeddings_dir.as_deref()) {
            match sd.load_textual_inversion(&path, &name) {
                Ok(n) => loaded.push((name, n)),
                Err(e) => skipped.push((name, e.to_string())),
            }
        }
        if let Some(t) = &self.shared.opts.taesd {
            let m = crate::models::taesd::Taesd::open(&self.ctx, t, sd.vae.dtype).map_err(|e| anyhow::anyhow!("--taesd {}: {e}", t.display()))?;
            if !m.has_decoder() {
                anyhow::bail!("--taesd {}: no decoder (give taesd_decoder.safetensors or a diffusers AutoencoderTiny folder)", t.display());
            }
            sd.set_taesd(Some(m));
        }
        eprintln!("model {} ready in {:.1} s", entry.title, t.elapsed().as_secs_f64());
        {
            let mut m = self.shared.model.write().unwrap_or_else(|e| e.into_inner());
            m.entry = entry.clone();
            m.embeddings_loaded = loaded;
            m.embeddings_skipped = skipped;
            m.text_width = sd.clip.config.hidden;
        }
        self.sd = Some(sd);
        self.entry = entry.clone();
        Ok(())
    }

    /// `extra-single-image`: the model's passes (tiled at the default tile, shrunk to fit)
    /// then a Lanczos resize to the exact size, as `pigment upscale`.
    fn upscale(&mut self, u: &UpscaleJob) -> ApiResult<Image> {
        let field = "upscaler_1";
        let img = &u.image;
        let size = |d: usize| ((d as f32 * u.by).round() as usize).max(1);
        match &u.upscaler {
            Upscaler::None => Ok(img.clone()),
            Upscaler::Lanczos => Ok(crate::imageio::resize_rgb(img, size(img.width), size(img.height))),
            Upscaler::Nearest => Ok(crate::imageio::resize_nearest_rgb(img, size(img.width), size(img.height))),
            Upscaler::Model(path) => {
                if self.upscaler.as_ref().map(|(p, _)| p) != Some(path) {
                    self.upscaler = None;
                    let dtype = if self.want_f16 && self.ctx.f16 { crate::DType::F16 } else { crate::DType::F32 };
                    let m = RealEsrgan::open(&self.ctx, path, dtype).map_err(|e| ApiError::field(field, e))?;
                    self.upscaler = Some((path.clone(), m));
                }
                let (_, model) = self.upscaler.as_ref().expect("loaded above");
                let tile = crate::pipeline::upscale::DEFAULT_TILE;
                crate::pipeline::upscale::upscale_by(&self.ctx, model, img, u.by, tile, crate::imageio::resize_rgb).map_err(|e| ApiError::from_library(&e))
            }
        }
    }

    fn generate(&mut self, info: &JobInfo, g: &GenJob) -> ApiResult<Generated> {
        let shared = self.shared.clone();
        let ctx = &self.ctx;
        let sd = self.sd.as_mut().ok_or_else(|| ApiError::internal("no model is loaded (the last model switch failed): POST /sdapi/v1/options with sd_model_checkpoint"))?;
        let Some(first) = g.images.first() else {
            return Ok(Generated { images: Vec::new(), model: sd.name.clone(), interrupted: false, warnings: Vec::new() });
        };
        // <lora:NAME:W> tags: every image of a job has the same prompt.
        let uses = crate::lora::uses_for_prompt(&first.prompt, shared.opts.lora_dir.as_deref()).map_err(|e| ApiError::field("prompt", e))?;
        let mut warnings = sd.set_loras(ctx, &uses).map_err(|e| ApiError::from_library(&e))?;
        sd.take_warnings();
        // <hypernet:NAME:W> tags (none: the last job's are removed).
        let nets = crate::pipeline::hypernetwork::uses_for_prompt(&first.prompt, shared.opts.hypernetwork_dir.as_deref()).map_err(|e| ApiError::field("prompt", e))?;
        sd.set_hypernetworks(nets).map_err(|e| ApiError::field("prompt", e))?;
        if let Some(path) = &g.controlnet {
            if self.controlnet.as_ref() != Some(path) {
                self.controlnet = None;
                sd.load_controlnet(ctx, path).map_err(|e| ApiError::field("alwayson_scripts.controlnet.args[0].model", e))?;
                self.controlnet = Some(path.clone());
            }
        }
        if let Some((path, _)) = &g.refiner {
            if self.refiner.as_ref().map(|(p, _)| p) != Some(path) {
                self.refiner = None;
                let r = StableDiffusion::load(ctx, path, self.want_f16).map_err(|e| ApiError::field("refiner_checkpoint", e))?;
                self.refiner = Some((path.clone(), r));
            }
        }
        let refiner = g.refiner.as_ref().and_then(|(_, switch)| self.refiner.as_ref().map(|(_, r)| (r, *switch)));
        let every = shared.opts.preview_every;
        let mut images = Vec::new();
        for (k, o) in g.images.iter().enumerate() {
            if shared.interrupt.load(Ordering::SeqCst) {
                break;
            }
            shared.skip.store(false, Ordering::SeqCst);
            info.update(|s| {
                s.image = k;
                s.step = 0;
                s.steps = 0;
            });
            let mut on_preview = |step: usize, img: &Image| {
                if let Ok(png) = crate::imageio::encode_png(img, "") {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
                    info.update(|s| {
                        s.preview = Some(Arc::new(b64));
                        s.preview_step = step;
                    });
                }
            };
            let preview = (every > 0).then_some((every, &mut on_preview as &mut dyn FnMut(usize, &Image)));
            // --taesd: previews are TAESD decodes; the final image stays the VAE's
            let taesd_previews;
            let o = if sd.taesd.is_some() {
                taesd_previews = GenerateOptions { preview_decoder: crate::pipeline::VaeDecoder::Taesd, ..o.clone() };
                &taesd_previews
            } else {
                o
            };
            let progress = |i: usize, total: usize| {
                info.update(|s| {
                    s.step = i;
                    s.steps = total;
                });
            };
            let image = if let Some((r, switch)) = refiner {
                // The handoff has no previews and stops only between images.
                sd.generate_refined(ctx, r, o, switch, progress).map_err(|e| ApiError::from_library(&e))?
            } else {
                sd.generate_steps(ctx, o, preview, |i, total| {
                    progress(i, total);
                    if shared.interrupt.load(Ordering::SeqCst) || shared.skip.load(Ordering::SeqCst) {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .map_err(|e| ApiError::from_library(&e))?
            };
            warnings.extend(sd.take_warnings().into_iter().map(|w| format!("image {}: {w}", k + 1)));
            let mut parameters = crate::pipeline::a1111_parameters(o, &sd.name);
            if let Some((r, switch)) = refiner {
                parameters.push_str(&crate::pipeline::refiner::a1111_parameters(&r.name, switch));
            }
            parameters.push_str(&g.extra_parameters);
            images.push(GenImage { image, parameters, seed: o.seed });
        }
        Ok(Generated { images, model: sd.name.clone(), interrupted: shared.interrupt.load(Ordering::SeqCst), warnings })
    }
}
