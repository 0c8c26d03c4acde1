//! A tensor is a view of a pooled GPU buffer: element offset, shape and storage dtype.
//! Arithmetic is always f32 inside the kernels; `DType` is only how elements are stored.

use super::pool::{PooledBuffer, STORAGE_USAGE};
use super::Context;
use crate::error::{Error, Result};
use half::f16;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
        }
    }
}

#[derive(Clone)]
pub struct Tensor {
    pub(crate) buf: Arc<PooledBuffer>,
    /// Offset of the first element, in elements.
    pub(crate) offset: usize,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {})", self.shape, self.dtype.name())
    }
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn byte_len(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }
    pub fn byte_offset(&self) -> u64 {
        (self.offset * self.dtype.size()) as u64
    }
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buf.buffer
    }
    pub fn dim(&self, i: isize) -> usize {
        let i = if i < 0 { self.shape.len() as isize + i } else { i };
        self.shape[i as usize]
    }

    fn check_size(ctx: &Context, what: &str, bytes: u64) -> Result<()> {
        if bytes > ctx.limits.max_buffer_size {
            return Err(Error::BufferTooLarge { what: what.into(), bytes, limit: ctx.limits.max_buffer_size });
        }
        Ok(())
    }

    /// An uninitialised tensor from the pool (contents are whatever the last user left).
    pub fn empty(ctx: &Context, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let bytes = (shape.iter().product::<usize>() * dtype.size()) as u64;
        let what = format!("tensor {shape:?}");
        Self::check_size(ctx, &what, bytes)?;
        if dtype == DType::F16 && !ctx.f16 {
            return Err(Error::NoF16("an f16 tensor"));
        }
        ctx.check_alloc(&what, bytes)?;
        let buf = Arc::new(ctx.pool.take(&ctx.device, bytes));
        ctx.check_alloc_result(&what, bytes)?;
        Ok(Tensor { buf, offset: 0, shape: shape.to_vec(), dtype })
    }

    pub fn zeros(ctx: &Context, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = Self::empty(ctx, shape, dtype)?;
        if ctx.planning() {
            return Ok(t);
        }
        let mut batch = ctx.batch.lock().unwrap();
        batch.encoder(&ctx.device).clear_buffer(t.buffer(), 0, None);
        Ok(t)
    }

    /// A planning context's upload: accounted, nothing copied (`None` on a real context).
    pub(crate) fn planned(ctx: &Context, bytes: usize, shape: &[usize], dtype: DType) -> Result<Option<Tensor>> {
        let Some(v) = ctx.pool.virtual_buffer() else { return Ok(None) };
        Self::check_size(ctx, &format!("tensor {shape:?}"), bytes as u64)?;
        let buf = ctx.pool.adopt_sized(v, super::pool::upload_size(bytes as u64));
        Ok(Some(Tensor { buf: Arc::new(buf), offset: 0, shape: shape.to_vec(), dtype }))
    }

    /// Upload host data, converting to `dtype`. Always a fresh buffer, mapped at creation: a
    /// pooled buffer could still be read by recorded-but-unsubmitted work, and a queue write
    /// would land before that work runs.
    pub fn from_f32(ctx: &Context, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::Shape { op: "upload", detail: format!("{} values for shape {shape:?}", data.len()) });
        }
        if dtype == DType::F16 && !ctx.f16 {
            return Err(Error::NoF16("an f16 tensor"));
        }
        if let Some(t) = Self::planned(ctx, n * dtype.size(), shape, dtype)? {
            return Ok(t);
        }
        let bytes: Vec<u8> = match dtype {
            DType::F32 => bytemuck::cast_slice(data).to_vec(),
            DType::F16 => {
                let h: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
                bytemuck::cast_slice(&h).to_vec()
            }
        };
        Self::from_bytes(ctx, &bytes, shape, dtype)
    }

    /// Upload raw little-endian element bytes already in `dtype`.
    pub fn from_bytes(ctx: &Context, bytes: &[u8], shape: &[usize], dtype: DType) -> Result<Tensor> {
        if let Some(t) = Self::planned(ctx, bytes.len(), shape, dtype)? {
            return Ok(t);
        }
        let what = format!("tensor {shape:?}");
        Self::check_size(ctx, &what, bytes.len() as u64)?;
        let size = super::pool::upload_size(bytes.len() as u64);
        ctx.check_alloc(&what, size)?;
        let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("pigment.upload"),
            size,
            usage: STORAGE_USAGE,
            mapped_at_creation: true,
        });
        ctx.check_alloc_result(&what, size)?;
        {
            let padded = (bytes.len() as u64).next_multiple_of(4).max(4);
            let mut view = buffer
                .slice(..padded)
                .get_mapped_range_mut()
                .map_err(|e| Error::Gpu(format!("upload mapping failed: {e}")))?;
            if bytes.len() as u64 == padded {
                view.copy_from_slice(bytes);
            } else {
                // An odd number of f16s: pad the last 4-byte word with zeros.
                let mut tail = bytes.to_vec();
                tail.resize(padded as usize, 0);
                view.copy_from_slice(&tail);
            }
        }
        buffer.unmap();
        ctx.note_upload(size);
        Ok(Tensor { buf: Arc::new(ctx.pool.adopt(buffer)), offset: 0, shape: shape.to_vec(), dtype })
    }

    /// Same data, new shape (no copy).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != self.numel() {
            return Err(Error::Shape { op: "reshape", detail: format!("{:?} -> {shape:?}", self.shape) });
        }
        Ok(Tensor { shape: shape.to_vec(), ..self.clone() })
    }

    /// Rows `start..start+len` of the outermost dimension, as a view (no copy).
    pub fn narrow0(&self, start: usize, len: usize) -> Result<Tensor> {
        if start + len > self.shape[0] {
            return Err(Error::Shape { op: "narrow", detail: format!("{start}+{len} > {}", self.shape[0]) });
        }
        let inner: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = len;
        Ok(Tensor { offset: self.offset + start * inner, shape, ..self.clone() })
    }

    /// Read back as f32 (async: on the web the map completes from the event loop).
    pub async fn to_f32(&self, ctx: &Context) -> Result<Vec<f32>> {
        if ctx.planning() {
            // Nothing ran: a plan reads zeros (see `Context::planner`).
            return Ok(vec![0.0; self.numel()]);
        }
        let op = format!("reading back tensor {:?}", self.shape);
        ctx.check_faults(&op)?;
        let bytes = self.byte_len();
        let padded = bytes.next_multiple_of(4).max(4);
        let start = self.byte_offset();
        // Copies must start on a 4-byte boundary; an odd f16 offset reads one element early.
        let aligned_start = start / 4 * 4;
        let skip = (start - aligned_start) as usize;
        let copy_len = (padded + skip as u64).next_multiple_of(4).min(self.buffer().size() - aligned_start);
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("pigment.readback"),
            size: copy_len,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut batch = ctx.batch.lock().unwrap();
            batch.encoder(&ctx.device).copy_buffer_to_buffer(self.buffer(), aligned_start, &staging, 0, copy_len);
            batch.flush(&ctx.device, &ctx.queue);
        }
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        let polled = ctx.device.poll(wgpu::PollType::wait_indefinitely());
        #[cfg(not(target_arch = "wasm32"))]
        {
            ctx.check_faults(&op)?;
            polled.map_err(|e| Error::Gpu(e.to_string()))?;
        }
        let mapped = rx.await;
        // A loss or an error in the work just submitted is the real cause of a failed map.
        ctx.check_faults(&op)?;
        mapped
            .map_err(|_| Error::Gpu("readback was cancelled".into()))?
            .map_err(|e| Error::Gpu(format!("readback failed: {e}")))?;
        let view = staging.slice(..).get_mapped_range().map_err(|e| Error::Gpu(format!("readback mapping failed: {e}")))?;
        let raw = &view[skip..skip + bytes as usize];
        let out = match self.dtype {
            DType::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(raw),
            DType::F16 => bytemuck::pod_collect_to_vec::<u8, f16>(raw).iter().map(|h| h.to_f32()).collect(),
        };
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// Blocking readback for native code and tests.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_vec(&self, ctx: &Context) -> Result<Vec<f32>> {
        pollster::block_on(self.to_f32(ctx))
    }
}
