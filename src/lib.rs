//! Pigment: Stable Diffusion on hand-written WGSL compute kernels.
//!
//! Layers, bottom up: [`gpu`] (device, tensors, pipeline cache, command batching),
//! [`ops`] (the Rust side of each kernel in `kernels/*.wgsl`), then models, schedulers and the
//! pipeline built from those ops.

pub mod error;
pub mod gpu;
pub mod ops;
pub mod rng;
pub mod schedulers;
pub mod prompt;
pub mod tokenizer;
pub mod weights;
pub mod models;
pub mod lora;
pub mod pipeline;
#[cfg(not(target_arch = "wasm32"))]
pub mod selftest;

#[cfg(feature = "cli")]
pub mod bench;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod hub;
#[cfg(feature = "serve")]
pub mod imageio;
#[cfg(feature = "serve")]
pub mod serve;

pub use error::{Error, Result};
pub use gpu::{Context, DType, Tensor};

#[cfg(target_arch = "wasm32")]
pub mod web;
