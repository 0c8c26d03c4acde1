//! One error type for the whole stack: every failure a user can cause names the thing and the fix.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("no GPU adapter found{0}. On Linux without a GPU install Mesa's lavapipe: `apt-get install mesa-vulkan-drivers libvulkan1`")]
    NoAdapter(String),
    #[error("could not open the GPU device on adapter '{adapter}': {reason}")]
    Device { adapter: String, reason: String },
    #[error("{what} needs a {bytes}-byte GPU binding but this adapter allows {limit} bytes per storage binding; use a smaller size (or tiled mode)")]
    BindingTooLarge { what: String, bytes: u64, limit: u64 },
    #[error("{what} needs a {bytes}-byte GPU buffer but this adapter's max_buffer_size is {limit}; use a smaller size")]
    BufferTooLarge { what: String, bytes: u64, limit: u64 },
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("{0} needs the SHADER_F16 feature, which this adapter does not offer")]
    NoF16(&'static str),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("GPU error: {0}")]
    Gpu(String),
    /// NaN or infinity at the end of a stage of a generation (see `pipeline::guard`).
    #[error("{count} of {total} values are NaN or infinite after the {stage}; {hint}")]
    NonFinite { stage: &'static str, count: u64, total: u64, hint: String },
    /// The GPU ran out of memory (wgpu's `OutOfMemory` error).
    #[error("GPU out of memory on adapter '{adapter}' during {op}: {detail}. Use a smaller --width/--height or --batch-count, f16 storage (without --no-f16), or check the need first with `--plan` / `--max-vram`")]
    OutOfMemory { adapter: String, op: String, detail: String },
    /// The device was lost (driver reset, GPU removed, or destroyed); everything on it is gone.
    #[error("GPU device lost on adapter '{adapter}' during {op}: {detail}. The device must be re-created (`Context::new`, which `pigment serve` does by itself); if it recurs, use a smaller size (a long dispatch can trip the driver's watchdog) or update the driver")]
    DeviceLost { adapter: String, op: String, detail: String },
    /// wgpu refused a command (a limit exceeded, a bug in Pigment).
    #[error("GPU validation error on adapter '{adapter}' during {op}: {detail}. A smaller --width/--height may fit the adapter's limits (`pigment adapters` lists them); otherwise please report it")]
    Validation { adapter: String, op: String, detail: String },
    /// Reading a checkpoint: missing/misshapen tensors, pickle files, unknown architectures.
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for a shape error with a formatted detail.
pub(crate) fn shape_err<T>(op: &'static str, detail: impl Into<String>) -> Result<T> {
    Err(Error::Shape { op, detail: detail.into() })
}
