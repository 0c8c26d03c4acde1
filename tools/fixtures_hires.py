#!/usr/bin/env python3
"""Hires-fix goldens (issue #14, item 3): A1111's two-pass txt2img composed from diffusers'
own pipelines on tests/fixtures/sd15-tiny (made by make_fixtures.py), CPU float32:

  1. StableDiffusionPipeline at the base size (BASE x BASE), output_type="latent";
  2. upscale to round8(SCALE * BASE):
       latent          torch.nn.functional.interpolate(mode="bilinear", antialias=False)
                       (A1111's "Latent")
       latent_nearest  interpolate(mode="nearest") (A1111's "Latent (nearest)")
       lanczos         the base image (VAE decode, as output_type="pil") resized with PIL's
                       Image.LANCZOS (A1111's "Lanczos" upscaler), to be VAE-encoded by step 3
  3. StableDiffusionImg2ImgPipeline at the target size, strength DENOISE, HIRES_STEPS steps,
     from the upscaled latents (passed as `image`: 4-channel tensors are used as latents,
     unscaled) or the resized image; a fresh generator with the same seed, as A1111 reseeds the
     second pass's noise with the image's seed.

Prompt/negative/seed/guidance as make_fixtures.py; sampler Euler (EulerDiscreteScheduler).
Writes tests/fixtures/golden/hires/{latent,latent_nearest,lanczos}.png and base.png (the first
pass's image) and base_lanczos.png (its PIL Lanczos resize, the lanczos run's init image). Run from the repository root (a few seconds):

    python tools/fixtures_hires.py
"""

import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402
from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline  # noqa: E402

OUT = os.path.join(mf.REPO, "tests", "fixtures", "golden", "hires")
BASE = 32
SCALE = 2.0
STEPS = 4
HIRES_STEPS = 4
DENOISE = 0.5


def round8(v):
    return int(round(v / 8.0)) * 8


@torch.no_grad()
def main():
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    folder = os.path.join(mf.REPO, "tests", "fixtures", "sd15-tiny")
    txt = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None)
    txt.scheduler = EulerDiscreteScheduler.from_config(txt.scheduler.config)
    i2i = StableDiffusionImg2ImgPipeline(**txt.components)
    common = dict(negative_prompt=mf.NEGATIVE, guidance_scale=mf.GUIDANCE)
    gen = lambda: torch.Generator("cpu").manual_seed(mf.SEED)  # noqa: E731
    latents = txt(mf.PROMPT, height=BASE, width=BASE, num_inference_steps=STEPS, generator=gen(), output_type="latent", **common).images
    base = txt.image_processor.postprocess(txt.vae.decode(latents / txt.vae.config.scaling_factor).sample, output_type="pil")[0]
    base.save(os.path.join(OUT, "base.png"))
    target = round8(SCALE * BASE)
    runs = {
        "latent": torch.nn.functional.interpolate(latents, size=(target // 8, target // 8), mode="bilinear", antialias=False),
        "latent_nearest": torch.nn.functional.interpolate(latents, size=(target // 8, target // 8), mode="nearest"),
        "lanczos": base.resize((target, target), resample=Image.LANCZOS),
    }
    runs["lanczos"].save(os.path.join(OUT, "base_lanczos.png"))
    for name, image in runs.items():
        out = i2i(mf.PROMPT, image=image, strength=DENOISE, num_inference_steps=HIRES_STEPS, generator=gen(), **common).images[0]
        arr = np.asarray(out)
        assert arr.shape == (target, target, 3), arr.shape
        print(f"{name}: {arr.shape} mean {arr.mean():.1f} std {arr.std():.1f}")
        assert arr.std() >= 10, f"{name} is flat"
        out.save(os.path.join(OUT, f"{name}.png"))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
