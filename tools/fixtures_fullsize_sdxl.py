#!/usr/bin/env python3
"""Full-size SDXL base 1.0's architecture for Pigment's synthetic generator (`--model synthetic:sdxl`,
issue #12 item 5): the diffusers / transformers classes at the real configs, built on PyTorch's meta
device (no memory, no values), so only their tensor names, shapes and configs are written. Rust fills
the values with the generator documented in tools/fixtures_fullsize.py and src/weights/synthetic.rs.

    python tools/fixtures_fullsize_sdxl.py        (seconds; no weights are materialized)

Writes (overwriting) assets/synthetic/sdxl/: tensors.txt.gz (`component<TAB>name<TAB>d0,d1,..`) and
text_encoder.json, text_encoder_2.json, unet.json, vae.json, scheduler.json, model_index.json.
The configs are those of stabilityai/stable-diffusion-xl-base-1.0 (written out here: no download).
No diffusers golden comes with it: the UNet alone is 2.6 G parameters (10 GB in f32 on the CPU),
more than this 24 GB machine can hold beside Pigment's copy; the memory plan
(`pigment generate --model synthetic:sdxl --plan`) is what it is for.
"""

import gzip
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_fullsize import CLIP_IDS, MODELS, UNET_COMMON, VAE_COMMON  # noqa: E402
from fixtures_sdxl import SCHEDULER  # noqa: E402

from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# text_encoder: CLIP ViT-L/14 (SD 1.5's); text_encoder_2: OpenCLIP ViT-bigG/14 with its projection
TEXT = MODELS["sd15"]["text"]
TEXT_2 = dict(CLIP_IDS, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu", projection_dim=1280)
UNET = dict(
    UNET_COMMON,
    sample_size=128,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[320, 640, 1280],
    transformer_layers_per_block=[1, 2, 10],
    attention_head_dim=[5, 10, 20],
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
VAE = dict(VAE_COMMON, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def main():
    with torch.device("meta"):
        parts = {
            "text_encoder": CLIPTextModel(CLIPTextConfig(**TEXT)),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_2)),
            "unet": UNet2DConditionModel(**UNET),
            "vae": AutoencoderKL(**VAE),
        }
    d = os.path.join(REPO, "assets", "synthetic", "sdxl")
    os.makedirs(d, exist_ok=True)
    lines, total = [], 0
    for c, m in parts.items():
        sd = m.state_dict()
        # the generator fills parameters only: a buffer (position_ids) would be a tensor Rust makes up
        sd = {n: t for n, t in sd.items() if n in dict(m.named_parameters())}
        for n in sorted(sd):
            lines.append(f"{c}\t{n}\t{','.join(map(str, sd[n].shape))}\n")
            total += sd[n].numel()
        print(f"{c}: {len(sd)} tensors, {sum(t.numel() for t in sd.values()) / 1e6:.1f} M parameters")
    with open(os.path.join(d, "tensors.txt.gz"), "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            f.write("".join(lines).encode())
    configs = {
        "text_encoder": parts["text_encoder"].config.to_dict(),
        "text_encoder_2": parts["text_encoder_2"].config.to_dict(),
        "unet": json.loads(parts["unet"].to_json_string()),
        "vae": json.loads(parts["vae"].to_json_string()),
        "scheduler": dict(SCHEDULER, _class_name="EulerDiscreteScheduler"),
        "model_index": INDEX,
    }
    for k in ("transformers_version", "_diffusers_version", "_name_or_path", "torch_dtype"):
        for c in configs.values():
            c.pop(k, None)
    for c, v in configs.items():
        with open(os.path.join(d, c + ".json"), "w") as f:
            json.dump(v, f, indent=1, sort_keys=True)
            f.write("\n")
    print(f"{total / 1e9:.3f} G parameters in all -> {d}")


if __name__ == "__main__":
    main()
