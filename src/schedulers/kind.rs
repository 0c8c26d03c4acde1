//! The sampler families and sigma schedules users pick by name (CLI `--sampler` / `--scheduler`,
//! A1111's "Sampler" and "Schedule type").

use crate::{Error, Result};

/// The sampler families Pigment implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    Ddim,
    Pndm,
    Lms,
    Euler,
    EulerAncestral,
    Heun,
    DpmPlusPlus2M,
    /// `DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")`.
    DpmPlusPlus2MSde,
    /// `DPMSolverSDEScheduler` (Brownian-tree noise; see [`super::dpm_sde`]).
    DpmPlusPlusSde,
    UniPc,
    /// Latent consistency (only meaningful with LCM-distilled models or LoRAs).
    Lcm,
    Ddpm,
}

impl SamplerKind {
    pub const ALL: [SamplerKind; 12] = [
        SamplerKind::Ddim,
        SamplerKind::Pndm,
        SamplerKind::Lms,
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::Heun,
        SamplerKind::DpmPlusPlus2M,
        SamplerKind::DpmPlusPlus2MSde,
        SamplerKind::DpmPlusPlusSde,
        SamplerKind::UniPc,
        SamplerKind::Lcm,
        SamplerKind::Ddpm,
    ];

    /// Parses the [`SamplerKind::name`]s and aliases, case-insensitive, `_` = `-`:
    /// `pndm`/`plms`, `euler-a`, `dpmpp-2m`/`dpm++2m`, `dpmpp-2m-sde`/`dpm++2m-sde`,
    /// `dpmpp-sde`/`dpm++sde`, `unipc`, `lcm`, `ddpm`.
    pub fn parse(s: &str) -> Result<Self> {
        let k = s.trim().to_ascii_lowercase().replace(['_', ' '], "-");
        Ok(match k.as_str() {
            "ddim" => SamplerKind::Ddim,
            "pndm" | "plms" => SamplerKind::Pndm,
            "lms" => SamplerKind::Lms,
            "euler" => SamplerKind::Euler,
            "euler-a" | "euler-ancestral" | "eulera" => SamplerKind::EulerAncestral,
            "heun" => SamplerKind::Heun,
            "dpmpp-2m" | "dpm++2m" | "dpm++-2m" | "dpmpp2m" => SamplerKind::DpmPlusPlus2M,
            "dpmpp-2m-sde" | "dpm++2m-sde" | "dpm++-2m-sde" | "dpmpp2msde" | "dpmpp-2msde" => SamplerKind::DpmPlusPlus2MSde,
            "dpmpp-sde" | "dpm++sde" | "dpm++-sde" | "dpmppsde" => SamplerKind::DpmPlusPlusSde,
            "unipc" | "uni-pc" => SamplerKind::UniPc,
            "lcm" => SamplerKind::Lcm,
            "ddpm" => SamplerKind::Ddpm,
            _ => {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
                return Err(Error::Unsupported(format!("sampler '{s}' (choose {})", names.join(", "))));
            }
        })
    }

    /// The canonical CLI name.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddim => "ddim",
            SamplerKind::Pndm => "pndm",
            SamplerKind::Lms => "lms",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler-a",
            SamplerKind::Heun => "heun",
            SamplerKind::DpmPlusPlus2M => "dpmpp-2m",
            SamplerKind::DpmPlusPlus2MSde => "dpmpp-2m-sde",
            SamplerKind::DpmPlusPlusSde => "dpmpp-sde",
            SamplerKind::UniPc => "unipc",
            SamplerKind::Lcm => "lcm",
            SamplerKind::Ddpm => "ddpm",
        }
    }

    /// The sampler's name in A1111's UI and PNG parameters.
    pub fn a1111_name(self) -> &'static str {
        match self {
            SamplerKind::Ddim => "DDIM",
            SamplerKind::Pndm => "PLMS",
            SamplerKind::Lms => "LMS",
            SamplerKind::Euler => "Euler",
            SamplerKind::EulerAncestral => "Euler a",
            SamplerKind::Heun => "Heun",
            SamplerKind::DpmPlusPlus2M => "DPM++ 2M",
            SamplerKind::DpmPlusPlus2MSde => "DPM++ 2M SDE",
            SamplerKind::DpmPlusPlusSde => "DPM++ SDE",
            SamplerKind::UniPc => "UniPC",
            SamplerKind::Lcm => "LCM",
            SamplerKind::Ddpm => "DDPM",
        }
    }

    /// Whether the diffusers class offers `use_karras_sigmas` / `use_exponential_sigmas`
    /// (the other classes have a fixed timestep schedule).
    pub fn supports_schedule(self, schedule: SigmaSchedule) -> bool {
        schedule == SigmaSchedule::Normal
            || matches!(
                self,
                SamplerKind::Lms
                    | SamplerKind::Euler
                    | SamplerKind::Heun
                    | SamplerKind::DpmPlusPlus2M
                    | SamplerKind::DpmPlusPlus2MSde
                    | SamplerKind::DpmPlusPlusSde
                    | SamplerKind::UniPc
            )
    }

    /// Whether diffusers offers `use_karras_sigmas` for this class.
    pub fn supports_karras(self) -> bool {
        self.supports_schedule(SigmaSchedule::Karras)
    }

    /// The schedules [`SamplerKind::supports_schedule`] accepts, for messages.
    pub fn supported_schedules(self) -> Vec<SigmaSchedule> {
        SigmaSchedule::ALL.into_iter().filter(|&s| self.supports_schedule(s)).collect()
    }
}

/// The sigma (noise level) spacing, A1111's "Schedule type": diffusers' default timestep spacing
/// (`Normal`), `use_karras_sigmas` (Karras et al. 2022, ρ = 7) or `use_exponential_sigmas`
/// (uniform in log σ).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SigmaSchedule {
    #[default]
    Normal,
    Karras,
    Exponential,
}

impl SigmaSchedule {
    pub const ALL: [SigmaSchedule; 3] = [SigmaSchedule::Normal, SigmaSchedule::Karras, SigmaSchedule::Exponential];

    /// `normal` (also `default`, `uniform`), `karras`, `exponential` (case-insensitive).
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "normal" | "default" | "uniform" | "automatic" => SigmaSchedule::Normal,
            "karras" => SigmaSchedule::Karras,
            "exponential" | "exp" => SigmaSchedule::Exponential,
            _ => return Err(Error::Unsupported(format!("schedule '{s}' (choose normal, karras, exponential)"))),
        })
    }

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            SigmaSchedule::Normal => "normal",
            SigmaSchedule::Karras => "karras",
            SigmaSchedule::Exponential => "exponential",
        }
    }

    /// A1111's "Schedule type" label.
    pub fn a1111_name(self) -> &'static str {
        match self {
            SigmaSchedule::Normal => "Normal",
            SigmaSchedule::Karras => "Karras",
            SigmaSchedule::Exponential => "Exponential",
        }
    }
}
