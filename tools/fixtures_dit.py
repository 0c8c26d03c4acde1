#!/usr/bin/env python3
"""A tiny class-conditional DiT (diffusers' DiTPipeline with its real classes) whose transformer
weights come from Pigment's synthetic generator (tools/fixtures_fullsize.py, the twin of
src/weights/synthetic.rs), and diffusers goldens for it (issue #15 item 1). No weight file is
committed: tests/dit.rs rebuilds the folder from the tensor list and configs, with
tests/fixtures/sd15-tiny/vae as its VAE.

Run from the repository root (CPU, float32, a few seconds):

    python tools/fixtures_dit.py

Model (DiT-XL/2's structure at small widths):
    transformer   DiTTransformer2DModel: sample_size 8, patch_size 2, in 4 / out 8 channels
                  (learned sigma), 2 layers, 2 heads of 16 (inner 32), 1000 classes (+ the null
                  class 1000), gelu-approximate, ada_norm_zero
    vae           tests/fixtures/sd15-tiny/vae (scaling_factor 0.18215, as DiT's sd-vae-ft-ema)
    scheduler     DDIMScheduler with DiT's training schedule (linear betas 1e-4..0.02,
                  set_alpha_to_one, steps_offset 0)

Writes (overwriting):
    assets/synthetic/dit-tiny/tensors.txt.gz    names and shapes (component<TAB>name<TAB>dims)
    assets/synthetic/dit-tiny/transformer.json  its config.json; scheduler.json; model_index.json
    tests/fixtures/golden/dit-tiny/
        transformer.safetensors  sample [2,4,8,8] (torch randn, seed 1010), timestep [981, 500],
                                 class_labels [207, 1000] -> out [2,8,8,8]
        ddim.png/.safetensors    DiTPipeline 64x64, class 207, 4 steps, guidance 4, seed 42
                                 (final latents)
        dpmpp.png/.safetensors   the same with DPMSolverMultistepScheduler.from_config
        conditioning.json        the checks below and statistics

Checks (the script exits 1 when one fails): a 1e-6 relative perturbation of the initial noise
moves the uint8 image by < 0.05 levels mean abs; the image is not flat (std >= 20) or saturated
(> 20% at 0/255); another class (1, goldfish) moves it by >= 1 level mean abs, so the label
conditions the image.
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_fullsize import fill, save, t32, write_synthetic_assets  # noqa: E402
from make_fixtures import CONDITIONING_LIMIT, PERTURBATION, SEED  # noqa: E402

import diffusers  # noqa: E402
import diffusers.pipelines.dit.pipeline_dit as pipeline_dit  # noqa: E402
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel, DPMSolverMultistepScheduler  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAE_DIR = os.path.join(REPO, "tests", "fixtures", "sd15-tiny", "vae")
CLASS = 207  # golden retriever
OTHER_CLASS = 1  # goldfish
STEPS = 4
GUIDANCE = 4.0  # DiTPipeline's default

TRANSFORMER = dict(
    sample_size=8,
    patch_size=2,
    in_channels=4,
    out_channels=8,
    num_layers=2,
    num_attention_heads=2,
    attention_head_dim=16,
    num_embeds_ada_norm=1000,
)
SCHEDULER = dict(
    beta_end=0.02,
    beta_schedule="linear",
    beta_start=0.0001,
    clip_sample=False,
    num_train_timesteps=1000,
    set_alpha_to_one=True,
    steps_offset=0,
    trained_betas=None,
)


def build():
    transformer = DiTTransformer2DModel(**TRANSFORMER).eval()
    shapes = {"transformer": fill(transformer)}
    vae = AutoencoderKL.from_pretrained(VAE_DIR, torch_dtype=torch.float32).eval()
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler.from_config(SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    return pipe, shapes


def write_assets(pipe, shapes):
    configs = {
        "transformer": json.loads(pipe.transformer.to_json_string()),
        "scheduler": dict(SCHEDULER, _class_name="DDIMScheduler"),
        "model_index": {"_class_name": "DiTPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
                        "transformer": ["diffusers", "DiTTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]},
    }
    write_synthetic_assets(os.path.join(REPO, "assets", "synthetic", "dit-tiny"), shapes, configs)


@torch.no_grad()
def run(pipe, noise=None, label=CLASS):
    """DiTPipeline's image (uint8) and final latents; `noise` replaces its randn_tensor draw."""
    cap = {}
    orig = pipe.vae.decode

    def decode(z, *a, **k):
        cap["latents"] = t32(z * pipe.vae.config.scaling_factor)
        return orig(z, *a, **k)

    orig_randn = pipeline_dit.randn_tensor
    if noise is not None:
        pipeline_dit.randn_tensor = lambda shape, **k: noise.clone()
    pipe.vae.decode = decode
    try:
        out = pipe(class_labels=[label], guidance_scale=GUIDANCE, num_inference_steps=STEPS,
                   generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images[0]
    finally:
        del pipe.vae.decode
        pipeline_dit.randn_tensor = orig_randn
    # output_type "pil"'s rounding: numpy_to_pil is (x * 255).round()
    return (out * 255).round().astype(np.uint8), cap


def checks(pipe, img):
    s = pipe.transformer.config.sample_size
    noise = torch.randn((1, 4, s, s), generator=torch.Generator("cpu").manual_seed(SEED))
    pert = noise * (1 + PERTURBATION * torch.randn(noise.shape, generator=torch.Generator().manual_seed(7)))
    img_a, cap_a = run(pipe, noise)
    img_b, _ = run(pipe, pert)
    img_c, _ = run(pipe, label=OTHER_CLASS)
    assert np.array_equal(img_a, img), "the replaced noise differs from the generator's"
    f64 = lambda x: x.astype(np.float64)  # noqa: E731
    return {
        "perturbation_u8_mean_abs": float(np.abs(f64(img_a) - f64(img_b)).mean()),
        "other_class_u8_mean_abs": float(np.abs(f64(img_a) - f64(img_c)).mean()),
        "image_std_u8": float(f64(img).std()),
        "image_saturated_fraction": float(((img == 0) | (img == 255)).mean()),
        "limit_u8": CONDITIONING_LIMIT,
        "latents_std": float(cap_a["latents"].std()),
    }


def ok(c):
    return c["perturbation_u8_mean_abs"] < CONDITIONING_LIMIT and c["image_std_u8"] >= 20 and c["image_saturated_fraction"] <= 0.2 and c["other_class_u8_mean_abs"] >= 1


@torch.no_grad()
def goldens(pipe, out):
    os.makedirs(out, exist_ok=True)
    sample = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(1010))
    timestep = torch.tensor([981, 500])
    labels = torch.tensor([CLASS, 1000])
    o = pipe.transformer(sample, timestep=timestep, class_labels=labels).sample
    save({"sample": sample, "timestep": timestep.float(), "class_labels": labels, "out": t32(o)},
         os.path.join(out, "transformer.safetensors"), {"note": "DiTTransformer2DModel(sample, timestep, class_labels).sample"})
    cond = {"transformer_out_std": float(o.std())}
    for name, sched in (("ddim", DDIMScheduler.from_config(SCHEDULER)), ("dpmpp", DPMSolverMultistepScheduler.from_config(SCHEDULER))):
        pipe.scheduler = sched
        img, cap = run(pipe)
        Image.fromarray(img).save(os.path.join(out, f"{name}.png"), optimize=False)
        save({"latents": cap["latents"]}, os.path.join(out, f"{name}.safetensors"),
             {"class_label": CLASS, "seed": SEED, "steps": STEPS, "guidance_scale": GUIDANCE, "scheduler": type(sched).__name__})
        cond[name] = checks(pipe, img)
    with open(os.path.join(out, "conditioning.json"), "w") as f:
        json.dump(cond, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(cond, indent=1))
    return ok(cond["ddim"]) and ok(cond["dpmpp"])


def main():
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}")
    pipe, shapes = build()
    write_assets(pipe, shapes)
    good = goldens(pipe, os.path.join(REPO, "tests", "fixtures", "golden", "dit-tiny"))
    if not good:
        print("FAIL: ill-conditioned, flat, saturated or label-blind (see conditioning.json)")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
