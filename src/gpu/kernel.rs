//! Compiling kernels and recording dispatches.
//!
//! A kernel is a WGSL file from `kernels/` plus a specialisation: the storage dtype (the file is
//! written against `alias T`, which the prelude sets to f32 or f16), compile-time `const`s the
//! prelude defines (register-tile sizes: function-scope array sizes cannot be `override`s), and
//! WGSL `override` constants set at pipeline creation. Each distinct specialisation is compiled
//! once and cached.

use super::{Context, DType, Tensor};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
pub struct KernelSpec {
    /// Name of the kernel family, for errors and the cache key.
    pub name: &'static str,
    /// WGSL text; usually a `kernels/*.wgsl` file, extended at run time for unrolled variants.
    pub source: std::borrow::Cow<'static, str>,
    pub entry: &'static str,
    pub dtype: DType,
    /// `const NAME = VALUE;` lines put before the source.
    pub defines: Vec<(&'static str, String)>,
    /// Values for the source's `override` declarations.
    pub overrides: Vec<(&'static str, f64)>,
}

impl KernelSpec {
    pub fn new(name: &'static str, source: impl Into<std::borrow::Cow<'static, str>>, entry: &'static str, dtype: DType) -> Self {
        KernelSpec { name, source: source.into(), entry, dtype, defines: vec![], overrides: vec![] }
    }
    pub fn define(mut self, name: &'static str, value: impl ToString) -> Self {
        self.defines.push((name, value.to_string()));
        self
    }
    pub fn constant(mut self, name: &'static str, value: f64) -> Self {
        self.overrides.push((name, value));
        self
    }

    fn key(&self) -> String {
        let defines: Vec<String> = self.defines.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let overrides: Vec<String> = self.overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}:{}:{}:{}:{}", self.name, self.entry, self.dtype.name(), defines.join(","), overrides.join(","))
    }

    pub fn full_source(&self) -> String {
        let mut src = String::new();
        match self.dtype {
            DType::F32 => src.push_str("alias T = f32;\nalias T4 = vec4<f32>;\n"),
            DType::F16 => src.push_str("enable f16;\nalias T = f16;\nalias T4 = vec4<f16>;\n"),
        }
        // WGSL directives (`enable X;`) must precede every declaration: hoist the source's.
        let (directives, body): (Vec<&str>, Vec<&str>) = self.source.lines().partition(|l| l.starts_with("enable "));
        for d in directives {
            src.insert_str(0, &format!("{d}\n"));
        }
        for (k, v) in &self.defines {
            src.push_str(&format!("const {k} = {v};\n"));
        }
        if body.len() == self.source.lines().count() {
            src.push_str(&self.source);
        } else {
            src.push_str(&body.join("\n"));
        }
        src
    }
}

pub(crate) struct Compiled {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

#[derive(Default)]
pub(crate) struct PipelineCache(Mutex<HashMap<String, Arc<Compiled>>>);

/// A storage binding: a byte range of a tensor's buffer.
#[derive(Clone, Copy)]
pub struct Binding<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

impl Tensor {
    /// The whole tensor as a binding.
    pub fn binding(&self) -> Binding<'_> {
        Binding { buffer: self.buffer(), offset: self.byte_offset(), size: self.byte_len().next_multiple_of(4).max(4) }
    }

    /// Elements `start..start+len` (of the flat view) as a binding. The byte offset must meet
    /// the device's storage offset alignment; callers splitting big tensors choose chunk
    /// boundaries that do.
    pub fn binding_range(&self, start: usize, len: usize) -> Binding<'_> {
        let es = self.dtype().size() as u64;
        Binding {
            buffer: self.buffer(),
            offset: self.byte_offset() + start as u64 * es,
            size: (len as u64 * es).next_multiple_of(4).max(4),
        }
    }
}

impl Context {
    fn compiled(&self, spec: &KernelSpec) -> Result<Arc<Compiled>> {
        let key = spec.key();
        if let Some(c) = self.pipelines.0.lock().unwrap().get(&key) {
            return Ok(c.clone());
        }
        if spec.dtype == DType::F16 && !self.f16 {
            return Err(Error::NoF16(spec.name));
        }
        // Loop bounding off: every kernel's loops have host-chosen finite trip counts, and the
        // injected counters cost lavapipe dearly. Bounds checks stay on.
        let checks = wgpu::ShaderRuntimeChecks { force_loop_bounding: false, ..wgpu::ShaderRuntimeChecks::checked() };
        #[cfg(not(target_arch = "wasm32"))]
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        // SAFETY: the only check relaxed is loop bounding (see above).
        let module = unsafe {
            self.device.create_shader_module_trusted(
                wgpu::ShaderModuleDescriptor {
                    label: Some(spec.name),
                    source: wgpu::ShaderSource::Wgsl(spec.full_source().into()),
                },
                checks,
            )
        };
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(spec.name),
            layout: None,
            module: &module,
            entry_point: Some(spec.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &spec.overrides,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        // A kernel that fails to compile is a bug, but it should surface as an error naming the
        // kernel, not a panic inside wgpu.
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("kernel '{}' ({}) failed to compile: {e}", spec.name, spec.key())));
        }
        let layout = pipeline.get_bind_group_layout(0);
        let compiled = Arc::new(Compiled { pipeline, layout });
        self.pipelines.0.lock().unwrap().insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Record one dispatch of `spec`: `params` at binding 0 (a uniform struct; empty for none),
    /// then `storage` at bindings 1.. in order. Every binding is checked against the device's
    /// limits first, so an oversized problem is an error, not a validation panic.
    pub fn dispatch(
        &self,
        spec: &KernelSpec,
        params: &[u8],
        storage: &[Binding<'_>],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let max_binding = self.max_binding();
        let align = self.limits.min_storage_buffer_offset_alignment as u64;
        for b in storage {
            if b.size > max_binding {
                return Err(Error::BindingTooLarge { what: format!("kernel '{}'", spec.name), bytes: b.size, limit: max_binding });
            }
            if b.offset % align != 0 {
                return Err(Error::Gpu(format!(
                    "kernel '{}': binding offset {} is not a multiple of the device's {align}-byte alignment",
                    spec.name, b.offset
                )));
            }
        }
        let max_groups = self.limits.max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&g| g > max_groups) {
            return Err(Error::Unsupported(format!(
                "kernel '{}' needs {workgroups:?} workgroups; this device allows {max_groups} per dimension",
                spec.name
            )));
        }
        if workgroups.contains(&0) || self.planning {
            return Ok(());
        }
        if self.is_lost() {
            return self.check_faults(&format!("kernel '{}'", spec.name));
        }
        self.faults.set_op(spec.name);
        // A planning context's tensors share one 4-byte buffer; real buffers are ≥ 256 bytes.
        if storage.iter().any(|b| b.buffer.size() < 256) {
            return Err(Error::Gpu(format!("kernel '{}' was given a planned (virtual) tensor; plans only run on a planning context", spec.name)));
        }
        let compiled = self.compiled(spec)?;
        let profiling = self.profiler.on();
        let row = profiling.then(|| self.profiler.state.lock().unwrap().dispatch_row(spec.name));
        // Without timestamp queries a profiled dispatch runs alone: wait for what came before,
        // then time it from record to completion.
        #[cfg(not(target_arch = "wasm32"))]
        let host_timed = profiling && !self.timestamps;
        #[cfg(not(target_arch = "wasm32"))]
        if host_timed {
            self.sync()?;
        }
        #[cfg(not(target_arch = "wasm32"))]
        let t0 = std::time::Instant::now();
        let mut batch = self.batch.lock().unwrap();
        let offset = batch.reserve(&self.device, &self.queue, params.len());
        if !params.is_empty() {
            batch.arena_data.resize(offset as usize, 0);
            batch.arena_data.extend_from_slice(params);
            // Uniform structs are read in 16-byte units: keep the arena padded.
            let padded = batch.arena_data.len().next_multiple_of(16);
            batch.arena_data.resize(padded, 0);
        }
        let mut entries = Vec::with_capacity(storage.len() + 1);
        if !params.is_empty() {
            entries.push(wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &batch.arena,
                    offset,
                    size: wgpu::BufferSize::new(params.len().next_multiple_of(16) as u64),
                }),
            });
        }
        for (i, b) in storage.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer,
                    offset: b.offset,
                    size: wgpu::BufferSize::new(b.size.min(b.buffer.size() - b.offset)),
                }),
            });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(spec.name),
            layout: &compiled.layout,
            entries: &entries,
        });
        batch.passes += 1;
        let mut guard = batch;
        let batch = &mut *guard;
        let timestamp_writes = match row {
            Some(row) if self.timestamps => {
                let ts = batch.timestamps.get_or_insert_with(|| super::profile::Timestamps::new(&self.device, super::batch::MAX_PASSES as u32));
                let i = ts.rows.len() as u32;
                ts.rows.push(row);
                Some(wgpu::ComputePassTimestampWrites {
                    query_set: &ts.queries,
                    beginning_of_pass_write_index: Some(2 * i),
                    end_of_pass_write_index: Some(2 * i + 1),
                })
            }
            _ => None,
        };
        let encoder = batch.encoder.get_or_insert_with(|| {
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("pigment.batch") })
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(spec.name), timestamp_writes });
            pass.set_pipeline(&compiled.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        }
        #[cfg(not(target_arch = "wasm32"))]
        if host_timed {
            drop(guard);
            self.sync()?;
            if let Some(row) = row {
                self.profiler.state.lock().unwrap().add_ms(row, t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(())
    }
}

/// Split `n` into `(x, y)` workgroup counts under the per-dimension limit, for 1-D kernels over
/// more than 65535 groups. Kernels rebuild the flat index as `y * x_count + x`.
pub fn grid_1d(groups: u32, max_per_dim: u32) -> [u32; 3] {
    if groups <= max_per_dim {
        [groups, 1, 1]
    } else {
        let y = groups.div_ceil(max_per_dim);
        [groups.div_ceil(y), y, 1]
    }
}
