//! GPU runtime: adapter choice, the device, tensors, the pipeline cache and command batching.
//!
//! Ops never submit on their own: each records one compute pass into the context's open command
//! encoder and its uniform parameters into a shared arena. The batch is submitted when it is full
//! or when the host needs a result (readback), so a UNet step is a handful of submits, not
//! thousands.

mod batch;
mod faults;
mod kernel;
mod pool;
mod profile;
mod tensor;

#[doc(hidden)]
pub use faults::Fault;
pub use kernel::{grid_1d, Binding, KernelSpec};
pub use pool::{PhaseStats, PoolStats};
pub use profile::{print_profile, ProfileRow, Work};
pub use tensor::{DType, Tensor};

use crate::error::{Error, Result};
use batch::Batch;
use kernel::PipelineCache;
use pool::BufferPool;
use std::sync::Mutex;

/// How to pick an adapter. `name` (from `--adapter` or `PIGMENT_ADAPTER`) is matched as a
/// case-insensitive substring of the adapter name, or as its index in [`list_adapters`].
#[derive(Clone, Debug, Default)]
pub struct AdapterChoice {
    pub name: Option<String>,
    /// Use f32 storage even when the adapter offers SHADER_F16 (`PIGMENT_F16=0`).
    pub disable_f16: bool,
}

impl AdapterChoice {
    pub fn from_env() -> Self {
        AdapterChoice {
            name: std::env::var("PIGMENT_ADAPTER").ok().filter(|s| !s.is_empty()),
            disable_f16: std::env::var("PIGMENT_F16").map(|v| v == "0").unwrap_or(false),
        }
    }
}

/// The device and everything ops share: limits, feature flags, caches, the open batch.
pub struct Context {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// The adapter offers SHADER_F16 and it was enabled: f16 storage kernels may be used.
    pub f16: bool,
    pub timestamps: bool,
    /// SUBGROUP is enabled (the subgroup GEMM variant may run).
    pub subgroups: bool,
    /// Cooperative matrices (16x16x16 f16 -> f32) are enabled (the coopmat GEMM may run).
    pub coopmat: bool,
    /// The GEMM variant chosen per problem on this device (`ops::gemm_tune`), keyed by problem.
    pub gemm_choices: Mutex<std::collections::HashMap<String, String>>,
    pipelines: PipelineCache,
    pool: BufferPool,
    batch: Mutex<Batch>,
    profiler: profile::Profiler,
    /// Test-only cap on [`Context::max_binding`] (0 = none); see `set_max_binding_for_tests`.
    binding_override: std::sync::atomic::AtomicU64,
    /// Bytes uploaded since the last submit (see [`Context::note_upload`]).
    upload_pending: std::sync::atomic::AtomicU64,
    /// A planning context ([`Context::planner`]): nothing runs, memory is only accounted.
    planning: bool,
    /// wgpu's errors and device loss, recorded for the next check (see `faults`).
    faults: std::sync::Arc<faults::Faults>,
}

/// Lower is preferred: a discrete GPU beats an integrated one beats a software rasteriser.
#[cfg(not(target_arch = "wasm32"))]
fn preference(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if std::env::var("WGPU_BACKEND").is_err() && !cfg!(target_arch = "wasm32") {
        // GL adapters lack f16 and compute limits; prefer the modern APIs unless asked.
        desc.backends = wgpu::Backends::PRIMARY;
    }
    wgpu::Instance::new(desc)
}

/// Every adapter this build can see, in preference order.
#[cfg(not(target_arch = "wasm32"))]
pub async fn list_adapters() -> Vec<wgpu::AdapterInfo> {
    let mut infos: Vec<_> =
        instance().enumerate_adapters(wgpu::Backends::all()).await.iter().map(|a| a.get_info()).collect();
    infos.sort_by_key(|i| preference(i.device_type));
    infos
}

impl Context {
    /// Open the preferred adapter (see [`AdapterChoice`]).
    pub async fn new(choice: &AdapterChoice) -> Result<Context> {
        let instance = instance();
        let adapter = Self::pick_adapter(&instance, choice).await?;
        let info = adapter.get_info();
        let offered = adapter.features();
        let mut features = wgpu::Features::empty();
        for f in [wgpu::Features::SHADER_F16, wgpu::Features::TIMESTAMP_QUERY, wgpu::Features::SUBGROUP] {
            if offered.contains(f) {
                features |= f;
            }
        }
        if choice.disable_f16 {
            features.remove(wgpu::Features::SHADER_F16);
        }
        // The cooperative-matrix GEMM multiplies 16x16x16 f16 tiles into f32 accumulators:
        // enable the (experimental) feature only where the adapter lists that configuration.
        #[cfg(not(target_arch = "wasm32"))]
        let coopmat = offered.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
            && features.contains(wgpu::Features::SHADER_F16)
            && adapter.cooperative_matrix_properties().iter().any(|p| {
                use wgpu::CooperativeScalarType as S;
                (p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type) == (16, 16, 16, S::F16, S::F32)
            });
        #[cfg(target_arch = "wasm32")]
        let coopmat = false;
        if coopmat {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        // Ask for everything the adapter has: the defaults would cap bindings at 128 MiB even on
        // GPUs that allow more.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("pigment"),
                required_features: features,
                required_limits: limits.clone(),
                // SAFETY: the only experimental feature requested is cooperative matrices, used by
                // one kernel (kernels/gemm_coopmat.wgsl) that `pigment selftest` checks.
                experimental_features: if coopmat { unsafe { wgpu::ExperimentalFeatures::enabled() } } else { wgpu::ExperimentalFeatures::disabled() },
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Device { adapter: info.name.clone(), reason: e.to_string() })?;
        let limits = device.limits();
        let faults = faults::Faults::install(&device, &info.name);
        let ctx = Context {
            faults,
            f16: features.contains(wgpu::Features::SHADER_F16),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            coopmat,
            gemm_choices: Default::default(),
            pipelines: PipelineCache::default(),
            pool: BufferPool::default(),
            batch: Mutex::new(Batch::new(&device, &limits)),
            profiler: profile::Profiler::default(),
            binding_override: std::sync::atomic::AtomicU64::new(0),
            upload_pending: std::sync::atomic::AtomicU64::new(0),
            planning: false,
            device,
            queue,
            info,
            limits,
        };
        #[cfg(not(target_arch = "wasm32"))]
        if std::env::var("PIGMENT_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0") {
            ctx.set_profiling(true);
        }
        Ok(ctx)
    }

    /// A planning context on the same device: models and ops run on it exactly as on `self`,
    /// with every check (buffer and binding limits, shapes), but its dispatches are validated
    /// and dropped, its tensors are virtual (accounted at their real size by a pool with the
    /// real pool's policy, no memory made), uploads copy nothing and readbacks return zeros.
    /// So its [`Context::pool_stats`] after a model call are the bytes a real call on a fresh
    /// context would have held (the plan of that call), in milliseconds instead of minutes.
    /// Nothing a planned call returns may be used on a real context (its dispatch errors).
    /// Host-only work (weight conversion, schedulers) still runs.
    pub fn planner(&self) -> Context {
        Context {
            device: self.device.clone(),
            queue: self.queue.clone(),
            info: self.info.clone(),
            limits: self.limits.clone(),
            f16: self.f16,
            timestamps: self.timestamps,
            subgroups: self.subgroups,
            coopmat: self.coopmat,
            gemm_choices: Mutex::new(self.gemm_choices.lock().unwrap().clone()),
            pipelines: PipelineCache::default(),
            pool: BufferPool::planning(&self.device),
            batch: Mutex::new(Batch::new(&self.device, &self.limits)),
            profiler: profile::Profiler::default(),
            binding_override: std::sync::atomic::AtomicU64::new(self.binding_override.load(std::sync::atomic::Ordering::Relaxed)),
            upload_pending: std::sync::atomic::AtomicU64::new(0),
            planning: true,
            faults: self.faults.clone(),
        }
    }

    /// Whether this is a planning context ([`Context::planner`]).
    pub fn planning(&self) -> bool {
        self.planning
    }

    /// Blocking constructor for native code and tests.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(choice: &AdapterChoice) -> Result<Context> {
        pollster::block_on(Self::new(choice))
    }

    async fn pick_adapter(instance: &wgpu::Instance, choice: &AdapterChoice) -> Result<wgpu::Adapter> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let mut adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
            adapters.sort_by_key(|a| preference(a.get_info().device_type));
            if let Some(want) = &choice.name {
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                let index = want.parse::<usize>().ok().filter(|&i| i < adapters.len()).or_else(|| {
                    names.iter().position(|n| n.to_lowercase().contains(&want.to_lowercase()))
                });
                return match index {
                    Some(i) => Ok(adapters.swap_remove(i)),
                    None => Err(Error::NoAdapter(format!(
                        " matching '{want}' (available: {})",
                        if names.is_empty() { "none".to_string() } else { names.join(", ") }
                    ))),
                };
            }
            if !adapters.is_empty() {
                return Ok(adapters.swap_remove(0));
            }
            Err(Error::NoAdapter(String::new()))
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = choice;
            instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    force_fallback_adapter: false,
                    compatible_surface: None,
                    // Pigment asks for the adapter's real limits; no fingerprinting buckets.
                    apply_limit_buckets: false,
                })
                .await
                .map_err(|e| Error::NoAdapter(format!(" ({e}); this browser needs WebGPU enabled")))
        }
    }

    /// Largest byte size one storage binding may have on this device.
    pub fn max_binding(&self) -> u64 {
        let device = self.limits.max_storage_buffer_binding_size as u64;
        match self.binding_override.load(std::sync::atomic::Ordering::Relaxed) {
            0 => device,
            cap => cap.min(device),
        }
    }

    /// Lower the effective binding limit (0 restores the device's), so tests can exercise the
    /// splitting paths with small tensors. Affects every op using this context.
    pub fn set_max_binding_for_tests(&self, bytes: u64) {
        self.binding_override.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// A one-line description for benchmark tables and logs.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}, f16 {})",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            if self.f16 { "yes" } else { "no" }
        )
    }

    /// Submit everything recorded so far.
    pub fn flush(&self) {
        self.batch.lock().unwrap().flush(&self.device, &self.queue);
    }

    /// Submit and block until the GPU is idle (native only; used by benchmarks).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn sync(&self) -> Result<()> {
        if self.planning {
            return Ok(());
        }
        self.check_faults("submitting GPU work")?;
        self.flush();
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
        self.check_faults("waiting for the GPU")?;
        polled.map(|_| ()).map_err(|e| Error::Gpu(e.to_string()))
    }

    /// Bytes currently held by the buffer pool (live tensors and free intermediates).
    pub fn pool_bytes(&self) -> (u64, u64) {
        self.pool.usage()
    }

    /// Live and held bytes of Pigment's tensors (held = live + free buffers kept for reuse,
    /// what the device holds) and their peaks. Readback staging and the 64 KiB uniform arena
    /// are not counted.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Restart the peaks of [`Context::pool_stats`] from the bytes live / held now and forget
    /// the phases.
    pub fn reset_peak(&self) {
        self.pool.reset_peak()
    }

    /// Start a named phase (e.g. "unet"): [`Context::phases`] reports each phase's peaks.
    pub fn begin_phase(&self, name: &str) {
        self.pool.begin_phase(name)
    }

    /// The phases begun since the last [`Context::reset_peak`], in order.
    pub fn phases(&self) -> Vec<PhaseStats> {
        self.pool.phases()
    }

    /// Drop the free intermediates kept for reuse.
    pub fn trim_pool(&self) {
        self.pool.trim()
    }

    /// Turn the op profiler on or off (native only; `PIGMENT_PROFILE=1` turns it on at
    /// creation). Profiling adds a timestamp pair per dispatch, or, without TIMESTAMP_QUERY, a
    /// wait after every dispatch.
    pub fn set_profiling(&self, on: bool) {
        self.profiler.enabled.store(on && cfg!(not(target_arch = "wasm32")), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn profiling(&self) -> bool {
        self.profiler.on()
    }

    /// Describe the op whose dispatches follow, for the profiler: its kernel family (the
    /// `kernels/` file stem, which is also its dispatches' `KernelSpec` name), a shape string
    /// and its work. `describe` runs only while profiling.
    #[inline]
    pub fn profile_op(&self, family: &'static str, describe: impl FnOnce() -> (String, Work)) {
        if self.profiler.on() {
            let (shape, work) = describe();
            self.profiler.state.lock().unwrap().begin_op(family, shape, work);
        }
    }

    /// Count `bytes` just uploaded. wgpu stages every mapped-at-creation upload in a host
    /// buffer of its own that lives until the queue's next submit has run, so loading a model
    /// without submitting held a second host copy of all its weights (SD 1.5 f32: +3.4 GB
    /// RSS). Every `UPLOAD_SUBMIT_BYTES` the uploads are submitted and (natively) waited for.
    pub(crate) fn note_upload(&self, bytes: u64) {
        const UPLOAD_SUBMIT_BYTES: u64 = 256 << 20;
        let pending = self.upload_pending.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed) + bytes;
        if pending >= UPLOAD_SUBMIT_BYTES {
            self.upload_pending.store(0, std::sync::atomic::Ordering::Relaxed);
            // Recorded work first, so it still runs after the uploads it may depend on
            // and before any later one; then an empty submit carries the staged copies.
            self.flush();
            self.queue.submit(std::iter::empty());
            #[cfg(not(target_arch = "wasm32"))]
            let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
        }
    }

    /// Forget everything profiled so far (e.g. a warm-up call).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile_reset(&self) -> Result<()> {
        self.sync()?;
        self.batch.lock().unwrap().take_timestamps();
        self.profiler.reset();
        Ok(())
    }

    /// Everything profiled since the last reset: waits for the GPU and reads the timestamps.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile_report(&self) -> Result<Vec<ProfileRow>> {
        self.sync()?;
        let pending = self.batch.lock().unwrap().take_timestamps();
        let period_ms = self.queue.get_timestamp_period() as f64 * 1e-6;
        let mut state = self.profiler.state.lock().unwrap();
        for (buf, rows) in pending {
            let (tx, rx) = std::sync::mpsc::channel();
            buf.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
            self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Gpu(e.to_string()))?;
            rx.recv()
                .map_err(|_| Error::Gpu("profile readback was cancelled".into()))?
                .map_err(|e| Error::Gpu(format!("profile readback failed: {e}")))?;
            let view = buf.slice(..).get_mapped_range().map_err(|e| Error::Gpu(format!("profile readback mapping failed: {e}")))?;
            let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&view);
            for (i, row) in rows.into_iter().enumerate() {
                let (t0, t1) = (ticks[2 * i], ticks[2 * i + 1]);
                state.add_ms(row, t1.saturating_sub(t0) as f64 * period_ms);
            }
        }
        Ok(state.rows())
    }
}
