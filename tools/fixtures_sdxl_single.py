#!/usr/bin/env python3
"""The SDXL single-file layout (Stability's sgm checkpoints, what model sites share) of
tools/fixtures_sdxl.py's tiny SDXL, as a manifest the Rust tests assemble from the sdxl-tiny
folder they generate (issue #12 item 1; no tensor is committed):

    conditioner.embedders.0.transformer.text_model.*   text_encoder (Hugging Face CLIP names)
    conditioner.embedders.1.model.*                    text_encoder_2 in OpenCLIP names: fused
                                                       attn.in_proj (q; k; v rows), ln_1/ln_2,
                                                       mlp.c_fc/c_proj, ln_final, and
                                                       text_projection = text_projection.weight^T
    model.diffusion_model.*                            the UNet in LDM names, add_embedding as
                                                       label_emb.0.0 / label_emb.0.2
    first_stage_model.*                                the VAE in LDM names

The mapping is checked here against diffusers: StableDiffusionXLPipeline.from_single_file(file,
config=<the folder's configs>) must load exactly the folder's tensors (text_encoder_2 through
diffusers' convert_open_clip_checkpoint: see main()). Writes
tests/fixtures/sdxl-tiny.manifest.json.gz (sources relative to the folder's parent). Run from the
repository root (CPU, a few seconds):

    python tools/fixtures_sdxl_single.py
"""

import gzip
import os
import sys
import tempfile

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixtures_sdxl as fx  # noqa: E402
import make_fixtures as mf  # noqa: E402
from diffusers import StableDiffusionXLPipeline  # noqa: E402
from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint  # noqa: E402

OUT = os.path.join(fx.REPO, "tests", "fixtures", "sdxl-tiny.manifest.json.gz")
TE2 = "conditioner.embedders.1.model."


def checkpoint(pipe, te2_prefix=TE2, unet_cfg=fx.UNET):
    """`te2_prefix`: where bigG goes (the refiner's is `conditioner.embedders.0.model.`); a
    pipeline without `text_encoder` (the refiner) has no embedders.0.transformer."""
    ckpt, ops = {}, {}

    def put(key, value, op):
        assert key not in ckpt, key
        ckpt[key] = value.contiguous().to(torch.float16)
        ops[key] = op

    for k, v in pipe.unet.state_dict().items():
        emb = {"add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}
        lk = next((s + k[len(d):] for d, s in emb.items() if k.startswith(d)), None) or mf.unet_key_to_ldm(k, unet_cfg)
        put("model.diffusion_model." + lk, v, ("identity", [("unet", k)]))
    for k, v in pipe.vae.state_dict().items():
        lk, reshape = mf.vae_key_to_ldm(k, fx.VAE)
        put("first_stage_model." + lk, v.reshape(*v.shape, 1, 1) if reshape else v, ("reshape" if reshape else "identity", [("vae", k)]))
    for k, v in (pipe.text_encoder.state_dict() if pipe.text_encoder is not None else {}).items():
        put("conditioner.embedders.0.transformer." + k, v, ("identity", [("text_encoder", k)]))
    sd2 = pipe.text_encoder_2.state_dict()
    text, text_ops = mf.text_openclip_to_ldm(sd2, fx.TEXT_2["num_hidden_layers"])
    for k, v in text.items():
        key = te2_prefix + k[len("cond_stage_model.model."):]
        op = text_ops[k]
        if key == te2_prefix + "text_projection":  # a real [width, proj] matrix here, unlike SD 2's
            v, op = sd2["text_projection.weight"].T, ("transpose", [("text_encoder_2", "text_projection.weight")])
        else:
            op = (op[0], [("text_encoder_2", t) for _, t in op[1]]) + tuple(op[2:])
        put(key, v, op)
    return ckpt, ops


def main():
    pipe, _ = fx.build()
    ckpt, ops = checkpoint(pipe)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "sdxl-tiny")
        pipe.save_pretrained(folder)
        path = os.path.join(tmp, "sdxl-tiny.safetensors")
        save_file(ckpt, path, metadata={"format": "pt"})
        loaded = StableDiffusionXLPipeline.from_single_file(path, config=folder, torch_dtype=torch.float32)
        # The tiny encoders are both 32 wide, which from_single_file's detection takes for two
        # CLIP-L copies: text_encoder_2 is checked with diffusers' OpenCLIP conversion itself.
        te2 = convert_open_clip_checkpoint(pipe.text_encoder_2, ckpt, prefix=TE2)
        for c in ("unet", "vae", "text_encoder", "text_encoder_2"):
            want = getattr(pipe, c).state_dict()
            got = te2 if c == "text_encoder_2" else getattr(loaded, c).state_dict()
            assert set(want) == set(got), (c, set(want) ^ set(got))
            meta = [k for k in got if got[k].is_meta]
            assert not meta, (c, "left unloaded by from_single_file", meta)
            for k in want:
                assert torch.equal(want[k].to(torch.float16).float(), got[k].float()), (c, k)
            print(f"  {c}: {len(want)} tensors equal after from_single_file")
        mf.write_manifest(
            os.path.join(tmp, "manifest.json"),
            {c: f"sdxl-tiny/{c}/{f}.safetensors" for c, f in [("text_encoder", "model"), ("text_encoder_2", "model"),
                                                               ("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model")]},
            ops, ckpt,
            "sdxl-tiny.safetensors (SDXL's original single-file layout) assembled from the sdxl-tiny folder; written by tools/fixtures_sdxl_single.py",
        )
        text = open(os.path.join(tmp, "manifest.json"), "rb").read()
    with open(OUT, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            f.write(text)
    print(f"wrote {OUT}: {len(ckpt)} tensors")


if __name__ == "__main__":
    main()
