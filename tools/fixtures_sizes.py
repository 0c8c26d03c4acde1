"""Golden for a size that is a multiple of 8 but not of the UNet's down-sampling factor.

72x56 pixels -> a 9x7 latent: odd in both directions, so sd15-tiny's stride-2 down block rounds
up (9 -> 5) and diffusers' UNet resizes back to the skip's size on the way up
(`forward_upsample_size`). Writes tests/fixtures/golden/sd15-tiny/size_72x56.{png,safetensors}
(StableDiffusionPipeline, Euler, 4 steps, seed 42). Run after make_fixtures.py.
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline  # noqa: E402

W, H = 72, 56


def main():
    torch.set_num_threads(1)
    folder = os.path.join(mf.REPO, "tests", "fixtures", "sd15-tiny")
    out = os.path.join(mf.REPO, "tests", "fixtures", "golden", "sd15-tiny")
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        img = pipe(
            mf.PROMPT,
            negative_prompt=mf.NEGATIVE,
            num_inference_steps=4,
            guidance_scale=mf.GUIDANCE,
            width=W,
            height=H,
            generator=torch.Generator("cpu").manual_seed(mf.SEED),
        ).images[0]
    img = np.asarray(img).copy()
    assert img.shape == (H, W, 3), img.shape
    name = f"size_{W}x{H}"
    mf.save({"image_u8": torch.from_numpy(img)}, os.path.join(out, name + ".safetensors"),
            dict(sampler="euler", steps=4, seed=mf.SEED, width=W, height=H, prompt=mf.PROMPT, negative_prompt=mf.NEGATIVE))
    mf.save_png(img, os.path.join(out, name + ".png"))
    print(f"{name}: std {img.std():.1f}")


if __name__ == "__main__":
    main()
