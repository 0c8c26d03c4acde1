#!/usr/bin/env python3
"""Self-Attention Guidance goldens (issue #15, item 5): diffusers' StableDiffusionSAGPipeline
(deprecated/stable_diffusion_sag in diffusers 0.39) on tests/fixtures/sd15-tiny and sd21-tiny,
CPU float32, prompt/negative/seed as make_fixtures.py, 64x64, STEPS steps.

  sd15_pndm.png    sd15-tiny, its PNDM scheduler, guidance 7.5, sag_scale 0.75 (the uncond branch)
  sd15_ddim_nocfg.png  sd15-tiny, DDIM, guidance 1 (no uncond batch: the cond branch), sag_scale 1.0
  sd21_ddim.png    sd21-tiny, its DDIM v-prediction scheduler, guidance 7.5, sag_scale 0.75

For each it checks that SAG changes the image (vs sag_scale 0) by more than the tests'
tolerance, that the mid-block masks are neither all 0 nor all 1 and that no mask score lies within
MARGIN of the threshold 1.0 (so an f32 GPU run draws the same masks), and the conditioning (a
1e-6 relative perturbation of the initial noise moves the image by < CONDITIONING_LIMIT).
Run from the repository root: python tools/fixtures_sag.py
"""

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402
from diffusers import DDIMScheduler  # noqa: E402
from diffusers.pipelines.deprecated.stable_diffusion_sag import pipeline_stable_diffusion_sag as sag_mod  # noqa: E402

OUT = os.path.join(mf.REPO, "tests", "fixtures", "golden", "sag")
STEPS = 4
MARGIN = 1e-3
CASES = [
    ("sd15_pndm", "sd15-tiny", None, mf.GUIDANCE, 0.75),
    ("sd15_ddim_nocfg", "sd15-tiny", DDIMScheduler, 1.0, 1.0),
    ("sd21_ddim", "sd21-tiny", None, mf.GUIDANCE, 0.75),
]

scores = []  # per call of sag_masking: the mask scores of every batch entry
orig_masking = sag_mod.StableDiffusionSAGPipeline.sag_masking


def recording_masking(self, original_latents, attn_map, map_size, t, eps):
    b = original_latents.shape[0]
    bh, hw1, hw2 = attn_map.shape
    scores.append(attn_map.reshape(b, bh // b, hw1, hw2).mean(1).sum(1).flatten())
    return orig_masking(self, original_latents, attn_map, map_size, t, eps)


sag_mod.StableDiffusionSAGPipeline.sag_masking = recording_masking


def run(pipe, guidance, sag, latents=None):
    out = pipe(mf.PROMPT, negative_prompt=mf.NEGATIVE, height=mf.HEIGHT, width=mf.WIDTH, num_inference_steps=STEPS,
               guidance_scale=guidance, sag_scale=sag, generator=torch.Generator("cpu").manual_seed(mf.SEED), latents=latents)
    return np.asarray(out.images[0])


@torch.no_grad()
def main():
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    report = {}
    for name, variant, sched, guidance, sag in CASES:
        folder = os.path.join(mf.REPO, "tests", "fixtures", variant)
        pipe = sag_mod.StableDiffusionSAGPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None, feature_extractor=None,
                                                                  requires_safety_checker=False)
        if sched is not None:
            pipe.scheduler = sched.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        scores.clear()
        img = run(pipe, guidance, sag)
        s = torch.cat(scores)
        frac = float((s > 1.0).float().mean())
        margin = float((s - 1.0).abs().min())
        plain = run(pipe, guidance, 0.0)
        effect = float(np.abs(img.astype(np.float64) - plain.astype(np.float64)).mean())
        noise = torch.randn((1, 4, mf.HEIGHT // 8, mf.WIDTH // 8), generator=torch.Generator("cpu").manual_seed(mf.SEED))
        pert = noise * (1 + mf.PERTURBATION * torch.randn(noise.shape, generator=torch.Generator().manual_seed(7)))
        a, b = run(pipe, guidance, sag, noise.clone()), run(pipe, guidance, sag, pert)
        assert np.array_equal(a, img), "latents= path differs from the generator path"
        cond = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())
        report[name] = dict(model=variant, scheduler=type(pipe.scheduler).__name__, guidance=guidance, sag_scale=sag, steps=STEPS,
                            mask_fraction=frac, mask_margin=margin, sag_effect_u8_mean_abs=effect, perturbation_u8_mean_abs=cond,
                            image_std_u8=float(img.std()))
        print(name, report[name])
        assert 0.0 < frac < 1.0, f"{name}: masks all {frac}"
        assert margin > MARGIN, f"{name}: a mask score within {margin} of 1.0"
        assert effect > 2.0, f"{name}: SAG barely changes the image ({effect})"
        assert cond < mf.CONDITIONING_LIMIT, f"{name}: ill-conditioned ({cond})"
        assert img.std() >= 10, f"{name} is flat"
        from PIL import Image
        Image.fromarray(img).save(os.path.join(OUT, f"{name}.png"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
