//! What the GPU worker does: jobs, their results, and the worker thread itself.

pub mod queue;
pub mod worker;

use crate::pipeline::{GenerateOptions, Image};
use crate::serve::errors::ApiError;
use std::path::PathBuf;

/// Images to make, one after another, with the same model, LoRAs and ControlNet.
pub struct GenJob {
    /// One entry per image (A1111's batch_size × n_iter), each with its own seed.
    pub images: Vec<GenerateOptions>,
    /// `override_settings.sd_model_checkpoint`: the model for this job (a title from
    /// `/sdapi/v1/sd-models`), and whether to switch back afterwards.
    pub model: Option<String>,
    pub restore_model: bool,
    /// A ControlNet to load for `GenerateOptions::control`.
    pub controlnet: Option<PathBuf>,
    /// Appended to each image's infotext (ControlNet settings).
    pub extra_parameters: String,
    /// `refiner_checkpoint` / `refiner_switch_at`: an SDXL refiner (a listed model's path)
    /// taking over the base's latents at that fraction of the schedule.
    pub refiner: Option<(PathBuf, f32)>,
}

pub enum Work {
    Generate(GenJob),
    /// `POST /sdapi/v1/options {"sd_model_checkpoint": title}`.
    SwitchModel(String),
    /// `POST /sdapi/v1/extra-single-image`.
    Upscale(UpscaleJob),
}

/// One image through an upscaler, by `by` (A1111's `upscaling_resize`).
pub struct UpscaleJob {
    pub image: Image,
    pub upscaler: Upscaler,
    pub by: f32,
}

/// A1111's built-in upscalers, or a model file.
#[derive(Clone, Debug, PartialEq)]
pub enum Upscaler {
    /// "None": the image as it is.
    None,
    /// "Lanczos" / "Nearest": a plain resize.
    Lanczos,
    Nearest,
    /// A Real-ESRGAN / ESRGAN file.
    Model(PathBuf),
}

pub struct GenImage {
    pub image: Image,
    /// A1111's `parameters` text (the infotext).
    pub parameters: String,
    pub seed: u64,
}

pub struct Generated {
    pub images: Vec<GenImage>,
    /// The model's name as the infotexts write it.
    pub model: String,
    /// Interrupted (`/sdapi/v1/interrupt`): the last image is the latents so far, decoded, and
    /// the rest of the batch was not made.
    pub interrupted: bool,
    pub warnings: Vec<String>,
}

pub enum Output {
    Images(Generated),
    Switched,
    Upscaled(Image),
}

pub type JobResult = Result<std::sync::Arc<Output>, ApiError>;
