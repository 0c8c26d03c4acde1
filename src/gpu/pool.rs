//! Reuse of intermediate buffers. A dropped tensor's buffer goes back to a free list keyed by
//! size class and is handed to the next tensor of that class. This is safe without fences
//! because all GPU work is recorded in stream order: the next user's commands run after the
//! previous user's. (Host uploads never reuse pooled buffers; see `Tensor::upload`.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub(crate) const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

#[derive(Default)]
struct Inner {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    free_bytes: u64,
    live_bytes: u64,
    peak_live_bytes: u64,
}

#[derive(Clone, Default)]
pub(crate) struct BufferPool(Arc<Mutex<Inner>>);

/// Round a request up to its size class: four classes per power of two above 64 KiB, so at most
/// ~25% is wasted while shapes that repeat (every UNet step) hit the same class.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let b = bytes.max(4).next_multiple_of(256);
    if b <= 65536 {
        return b;
    }
    let step = b.next_power_of_two() / 8;
    b.next_multiple_of(step)
}

/// A buffer on loan from the pool; returned when the last tensor viewing it is dropped.
pub(crate) struct PooledBuffer {
    pub buffer: wgpu::Buffer,
    pool: BufferPool,
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let mut inner = self.pool.0.lock().unwrap();
        let size = self.buffer.size();
        inner.live_bytes -= size;
        inner.free_bytes += size;
        inner.free.entry(size).or_default().push(self.buffer.clone());
    }
}

impl BufferPool {
    /// A buffer of at least `bytes` bytes, reused when one of its class is free.
    pub fn take(&self, device: &wgpu::Device, bytes: u64) -> PooledBuffer {
        let size = size_class(bytes);
        let mut inner = self.0.lock().unwrap();
        let buffer = match inner.free.get_mut(&size).and_then(|v| v.pop()) {
            Some(b) => {
                inner.free_bytes -= size;
                b
            }
            None => device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("pigment.tensor"),
                size,
                usage: STORAGE_USAGE,
                mapped_at_creation: false,
            }),
        };
        inner.live_bytes += size;
        inner.peak_live_bytes = inner.peak_live_bytes.max(inner.live_bytes);
        PooledBuffer { buffer, pool: self.clone() }
    }

    /// Adopt a buffer made elsewhere (uploads), so it is counted and reused when dropped.
    pub fn adopt(&self, buffer: wgpu::Buffer) -> PooledBuffer {
        let mut inner = self.0.lock().unwrap();
        inner.live_bytes += buffer.size();
        inner.peak_live_bytes = inner.peak_live_bytes.max(inner.live_bytes);
        PooledBuffer { buffer, pool: self.clone() }
    }

    /// (live bytes, peak live bytes). Free buffers are not counted as live.
    pub fn usage(&self) -> (u64, u64) {
        let inner = self.0.lock().unwrap();
        (inner.live_bytes, inner.peak_live_bytes)
    }

    /// Start measuring the peak again from what is live now.
    pub fn reset_peak(&self) {
        let mut inner = self.0.lock().unwrap();
        inner.peak_live_bytes = inner.live_bytes;
    }

    pub fn trim(&self) {
        let mut inner = self.0.lock().unwrap();
        inner.free.clear();
        inner.free_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;
    #[test]
    fn size_classes_cover_requests_with_bounded_waste() {
        for bytes in [1u64, 255, 256, 4097, 65536, 65537, 1 << 20, (1 << 20) + 1, 123_456_789] {
            let c = size_class(bytes);
            assert!(c >= bytes && c % 4 == 0);
            assert!(bytes < 65536 || (c as f64) <= bytes as f64 * 1.25 + 256.0, "{bytes} -> {c}");
        }
    }
}
