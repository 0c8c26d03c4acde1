#!/usr/bin/env python3
"""SDXL img2img, inpainting and prompt_2 goldens (issue #12 item 4) on tools/fixtures_sdxl.py's
tiny SDXL (synthetic weights, nothing committed but the PNGs), from diffusers' own pipelines:

    img2img.png    StableDiffusionXLImg2ImgPipeline (requires_aesthetics_score=False, as SDXL
                   base), init tests/fixtures/golden/img2img/init.png, strength 0.6
    inpaint4.png   StableDiffusionXLInpaintPipeline, the same 4-channel UNet, mask.png, strength 0.75
    inpaint9.png   the same with a 9-channel inpainting UNet (in_channels 9: only conv_in differs,
                   filled by the same generator), strength 1.0
    prompt2.safetensors  StableDiffusionXLPipeline.encode_prompt with prompt_2 / negative_prompt_2
                   for text_encoder_2: prompt_embeds [2, 77, 64] and pooled [2, 32], [negative,
                   prompt] (a tensor golden: on these tiny weights prompt_2 moves the image by
                   only ~1.6 levels, too little for an image check)

All 64x64, Euler (SDXL base's scheduler config), 5 steps, cfg 5, seed 42, the prompts of
make_fixtures.py. Also writes assets/synthetic/sdxl-tiny/unet_inpaint.json (the 9-channel UNet's
config). Run from the repository root (CPU, ~1 minute):

    python tools/fixtures_sdxl_img2img.py
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixtures_sdxl as fx  # noqa: E402
from fixtures_fullsize import fill, save, t32  # noqa: E402
from make_fixtures import NEGATIVE, PROMPT, SEED  # noqa: E402
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline, UNet2DConditionModel  # noqa: E402

OUT = os.path.join(fx.REPO, "tests", "fixtures", "golden", "sdxl-tiny")
GOLDEN = os.path.join(fx.REPO, "tests", "fixtures", "golden", "img2img")
STEPS = 5
PROMPT_2 = "a red cube on a wooden table"
NEGATIVE_2 = "dark, noisy"


@torch.no_grad()
def run(pipe, name, **kw):
    img = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=fx.GUIDANCE,
               generator=torch.Generator("cpu").manual_seed(SEED), **kw).images[0]
    img = np.asarray(img).copy()
    Image.fromarray(img).save(os.path.join(OUT, name + ".png"), optimize=False)
    print(f"  {name:10s} std {img.std():.1f}")
    return img


def main():
    torch.set_num_threads(2)
    pipe, _ = fx.build()
    parts = {k: v for k, v in pipe.components.items() if k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")}
    init = Image.open(os.path.join(GOLDEN, "init.png")).convert("RGB")
    mask = Image.open(os.path.join(GOLDEN, "mask.png")).convert("L")
    i2i = StableDiffusionXLImg2ImgPipeline(unet=pipe.unet, requires_aesthetics_score=False, force_zeros_for_empty_prompt=True, **parts)
    i2i.set_progress_bar_config(disable=True)
    imgs = {"img2img": run(i2i, "img2img", image=init, strength=0.6)}
    inp = StableDiffusionXLInpaintPipeline(unet=pipe.unet, requires_aesthetics_score=False, force_zeros_for_empty_prompt=True, **parts)
    inp.set_progress_bar_config(disable=True)
    imgs["inpaint4"] = run(inp, "inpaint4", image=init, mask_image=mask, strength=0.75, height=64, width=64)
    unet9 = UNet2DConditionModel(**dict(fx.UNET, in_channels=9)).eval()
    fill(unet9)
    cfg = json.loads(unet9.to_json_string())
    for k in ("_diffusers_version", "_name_or_path"):
        cfg.pop(k, None)
    with open(os.path.join(fx.REPO, "assets", "synthetic", "sdxl-tiny", "unet_inpaint.json"), "w") as f:
        json.dump(cfg, f, indent=1, sort_keys=True)
        f.write("\n")
    inp9 = StableDiffusionXLInpaintPipeline(unet=unet9, requires_aesthetics_score=False, force_zeros_for_empty_prompt=True, **parts)
    inp9.set_progress_bar_config(disable=True)
    imgs["inpaint9"] = run(inp9, "inpaint9", image=init, mask_image=mask, strength=1.0, height=64, width=64)
    pe, ne, pp, npool = pipe.encode_prompt(PROMPT, prompt_2=PROMPT_2, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
                                           negative_prompt=NEGATIVE, negative_prompt_2=NEGATIVE_2)
    pe1, ne1, _, _ = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=NEGATIVE)
    d = float((pe - pe1).abs().max() / pe1.abs().max())
    print(f"prompt_2 moves prompt_embeds by {d:.3f} of scale")
    assert d > 0.05, "prompt_2 barely changes the embeddings"
    save({"prompt_embeds": t32(torch.cat([ne, pe])), "pooled": t32(torch.cat([npool, pp]))}, os.path.join(OUT, "prompt2.safetensors"),
            {"prompt": PROMPT, "prompt_2": PROMPT_2, "negative_prompt": NEGATIVE, "negative_prompt_2": NEGATIVE_2, "order": "[negative, prompt]"})

if __name__ == "__main__":
    main()
