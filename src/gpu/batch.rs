//! The open command encoder and the uniform arena that ops record into.
//!
//! Each op's parameters are copied into one CPU-side arena; at flush the arena is written with
//! a single `write_buffer` and the encoder submitted. Queue writes are ordered between submits,
//! so reusing the same arena buffer for the next batch cannot disturb work already submitted.

pub(crate) const ARENA_BYTES: u64 = 64 * 1024;
/// Flush after this many passes even if the arena has room, to keep the GPU fed.
pub(crate) const MAX_PASSES: usize = 192;

pub(crate) struct Batch {
    pub encoder: Option<wgpu::CommandEncoder>,
    pub arena: wgpu::Buffer,
    pub arena_data: Vec<u8>,
    pub align: usize,
    pub passes: usize,
    /// Pass timestamps while profiling on an adapter with TIMESTAMP_QUERY.
    pub timestamps: Option<super::profile::Timestamps>,
}

impl Batch {
    pub fn new(device: &wgpu::Device, limits: &wgpu::Limits) -> Batch {
        Batch {
            encoder: None,
            arena: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("pigment.uniform_arena"),
                size: ARENA_BYTES,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            arena_data: Vec::with_capacity(ARENA_BYTES as usize),
            align: limits.min_uniform_buffer_offset_alignment.max(16) as usize,
            passes: 0,
            timestamps: None,
        }
    }

    /// Room for `bytes` more uniform bytes and another pass, flushing first if needed.
    /// Returns the arena offset where they go.
    pub fn reserve(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, bytes: usize) -> u64 {
        let start = self.arena_data.len().next_multiple_of(self.align);
        if start + bytes > ARENA_BYTES as usize || self.passes >= MAX_PASSES {
            self.flush(device, queue);
            return 0;
        }
        start as u64
    }

    pub fn encoder(&mut self, device: &wgpu::Device) -> &mut wgpu::CommandEncoder {
        self.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("pigment.batch") })
        })
    }

    pub fn flush(&mut self, device: &wgpu::Device, queue: &wgpu::Queue) {
        if let Some(mut encoder) = self.encoder.take() {
            if let Some(ts) = &mut self.timestamps {
                ts.resolve(device, &mut encoder);
            }
            if !self.arena_data.is_empty() {
                let len = self.arena_data.len().next_multiple_of(4);
                self.arena_data.resize(len, 0);
                queue.write_buffer(&self.arena, 0, &self.arena_data);
            }
            queue.submit(Some(encoder.finish()));
        }
        self.arena_data.clear();
        self.passes = 0;
    }

    /// The resolved timestamp batches not read yet (flush first).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))] // reports are native-only
    pub fn take_timestamps(&mut self) -> Vec<(wgpu::Buffer, Vec<usize>)> {
        self.timestamps.as_mut().map(|t| std::mem::take(&mut t.pending)).unwrap_or_default()
    }
}
