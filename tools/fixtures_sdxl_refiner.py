#!/usr/bin/env python3
"""A tiny SDXL refiner (issue #12 item 1) beside tools/fixtures_sdxl.py's sdxl-tiny, and diffusers
goldens for it: the refiner alone (img2img) and base + refiner ("ensemble of experts": the base
stops at `denoising_end`, the refiner continues its latents from `denoising_start`).

Run from the repository root (CPU, ~1 minute):

    python tools/fixtures_sdxl_refiner.py

Model (stabilityai/stable-diffusion-xl-refiner-1.0's structure at sdxl-tiny's widths):
    text_encoder    none (model_index `text_encoder: [null, null]`)
    text_encoder_2  sdxl-tiny's CLIPTextModelWithProjection (32 wide, projection 32; the same
                    synthetic tensors, as the real refiner shares the base's bigG)
    tokenizer_2     the CLIP BPE padding with "!"
    unet            sdxl-tiny's layout with cross_attention_dim 32 (bigG's width alone),
                    addition_time_embed_dim 8, projection_class_embeddings_input_dim 32 + 5 * 8
                    (time ids: original size, crop top-left, aesthetic score)
    vae             sdxl-tiny's
    model_index     requires_aesthetics_score true, force_zeros_for_empty_prompt false (the
                    refiner's)

Writes (overwriting):
    assets/synthetic/sdxl-refiner-tiny/   tensors.txt.gz and the configs (tests/common/sdxl.rs
                                          rebuilds the folder)
    tests/fixtures/golden/sdxl-refiner-tiny/
        text.safetensors        encode_prompt of [negative, prompt]: prompt_embeds' first 16
                                tokens [2, 16, 32] (bigG's penultimate states alone), pooled
                                [2, 32], and the time ids the UNet got [2, 5] (aesthetic 2.5 / 6)
        refine_<s>.png          the refiner alone on golden/img2img/init.png, strength 0.6
        handoff<e>_<s>.png      base txt2img to denoising_end e/10, refiner from e/10
        img2img_handoff5_euler.png   base img2img (strength 0.9) to 0.5, refiner from 0.5
        stats.json              image statistics and what the aesthetic score moves
    tests/fixtures/sdxl-refiner-tiny.manifest.json.gz   the refiner's single-file layout
                                (bigG alone at conditioner.embedders.0.model.*), assembled by
                                the tests from the folder (see single_file())

All 64x64, 5 steps, cfg 5, seed 42 (a fresh generator for each pipeline call), samplers Euler
and DPM++ 2M from SDXL base's scheduler config, the prompts of make_fixtures.py.
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
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModelWithProjection  # noqa: E402

ASSETS = os.path.join(fx.REPO, "assets", "synthetic", "sdxl-refiner-tiny")
OUT = os.path.join(fx.REPO, "tests", "fixtures", "golden", "sdxl-refiner-tiny")
INIT = os.path.join(fx.REPO, "tests", "fixtures", "golden", "img2img", "init.png")
STEPS = 5
UNET = dict(fx.UNET, block_out_channels=[48, 96], cross_attention_dim=32, projection_class_embeddings_input_dim=32 + 5 * 8)
SCHEDS = {"euler": EulerDiscreteScheduler, "dpmpp_2m": DPMSolverMultistepScheduler}


def gen():
    return torch.Generator("cpu").manual_seed(SEED)


def build(base):
    text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**fx.TEXT_2)).eval()
    unet = UNet2DConditionModel(**UNET).eval()
    shapes = {"text_encoder_2": fill(text_2), "unet": fill(unet), "vae": {n: tuple(t.shape) for n, t in base.vae.state_dict().items()}}
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=text_2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(fx.SCHEDULER),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )
    pipe.set_progress_bar_config(disable=True)
    index = {k: (list(v) if isinstance(v, tuple) else v) for k, v in pipe.config.items() if not k.startswith("_")}
    configs = {
        "text_encoder_2": text_2.config.to_dict(),
        "unet": json.loads(unet.to_json_string()),
        "vae": json.loads(base.vae.to_json_string()),
        "scheduler": dict(fx.SCHEDULER, _class_name="EulerDiscreteScheduler"),
        "model_index": dict(index, _class_name="StableDiffusionXLImg2ImgPipeline"),
        "tokenizer_2": {"pad_token": "!"},
    }
    write_synthetic_assets(ASSETS, shapes, configs)
    return pipe


def use(pipe, name):
    pipe.scheduler = SCHEDS[name].from_config(fx.SCHEDULER)


def png(img, name, stats):
    img = np.asarray(img).copy()
    Image.fromarray(img).save(os.path.join(OUT, name + ".png"), optimize=False)
    stats[name] = {"std_u8": float(img.std()), "saturated": float(((img == 0) | (img == 255)).mean())}
    print(f"  {name:28s} std {img.std():.1f}")
    return img


@torch.no_grad()
def main():
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    base, _ = fx.build()
    ref = build(base)
    init = Image.open(INIT).convert("RGB")
    common = dict(negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=fx.GUIDANCE)

    # The conditioning: encode_prompt with text_encoder_2 alone, and the time ids the UNet sees.
    pe, ne, pp, npool = ref.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=NEGATIVE)
    assert pe.shape == (1, 77, 32) and pp.shape == (1, 32), (pe.shape, pp.shape)
    seen = []
    fwd = ref.unet.forward
    ref.unet.forward = lambda *a, **k: (seen.append(k["added_cond_kwargs"]["time_ids"].clone()), fwd(*a, **k))[1]
    stats = {}
    use(ref, "euler")
    imgs = {"refine_euler": png(ref(PROMPT, image=init, strength=0.6, generator=gen(), **common).images[0], "refine_euler", stats)}
    time_ids = seen[0]
    assert time_ids.tolist() == [[64, 64, 0, 0, 2.5], [64, 64, 0, 0, 6.0]], time_ids
    save({"prompt_embeds": t32(torch.cat([ne, pe])[:, :16]), "pooled": t32(torch.cat([npool, pp])), "time_ids": t32(time_ids)},
         os.path.join(OUT, "text.safetensors"), {"prompt": PROMPT, "negative_prompt": NEGATIVE, "order": "[negative, prompt]", "prompt_embeds": "first 16 of 77 tokens"})
    # What the aesthetic score moves (the break-it test's premise).
    low = np.asarray(ref(PROMPT, image=init, strength=0.6, generator=gen(), aesthetic_score=2.5, **common).images[0]).astype(np.float64)
    stats["aesthetic_6_vs_2.5_mean_abs_u8"] = float(np.abs(low - imgs["refine_euler"]).mean())
    ref.unet.forward = fwd
    use(ref, "dpmpp_2m")
    png(ref(PROMPT, image=init, strength=0.6, generator=gen(), **common).images[0], "refine_dpmpp_2m", stats)

    for name, switches in (("euler", (0.8, 0.5)), ("dpmpp_2m", (0.8,))):
        use(base, name)
        use(ref, name)
        for s in switches:
            lat = base(PROMPT, height=fx.SIZE, width=fx.SIZE, generator=gen(), denoising_end=s, output_type="latent", **common).images
            out = f"handoff{round(s * 10)}_{name}"
            png(ref(PROMPT, image=lat, generator=gen(), denoising_start=s, **common).images[0], out, stats)
    # A base img2img hands its latents over the same way (StableDiffusionXLImg2ImgPipeline as base).
    parts = {k: v for k, v in base.components.items() if k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet")}
    i2i = StableDiffusionXLImg2ImgPipeline(scheduler=EulerDiscreteScheduler.from_config(fx.SCHEDULER), requires_aesthetics_score=False, force_zeros_for_empty_prompt=True, **parts)
    i2i.set_progress_bar_config(disable=True)
    use(ref, "euler")
    lat = i2i(PROMPT, image=init, strength=0.9, generator=gen(), denoising_end=0.5, output_type="latent", **common).images
    png(ref(PROMPT, image=lat, generator=gen(), denoising_start=0.5, **common).images[0], "img2img_handoff5_euler", stats)
    with open(os.path.join(OUT, "stats.json"), "w") as f:
        json.dump(stats, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(stats, indent=1))
    single_file(ref)
    bad = [k for k, v in stats.items() if isinstance(v, dict) and (v["std_u8"] < 20 or v["saturated"] > 0.2)]
    if bad or stats["aesthetic_6_vs_2.5_mean_abs_u8"] < 2:
        print(f"FAIL: flat or saturated {bad}, or the aesthetic score barely matters")
        sys.exit(1)
    print("OK")


@torch.no_grad()
def single_file(ref):
    """tests/fixtures/sdxl-refiner-tiny.manifest.json.gz: the refiner's original single-file layout
    (bigG alone at conditioner.embedders.0.model.*, tools/fixtures_sdxl_single.py's mapping),
    checked against diffusers' from_single_file (UNet, VAE) and convert_open_clip_checkpoint."""
    import gzip
    import tempfile

    import fixtures_sdxl_single as fs
    import make_fixtures as mf
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from safetensors.torch import save_file

    prefix = "conditioner.embedders.0.model."
    ckpt, ops = fs.checkpoint(ref, te2_prefix=prefix, unet_cfg=UNET)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "sdxl-refiner-tiny")
        ref.save_pretrained(folder)
        path = os.path.join(tmp, "sdxl-refiner-tiny.safetensors")
        save_file(ckpt, path, metadata={"format": "pt"})
        loaded = StableDiffusionXLImg2ImgPipeline.from_single_file(path, config=folder, torch_dtype=torch.float32)
        te2 = convert_open_clip_checkpoint(ref.text_encoder_2, ckpt, prefix=prefix)
        for c in ("unet", "vae", "text_encoder_2"):
            want = getattr(ref, c).state_dict()
            got = te2 if c == "text_encoder_2" else getattr(loaded, c).state_dict()
            assert set(want) == set(got), (c, set(want) ^ set(got))
            for k in want:
                assert torch.equal(want[k].to(torch.float16).float(), got[k].float()), (c, k)
            print(f"  {c}: {len(want)} tensors equal after from_single_file")
        mf.write_manifest(
            os.path.join(tmp, "manifest.json"),
            {c: f"sdxl-refiner-tiny/{c}/{f}.safetensors" for c, f in [("text_encoder_2", "model"), ("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model")]},
            ops, ckpt,
            "sdxl-refiner-tiny.safetensors (the SDXL refiner's single-file layout) assembled from the sdxl-refiner-tiny folder; written by tools/fixtures_sdxl_refiner.py",
        )
        text = open(os.path.join(tmp, "manifest.json"), "rb").read()
    out = os.path.join(fx.REPO, "tests", "fixtures", "sdxl-refiner-tiny.manifest.json.gz")
    with open(out, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            f.write(text)
    print(f"wrote {out}: {len(ckpt)} tensors")


if __name__ == "__main__":
    main()
