#!/usr/bin/env python3
"""ControlNet-XL fixtures (issue #12 item 4): a tiny SDXL ControlNet for tools/fixtures_sdxl.py's
sdxl-tiny, weights from Pigment's synthetic generator (nothing committed but the tensor list,
config and goldens; tests/common/sdxl.rs rebuilds it), and goldens from diffusers 0.39 (CPU, f32).

    python tools/fixtures_controlnet_xl.py

The ControlNet is diffusers' ControlNetModel.from_unet(sdxl-tiny's UNet) (so addition_embed_type
"text_time", addition_time_embed_dim 8, projection_class_embeddings_input_dim 80,
transformer_layers_per_block (1, 2), 64-wide cross-attention, no attention at the first level, as
the UNet) with conditioning_embedding_out_channels (8, 8, 16, 16), every parameter from the
synthetic generator: the zero convolutions are not zero, so the residuals move the image.
The control image is tests/fixtures/golden/sd15-tiny/controlnet_control.png (64x64).

Writes (overwriting):
    assets/synthetic/sdxl-tiny-controlnet/tensors.txt.gz, controlnet.json
    tests/fixtures/golden/sdxl-tiny/
        controlnet_residuals.safetensors  sample [2,4,8,8], timestep 981, sdxl-tiny's text.safetensors
                         text (prompt_embeds, pooled), time ids (96x80, crop (8, 4), 64x64), the
                         control image, scale 0.7 -> the mid residual and the UNet's output with
                         all residuals added
        controlnet_euler.png    StableDiffusionXLControlNetPipeline, Euler 3 steps, cfg 5, seed 42,
                         controlnet_conditioning_scale 0.7
        controlnet_dpm.png      the same with DPMSolverMultistepScheduler (DPM++ 2M), 4 steps
        controlnet_end.png      Euler 4 steps, control_guidance_end 0.5 (ControlNet on steps 1-2)
        controlnet_img2img.png  StableDiffusionXLControlNetImg2ImgPipeline, Euler 5 steps,
                         strength 0.6, init golden/img2img/init.png, control_guidance_end 0.7
        controlnet.json  statistics: how far each image is from the same run without ControlNet
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixtures_sdxl as fx  # noqa: E402
from fixtures_fullsize import fill, save, t32, write_synthetic_assets  # noqa: E402
from make_fixtures import NEGATIVE, PROMPT, SEED  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from diffusers import (  # noqa: E402
    ControlNetModel,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
)

OUT = os.path.join(fx.REPO, "tests", "fixtures", "golden", "sdxl-tiny")
COND_CHANNELS = (8, 8, 16, 16)
SCALE = 0.7


def run(p, **kw):
    with torch.no_grad():
        img = p(PROMPT, negative_prompt=NEGATIVE, guidance_scale=fx.GUIDANCE, generator=torch.Generator("cpu").manual_seed(SEED), **kw).images[0]
    return np.asarray(img).copy()


def golden(name, img, plain, stats):
    """Save controlnet_<name>.png and how far it is from the run without ControlNet (`plain`)."""
    Image.fromarray(img).save(os.path.join(OUT, f"controlnet_{name}.png"), optimize=False)
    d = np.abs(img.astype(np.float64) - plain.astype(np.float64))
    stats[name] = {"vs_no_controlnet_u8_mean_abs": float(d.mean()), "vs_no_controlnet_u8_max": float(d.max()),
                   "image_std_u8": float(img.std()), "image_saturated_fraction": float(((img == 0) | (img == 255)).mean())}
    print(f"  {name:8s} {json.dumps(stats[name])}")


def main():
    torch.set_num_threads(2)
    pipe, _ = fx.build()
    cn = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=COND_CHANNELS).eval()
    assert cn.config.addition_embed_type == "text_time" and cn.add_embedding is not None
    shapes = {"controlnet": fill(cn)}
    cfg = json.loads(cn.to_json_string())
    write_synthetic_assets(os.path.join(fx.REPO, "assets", "synthetic", "sdxl-tiny-controlnet"), shapes, {"controlnet": cfg})

    control = Image.open(os.path.join(fx.REPO, "tests", "fixtures", "golden", "sd15-tiny", "controlnet_control.png")).convert("RGB")
    cond = torch.from_numpy(np.asarray(control).astype(np.float32) / 255.0).permute(2, 0, 1)[None]

    # 1. residuals at a fixed input (the added conditioning as sdxl-tiny's unet.safetensors)
    text = load_file(os.path.join(OUT, "text.safetensors"))
    ehs, pooled = text["prompt_embeds"], text["pooled"]
    sample = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(1700))
    time_ids = torch.tensor([sum(fx.TIME_IDS, ())] * 2, dtype=torch.float32)
    added = {"text_embeds": pooled, "time_ids": time_ids}
    t = torch.tensor(981)
    with torch.no_grad():
        down, mid = cn(sample, t, encoder_hidden_states=ehs, controlnet_cond=cond.repeat(2, 1, 1, 1), conditioning_scale=SCALE,
                       added_cond_kwargs=added, return_dict=False)
        out = pipe.unet(sample, t, encoder_hidden_states=ehs, added_cond_kwargs=added, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample
        plain = pipe.unet(sample, t, encoder_hidden_states=ehs, added_cond_kwargs=added).sample
        # without the added conditioning in the ControlNet: how much it matters
        hook = cn.add_embedding.register_forward_hook(lambda m, a, o: torch.zeros_like(o))
        _, mid0 = cn(sample, t, encoder_hidden_states=ehs, controlnet_cond=cond.repeat(2, 1, 1, 1), conditioning_scale=SCALE,
                     added_cond_kwargs=added, return_dict=False)
        hook.remove()
    moved = float((out - plain).abs().max() / plain.abs().max())
    aug = float((mid - mid0).abs().max() / mid.abs().max())
    print(f"residuals: {len(down)} down + mid; UNet output moved by {moved:.3f} of its scale; the added conditioning moves mid by {aug:.3f}")
    save({"sample": sample, "timestep": torch.tensor([981.0]), "time_ids": time_ids, "mid": t32(mid), "unet_out": t32(out)},
         os.path.join(OUT, "controlnet_residuals.safetensors"),
         {"conditioning_scale": str(SCALE), "timestep": "981", "text": "text.safetensors prompt_embeds / pooled", "control": "sd15-tiny/controlnet_control.png"})

    # 2. pipelines
    parts = {k: v for k, v in pipe.components.items() if k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet")}
    euler = EulerDiscreteScheduler.from_config(fx.SCHEDULER)
    dpm = DPMSolverMultistepScheduler.from_config(fx.SCHEDULER)
    stats = {"residuals": {"unet_out_moved_rel": moved, "mid_added_conditioning_rel": aug}}
    size = dict(height=fx.SIZE, width=fx.SIZE)
    for name, sched, steps, extra in [("euler", euler, 3, {}), ("dpm", dpm, 4, {}), ("end", euler, 4, {"control_guidance_end": 0.5})]:
        cp = StableDiffusionXLControlNetPipeline(controlnet=cn, scheduler=sched, force_zeros_for_empty_prompt=True, **parts)
        cp.set_progress_bar_config(disable=True)
        pipe.scheduler = sched
        img = run(cp, image=control, controlnet_conditioning_scale=SCALE, num_inference_steps=steps, **size, **extra)
        golden(name, img, run(pipe, num_inference_steps=steps, **size), stats)
    init = Image.open(os.path.join(fx.REPO, "tests", "fixtures", "golden", "img2img", "init.png")).convert("RGB")
    ip = StableDiffusionXLControlNetImg2ImgPipeline(controlnet=cn, scheduler=euler, requires_aesthetics_score=False, force_zeros_for_empty_prompt=True, **parts)
    ip.set_progress_bar_config(disable=True)
    pi = StableDiffusionXLImg2ImgPipeline(scheduler=euler, requires_aesthetics_score=False, force_zeros_for_empty_prompt=True, **parts)
    pi.set_progress_bar_config(disable=True)
    img = run(ip, image=init, control_image=control, controlnet_conditioning_scale=SCALE, control_guidance_end=0.7, num_inference_steps=5, strength=0.6, **size)
    golden("img2img", img, run(pi, image=init, num_inference_steps=5, strength=0.6), stats)
    with open(os.path.join(OUT, "controlnet.json"), "w") as f:
        json.dump(stats, f, indent=1, sort_keys=True)
        f.write("\n")
    bad = [k for k, s in stats.items() if k != "residuals" and (s["vs_no_controlnet_u8_mean_abs"] < 3 or s["image_std_u8"] < 20 or s["image_saturated_fraction"] > 0.2)]
    if bad:
        print("FAIL: the ControlNet barely moves, or flat/saturated:", bad)
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
