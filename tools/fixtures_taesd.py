#!/usr/bin/env python3
"""TAESD goldens (issue #14, item 2): diffusers' AutoencoderTiny at the real architecture
(madebyollin/taesd's config: 64 channels, blocks (1,3,3,3) / (3,3,3,1), ~1.2M parameters per
half) with random weights from Pigment's synthetic generator (tools/fixtures_fullsize.py,
src/weights/synthetic.rs), so no weight file is committed: the Rust test rebuilds the same
weights from the tensor list written here.

Run from the repository root (CPU, float32, a few seconds):

    python tools/fixtures_taesd.py

Writes (overwriting) tests/fixtures/golden/taesd/:
    tensors.txt        `name<TAB>d0,d1,..` per parameter of AutoencoderTiny(), state-dict order
    config.json        the model's config (as save_pretrained writes it)
    taesd.safetensors  decode_in [1,4,8,8] (torch randn, seed 0) -> decode_out [1,3,64,64]
                       (vae.decode(z).sample, what the pipeline decodes with scaling_factor 1);
                       encode_out [1,4,8,8] (vae.encode(x).latents of golden/img2img/init.png
                       as x = (v/255)*2-1, [1,3,64,64]), all float32
    img2img_euler.png, inpaint4_euler_a.png
                       diffusers' img2img / inpainting pipelines on tests/fixtures/sd15-tiny with
                       `vae=` this AutoencoderTiny (TAESD encodes the init and decodes the result:
                       Pigment's --vae-encoder taesd --vae-decoder taesd), Euler / Euler a, the runs and
                       files of tools/fixtures_img2img.py
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_fullsize import REPO, fill  # noqa: E402
from diffusers import AutoencoderTiny  # noqa: E402

OUT = os.path.join(REPO, "tests", "fixtures", "golden", "taesd")


@torch.no_grad()
def main():
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    vae = AutoencoderTiny().eval()
    shapes = fill(vae)
    n = sum(int(np.prod(s)) for s in shapes.values())
    print(f"AutoencoderTiny: {len(shapes)} tensors, {n} parameters")
    with open(os.path.join(OUT, "tensors.txt"), "w") as f:
        for name, shape in shapes.items():
            f.write(f"{name}\t{','.join(map(str, shape))}\n")
    cfg = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    cfg["_class_name"] = "AutoencoderTiny"
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")

    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    dec = vae.decode(z).sample
    img = np.asarray(Image.open(os.path.join(REPO, "tests", "fixtures", "golden", "img2img", "init.png")).convert("RGB"))
    x = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    enc = vae.encode(x).latents
    for name, t in [("decode_out", dec), ("encode_out", enc)]:
        print(f"{name} {tuple(t.shape)} mean {t.mean():.4f} std {t.std():.4f} min {t.min():.4f} max {t.max():.4f}")
        assert t.std() > 0.01, f"{name} is flat: the random weights make no useful golden"
    tensors = {"decode_in": z, "decode_out": dec, "encode_out": enc}
    save_file({k: v.contiguous().float() for k, v in tensors.items()}, os.path.join(OUT, "taesd.safetensors"), {"diffusers": __import__("diffusers").__version__})
    pipelines(vae)
    print("wrote", OUT)


def pipelines(vae):
    import fixtures_img2img as fi
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

    fi.OUT = OUT  # run() writes its goldens there
    sd15 = os.path.join(fi.FIX, "sd15-tiny")
    init = Image.open(os.path.join(REPO, "tests", "fixtures", "golden", "img2img", "init.png")).convert("RGB")
    mask = Image.open(os.path.join(REPO, "tests", "fixtures", "golden", "img2img", "mask.png")).convert("L")
    # Euler a for inpainting: its own noise comes after the masked image's encode, so a posterior
    # draw there (the full VAE's, which TAESD has not) would show.
    for cls, name, sampler, kw in (
        (StableDiffusionImg2ImgPipeline, "img2img_euler", "euler", dict(image=init, strength=0.6)),
        (StableDiffusionInpaintPipeline, "inpaint4_euler_a", "euler_a", dict(image=init, mask_image=mask, strength=0.75, height=64, width=64)),
    ):
        pipe = cls.from_pretrained(sd15, vae=vae, torch_dtype=torch.float32, safety_checker=None)
        pipe.set_progress_bar_config(disable=True)
        fi.run(pipe, name, sampler, **kw)
        os.remove(os.path.join(OUT, name + ".safetensors"))  # the test compares the PNG only


if __name__ == "__main__":
    main()
