//! Models built from [`crate::ops`] and loaded through [`crate::weights`].

pub mod clip;
pub mod controlnet;
pub mod dit;
pub mod esrgan;
pub mod gligen;
pub mod hypernetwork;
pub mod taesd;
pub mod unet;
pub mod unet_grad;
pub mod vae;
