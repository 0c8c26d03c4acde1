#!/usr/bin/env python3
"""GLIGEN goldens (issue #15, item 6): diffusers' StableDiffusionGLIGENPipeline (deprecated module
in 0.39), CPU float32, with sd15-tiny's text encoder, tokenizer, VAE and PNDM scheduler and a
`gligen-tiny` UNet: sd15-tiny's UNet config with `attention_type="gated"` (every
BasicTransformerBlock gets a GatedSelfAttentionDense `fuser`, the UNet a text-only
GLIGENTextBoundingboxProjection `position_net`), every weight from the synthetic generator
(tools/fixtures_fullsize.py; Rust reproduces it), so only the tensor list and config are
committed: assets/synthetic/gligen-tiny/{tensors.txt.gz, unet.json}.

Goldens (tests/fixtures/golden/gligen/), prompt/negative/seed as make_fixtures.py, 64x64,
STEPS steps, cfg 7.5, the boxes/phrases of BOXES:
  boxes.png       gligen_scheduled_sampling_beta 1 (the fusers run at every step)
  scheduled.png   beta 0.25 (the fusers run for the first int(0.25*4) = 1 step)
  ungrounded.png  beta 0 (the fusers never run): the same UNet without grounding
  objs.safetensors  `objs` [2, 30, 32] f32: the position_net's grounding tokens (uncond, cond) of
                  the first UNet call
It checks that each differs from the others by more than the tests' tolerance and the conditioning
(a 1e-6 relative perturbation of the initial noise moves the image by < CONDITIONING_LIMIT).
Run from the repository root: python tools/fixtures_gligen.py
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402
from fixtures_fullsize import fill, write_synthetic_assets  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.pipelines.deprecated.stable_diffusion_gligen.pipeline_stable_diffusion_gligen import StableDiffusionGLIGENPipeline  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402

OUT = os.path.join(mf.REPO, "tests", "fixtures", "golden", "gligen")
ASSETS = os.path.join(mf.REPO, "assets", "synthetic", "gligen-tiny")
STEPS = 4
SCHEDULED = 0.25
BOXES = [("a red ball", [0.1, 0.2, 0.5, 0.8]), ("a cat", [0.55, 0.1, 0.95, 0.6])]


def build():
    folder = os.path.join(mf.REPO, "tests", "fixtures", "sd15-tiny")
    base = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None)
    cfg = {k: v for k, v in base.unet.config.items() if not k.startswith("_")}
    cfg["attention_type"] = "gated"
    unet = UNet2DConditionModel(**cfg).eval()
    shapes = fill(unet)
    pipe = StableDiffusionGLIGENPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet, scheduler=base.scheduler,
                                         safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe, shapes


def write_assets(pipe, shapes):
    write_synthetic_assets(ASSETS, {"unet": shapes}, {"unet": json.loads(pipe.unet.to_json_string())})


def run(pipe, beta, latents=None):
    out = pipe(mf.PROMPT, negative_prompt=mf.NEGATIVE, height=mf.HEIGHT, width=mf.WIDTH, num_inference_steps=STEPS, guidance_scale=mf.GUIDANCE,
               gligen_scheduled_sampling_beta=beta, gligen_phrases=[p for p, _ in BOXES], gligen_boxes=[b for _, b in BOXES],
               generator=torch.Generator("cpu").manual_seed(mf.SEED), latents=latents)
    return np.asarray(out.images[0])


@torch.no_grad()
def main():
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    pipe, shapes = build()
    write_assets(pipe, shapes)
    captured = []
    hook = pipe.unet.position_net.register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
    img = run(pipe, 1.0)
    hook.remove()
    objs = captured[0]
    assert objs.shape == (2, 30, 32), objs.shape
    save_file({"objs": objs.float().contiguous()}, os.path.join(OUT, "objs.safetensors"), {"order": "[uncond (masks 0), cond]"})
    half, plain = run(pipe, SCHEDULED), run(pipe, 0.0)
    d = lambda x, y: float(np.abs(x.astype(np.float64) - y.astype(np.float64)).mean())  # noqa: E731
    noise = torch.randn((1, 4, mf.HEIGHT // 8, mf.WIDTH // 8), generator=torch.Generator("cpu").manual_seed(mf.SEED))
    pert = noise * (1 + mf.PERTURBATION * torch.randn(noise.shape, generator=torch.Generator().manual_seed(7)))
    a, b = run(pipe, 1.0, noise.clone()), run(pipe, 1.0, pert)
    assert np.array_equal(a, img), "latents= path differs from the generator path"
    report = dict(steps=STEPS, boxes=BOXES, boxes_vs_ungrounded_u8_mean_abs=d(img, plain), boxes_vs_scheduled_u8_mean_abs=d(img, half),
                  scheduled_vs_ungrounded_u8_mean_abs=d(half, plain), perturbation_u8_mean_abs=d(a, b), image_std_u8=float(img.std()))
    print(report)
    for k in ("boxes_vs_ungrounded_u8_mean_abs", "boxes_vs_scheduled_u8_mean_abs", "scheduled_vs_ungrounded_u8_mean_abs"):
        assert report[k] > 1.0, f"{k}: {report[k]} (not above the tests' tolerance)"
    assert report["perturbation_u8_mean_abs"] < mf.CONDITIONING_LIMIT, "ill-conditioned"
    assert min(x.std() for x in (img, half, plain)) >= 10, "flat image"
    for name, x in (("boxes", img), ("scheduled", half), ("ungrounded", plain)):
        Image.fromarray(x).save(os.path.join(OUT, f"{name}.png"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote", OUT, ASSETS)


if __name__ == "__main__":
    main()
