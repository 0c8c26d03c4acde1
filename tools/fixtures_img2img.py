"""img2img and inpainting goldens for Pigment (issue #6), from diffusers' own pipelines.

Reuses tests/fixtures/sd15-tiny (made by make_fixtures.py) and adds:
  tests/fixtures/sd15-tiny-inpaint/  a 9-channel inpainting UNet (random, sd15-tiny's UNet config
      with in_channels 9, weights rounded to and stored as f16 to keep the file small), other
      components are symlinks to ../sd15-tiny/.
  tests/fixtures/golden/img2img/  init.png (64x64 RGB), mask.png (64x64 L, white = repaint),
      mask_blur4.png (PIL GaussianBlur(4) of mask.png), and per run NAME.png + NAME.safetensors
      (`init_latents` [1,4,8,8] = latents the loop starts from, `latents` [S,1,4,8,8] after each
      scheduler.step (after the inpainting blend for 4-channel UNets), `t` [S] UNet timesteps,
      `image_u8` [64,64,3]).

Runs: img2img_<sampler> (strength 0.6, 5 steps: 3 steps run); inpaint4_<sampler> (sd15-tiny's
4-channel UNet, mask blending; strength 0.75 and 1.0); inpaint9_<sampler> (9-channel UNet).
Prompt/negative/seed/guidance as make_fixtures.py. Run from the repository root:
    python tools/fixtures_img2img.py
"""

import functools
import json
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    UniPCMultistepScheduler,
    StableDiffusionInpaintPipeline,
    UNet2DConditionModel,
)

FIX = os.path.join(mf.REPO, "tests", "fixtures")
OUT = os.path.join(FIX, "golden", "img2img")
STEPS = 5
SCHEDS = {
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "lms": LMSDiscreteScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
}
# The samplers added after img2img (tools/fixtures_samplers.py): start latents and images. DPM++ SDE
# is left out: its Brownian noise is not diffusers' (see src/schedulers/dpm_sde.rs).
EXTRA_SCHEDS = {
    "unipc": UniPCMultistepScheduler,
    "dpmpp_2m_sde": functools.partial(DPMSolverMultistepScheduler, algorithm_type="sde-dpmsolver++"),
    "lcm": LCMScheduler,
    "ddpm": DDPMScheduler,
}


def init_image():
    """Smooth colour ramps plus a disc and a bar: structure the VAE encodes non-trivially."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float64)
    r = 128 + 100 * np.sin(x / 9.0) * np.cos(y / 13.0)
    g = 40 + 3 * y
    b = 200 - 2.5 * x
    disc = (x - 40) ** 2 + (y - 24) ** 2 < 12**2
    r[disc], g[disc], b[disc] = 250, 220, 30
    bar = (y > 46) & (y < 54)
    r[bar], g[bar], b[bar] = 20, 20, 120
    img = np.stack([r, g, b], -1).clip(0, 255).round().astype(np.uint8)
    return Image.fromarray(img, "RGB")


def mask_image():
    m = np.zeros((64, 64), np.uint8)
    m[13:45, 19:51] = 255  # not aligned to the 8-pixel latent grid
    return Image.fromarray(m, "L")


def make_inpaint_unet(folder):
    cfg = dict(mf.VARIANTS["sd15-tiny"]["unet"])
    cfg["in_channels"] = 9
    unet = UNet2DConditionModel(**cfg)
    mf.randomize(unet, mf.VARIANTS["sd15-tiny"]["seed"] + 20, mf.UNET_GAINS)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    unet.half().save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
    for c in ("text_encoder", "tokenizer", "vae", "scheduler"):
        os.symlink(os.path.join("..", "sd15-tiny", c), os.path.join(folder, c))
    shutil.copyfile(os.path.join(FIX, "sd15-tiny", "model_index.json"), os.path.join(folder, "model_index.json"))


def run(pipe, name, sched_name, **kw):
    cls = {**SCHEDS, **EXTRA_SCHEDS}[sched_name]
    if isinstance(cls, functools.partial):
        sched = cls.func.from_config(pipe.scheduler.config, **cls.keywords)
    else:
        sched = cls.from_config(pipe.scheduler.config)
    pipe.scheduler = sched
    rec = dict(latents=[], t=[])
    orig_step = sched.step

    @functools.wraps(orig_step)
    def step(model_output, timestep, sample, *a, **k):
        rec["t"].append(float(timestep))
        return orig_step(model_output, timestep, sample, *a, **k)

    sched.step = step
    # latents after the blend: the pipeline's callback_on_step_end sees them
    def on_step(p, i, t, kwargs):
        rec["latents"].append(mf.t32(kwargs["latents"]))
        return {}

    orig_prep = pipe.prepare_latents

    def prep(*a, **k):
        out = orig_prep(*a, **k)
        rec["init"] = mf.t32(out[0] if isinstance(out, tuple) else out)
        return out

    pipe.prepare_latents = prep
    try:
        with torch.no_grad():
            img = pipe(
                mf.PROMPT,
                negative_prompt=mf.NEGATIVE,
                num_inference_steps=STEPS,
                guidance_scale=mf.GUIDANCE,
                generator=torch.Generator("cpu").manual_seed(mf.SEED),
                callback_on_step_end=on_step,
                **kw,
            ).images[0]
    finally:
        del sched.step
        del pipe.prepare_latents
    img = np.asarray(img).copy()
    t = {
        "init_latents": rec["init"],
        "latents": torch.stack(rec["latents"]),
        "t": torch.tensor(rec["t"], dtype=torch.float32),
        "image_u8": torch.from_numpy(img),
    }
    meta = {k: v for k, v in kw.items() if isinstance(v, (int, float, str))}
    meta.update(sampler=sched_name, steps=STEPS, seed=mf.SEED, prompt=mf.PROMPT, negative_prompt=mf.NEGATIVE)
    mf.save(t, os.path.join(OUT, name + ".safetensors"), meta)
    mf.save_png(img, os.path.join(OUT, name + ".png"))
    print(f"  {name:22s} evals={len(rec['t'])} t={rec['t']} img std={img.std():.1f}")
    return img


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    init, mask = init_image(), mask_image()
    init.save(os.path.join(OUT, "init.png"), optimize=False)
    mask.save(os.path.join(OUT, "mask.png"), optimize=False)
    mask.filter(ImageFilter.GaussianBlur(4)).save(os.path.join(OUT, "mask_blur4.png"), optimize=False)
    # a second blur case on a non-binary image: radius 2.5 on the init image's red channel
    init.getchannel("R").filter(ImageFilter.GaussianBlur(2.5)).save(os.path.join(OUT, "red_blur2.5.png"), optimize=False)

    sd15 = os.path.join(FIX, "sd15-tiny")
    i2i = StableDiffusionImg2ImgPipeline.from_pretrained(sd15, torch_dtype=torch.float32, safety_checker=None)
    i2i.set_progress_bar_config(disable=True)
    imgs = {}
    for s in SCHEDS:
        imgs[s] = run(i2i, f"img2img_{s}", s, image=init, strength=0.6)
    for s in EXTRA_SCHEDS:
        imgs[s] = run(i2i, f"img2img_{s}", s, image=init, strength=0.6)
    # A1111's "Just resize": a 128x128 init image (init.png scaled up 2x, nearest) resized to the
    # 64x64 output with PIL's Lanczos, then img2img (the CLI resizes with the image crate).
    init128 = init.resize((128, 128), Image.NEAREST)
    init128.save(os.path.join(OUT, "init_128.png"), optimize=False)
    run(i2i, "img2img_resized_euler", "euler", image=init128.resize((64, 64), Image.LANCZOS), strength=0.6)
    inp4 = StableDiffusionInpaintPipeline.from_pretrained(sd15, torch_dtype=torch.float32, safety_checker=None)
    inp4.set_progress_bar_config(disable=True)
    for s, strength in (("euler", 0.75), ("ddim", 0.75), ("heun", 0.75), ("dpmpp_2m", 1.0)):
        run(inp4, f"inpaint4_{s}", s, image=init, mask_image=mask, strength=strength, height=64, width=64)
    folder = os.path.join(FIX, "sd15-tiny-inpaint")
    make_inpaint_unet(folder)
    inp9 = StableDiffusionInpaintPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None)
    inp9.set_progress_bar_config(disable=True)
    assert inp9.unet.config.in_channels == 9
    for s, strength in (("pndm", 1.0), ("euler_a", 1.0), ("dpmpp_2m", 0.75)):
        run(inp9, f"inpaint9_{s}", s, image=init, mask_image=mask, strength=strength, height=64, width=64)
    # what keeps the test meaningful: samplers differ from each other by many levels
    d = {s: float(np.abs(imgs[s].astype(float) - imgs["ddim"].astype(float)).mean()) for s in imgs}
    print("img2img mean abs vs ddim:", json.dumps(d))
    print("OK")


if __name__ == "__main__":
    main()
