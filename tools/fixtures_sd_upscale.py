#!/usr/bin/env python3
"""A tiny random-weight Stable Diffusion x4 upscaler (diffusers' StableDiffusionUpscalePipeline
with its real classes) whose UNet and VAE weights come from Pigment's synthetic generator
(tools/fixtures_fullsize.py, the twin of src/weights/synthetic.rs), and diffusers goldens for it
(issue #15 item 9). No weight file is committed: tests/sd_upscale.rs rebuilds the folder.

Run from the repository root (CPU, float32, well under a minute):

    python tools/fixtures_sd_upscale.py

Model (stabilityai/stable-diffusion-x4-upscaler's structure at small widths):
    text_encoder, tokenizer   tests/fixtures/sd21-tiny's (OpenCLIP-style, 64 wide, pads with "!")
    unet            in_channels 7 (4 latent + 3 noised low-res RGB), block_out_channels
                    (32, 64, 64), DownBlock2D + 2 CrossAttnDownBlock2D, only_cross_attention
                    (True, True, False) (as the real (T, T, T, F): attn1 attends to the text in
                    all but the last attention level), num_class_embeds 1000 (the noise level is
                    the class label), linear projections, heads (2, 4, 4), cross_attention_dim 64
    vae             3 levels (factor 4), block_out_channels (8, 16, 16), scaling_factor 0.08333
    scheduler       DDIMScheduler as the real scheduler/scheduler_config.json (v_prediction)
    low_res_scheduler  DDPMScheduler as the real low_res_scheduler/scheduler_config.json

Writes (overwriting):
    assets/synthetic/x4-tiny/tensors.txt.gz   unet and vae names and shapes (component<TAB>name<TAB>dims)
    assets/synthetic/x4-tiny/<part>.json      unet, vae, scheduler, low_res_scheduler, model_index
    tests/fixtures/golden/x4-tiny/
        low_res.png            16x16 input (tests/fixtures/golden/img2img/init.png, PIL bicubic)
        unet.safetensors       sample [1,7,8,8], encoder_hidden_states [1,8,64] (torch randn),
                               timestep 500, class label 20 -> out; out_no_class (label 0)
        ddim.png/.safetensors  64x64, DDIM 3 steps, cfg 9, noise_level 20, seed 42 (final latents)
        euler.png/.safetensors the same with EulerDiscreteScheduler and noise_level 100
        stats.json             image statistics (the script fails on flat or saturated images)

Generator order (one torch generator, seed 42): randn of the low-res image's shape for
low_res_scheduler.add_noise, then the latents' randn (times init_noise_sigma).
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_fullsize import fill, save, t32, write_synthetic_assets  # noqa: E402
from make_fixtures import NEGATIVE, PROMPT, SEED  # noqa: E402

import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SD21 = os.path.join(REPO, "tests", "fixtures", "sd21-tiny")
LOW = 16
STEPS = 3
GUIDANCE = 9.0

UNET = dict(
    sample_size=16,
    in_channels=7,
    out_channels=4,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[32, 64, 64],
    layers_per_block=2,
    attention_head_dim=[2, 4, 4],
    cross_attention_dim=64,
    norm_num_groups=8,
    use_linear_projection=True,
    only_cross_attention=[True, True, False],
    num_class_embeds=1000,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[8, 16, 16],
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=64,
    scaling_factor=0.08333,
)
# stabilityai/stable-diffusion-x4-upscaler scheduler/scheduler_config.json (the LDM config's
# linear_start 0.0001 / linear_end 0.02, sqrt-linear = diffusers' scaled_linear; v-prediction)
SCHEDULER = dict(
    beta_end=0.02,
    beta_schedule="scaled_linear",
    beta_start=0.0001,
    clip_sample=False,
    num_train_timesteps=1000,
    prediction_type="v_prediction",
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    trained_betas=None,
)
# ... low_res_scheduler/scheduler_config.json
LOW_RES_SCHEDULER = dict(
    beta_end=0.02,
    beta_schedule="scaled_linear",
    beta_start=0.0001,
    clip_sample=False,
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    trained_betas=None,
    variance_type="fixed_small",
)
RUNS = (("ddim", DDIMScheduler, 20), ("euler", EulerDiscreteScheduler, 100))


def build():
    text = CLIPTextModel.from_pretrained(os.path.join(SD21, "text_encoder")).eval()
    tok = CLIPTokenizer.from_pretrained(os.path.join(SD21, "tokenizer"))
    unet = UNet2DConditionModel(**UNET).eval()
    vae = AutoencoderKL(**VAE).eval()
    shapes = {c: fill(m) for c, m in (("unet", unet), ("vae", vae))}
    pipe = StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        low_res_scheduler=DDPMScheduler.from_config(LOW_RES_SCHEDULER),
        scheduler=DDIMScheduler.from_config(SCHEDULER),
        max_noise_level=350,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, shapes


def write_assets(pipe, shapes):
    index = {k: (list(v) if isinstance(v, tuple) else v) for k, v in pipe.config.items() if not k.startswith("_")}
    configs = {
        "unet": json.loads(pipe.unet.to_json_string()),
        "vae": json.loads(pipe.vae.to_json_string()),
        "scheduler": dict(SCHEDULER, _class_name="DDIMScheduler"),
        "low_res_scheduler": dict(LOW_RES_SCHEDULER, _class_name="DDPMScheduler"),
        "model_index": dict(index, _class_name="StableDiffusionUpscalePipeline"),
    }
    write_synthetic_assets(os.path.join(REPO, "assets", "synthetic", "x4-tiny"), shapes, configs)


@torch.no_grad()
def run(pipe, image, noise_level):
    cap = {}
    orig = pipe.vae.decode

    def decode(z, *a, **k):
        cap["latents"] = t32(z * pipe.vae.config.scaling_factor)
        return orig(z, *a, **k)

    pipe.vae.decode = decode
    try:
        img = pipe(
            PROMPT,
            image=image,
            negative_prompt=NEGATIVE,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            noise_level=noise_level,
            generator=torch.Generator("cpu").manual_seed(SEED),
        ).images[0]
    finally:
        del pipe.vae.decode
    return np.asarray(img).copy(), cap


@torch.no_grad()
def goldens(pipe, out):
    os.makedirs(out, exist_ok=True)
    low = Image.open(os.path.join(REPO, "tests", "fixtures", "golden", "img2img", "init.png")).convert("RGB").resize((LOW, LOW), Image.BICUBIC)
    low.save(os.path.join(out, "low_res.png"), optimize=False)
    low = Image.open(os.path.join(out, "low_res.png")).convert("RGB")

    g = torch.Generator().manual_seed(1010)
    sample = torch.randn((1, 7, 8, 8), generator=g)
    ehs = torch.randn((1, 8, 64), generator=g)
    u = pipe.unet(sample, torch.tensor(500), encoder_hidden_states=ehs, class_labels=torch.tensor([20])).sample
    u0 = pipe.unet(sample, torch.tensor(500), encoder_hidden_states=ehs, class_labels=torch.tensor([0])).sample
    save({"sample": sample, "encoder_hidden_states": ehs, "out": t32(u), "out_no_class": t32(u0)}, os.path.join(out, "unet.safetensors"),
         {"timestep": 500, "class_label": 20, "out_no_class": "class label 0"})

    stats = {"unet_class_effect_mean_abs": float((u - u0).abs().mean()), "unet_out_std": float(u.std())}
    base = pipe.scheduler
    ok = True
    for name, cls, level in RUNS:
        pipe.scheduler = cls.from_config(SCHEDULER)
        img, cap = run(pipe, low, level)
        Image.fromarray(img).save(os.path.join(out, f"{name}.png"), optimize=False)
        save({"latents": cap["latents"]}, os.path.join(out, f"{name}.safetensors"),
             {"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEED, "steps": STEPS, "guidance_scale": GUIDANCE,
              "noise_level": level, "scheduler": cls.__name__, "size": img.shape[1]})
        std = float(img.astype(np.float64).std())
        sat = float(((img == 0) | (img == 255)).mean())
        stats[name] = {"image_std_u8": std, "image_saturated_fraction": sat, "latents_std": float(cap["latents"].std()), "size": list(img.shape)}
        ok &= std >= 20 and sat <= 0.2 and img.shape == (4 * LOW, 4 * LOW, 3)
    pipe.scheduler = base
    with open(os.path.join(out, "stats.json"), "w") as f:
        json.dump(stats, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(stats, indent=1))
    return ok


def main():
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}")
    pipe, shapes = build()
    write_assets(pipe, shapes)
    if not goldens(pipe, os.path.join(REPO, "tests", "fixtures", "golden", "x4-tiny")):
        print("FAIL: flat, saturated or wrong-size image (see stats.json)")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
