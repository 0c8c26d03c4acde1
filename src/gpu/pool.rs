//! Reuse of intermediate buffers. A dropped tensor's buffer goes back to a free list keyed by
//! size class and is handed to the next tensor of that class. This is safe without fences
//! because all GPU work is recorded in stream order: the next user's commands run after the
//! previous user's. (Uploads never take pooled buffers; see `Tensor::upload`.)
//!
//! A planning pool (see `Context::planner`) runs the same policy on virtual buffers: every
//! allocation, reuse and free is accounted exactly as in a real run, but no memory is made.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub(crate) const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Byte counts of a pool: `live` is held by tensors, `held` is live plus free buffers kept for
/// reuse (what the device really holds for Pigment's tensors); peaks since the last reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub live: u64,
    pub peak_live: u64,
    pub held: u64,
    pub peak_held: u64,
    /// Buffers the pool has made (not counting uploads): 0 more per repeated call means the
    /// call ran entirely on reused buffers.
    pub created: u64,
}

/// The peak bytes of one phase (`Context::begin_phase`): what was held when it began and the
/// peaks reached before the next phase began.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseStats {
    pub name: String,
    pub start_held: u64,
    pub peak_live: u64,
    pub peak_held: u64,
}

#[derive(Default)]
struct Inner {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    free_bytes: u64,
    live_bytes: u64,
    peak_live_bytes: u64,
    peak_held_bytes: u64,
    created: u64,
    /// The largest class made since the last trim.
    largest: u64,
    /// Planning pools hand out clones of this 4-byte buffer instead of creating buffers.
    virtual_buffer: Option<wgpu::Buffer>,
    phases: Vec<PhaseStats>,
}

impl Inner {
    fn note_peaks(&mut self) {
        let held = self.live_bytes + self.free_bytes;
        self.peak_live_bytes = self.peak_live_bytes.max(self.live_bytes);
        self.peak_held_bytes = self.peak_held_bytes.max(held);
        if let Some(p) = self.phases.last_mut() {
            p.peak_live = p.peak_live.max(self.live_bytes);
            p.peak_held = p.peak_held.max(held);
        }
    }
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

/// The size of an upload's buffer: exact up to a 256-byte multiple. Weights are uploaded once
/// and never change size, so rounding them to a size class (up to 25 %) only wasted memory.
pub(crate) fn upload_size(bytes: u64) -> u64 {
    bytes.max(4).next_multiple_of(256)
}

/// A buffer on loan from the pool; returned when the last tensor viewing it is dropped.
pub(crate) struct PooledBuffer {
    pub buffer: wgpu::Buffer,
    /// The accounted size (a virtual buffer's real size is 4 bytes).
    size: u64,
    pool: BufferPool,
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let mut inner = self.pool.0.lock().unwrap();
        let size = self.size;
        inner.live_bytes -= size;
        // Only size classes come back: an upload's exact size would never be asked for again
        // and would sit in the free list for nothing.
        if size_class(size) == size {
            inner.free_bytes += size;
            inner.free.entry(size).or_default().push(self.buffer.clone());
        }
    }
}

impl BufferPool {
    /// A pool that accounts buffers without creating any (planning).
    pub fn planning(device: &wgpu::Device) -> BufferPool {
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("pigment.virtual"),
            size: 4,
            usage: STORAGE_USAGE,
            mapped_at_creation: false,
        });
        let pool = BufferPool::default();
        pool.0.lock().unwrap().virtual_buffer = Some(buffer);
        pool
    }

    /// A buffer of at least `bytes` bytes: a free one of its class, else the smallest free one
    /// of up to twice its class, else a new one. When the new one is the largest class yet,
    /// free buffers of smaller classes are released first: keeping them is what made a growing
    /// sequence (the VAE decoder's stages, up to 128 MiB at 512² f16) hold every earlier
    /// stage's buffers as well. Only a new largest class releases, so a repeated call (a UNet
    /// step) settles on buffers it reuses.
    pub fn take(&self, device: &wgpu::Device, bytes: u64) -> PooledBuffer {
        let want = size_class(bytes);
        let mut inner = self.0.lock().unwrap();
        let fit = if inner.free.get(&want).is_some_and(|v| !v.is_empty()) {
            Some(want)
        } else {
            inner.free.iter().filter(|(&c, v)| c > want && c <= 2 * want && !v.is_empty()).map(|(&c, _)| c).min()
        };
        let (buffer, size) = match fit {
            Some(c) => {
                inner.free_bytes -= c;
                (inner.free.get_mut(&c).and_then(|v| v.pop()).expect("a free buffer of this class"), c)
            }
            None => {
                if want > inner.largest {
                    inner.largest = want;
                    let smaller: Vec<u64> = inner.free.keys().copied().filter(|&c| c < want).collect();
                    for c in smaller {
                        let n = inner.free.remove(&c).map_or(0, |v| v.len() as u64);
                        inner.free_bytes -= n * c;
                    }
                }
                inner.created += 1;
                let buffer = match &inner.virtual_buffer {
                    Some(v) => v.clone(),
                    None => device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("pigment.tensor"),
                        size: want,
                        usage: STORAGE_USAGE,
                        mapped_at_creation: false,
                    }),
                };
                (buffer, want)
            }
        };
        inner.live_bytes += size;
        inner.note_peaks();
        PooledBuffer { buffer, size, pool: self.clone() }
    }

    /// Adopt a buffer made elsewhere (uploads), so it is counted and reused when dropped.
    pub fn adopt(&self, buffer: wgpu::Buffer) -> PooledBuffer {
        let size = buffer.size();
        self.adopt_sized(buffer, size)
    }

    /// Adopt `buffer` accounted as `size` bytes (a planning pool's virtual buffer).
    pub fn adopt_sized(&self, buffer: wgpu::Buffer, size: u64) -> PooledBuffer {
        let mut inner = self.0.lock().unwrap();
        inner.live_bytes += size;
        inner.note_peaks();
        PooledBuffer { buffer, size, pool: self.clone() }
    }

    /// The virtual buffer of a planning pool.
    pub fn virtual_buffer(&self) -> Option<wgpu::Buffer> {
        self.0.lock().unwrap().virtual_buffer.clone()
    }

    /// (live bytes, peak live bytes). Free buffers are not counted as live.
    pub fn usage(&self) -> (u64, u64) {
        let inner = self.0.lock().unwrap();
        (inner.live_bytes, inner.peak_live_bytes)
    }

    pub fn stats(&self) -> PoolStats {
        let inner = self.0.lock().unwrap();
        PoolStats {
            live: inner.live_bytes,
            peak_live: inner.peak_live_bytes,
            held: inner.live_bytes + inner.free_bytes,
            peak_held: inner.peak_held_bytes,
            created: inner.created,
        }
    }

    /// Start measuring the peaks again from what is live / held now, and forget the phases.
    pub fn reset_peak(&self) {
        let mut inner = self.0.lock().unwrap();
        inner.peak_live_bytes = inner.live_bytes;
        inner.peak_held_bytes = inner.live_bytes + inner.free_bytes;
        inner.phases.clear();
    }

    /// Close the current phase and open `name`.
    pub fn begin_phase(&self, name: &str) {
        let mut inner = self.0.lock().unwrap();
        let held = inner.live_bytes + inner.free_bytes;
        let live = inner.live_bytes;
        inner.phases.push(PhaseStats { name: name.to_string(), start_held: held, peak_live: live, peak_held: held });
    }

    pub fn phases(&self) -> Vec<PhaseStats> {
        self.0.lock().unwrap().phases.clone()
    }

    pub fn trim(&self) {
        let mut inner = self.0.lock().unwrap();
        inner.free.clear();
        inner.free_bytes = 0;
        inner.largest = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::{size_class, upload_size};
    #[test]
    fn size_classes_cover_requests_with_bounded_waste() {
        for bytes in [1u64, 255, 256, 4097, 65536, 65537, 1 << 20, (1 << 20) + 1, 123_456_789] {
            let c = size_class(bytes);
            assert!(c >= bytes && c % 4 == 0);
            assert!(bytes < 65536 || (c as f64) <= bytes as f64 * 1.25 + 256.0, "{bytes} -> {c}");
            let u = upload_size(bytes);
            assert!(u >= bytes && u < bytes + 256 + 4 && u % 256 == 0, "{bytes} -> {u}");
        }
    }
}
