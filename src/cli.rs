//! The `pigment` command line.

use crate::bench;
use crate::gpu::{AdapterChoice, Context};
use crate::DType;
pub use crate::imageio::canny_map;
use crate::imageio::{read_image, resize_rgb, write_png};
use clap::{Parser, Subcommand, ValueEnum};

mod diffedit;
mod dit;
mod edit;
mod pix2pix_zero;
mod sd_upscale;
mod upscale;

#[derive(Parser)]
#[command(name = "pigment", version, about = "Stable Diffusion on hand-written WGSL kernels (wgpu)")]
pub struct Cli {
    /// GPU adapter: a substring of its name or its index in `pigment adapters` (env PIGMENT_ADAPTER).
    #[arg(long, global = true)]
    pub adapter: Option<String>,
    /// Use f32 storage even where the adapter offers f16 (env PIGMENT_F16=0).
    #[arg(long, global = true)]
    pub no_f16: bool,
    /// Use the fixed GEMM variant ranking instead of measured choices (env PIGMENT_TUNE=0).
    #[arg(long, global = true)]
    pub no_tune: bool,
    #[command(subcommand)]
    pub command: Command,
}

// `Generate` carries every flag; it is built once per run, so its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Make an image (txt2img; img2img with --init-image, inpainting with --mask, LoRA with
    /// --lora, ControlNet with --controlnet) and write a PNG carrying A1111's `parameters`.
    Generate {
        /// The prompt (or use --prompt).
        #[arg(value_name = "PROMPT")]
        positional_prompt: Option<String>,
        /// A diffusers folder, a single-file .safetensors checkpoint, a Hugging Face hub id, or
        /// `synthetic:sd15` / `synthetic:sd21v` (full-size, generated weights: no download).
        /// Default: stable-diffusion-v1-5/stable-diffusion-v1-5 (fp16 files, ~2 GB, downloaded
        /// once into the Hugging Face cache).
        #[arg(long)]
        model: Option<String>,
        /// For a hub id: the weight files' variant, e.g. `fp16` for `*.fp16.safetensors` (the
        /// plain files where the repository has no such variant). Default: fp16 for the
        /// default model, none otherwise.
        #[arg(long)]
        variant: Option<String>,
        /// For a single-file checkpoint: a diffusers folder whose configs, tokenizer and
        /// scheduler describe it (diffusers' `from_single_file(..., config=DIR)`).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[arg(long)]
        prompt: Option<String>,
        #[arg(long, default_value = "")]
        negative_prompt: String,
        /// SDXL: a prompt for the second text encoder (diffusers' prompt_2; default: the prompt).
        #[arg(long, value_name = "TEXT")]
        prompt_2: Option<String>,
        /// SDXL: a negative prompt for the second text encoder (default: the negative prompt).
        #[arg(long, value_name = "TEXT")]
        negative_prompt_2: Option<String>,
        /// Random seed (a random one is chosen and printed when absent).
        #[arg(long)]
        seed: Option<u64>,
        /// Output width (default: the model's size, from its unet/config.json `sample_size`: 512 for
        /// SD 1.x, 768 for SD 2.x 768-v, 1024 for SDXL; or the init image's width).
        #[arg(long)]
        width: Option<usize>,
        /// Output height (default: the model's size, as --width; or the init image's height).
        #[arg(long)]
        height: Option<usize>,
        /// SDXL micro-conditioning `original_size`, WIDTHxHEIGHT (default: the output size).
        #[arg(long, value_parser = parse_size)]
        original_size: Option<(usize, usize)>,
        /// SDXL `crops_coords_top_left`, TOP,LEFT in pixels (default 0,0).
        #[arg(long, value_parser = parse_top_left)]
        crops_coords_top_left: Option<(usize, usize)>,
        /// SDXL `target_size`, WIDTHxHEIGHT (default: the output size).
        #[arg(long, value_parser = parse_size)]
        target_size: Option<(usize, usize)>,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Classifier-free guidance scale (default 7.5; DiT 4.0); <= 1 runs no unconditional
        /// batch (as diffusers; Turbo models use 0).
        #[arg(long)]
        cfg: Option<f32>,
        /// ddim, pndm, lms, euler, euler-a, heun, dpmpp-2m, dpmpp-2m-sde, dpmpp-sde, unipc, lcm
        /// (LCM-distilled models only), ddpm. Default euler-a; DiT: its scheduler's.
        #[arg(long)]
        sampler: Option<String>,
        /// DiT (class-conditional ImageNet): the class, an id (207) or a name ("golden
        /// retriever"); default: the prompt read as a name.
        #[arg(long, value_name = "ID|NAME")]
        class_label: Option<String>,
        /// Sigma schedule (A1111's "Schedule type"): normal, karras or exponential; karras and
        /// exponential work with lms, euler, heun, dpmpp-2m, dpmpp-2m-sde, dpmpp-sde, unipc.
        #[arg(long, default_value = "normal")]
        scheduler: String,
        /// Same as `--scheduler karras`.
        #[arg(long)]
        karras: bool,
        /// CLIP skip as A1111 counts it (1 = last layer, 2 = penultimate).
        #[arg(long, default_value_t = 1)]
        clip_skip: usize,
        /// Self-Attention Guidance scale (0 = off; 0.75 is diffusers' default). SD 1.x/2.x with
        /// an integer-timestep sampler (ddim, pndm, ddpm, dpmpp-2m, dpmpp-2m-sde, unipc, lcm).
        #[arg(long, default_value_t = 0.0, value_name = "S")]
        sag_scale: f32,
        /// GLIGEN (a GLIGEN checkpoint): a phrase placed in a box, "x0,y0,x1,y1:phrase" with
        /// fractions of the image; repeatable (up to 30).
        #[arg(long = "box", value_name = "BOX")]
        boxes: Vec<crate::pipeline::GroundingBox>,
        /// GLIGEN: the fraction of the steps the boxes steer (diffusers'
        /// gligen_scheduled_sampling_beta).
        #[arg(long, default_value_t = 0.3, value_name = "BETA")]
        gligen_beta: f32,
        /// pix2pix-zero: a sentence with the concept to edit away, e.g. "a cat" (repeatable; a
        /// .txt file gives one sentence per line); the image is generated from the prompt and
        /// edited towards --edit-to, its layout kept by cross-attention guidance.
        #[arg(long, value_name = "TEXT|FILE.txt")]
        edit_from: Vec<String>,
        /// pix2pix-zero: the same sentences with the new concept, e.g. "a dog".
        #[arg(long, value_name = "TEXT|FILE.txt")]
        edit_to: Vec<String>,
        /// pix2pix-zero's cross-attention guidance amount (diffusers'
        /// cross_attention_guidance_amount; 0 = the edited prompt alone).
        #[arg(long, default_value_t = 0.1, value_name = "A")]
        cross_attention_guidance: f32,
        #[arg(long, default_value = "output.png")]
        output: std::path::PathBuf,
        /// Images to make, one after another with seeds seed, seed+1, ... (A1111's batch count);
        /// files are numbered NAME-0001.png, ... when more than one.
        #[arg(long, default_value_t = 1)]
        batch_count: usize,
        /// img2img: start from this image (PNG or JPEG; resized to --width/--height when given,
        /// A1111's "Just resize").
        #[arg(long, value_name = "FILE")]
        init_image: Option<std::path::PathBuf>,
        /// Inpainting: mask image of the init image's size, white = repaint, black = keep (needs
        /// --init-image).
        #[arg(long, value_name = "FILE")]
        mask: Option<std::path::PathBuf>,
        /// Denoising strength in (0, 1]: the share of the steps run from the noised init image
        /// (default 0.8 for img2img, 1.0 with --mask, as diffusers' pipelines).
        #[arg(long)]
        strength: Option<f32>,
        /// Gaussian blur radius for the mask before it is binarised (PIL's GaussianBlur).
        #[arg(long, default_value_t = 0)]
        mask_blur: usize,
        /// A LoRA to merge, kohya/A1111 or diffusers/PEFT `.safetensors`, with an optional
        /// multiplier (default 1); repeat for several.
        #[arg(long = "lora", value_name = "FILE[:SCALE]")]
        loras: Vec<String>,
        /// Folder of LoRAs for A1111 prompt tags `<lora:NAME:SCALE>` (NAME = file stem).
        #[arg(long, value_name = "DIR")]
        lora_dir: Option<std::path::PathBuf>,
        /// Folder of hypernetworks (`.safetensors`, tools/convert_hypernetwork.py) for A1111
        /// prompt tags `<hypernet:NAME:MULTIPLIER>` (NAME = file stem).
        #[arg(long, value_name = "DIR")]
        hypernetwork_dir: Option<std::path::PathBuf>,
        /// A ControlNet: a diffusers folder (config.json + diffusion_pytorch_model.safetensors),
        /// an A1111 .safetensors (`control_model.*`) or a hub id, for the same base model family.
        #[arg(long)]
        controlnet: Option<std::path::PathBuf>,
        /// The ControlNet's hint (PNG or JPEG, e.g. an edge or depth map), resized to the output size.
        #[arg(long)]
        control_image: Option<std::path::PathBuf>,
        /// ControlNet conditioning scale (A1111 "Weight").
        #[arg(long, default_value_t = 1.0)]
        control_scale: f32,
        /// Fraction of the steps after which the ControlNet starts acting.
        #[arg(long, default_value_t = 0.0)]
        control_start: f32,
        /// Fraction of the steps after which it stops.
        #[arg(long, default_value_t = 1.0)]
        control_end: f32,
        /// Turn --control-image into the hint first: `canny` makes an edge map (A1111's canny
        /// preprocessor; thresholds --canny-low/--canny-high).
        #[arg(long, value_enum, default_value = "none")]
        control_preprocess: Preprocess,
        #[arg(long, default_value_t = 100.0)]
        canny_low: f32,
        #[arg(long, default_value_t = 200.0)]
        canny_high: f32,
        /// Refuse before starting when the generation's predicted GPU peak (its memory plan)
        /// exceeds this, e.g. 2300M, 8G, 2.3GB (also PIGMENT_MAX_VRAM). wgpu cannot query a
        /// GPU's memory, so the limit is yours to give.
        #[arg(long, value_name = "SIZE")]
        max_vram: Option<String>,
        /// Print the generation's memory plan (GPU peak per phase) and exit without running.
        #[arg(long)]
        plan: bool,
        /// Keep the text encoders on the host and upload each layer as it runs (A1111's
        /// --medvram for them): less GPU memory (SDXL 1024x1024 f16 under 7 GB), slower prompts.
        #[arg(long)]
        medvram: bool,
        /// Previews while sampling, written to OUTPUT-preview.png (overwritten): decoded by
        /// TAESD (needs --taesd), by the full VAE, or off.
        #[arg(long, value_enum, default_value = "off")]
        preview: PreviewArg,
        /// A preview every N model evaluations.
        #[arg(long, default_value_t = 5)]
        preview_every: usize,
        /// TAESD weights (diffusers AutoencoderTiny folder as madebyollin/taesd, or the original
        /// taesd_decoder.safetensors / taesd_encoder.safetensors, file or folder).
        #[arg(long, value_name = "PATH")]
        taesd: Option<std::path::PathBuf>,
        /// Decoder of the final image: the model's VAE, or TAESD (fast, approximate; needs --taesd).
        #[arg(long, value_enum, default_value = "full")]
        vae_decoder: DecoderArg,
        /// Encoder of the init image (img2img, inpainting, hires fix with lanczos): the model's
        /// VAE, or TAESD's encoder for a fast draft (needs --taesd with taesd_encoder).
        #[arg(long, value_enum, default_value = "full")]
        vae_encoder: DecoderArg,
        /// Hires fix (A1111): generate at --width x --height, upscale by this factor (to
        /// multiples of 8), then img2img at that size.
        #[arg(long, value_name = "SCALE")]
        hires_scale: Option<f32>,
        /// Steps of the hires pass (0 = --steps).
        #[arg(long, default_value_t = 0)]
        hires_steps: usize,
        /// Denoising strength of the hires pass, in (0, 1].
        #[arg(long, default_value_t = 0.7)]
        hires_denoise: f32,
        /// latent (bilinear), latent-nearest, lanczos (decode, PIL Lanczos, encode), or the path
        /// of a Real-ESRGAN / ESRGAN .safetensors (decode, the model, Lanczos to size, encode).
        #[arg(long, default_value = "latent")]
        hires_upscaler: String,
        /// SDXL: a refiner (stabilityai/stable-diffusion-xl-refiner-1.0: folder, file or hub id)
        /// that takes over the base's latents at --refiner-switch (diffusers' ensemble of
        /// experts, A1111's refiner).
        #[arg(long, value_name = "MODEL")]
        refiner: Option<String>,
        /// The fraction of the schedule the base runs before the refiner, in (0, 1).
        #[arg(long, value_name = "F")]
        refiner_switch: Option<f32>,
        /// SDXL refiner: the aesthetic score of its time ids (and the negative's), as diffusers.
        #[arg(long, default_value_t = 6.0, value_name = "S")]
        aesthetic_score: f32,
        #[arg(long, default_value_t = 2.5, value_name = "S")]
        negative_aesthetic_score: f32,
    },
    /// Edit an image by an instruction with an InstructPix2Pix model, e.g.
    /// `pigment edit IN.png "make it snowy" --model timbrooks/instruct-pix2pix`.
    Edit(edit::EditArgs),
    /// DiffEdit: edit an image from a source caption to a target one inside an estimated mask
    /// (or --mask), e.g. `pigment diffedit IN.png --source "a bowl of fruits" --target "a
    /// basket of pears" --save-mask MASK.png --out OUT.png`.
    Diffedit(diffedit::DiffEditArgs),
    /// Upscale an image with a Real-ESRGAN / ESRGAN (RRDBNet) model, tiled so any size fits, or
    /// with the Stable Diffusion x4 upscaler (a diffusers folder; prompt-guided, 4x).
    Upscale {
        /// The image (PNG, JPEG or WebP).
        input: std::path::PathBuf,
        /// An RRDBNet .safetensors (RealESRGAN_x4plus, x4plus_anime_6B, x2plus, old ESRGAN x4
        /// names), or synthetic:x4plus | synthetic:x4plus-anime-6b | synthetic:x2plus
        /// (the architecture with generated weights: for timing, no download); or a
        /// stable-diffusion-x4-upscaler diffusers folder.
        #[arg(long)]
        model: String,
        /// Output size / input size (default: the model's); another factor runs the model
        /// until the image is at least that big, then resizes with Lanczos (A1111's way).
        #[arg(long)]
        scale: Option<f32>,
        /// Tile edge in input pixels (0 = whole image); shrunk, with a note, when a tile's
        /// tensors would not fit the adapter's storage binding limit.
        #[arg(long, default_value_t = crate::pipeline::upscale::DEFAULT_TILE)]
        tile: usize,
        /// Output PNG (default: IN-xS.png beside the input).
        #[arg(long, short = 'o')]
        out: Option<std::path::PathBuf>,
        /// The Stable Diffusion x4 upscaler (--model a diffusers folder with low_res_scheduler/):
        /// prompt, noise level, sampling and seed; see `pipeline::sd_upscale`.
        #[command(flatten)]
        x4: sd_upscale::X4Args,
    },
    /// An HTTP server with AUTOMATIC1111's API (/sdapi/v1/...), OpenAI's
    /// /v1/images/generations and Pigment's job API: one GPU worker behind a FIFO queue.
    Serve {
        /// Address to listen on; a non-loopback address needs --api-key.
        #[arg(long, default_value = "127.0.0.1:7860")]
        listen: std::net::SocketAddr,
        /// Every route then needs `Authorization: Bearer KEY` (or Basic auth with KEY as the password).
        #[arg(long, env = "PIGMENT_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Model loaded first (default: the first under --models-dir): a diffusers folder, a
        /// .safetensors checkpoint or synthetic:sd15|sd21v.
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        /// Models to list and switch between (diffusers folders and .safetensors files).
        #[arg(long, value_name = "DIR")]
        models_dir: Option<std::path::PathBuf>,
        /// LoRAs for `<lora:NAME:W>` prompt tags.
        #[arg(long, value_name = "DIR")]
        lora_dir: Option<std::path::PathBuf>,
        /// Hypernetworks (.safetensors, tools/convert_hypernetwork.py) for `<hypernet:NAME:W>`
        /// prompt tags.
        #[arg(long, value_name = "DIR")]
        hypernetwork_dir: Option<std::path::PathBuf>,
        /// Textual-inversion embeddings (.safetensors), loaded with each model.
        #[arg(long, value_name = "DIR")]
        embeddings_dir: Option<std::path::PathBuf>,
        /// ControlNets for `alwayson_scripts.controlnet` (folders or .safetensors).
        #[arg(long, value_name = "DIR")]
        controlnet_dir: Option<std::path::PathBuf>,
        /// Real-ESRGAN upscalers (.safetensors RRDBNets) for /sdapi/v1/upscalers and
        /// /sdapi/v1/extra-single-image.
        #[arg(long, value_name = "DIR")]
        upscaler_dir: Option<std::path::PathBuf>,
        /// Largest request body, MiB (base64 images make bodies big).
        #[arg(long, default_value_t = 64)]
        body_limit_mb: usize,
        /// A preview (one VAE decode) every N model evaluations for progress' `current_image`
        /// and the SSE stream; 0 = none.
        #[arg(long, default_value_t = 10)]
        preview_every: usize,
        /// TAESD weights (as `generate --taesd`): previews are TAESD decodes, ~100x cheaper
        /// than the VAE's, so --preview-every can be small.
        #[arg(long, value_name = "PATH")]
        taesd: Option<std::path::PathBuf>,
        /// Let pages from this origin call the API from a browser (CORS), e.g. the web page
        /// served from another machine: scheme://host[:port], or * for any; repeatable.
        #[arg(long = "cors-origin", value_name = "ORIGIN")]
        cors_origins: Vec<String>,
    },
    /// List the GPU adapters wgpu can see, in the order Pigment prefers them, with the GEMM
    /// variants each can run and those `pigment tune` chose.
    Adapters,
    /// Check every kernel variant this adapter can run against CPU references (f32, and f16
    /// where offered); exits non-zero on any failure. The first thing to run on a new GPU.
    Selftest {
        /// Fewer shapes (about a minute on a GPU).
        #[arg(long)]
        quick: bool,
        /// Only this kernel family (gemm, conv2d, attention, group_norm, layer_norm, softmax,
        /// geglu, elementwise, embedding, resample, pixel_shuffle).
        #[arg(long)]
        family: Option<String>,
    },
    /// Time the GEMM variants and tiles on a model's GEMM shapes and cache the fastest for this
    /// adapter (JSON in $XDG_CACHE_HOME/pigment or ~/.cache/pigment).
    Tune {
        /// A diffusers folder whose UNet shapes to tune (one evaluation is run to learn them);
        /// default SD 1.5's UNet shapes.
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        /// Latent size the shapes are for (image = 8x); default 64, 8 on CPU adapters.
        #[arg(long)]
        latent: Option<usize>,
        #[arg(long, value_enum, default_value = "both")]
        dtype: DTypeArg,
        /// Minimum seconds timing each candidate.
        #[arg(long, default_value_t = 0.2)]
        secs: f64,
        /// Print the table but leave the cache file alone.
        #[arg(long)]
        dry_run: bool,
        /// Tune only the first N problems (smallest first; quick checks on slow adapters).
        #[arg(long)]
        limit: Option<usize>,
    },
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
        /// unet/vae: latent size (image = 8x); default 64 (512x512) on GPUs, 8 on CPU adapters.
        #[arg(long)]
        latent: Option<usize>,
        /// unet/vae/clip: a diffusers folder or `synthetic:sd15|sd21v` to time; default synthetic:sd15.
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        /// unet/vae/clip: one profiled call instead of timed calls, with a table of GPU time
        /// per kernel family and shape (`PIGMENT_PROFILE=1` profiles any command).
        #[arg(long)]
        profile: bool,
        /// unet/vae/clip: run nothing; print the GPU peak a call would reach (a memory plan:
        /// the call on virtual buffers, exact, in seconds at any size).
        #[arg(long)]
        plan: bool,
    },
    /// Merge checkpoints as A1111's Checkpoint Merger: `(1-alpha)*A + alpha*B`, or with C
    /// `A + alpha*(B-C)`. Folders give a folder, single files a file; the VAE is A's.
    Merge {
        /// The primary model (a diffusers folder or a .safetensors file); its VAE, configs and
        /// any tensors the others lack are kept.
        a: std::path::PathBuf,
        b: std::path::PathBuf,
        /// The model subtracted in add-difference (e.g. the base B was trained from).
        c: Option<std::path::PathBuf>,
        /// weighted (A1111 "Weighted sum") or add-difference (needs C).
        #[arg(long, value_enum, default_value = "weighted")]
        mode: MergeModeArg,
        /// A1111's "Multiplier (M)".
        #[arg(long, default_value_t = 0.3)]
        alpha: f32,
        /// The merged model: a folder for folder inputs, a .safetensors file for single files.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Store the result in float16 (A1111's "Save as float16").
        #[arg(long)]
        fp16: bool,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum MergeModeArg {
    Weighted,
    AddDifference,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum PreviewArg {
    Taesd,
    Full,
    Off,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DecoderArg {
    Taesd,
    Full,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum Preprocess {
    /// The image is the hint already.
    None,
    /// Canny edge map, white edges on black.
    Canny,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BenchWhat {
    Gemm,
    Conv2d,
    Groupnorm,
    Attention,
    /// Kernels only (gemm, conv2d, groupnorm, attention).
    All,
    Unet,
    /// pix2pix-zero's cross-attention guidance step: the UNet's reverse pass (ms, and as a
    /// multiple of a UNet step timed in the same run).
    UnetGrad,
    Vae,
    Clip,
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

/// The profile of everything the command ran, when `PIGMENT_PROFILE=1` turned it on.
fn print_profile(ctx: &Context) -> anyhow::Result<()> {
    if ctx.profiling() {
        crate::gpu::print_profile(&ctx.profile_report()?, None);
    }
    Ok(())
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.no_tune {
        // Read by ops::gemm_tune; set before any thread exists.
        std::env::set_var("PIGMENT_TUNE", "0");
    }
    match &cli.command {
        Command::Generate {
            positional_prompt,
            model,
            variant,
            config,
            prompt,
            negative_prompt,
            prompt_2,
            negative_prompt_2,
            seed,
            width,
            height,
            original_size,
            crops_coords_top_left,
            target_size,
            steps,
            cfg,
            sampler,
            class_label,
            scheduler,
            karras,
            clip_skip,
            sag_scale,
            boxes,
            gligen_beta,
            edit_from,
            edit_to,
            cross_attention_guidance,
            output,
            batch_count,
            init_image,
            mask,
            strength,
            mask_blur,
            loras,
            lora_dir,
            hypernetwork_dir,
            controlnet,
            control_image,
            control_scale,
            control_start,
            control_end,
            control_preprocess,
            canny_low,
            canny_high,
            max_vram,
            plan,
            medvram,
            preview,
            preview_every,
            taesd,
            vae_decoder,
            vae_encoder,
            hires_scale,
            hires_steps,
            hires_denoise,
            hires_upscaler,
            refiner,
            refiner_switch,
            aesthetic_score,
            negative_aesthetic_score,
        } => {
            if let Some(dir) = model.as_deref().map(std::path::Path::new).filter(|p| crate::pipeline::dit::is_dit_folder(p)) {
                let given = [
                    (!negative_prompt.is_empty(), "--negative-prompt"),
                    (init_image.is_some() || mask.is_some(), "--init-image/--mask"),
                    (!loras.is_empty() || lora_dir.is_some(), "--lora/--lora-dir"),
                    (controlnet.is_some(), "--controlnet"),
                    (hires_scale.is_some(), "--hires-scale"),
                    (prompt_2.is_some() || negative_prompt_2.is_some(), "--prompt-2"),
                    (taesd.is_some(), "--taesd"),
                ];
                let args = dit::Args {
                    prompt: prompt.as_deref().or(positional_prompt.as_deref()),
                    class_label: class_label.as_deref(),
                    width: *width,
                    height: *height,
                    steps: *steps,
                    cfg: *cfg,
                    sampler: sampler.as_deref(),
                    schedule: crate::schedulers::SigmaSchedule::parse(scheduler)?,
                    seed: seed.unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64 % 4_294_967_296).unwrap_or(0)),
                    batch_count: *batch_count,
                    output,
                    unused: given.iter().filter(|g| g.0).map(|g| g.1).collect(),
                };
                return dit::run(&open(&cli)?, dir, args, !cli.no_f16, numbered);
            }
            if class_label.is_some() {
                anyhow::bail!("--class-label is for class-conditional DiT models (a diffusers DiTPipeline folder as --model)");
            }
            let prompt = match (prompt, positional_prompt) {
                (Some(p), None) | (None, Some(p)) => p.clone(),
                (Some(_), Some(_)) => anyhow::bail!("give the prompt once: positionally or with --prompt"),
                (None, None) => anyhow::bail!("no prompt: `pigment generate \"a photo of a cat\"`"),
            };
            let mut init_image = init_image.as_deref().map(|p| read_image(p, "init image")).transpose()?;
            let mut mask = mask.as_deref().map(|p| read_image(p, "mask")).transpose()?;
            if init_image.is_none() && strength.is_some() {
                anyhow::bail!("--strength needs --init-image (the image to start from)");
            }
            if mask.is_none() && *mask_blur > 0 {
                anyhow::bail!("--mask-blur needs --mask");
            }
            if mask.is_some() && init_image.is_none() {
                anyhow::bail!("--mask needs --init-image (the image to inpaint)");
            }
            let path = resolve_model(model.as_deref(), variant.as_deref())?;
            let switch = match (refiner, refiner_switch) {
                (None, Some(_)) => anyhow::bail!("--refiner-switch needs --refiner MODEL (an SDXL refiner)"),
                (_, Some(f)) if !(*f > 0.0 && *f < 1.0) => {
                    anyhow::bail!("--refiner-switch {f} must be in (0, 1): the fraction of the schedule the base runs, e.g. 0.8")
                }
                (_, f) => f.unwrap_or(0.8),
            };
            // With an init image the size defaults to the image's; else the model's own
            // (diffusers' `sample_size`; 512, or 1024 for SDXL single files).
            let base = crate::weights::default_image_side(&path);
            let (dw, dh) = init_image.as_ref().map(|i| (i.width, i.height)).unwrap_or((base, base));
            let (width, height) = (&width.unwrap_or(dw), &height.unwrap_or(dh));
            crate::pipeline::check_size(*width, *height)?;
            // A1111's "Just resize" (and diffusers' preprocessing): the init image, and its mask
            // with it, are resized to the output size. The mask must match its image first.
            if let (Some(i), Some(m)) = (&init_image, &mask) {
                if (i.width, i.height) != (m.width, m.height) {
                    anyhow::bail!(
                        "the mask is {}x{} but the init image is {}x{}: make the mask the same size as its image",
                        m.width, m.height, i.width, i.height
                    );
                }
            }
            for img in [&mut init_image, &mut mask].into_iter().flatten() {
                if (img.width, img.height) != (*width, *height) {
                    eprintln!("resizing {}x{} to {width}x{height} (Lanczos3)", img.width, img.height);
                    *img = resize_rgb(img, *width, *height);
                }
            }
            let strength = strength.unwrap_or(if mask.is_some() { 1.0 } else { 0.8 });
            let sampler = crate::schedulers::SamplerKind::parse(sampler.as_deref().unwrap_or("euler-a"))?;
            let mut schedule = crate::schedulers::SigmaSchedule::parse(scheduler)?;
            if *karras {
                if schedule != crate::schedulers::SigmaSchedule::Normal && schedule != crate::schedulers::SigmaSchedule::Karras {
                    anyhow::bail!("--karras contradicts --scheduler {}", schedule.name());
                }
                schedule = crate::schedulers::SigmaSchedule::Karras;
            }
            if !sampler.supports_schedule(schedule) {
                let with: Vec<&str> = crate::schedulers::SamplerKind::ALL
                    .iter()
                    .filter(|k| k.supports_schedule(schedule))
                    .map(|k| k.name())
                    .collect();
                anyhow::bail!(
                    "--scheduler {} is not available for {} (it has a fixed schedule); use {}",
                    schedule.name(),
                    sampler.name(),
                    with.join(", ")
                );
            }
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64 % 4_294_967_296).unwrap_or(0)
            });
            let control = match (controlnet, control_image) {
                (Some(_), Some(img)) => {
                    let mut image = read_control_image(img, *width, *height)?;
                    if *control_preprocess == Preprocess::Canny {
                        image = canny_map(&image, *canny_low, *canny_high)?;
                    }
                    let mut c = crate::pipeline::ControlOptions::new(image);
                    (c.scale, c.guidance_start, c.guidance_end) = (*control_scale, *control_start, *control_end);
                    Some(c)
                }
                (Some(_), None) => anyhow::bail!("--controlnet needs --control-image FILE (the hint image: an edge map, depth map, ...)"),
                (None, Some(_)) => anyhow::bail!("--control-image needs --controlnet MODEL (a ControlNet for this base model)"),
                (None, None) => None,
            };
            let hires = match hires_scale {
                Some(scale) => Some(crate::pipeline::HiresOptions {
                    scale: *scale,
                    steps: *hires_steps,
                    denoise: *hires_denoise,
                    upscaler: crate::pipeline::HiresUpscaler::parse(hires_upscaler)?,
                }),
                None => {
                    if *hires_steps != 0 || *hires_denoise != 0.7 || hires_upscaler != "latent" {
                        anyhow::bail!("--hires-steps, --hires-denoise and --hires-upscaler need --hires-scale (e.g. --hires-scale 2)");
                    }
                    None
                }
            };
            let decodes_taesd = *preview == PreviewArg::Taesd || *vae_decoder == DecoderArg::Taesd;
            let encodes_taesd = *vae_encoder == DecoderArg::Taesd;
            if (decodes_taesd || encodes_taesd) && taesd.is_none() {
                anyhow::bail!("--preview taesd, --vae-decoder taesd and --vae-encoder taesd need --taesd PATH (a madebyollin/taesd folder, or taesd_decoder.safetensors / taesd_encoder.safetensors)");
            }
            // LoRA files and prompt tags first: a missing one fails before the model loads.
            let uses = crate::lora::uses_for_cli(loras, lora_dir.as_deref(), &prompt)?;
            let hypernets = crate::pipeline::hypernetwork::uses_for_prompt(&prompt, hypernetwork_dir.as_deref())?;
            let real = open(&cli)?;
            eprintln!("adapter: {}", real.describe());
            // `--plan` loads and runs on a planning context only: no GPU memory, no kernels.
            let planner = plan.then(|| real.planner());
            let ctx = planner.as_ref().unwrap_or(&real);
            let mut sd = crate::pipeline::StableDiffusion::load_with_config(ctx, &path, config.as_deref(), !cli.no_f16)?;
            if *medvram {
                sd.stream_text_encoders(ctx);
            }
            for u in &uses {
                eprintln!("lora: {} ({} pairs; text encoder ×{}, UNet ×{})", u.lora.path(), u.lora.len(), u.te_scale, u.unet_scale);
            }
            for w in sd.set_loras(&ctx, &uses)? {
                eprintln!("warning: {w}");
            }
            for (h, m) in &hypernets {
                eprintln!("hypernetwork: {} ×{m}", h.name);
            }
            sd.set_hypernetworks(hypernets)?;
            if let Some(cn) = controlnet {
                sd.load_controlnet(&ctx, &resolve_controlnet(cn, variant.as_deref())?)?;
            }
            let refiner = match refiner {
                Some(r) => {
                    if !sd.is_sdxl() || sd.is_refiner() {
                        let what = if sd.is_refiner() { "a refiner itself (give the SDXL base as --model)" } else { "not an SDXL base" };
                        anyhow::bail!("--refiner continues an SDXL base's latents; --model {} is {what}", path.display());
                    }
                    let rp = resolve_model(Some(r), variant.as_deref())?;
                    let m = crate::pipeline::StableDiffusion::load(ctx, &rp, !cli.no_f16)?;
                    if !m.is_refiner() {
                        anyhow::bail!("--refiner {r}: not an SDXL refiner (it has a text_encoder, or no aesthetic-score time ids); give stabilityai/stable-diffusion-xl-refiner-1.0 or a model like it");
                    }
                    Some(m)
                }
                None => None,
            };
            if let Some(t) = taesd {
                let m = crate::models::taesd::Taesd::open(ctx, t, sd.vae.dtype).map_err(|e| anyhow::anyhow!("--taesd {}: {e}", t.display()))?;
                if decodes_taesd && !m.has_decoder() {
                    anyhow::bail!("--taesd {}: no decoder (give taesd_decoder.safetensors or a diffusers AutoencoderTiny folder)", t.display());
                }
                if encodes_taesd && !m.has_encoder() {
                    anyhow::bail!("--taesd {}: no encoder for --vae-encoder taesd (give taesd_encoder.safetensors or a diffusers AutoencoderTiny folder)", t.display());
                }
                sd.set_taesd(Some(m));
            }
            let to_decoder = |taesd: bool| if taesd { crate::pipeline::VaeDecoder::Taesd } else { crate::pipeline::VaeDecoder::Full };
            let mut opts = crate::pipeline::GenerateOptions {
                prompt,
                negative_prompt: negative_prompt.clone(),
                prompt_2: prompt_2.clone(),
                negative_prompt_2: negative_prompt_2.clone(),
                seed,
                width: *width,
                height: *height,
                steps: *steps,
                guidance: cfg.unwrap_or(7.5),
                sampler,
                schedule,
                clip_skip: (*clip_skip).max(1),
                init_image,
                mask,
                strength,
                mask_blur: *mask_blur,
                control,
                // diffusers' (height, width); the flags read WIDTHxHEIGHT as --width/--height
                original_size: original_size.map(|(w, h)| (h, w)),
                crops_coords_top_left: crops_coords_top_left.unwrap_or((0, 0)),
                target_size: target_size.map(|(w, h)| (h, w)),
                hires,
                decoder: to_decoder(*vae_decoder == DecoderArg::Taesd),
                preview_decoder: to_decoder(*preview == PreviewArg::Taesd),
                encoder: to_decoder(encodes_taesd),
                sag_scale: *sag_scale,
                gligen: (!boxes.is_empty())
                    .then(|| crate::pipeline::GligenOptions { boxes: boxes.clone(), scheduled_sampling_beta: *gligen_beta }),
                instruct: None,
                aesthetic_score: *aesthetic_score,
                negative_aesthetic_score: *negative_aesthetic_score,
                ..Default::default()
            };
            if !sd.is_sdxl() && (original_size.is_some() || crops_coords_top_left.is_some() || target_size.is_some()) {
                anyhow::bail!("--original-size / --crops-coords-top-left / --target-size are SDXL micro-conditioning; {} is not an SDXL model", path.display());
            }
            let zero = pix2pix_zero::options(edit_from, edit_to, *cross_attention_guidance)?;
            if zero.is_some() && (refiner.is_some() || *preview != PreviewArg::Off) {
                anyhow::bail!("--edit-from/--edit-to (pix2pix-zero) do not combine with --refiner or --preview");
            }
            let max_vram = max_vram.clone().or_else(|| std::env::var("PIGMENT_MAX_VRAM").ok().filter(|v| !v.is_empty()));
            if *plan || max_vram.is_some() {
                let limit = max_vram.as_deref().map(crate::pipeline::plan::parse_bytes).transpose()?.unwrap_or(u64::MAX);
                let p = sd.check_memory(&ctx, &opts, limit)?;
                eprintln!("memory plan ({}x{}, {}):\n{}", opts.width, opts.height, sd.unet.dtype.name(), p.describe());
                if *plan {
                    return Ok(());
                }
            }
            for n in 0..(*batch_count).max(1) {
                opts.seed = seed.wrapping_add(n as u64);
                println!("seed: {}", opts.seed);
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}]")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                let path = if *batch_count > 1 { numbered(output, n + 1) } else { output.clone() };
                let progress = |i: usize, total: usize| {
                    bar.set_length(total as u64);
                    bar.set_position(i as u64);
                };
                let image = if let Some(p) = &zero {
                    sd.pix2pix_zero(&ctx, &opts, p, progress)?
                } else if let Some(r) = &refiner {
                    sd.generate_refined(ctx, r, &opts, switch, progress)?
                } else if *preview == PreviewArg::Off {
                    sd.generate(&ctx, &opts, progress)?
                } else {
                    let preview_path = path.with_file_name(format!(
                        "{}-preview.png",
                        path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
                    ));
                    sd.generate_with_previews(&ctx, &opts, *preview_every, progress, |_, img| {
                        if let Err(e) = write_png(&preview_path, img, "") {
                            eprintln!("warning: preview {}: {e}", preview_path.display());
                        }
                    })?
                };
                bar.finish();
                for w in sd.take_warnings() {
                    eprintln!("warning: {w}");
                }
                let mut params = crate::pipeline::a1111_parameters(&opts, &sd.name);
                params.push_str(&crate::lora::a1111_hashes(&uses));
                if let Some(r) = &refiner {
                    params.push_str(&crate::pipeline::refiner::a1111_parameters(&r.name, switch));
                }
                if let (Some(c), Some(cn)) = (&opts.control, controlnet) {
                    let name = cn.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    let module = match control_preprocess {
                        Preprocess::None => "none",
                        Preprocess::Canny => "canny",
                    };
                    params.push_str(&crate::pipeline::controlnet::a1111_parameters(c, &name, module));
                }
                write_png(&path, &image, &params)?;
                println!("wrote {}", path.display());
            }
            print_profile(&ctx)?;
        }
        Command::Merge { a, b, c, mode, alpha, out, fp16 } => {
            use crate::weights::merge;
            let mode = match mode {
                MergeModeArg::Weighted => merge::Mode::Weighted,
                MergeModeArg::AddDifference => merge::Mode::AddDifference,
            };
            let start = std::time::Instant::now();
            let r = merge::merge(a, b, c.as_deref(), out, &merge::MergeOptions { mode, alpha: *alpha, fp16: *fp16 })?;
            println!(
                "wrote {}: {} tensors merged ({} keeping A's extra input channels), {} copied from A ({} missing in the others), {:.1} s",
                out.display(),
                r.merged,
                r.partial,
                r.copied,
                r.missing_in_other,
                start.elapsed().as_secs_f64()
            );
        }
        Command::Serve { listen, api_key, model, models_dir, lora_dir, hypernetwork_dir, embeddings_dir, controlnet_dir, upscaler_dir, body_limit_mb, preview_every, taesd, cors_origins } => {
            let mut choice = AdapterChoice::from_env();
            if cli.adapter.is_some() {
                choice.name = cli.adapter.clone();
            }
            choice.disable_f16 |= cli.no_f16;
            let opts = crate::serve::Options {
                listen: *listen,
                api_key: api_key.clone(),
                models_dir: models_dir.clone(),
                model: model.clone(),
                lora_dir: lora_dir.clone(),
                hypernetwork_dir: hypernetwork_dir.clone(),
                embeddings_dir: embeddings_dir.clone(),
                controlnet_dir: controlnet_dir.clone(),
                upscaler_dir: upscaler_dir.clone(),
                body_limit: body_limit_mb.saturating_mul(1 << 20),
                preview_every: *preview_every,
                taesd: taesd.clone(),
                cors_origins: cors_origins.clone(),
                want_f16: !cli.no_f16,
            };
            crate::serve::run(opts, choice)?;
        }
        Command::Edit(args) => edit::run(&cli, args)?,
        Command::Diffedit(args) => diffedit::run(&cli, args)?,
        Command::Upscale { input, model, scale, tile, out, x4 } => {
            let ctx = open(&cli)?;
            if crate::pipeline::sd_upscale::is_x4_upscaler(std::path::Path::new(model)) {
                sd_upscale::run(&ctx, input, model.as_ref(), x4, *scale, *tile, out.as_deref(), !cli.no_f16)?;
            } else {
                upscale::run(&ctx, input, model, *scale, *tile, out.as_deref())?;
            }
            print_profile(&ctx)?;
        }
        Command::Adapters => {
            for (i, info) in pollster::block_on(crate::gpu::list_adapters()).iter().enumerate() {
                println!("{i}: {} ({:?}, {:?}, driver {})", info.name, info.backend, info.device_type, info.driver_info);
                crate::bench::tune::print_choices(info);
            }
        }
        Command::Selftest { quick, family } => {
            let ctx = open(&cli)?;
            println!("selftest on {}", ctx.describe());
            let opts = crate::selftest::Options { quick: *quick, family: family.clone() };
            let start = std::time::Instant::now();
            let lines = crate::selftest::run(&ctx, &opts, |l| println!("{l}"));
            let failed = lines.iter().filter(|l| !l.ok()).count();
            println!("{} variant checks, {failed} failed, {:.1} s", lines.len(), start.elapsed().as_secs_f64());
            if lines.is_empty() {
                anyhow::bail!("no selftest case matched (family {:?})", family);
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} selftest checks failed on {}", lines.len(), ctx.info.name);
            }
        }
        Command::Tune { model, latent, dtype, secs, dry_run, limit } => {
            let ctx = open(&cli)?;
            let dtypes = pick_dtypes(&ctx, *dtype)?;
            let cpu = ctx.info.device_type == wgpu::DeviceType::Cpu;
            let latent = latent.unwrap_or(if cpu { 8 } else { 64 });
            crate::bench::tune::run(&ctx, &dtypes, latent, model.as_deref(), *secs, !*dry_run, *limit)?;
        }
        Command::Bench { what, dtype, secs, full, latent, model, profile, plan } => {
            let ctx = open(&cli)?;
            let dtypes = pick_dtypes(&ctx, *dtype)?;
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
            if matches!(what, BenchWhat::Unet | BenchWhat::UnetGrad | BenchWhat::Vae | BenchWhat::Clip) {
                let cpu = ctx.info.device_type == wgpu::DeviceType::Cpu;
                let latent = latent.unwrap_or(if cpu && !*full { 8 } else { 64 });
                let which = match what {
                    BenchWhat::Unet => bench::ModelBench::Unet,
                    BenchWhat::UnetGrad => bench::ModelBench::UnetGrad,
                    BenchWhat::Vae => bench::ModelBench::Vae,
                    _ => bench::ModelBench::Clip,
                };
                bench::print_rows(&bench::model_rows(&ctx, &dtypes, latent, model.as_deref(), which, *profile, *plan)?);
            }
            if !*profile {
                print_profile(&ctx)?;
            }
        }
    }
    Ok(())
}

fn pick_dtypes(ctx: &Context, dtype: DTypeArg) -> anyhow::Result<Vec<DType>> {
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
    Ok(dtypes)
}

/// A local path, or a Hugging Face hub id (`org/name`) downloaded into the hub cache; no model
/// at all is the default model.
fn resolve_model(model: Option<&str>, variant: Option<&str>) -> anyhow::Result<std::path::PathBuf> {
    let Some(model) = model else {
        eprintln!("model: {} ({} files; --model picks another)", crate::hub::DEFAULT_MODEL, crate::hub::DEFAULT_VARIANT);
        return crate::hub::model_folder(crate::hub::DEFAULT_MODEL, Some(variant.unwrap_or(crate::hub::DEFAULT_VARIANT)));
    };
    let path = std::path::PathBuf::from(model);
    // generated in memory by StableDiffusion::load_with_config
    if path.exists() || model.starts_with("synthetic:") {
        return Ok(path);
    }
    if !crate::hub::is_hub_id(model) {
        anyhow::bail!("model '{model}' not found: give a diffusers folder, a .safetensors checkpoint, or a hub id like stable-diffusion-v1-5/stable-diffusion-v1-5");
    }
    crate::hub::model_folder(model, variant)
}

/// A local ControlNet folder or file, or a hub id (`org/name`: its `config.json` and
/// `diffusion_pytorch_model.safetensors`, downloaded into the hub cache).
fn resolve_controlnet(cn: &std::path::Path, variant: Option<&str>) -> anyhow::Result<std::path::PathBuf> {
    let s = cn.to_string_lossy();
    if cn.exists() {
        return Ok(cn.to_path_buf());
    }
    if !crate::hub::is_hub_id(&s) {
        anyhow::bail!("ControlNet '{s}' not found: give a diffusers ControlNet folder, an A1111 .safetensors or a hub id like lllyasviel/sd-controlnet-canny");
    }
    crate::hub::controlnet_folder(&s, variant)
}

/// `out.png` -> `out-0001.png` for the n-th image of a batch.
fn numbered(path: &std::path::Path, n: usize) -> std::path::PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "output".into());
    path.with_file_name(format!("{stem}-{n:04}.png"))
}

/// `WIDTHxHEIGHT` (e.g. `1024x768`).
fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("'{s}' is not WIDTHxHEIGHT (e.g. 1024x768)");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    Ok((w.trim().parse().map_err(|_| bad())?, h.trim().parse().map_err(|_| bad())?))
}

/// `TOP,LEFT` (e.g. `0,256`).
fn parse_top_left(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("'{s}' is not TOP,LEFT in pixels (e.g. 0,256)");
    let (t, l) = s.split_once(',').ok_or_else(bad)?;
    Ok((t.trim().parse().map_err(|_| bad())?, l.trim().parse().map_err(|_| bad())?))
}

/// The control image as RGB8 at `width` x `height` (resized when its size differs).
fn read_control_image(path: &std::path::Path, width: usize, height: usize) -> anyhow::Result<crate::pipeline::Image> {
    let img = read_image(path, "control image")?;
    Ok(if (img.width, img.height) == (width, height) { img } else { resize_rgb(&img, width, height) })
}
