#!/usr/bin/env python3
"""ControlNet fixtures for Pigment: a tiny random ControlNetModel for tests/fixtures/sd15-tiny and
goldens from diffusers 0.39 (CPU, float32, 1 thread). Run from the repository root after
tools/make_fixtures.py (it reads tests/fixtures/sd15-tiny):

    python tools/fixtures_controlnet.py

Writes (overwriting):
    tests/fixtures/sd15-tiny-controlnet/                 diffusers folder (config.json,
                                                          diffusion_pytorch_model.safetensors, F16)
    tests/fixtures/sd15-tiny-controlnet.manifest.json     how the tests assemble the same weights in
                                                          the A1111 / original ControlNet layout
                                                          (control_model.*) from the folder
    tests/fixtures/golden/sd15-tiny/controlnet_control.png       the 64x64 control image
    tests/fixtures/golden/sd15-tiny/controlnet_residuals.safetensors
    tests/fixtures/golden/sd15-tiny/controlnet_txt2img.safetensors (+ .png)
    tests/fixtures/golden/sd15-tiny/controlnet_img2img.png       (reads golden/img2img/init.png)

The ControlNet is ControlNetModel.from_unet(sd15-tiny's UNet) with EVERY parameter re-drawn at
random (make_fixtures.randomize), including the zero convolutions (`controlnet_down_blocks.N`,
`controlnet_mid_block`, `controlnet_cond_embedding.conv_out`): zero-initialised ones would make
the residuals zero and a test could not fail. conditioning_embedding_out_channels (8, 8, 16, 16):
four levels, so the hint encoder downsamples 8x like the real (16, 32, 96, 256) one.
"""

import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline  # noqa: E402

REPO = mf.REPO
VARIANT = "sd15-tiny"
COND_CHANNELS = (8, 8, 16, 16)
SEED_WEIGHTS = 1600
RESIDUAL_SCALE = 0.7  # conditioning_scale of the residual golden (not 1: the scaling is tested)
PIPE_SCALE = 0.8  # controlnet_conditioning_scale of the pipeline golden


def control_image():
    """A 64x64 RGB "edge map": white ring, diagonal line and box on black (like a canny map),
    plus a coloured corner so the RGB channel order matters."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (mf.WIDTH, mf.HEIGHT), (0, 0, 0))
    d = ImageDraw.Draw(img)
    d.ellipse((10, 8, 50, 48), outline=(255, 255, 255), width=2)
    d.line((0, 63, 63, 20), fill=(255, 255, 255), width=1)
    d.rectangle((36, 40, 58, 60), outline=(255, 255, 255), width=1)
    d.rectangle((0, 0, 12, 12), fill=(255, 64, 0))
    return img


def cond_embedding_to_ldm(rest, n_blocks):
    # input_hint_block: conv, SiLU, conv, SiLU, ... : conv_in = 0, blocks.i = 2(i+1), conv_out = 2(n+1)
    parts = rest.split(".")
    if parts[0] == "conv_in":
        return "input_hint_block.0." + parts[1]
    if parts[0] == "blocks":
        return f"input_hint_block.{2 * (int(parts[1]) + 1)}.{parts[2]}"
    if parts[0] == "conv_out":
        return f"input_hint_block.{2 * (n_blocks + 1)}.{parts[1]}"
    raise KeyError(rest)


def controlnet_key_to_ldm(key, unet_cfg, n_blocks):
    if key.startswith("controlnet_cond_embedding."):
        k = cond_embedding_to_ldm(key[len("controlnet_cond_embedding.") :], n_blocks)
    elif key.startswith("controlnet_down_blocks."):
        _, n, wb = key.split(".")
        k = f"zero_convs.{n}.0.{wb}"
    elif key.startswith("controlnet_mid_block."):
        k = "middle_block_out.0." + key.split(".")[-1]
    else:
        k = mf.unet_key_to_ldm(key, unet_cfg)
    return "control_model." + k


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    fixtures = os.path.join(REPO, "tests", "fixtures")
    base = os.path.join(fixtures, VARIANT)
    pipe = StableDiffusionPipeline.from_pretrained(base, local_files_only=True, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    cn = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=COND_CHANNELS)
    mf.randomize(cn, SEED_WEIGHTS)
    cn.eval()
    folder = os.path.join(fixtures, VARIANT + "-controlnet")
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    cn.save_pretrained(folder, safe_serialization=True)
    mf.store_f16(folder)
    mem = {k: v.clone() for k, v in cn.state_dict().items()}
    cn = ControlNetModel.from_pretrained(folder, local_files_only=True, torch_dtype=torch.float32).eval()
    assert all(torch.equal(cn.state_dict()[k], v) for k, v in mem.items()), "F16 file != the f32 values"
    assert all(p.abs().max() > 0 for n, p in cn.named_parameters()), "a zero parameter"

    # A1111 single file (control_model.* keys), checked by loading it back through the inverse map
    sd = cn.state_dict()
    n_blocks = len(cn.controlnet_cond_embedding.blocks)
    ucfg = dict(pipe.unet.config)
    ckpt = {controlnet_key_to_ldm(k, ucfg, n_blocks): v.contiguous() for k, v in sd.items()}
    assert len(ckpt) == len(sd)
    old = os.path.join(fixtures, VARIANT + "-controlnet.safetensors")
    if os.path.exists(old):
        os.remove(old)  # from before the manifests
    manifest = os.path.join(fixtures, VARIANT + "-controlnet.manifest.json")
    ops = {controlnet_key_to_ldm(k, ucfg, n_blocks): ("identity", [("controlnet", k)]) for k in sd}
    mf.write_manifest(
        manifest,
        {"controlnet": f"{VARIANT}-controlnet/diffusion_pytorch_model.safetensors"},
        ops,
        ckpt,
        f"{VARIANT}-controlnet.safetensors (A1111 control_model.* layout) assembled from the "
        f"{VARIANT}-controlnet/ folder; written by tools/fixtures_controlnet.py",
    )
    tmp = tempfile.mkdtemp(prefix="pigment-cn-")
    sf = mf.check_assembled(manifest, ckpt, tmp)
    back = load_file(sf)
    for k, v in sd.items():
        assert torch.equal(back[controlnet_key_to_ldm(k, ucfg, n_blocks)].float(), v), k
    cn_sf = ControlNetModel.from_single_file(sf, config=folder, local_files_only=True, torch_dtype=torch.float32)
    sd2 = cn_sf.state_dict()
    same = set(sd2) == set(sd) and all(torch.equal(sd2[k], sd[k]) for k in sd)
    print("diffusers from_single_file agrees:", same)
    assert same
    shutil.rmtree(tmp)

    gdir = os.path.join(fixtures, "golden", VARIANT)
    img = control_image()
    img.save(os.path.join(gdir, "controlnet_control.png"), optimize=False)
    cond = torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0).permute(2, 0, 1)[None]

    # 1. residuals for a fixed input, and the UNet fed with them
    text = load_file(os.path.join(gdir, "text.safetensors"))
    ehs = torch.cat([text["negative.last_hidden_state"], text["prompt.last_hidden_state"]])
    g = torch.Generator().manual_seed(SEED_WEIGHTS + 1)
    sample = torch.randn((2, 4, 8, 8), generator=g)
    cond2 = torch.cat([cond, torch.rand((1, 3, 64, 64), generator=g)])  # two different hints
    t = torch.tensor(981, dtype=torch.int64)
    acts = {}
    hook = cn.controlnet_cond_embedding.register_forward_hook(lambda m, a, o: acts.__setitem__("emb", mf.t32(o)))
    with torch.no_grad():
        down, mid = cn(sample, t, encoder_hidden_states=ehs, controlnet_cond=cond2, conditioning_scale=RESIDUAL_SCALE, return_dict=False)
        unet_out = pipe.unet(sample, t, encoder_hidden_states=ehs, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        plain = pipe.unet(sample, t, encoder_hidden_states=ehs).sample
    hook.remove()
    res = {"sample": sample, "timestep": torch.tensor([981.0]), "encoder_hidden_states": ehs, "controlnet_cond": cond2}
    for i, d in enumerate(down):
        res[f"down.{i}"] = mf.t32(d)
    res["mid"] = mf.t32(mid)
    res["dbg.controlnet_cond_embedding"] = acts["emb"]
    res["unet_out"] = mf.t32(unet_out)
    rel = float((unet_out - plain).abs().max() / plain.abs().max())
    print(f"residuals: {len(down)} down + mid; UNet output moved by {rel:.3f} of its scale")
    mf.save(res, os.path.join(gdir, "controlnet_residuals.safetensors"), {"conditioning_scale": RESIDUAL_SCALE, "timestep": 981})

    # 2. the whole StableDiffusionControlNetPipeline (default PNDM scheduler, as txt2img.png)
    cpipe = StableDiffusionControlNetPipeline(**{k: v for k, v in pipe.components.items() if k != "image_encoder"}, controlnet=cn, requires_safety_checker=False)
    cpipe.set_progress_bar_config(disable=True)

    def run(output_type, latents=None):
        gen = torch.Generator("cpu").manual_seed(mf.SEED)
        with torch.no_grad():
            return cpipe(
                mf.PROMPT,
                image=img,
                negative_prompt=mf.NEGATIVE,
                height=mf.HEIGHT,
                width=mf.WIDTH,
                num_inference_steps=mf.STEPS,
                guidance_scale=mf.GUIDANCE,
                controlnet_conditioning_scale=PIPE_SCALE,
                generator=gen,
                latents=latents,
                output_type=output_type,
            ).images

    lat = run("latent")
    out = np.asarray(run("pil")[0]).copy()
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    # conditioning: a 1e-6 relative perturbation of the initial noise; and how far the control moves the image
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(mf.SEED))
    pert = noise * (1 + mf.PERTURBATION * torch.randn(noise.shape, generator=torch.Generator().manual_seed(7)))
    cpipe.scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    a = np.asarray(run("pil", noise.clone())[0]).astype(np.float64)
    b = np.asarray(run("pil", pert)[0]).astype(np.float64)
    assert np.array_equal(a, out.astype(np.float64))
    from PIL import Image

    plain_img = np.asarray(Image.open(os.path.join(gdir, "txt2img.png")).convert("RGB")).astype(np.float64)
    stats = {
        "perturbation_u8_mean_abs": float(np.abs(a - b).mean()),
        "vs_txt2img_without_controlnet_u8_mean_abs": float(np.abs(out.astype(np.float64) - plain_img).mean()),
        "image_std_u8": float(out.std()),
        "image_saturated_fraction": float(((out == 0) | (out == 255)).mean()),
    }
    print("pipeline:", json.dumps(stats))
    assert stats["perturbation_u8_mean_abs"] < mf.CONDITIONING_LIMIT and stats["image_std_u8"] > 20 and stats["image_saturated_fraction"] < 0.2
    meta = {"prompt": mf.PROMPT, "negative_prompt": mf.NEGATIVE, "seed": mf.SEED, "steps": mf.STEPS, "guidance_scale": mf.GUIDANCE, "controlnet_conditioning_scale": PIPE_SCALE, "scheduler": type(pipe.scheduler).__name__, **stats}
    mf.save({"latents": mf.t32(lat), "image_u8": torch.from_numpy(out)}, os.path.join(gdir, "controlnet_txt2img.safetensors"), meta)
    mf.save_png(out, os.path.join(gdir, "controlnet_txt2img.png"))
    # 3. StableDiffusionControlNetImg2ImgPipeline: DDIM, 5 steps at strength 0.6 (3 run), the
    #    img2img fixtures' init.png, control_guidance_end 0.7: the ControlNet acts on the first two
    #    of the three steps that run (the window counts those, not the whole schedule).
    from diffusers import DDIMScheduler, StableDiffusionControlNetImg2ImgPipeline

    init = Image.open(os.path.join(fixtures, "golden", "img2img", "init.png")).convert("RGB")
    ipipe = StableDiffusionControlNetImg2ImgPipeline(
        **{k: v for k, v in pipe.components.items() if k != "image_encoder"}, controlnet=cn, requires_safety_checker=False
    )
    ipipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    ipipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        i2i = ipipe(
            mf.PROMPT,
            image=init,
            control_image=img,
            negative_prompt=mf.NEGATIVE,
            height=mf.HEIGHT,
            width=mf.WIDTH,
            num_inference_steps=5,
            strength=0.6,
            guidance_scale=mf.GUIDANCE,
            controlnet_conditioning_scale=PIPE_SCALE,
            control_guidance_end=0.7,
            generator=torch.Generator("cpu").manual_seed(mf.SEED),
        ).images[0]
    i2i = np.asarray(i2i).copy()
    mf.save_png(i2i, os.path.join(gdir, "controlnet_img2img.png"))
    print(f"img2img: std {i2i.std():.1f}")

    for p in [folder, manifest] + [os.path.join(gdir, f) for f in sorted(os.listdir(gdir)) if f.startswith("controlnet_")]:
        if os.path.isdir(p):
            for f in sorted(os.listdir(p)):
                q = os.path.join(p, f)
                print(f"  {os.path.relpath(q, REPO):70s} {os.path.getsize(q):>10d}  {mf.sha(q)}")
        else:
            print(f"  {os.path.relpath(p, REPO):70s} {os.path.getsize(p):>10d}  {mf.sha(p)}")
    print("OK")


if __name__ == "__main__":
    main()
