//! The `pigment` command line.

use crate::bench;
use crate::gpu::{AdapterChoice, Context};
use crate::DType;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "pigment", version, about = "Stable Diffusion on hand-written WGSL kernels (wgpu)")]
pub struct Cli {
    /// GPU adapter: a substring of its name or its index in `pigment adapters` (env PIGMENT_ADAPTER).
    #[arg(long, global = true)]
    pub adapter: Option<String>,
    /// Use f32 storage even where the adapter offers f16 (env PIGMENT_F16=0).
    #[arg(long, global = true)]
    pub no_f16: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// List the GPU adapters wgpu can see, in the order Pigment prefers them.
    Adapters,
    /// Kernel microbenchmarks on SD-shaped problems, with a CPU baseline from the same run.
    Bench {
        #[arg(value_enum, default_value = "all")]
        what: BenchWhat,
        /// Storage dtype(s) to time.
        #[arg(long, value_enum, default_value = "both")]
        dtype: DTypeArg,
        /// Minimum seconds spent timing each case.
        #[arg(long, default_value_t = 1.0)]
        secs: f64,
        /// SD's full shapes (batch 2, 8 heads) even on a CPU adapter, where they take minutes.
        #[arg(long)]
        full: bool,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BenchWhat {
    Gemm,
    Conv2d,
    Groupnorm,
    Attention,
    All,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DTypeArg {
    F32,
    F16,
    Both,
}

fn open(cli: &Cli) -> anyhow::Result<Context> {
    let mut choice = AdapterChoice::from_env();
    if cli.adapter.is_some() {
        choice.name = cli.adapter.clone();
    }
    choice.disable_f16 |= cli.no_f16;
    Ok(Context::new_blocking(&choice)?)
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Adapters => {
            for (i, info) in pollster::block_on(crate::gpu::list_adapters()).iter().enumerate() {
                println!("{i}: {} ({:?}, {:?}, driver {})", info.name, info.backend, info.device_type, info.driver_info);
            }
        }
        Command::Bench { what, dtype, secs, full } => {
            let ctx = open(&cli)?;
            let mut dtypes = match dtype {
                DTypeArg::F32 => vec![DType::F32],
                DTypeArg::F16 => vec![DType::F16],
                DTypeArg::Both => vec![DType::F32, DType::F16],
            };
            if !ctx.f16 {
                if matches!(dtype, DTypeArg::F16) {
                    anyhow::bail!("adapter '{}' has no SHADER_F16; use --dtype f32", ctx.info.name);
                }
                dtypes.retain(|d| *d == DType::F32);
            }
            let scale = bench::Scale::for_adapter(&ctx, *full);
            let all = *what == BenchWhat::All;
            bench::print_header(&ctx);
            if all || *what == BenchWhat::Gemm {
                bench::print_rows(&bench::gemm_rows(&ctx, &dtypes, *secs)?);
            }
            if all || *what == BenchWhat::Conv2d {
                bench::print_rows(&bench::conv_rows(&ctx, &dtypes, *secs, scale)?);
            }
            if all || *what == BenchWhat::Groupnorm {
                bench::print_rows(&bench::groupnorm_rows(&ctx, &dtypes, *secs, scale)?);
            }
            if all || *what == BenchWhat::Attention {
                bench::print_rows(&bench::attention_rows(&ctx, &dtypes, *secs, scale)?);
            }
        }
    }
    Ok(())
}
