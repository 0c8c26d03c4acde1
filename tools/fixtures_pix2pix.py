#!/usr/bin/env python3
"""InstructPix2Pix goldens (issue #15 item 2): diffusers' StableDiffusionInstructPix2PixPipeline on
sd15-pix2pix-tiny, a model whose UNet has 8 input channels (noisy latents + the input image's
latents). No weight file is committed: the UNet's weights come from Pigment's synthetic generator
(tools/fixtures_fullsize.py, twin of src/weights/synthetic.rs) and the test rebuilds the folder
(tests/pix2pix.rs).

Run from the repository root (CPU, float32, well under a minute):

    python tools/fixtures_pix2pix.py

Model:
    text_encoder, tokenizer, vae   tests/fixtures/sd15-tiny's (committed weights)
    scheduler                      sd15-tiny's config, as EulerAncestralDiscreteScheduler (the real
                                   timbrooks/instruct-pix2pix ships Euler a) or another sampler
    unet                           sd15-tiny's config with in_channels 8, synthetic weights

Writes (overwriting):
    assets/synthetic/sd15-pix2pix-tiny/tensors.txt.gz   the UNet's names and shapes
                                                        (unet<TAB>name<TAB>dims)
    assets/synthetic/sd15-pix2pix-tiny/unet.json        its config.json
    tests/fixtures/golden/pix2pix/
        <run>.png             64x64 output, input tests/fixtures/golden/img2img/init.png
        <run>.safetensors     image_latents [1,4,8,8] (vae.encode(image).latent_dist.mode(),
                              unscaled, as prepare_image_latents), latents (final, before the
                              VAE's 1/scaling_factor), t [S] (UNet timesteps)
        conditioning.json     the conditioning check (as make_fixtures.py) per run
    Runs (prompt INSTRUCTION, negative make_fixtures.NEGATIVE, seed 42, STEPS steps):
        euler_a          guidance 7.5, image guidance 1.5 (3-way batch)
        dpmpp_2m         the same with DPMSolverMultistepScheduler
        euler_a_cfg1     guidance 1.0: no guidance, one batch of (prompt, image)

Conditioning check: a 1e-6 relative perturbation of the initial noise must move the final uint8
image by < 0.05 levels mean abs, and the image must not be flat (std >= 20) or saturated
(> 20% at 0/255). The script fails (exit 1) otherwise.
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_fullsize import fill, save, t32, write_synthetic_assets  # noqa: E402
from make_fixtures import CONDITIONING_LIMIT, NEGATIVE, PERTURBATION, SEED  # noqa: E402

import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionInstructPix2PixPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SD15 = os.path.join(REPO, "tests", "fixtures", "sd15-tiny")
INIT = os.path.join(REPO, "tests", "fixtures", "golden", "img2img", "init.png")
ASSETS = os.path.join(REPO, "assets", "synthetic", "sd15-pix2pix-tiny")
OUT = os.path.join(REPO, "tests", "fixtures", "golden", "pix2pix")
INSTRUCTION = "make it snowy"
STEPS = 4
RUNS = {
    "euler_a": (EulerAncestralDiscreteScheduler, 7.5, 1.5),
    "dpmpp_2m": (DPMSolverMultistepScheduler, 7.5, 1.5),
    "euler_a_cfg1": (EulerAncestralDiscreteScheduler, 1.0, 1.5),
}


def build():
    with open(os.path.join(SD15, "unet", "config.json")) as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    cfg["in_channels"] = 8
    unet = UNet2DConditionModel.from_config(cfg).eval()
    shapes = fill(unet)
    assert shapes["conv_in.weight"][1] == 8
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=AutoencoderKL.from_pretrained(os.path.join(SD15, "vae"), torch_dtype=torch.float32).eval(),
        text_encoder=CLIPTextModel.from_pretrained(os.path.join(SD15, "text_encoder"), torch_dtype=torch.float32).eval(),
        tokenizer=CLIPTokenizer.from_pretrained(os.path.join(SD15, "tokenizer")),
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler.from_pretrained(os.path.join(SD15, "scheduler")),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    base_sched = dict(pipe.scheduler.config)
    return pipe, shapes, base_sched


def write_assets(pipe, shapes):
    write_synthetic_assets(ASSETS, {"unet": shapes}, {"unet": json.loads(pipe.unet.to_json_string())})


@torch.no_grad()
def run(pipe, image, guidance, image_guidance, latents=None):
    cap = {"t": []}
    orig_decode, orig_prep, orig_unet = pipe.vae.decode, pipe.prepare_image_latents, pipe.unet.forward

    def decode(z, *a, **k):
        cap["latents"] = t32(z * pipe.vae.config.scaling_factor)
        return orig_decode(z, *a, **k)

    def prep(*a, **k):
        out = orig_prep(*a, **k)
        cap["image_latents"] = t32(out[:1])
        return out

    def unet(sample, t, *a, **k):
        cap["t"].append(float(t))
        cap.setdefault("batch", sample.shape[0])
        return orig_unet(sample, t, *a, **k)

    gen = torch.Generator("cpu").manual_seed(SEED)
    if latents is not None:
        # advance the generator past the noise draw, so the sampler's own noise (Euler a) is the same
        torch.randn(latents.shape, generator=gen)
    pipe.vae.decode, pipe.prepare_image_latents, pipe.unet.forward = decode, prep, unet
    try:
        img = pipe(
            INSTRUCTION,
            image=image,
            negative_prompt=NEGATIVE,
            num_inference_steps=STEPS,
            guidance_scale=guidance,
            image_guidance_scale=image_guidance,
            generator=gen,
            latents=latents,
        ).images[0]
    finally:
        del pipe.vae.decode, pipe.prepare_image_latents, pipe.unet.forward
    return np.asarray(img).copy(), cap


def conditioning(pipe, image, img, guidance, image_guidance):
    # prepare_latents multiplies given latents by init_noise_sigma, as the generator path does
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(SEED))
    pert = noise * (1 + PERTURBATION * torch.randn(noise.shape, generator=torch.Generator().manual_seed(7)))
    img_a, _ = run(pipe, image, guidance, image_guidance, noise.clone())
    img_b, _ = run(pipe, image, guidance, image_guidance, pert)
    assert np.array_equal(img_a, img), "latents= path differs from the generator path"
    return {
        "perturbation_u8_mean_abs": float(np.abs(img_a.astype(np.float64) - img_b.astype(np.float64)).mean()),
        "image_std_u8": float(img.astype(np.float64).std()),
        "image_saturated_fraction": float(((img == 0) | (img == 255)).mean()),
        "limit_u8": CONDITIONING_LIMIT,
    }


def main():
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}")
    pipe, shapes, base_sched = build()
    write_assets(pipe, shapes)
    os.makedirs(OUT, exist_ok=True)
    image = Image.open(INIT).convert("RGB")
    cond, imgs = {}, {}
    for name, (cls, g, ig) in RUNS.items():
        pipe.scheduler = cls.from_config(base_sched)
        img, cap = run(pipe, image, g, ig)
        imgs[name] = img
        Image.fromarray(img).save(os.path.join(OUT, name + ".png"), optimize=False)
        meta = {"prompt": INSTRUCTION, "negative_prompt": NEGATIVE, "seed": SEED, "steps": STEPS, "guidance_scale": g,
                "image_guidance_scale": ig, "scheduler": cls.__name__, "unet_batch": cap["batch"], "image": "golden/img2img/init.png"}
        save({"image_latents": cap["image_latents"], "latents": cap["latents"], "t": torch.tensor(cap["t"], dtype=torch.float32)},
             os.path.join(OUT, name + ".safetensors"), meta)
        cond[name] = conditioning(pipe, image, img, g, ig)
        print(f"  {name:14s} batch={cap['batch']} evals={len(cap['t'])} std={img.std():.1f}")
    # what keeps the test meaningful: the runs differ from each other by many levels
    cond["mean_abs_vs_euler_a"] = {n: float(np.abs(imgs[n].astype(float) - imgs["euler_a"].astype(float)).mean()) for n in imgs}
    with open(os.path.join(OUT, "conditioning.json"), "w") as f:
        json.dump(cond, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(cond, indent=1))
    ok = all(c["perturbation_u8_mean_abs"] < CONDITIONING_LIMIT and c["image_std_u8"] >= 20 and c["image_saturated_fraction"] <= 0.2
             for n, c in cond.items() if n in RUNS)
    if not ok:
        print("FAIL: ill-conditioned, flat or saturated (see conditioning.json)")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
