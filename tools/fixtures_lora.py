#!/usr/bin/env python3
"""Random LoRA files for the tiny SD 1.5 fixture and diffusers goldens for them.

Run from the repository root after tools/make_fixtures.py (CPU, ~10 s, no network; needs `peft`,
which diffusers' LoRA loader requires):

    python tools/fixtures_lora.py

Writes (overwriting):
    tests/fixtures/lora/sd15-tiny-kohya.safetensors   kohya / A1111 keys (lora_unet_*, lora_te_*,
                                                      .lora_down/.lora_up/.alpha), LoCon 3x3 convs
    tests/fixtures/lora/sd15-tiny-peft.safetensors    diffusers / PEFT keys (unet.*.lora_A/B.weight,
                                                      text_encoder.*), no alpha (= rank, scale 1)
    tests/fixtures/lora/sd15-tiny-peft-alpha.safetensors  PEFT keys saved by diffusers'
                                                      save_lora_weights with LoraConfig metadata
                                                      (lora_alpha != r, alpha_pattern, rsLoRA)
    tests/fixtures/golden/sd15-tiny/lora_*.safetensors + .png   goldens, see tests/fixtures/README.md

The goldens come from diffusers itself: `pipe.load_lora_weights(file, adapter_name=...)`,
`pipe.set_adapters(...)` and `pipe.fuse_lora(...)`. The script also checks that every LoRA pair
was applied by diffusers (fused weight == base + scale * up @ down, computed here by hand), so a
key diffusers silently skipped cannot make a golden that a correct loader would miss.
"""

import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import GUIDANCE, HEIGHT, NEGATIVE, PROMPT, REPO, SEED, STEPS, WIDTH, save, save_png  # noqa: E402

from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline  # noqa: E402

VARIANT = "sd15-tiny"
RANK = 4
KOHYA_ALPHA = 2.0  # kohya scale alpha / rank = 0.5
KOHYA_SCALE = 0.8  # as <lora:sd15-tiny-kohya:0.8>
PEFT_SCALE = 0.5
# Fused weights saved for a direct merge check (diffusers names, both text and UNet, linear,
# 1x1 conv and 3x3 LoCon conv).
CHECK = [
    "text_encoder:text_model.encoder.layers.0.self_attn.q_proj",
    "text_encoder:text_model.encoder.layers.3.mlp.fc2",
    "unet:down_blocks.0.attentions.0.proj_in",
    "unet:down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "unet:down_blocks.0.resnets.0.conv1",
    "unet:up_blocks.1.resnets.1.conv_shortcut",
    "unet:mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
]


def targets(pipe, which):
    """(component, diffusers module name, module) for every LoRA-able layer of the component."""
    model = pipe.unet if which == "unet" else pipe.text_encoder
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            if which == "unet" and name in ("conv_in", "conv_out"):
                continue  # kohya LoCon leaves these out too
            out.append((which, name, m))
    return out


def random_pair(m, g, gain):
    """(down, up) for module m: Linear [r,in]/[out,r]; Conv [r,in,k,k]/[out,r,1,1] (LoCon)."""
    w = m.weight
    if w.ndim == 2:
        out_f, in_f = w.shape
        down = torch.randn(RANK, in_f, generator=g) / in_f**0.5
        up = torch.randn(out_f, RANK, generator=g) * gain / RANK**0.5
    else:
        out_f, in_f, kh, kw = w.shape
        down = torch.randn(RANK, in_f, kh, kw, generator=g) / (in_f * kh * kw) ** 0.5
        up = torch.randn(out_f, RANK, 1, 1, generator=g) * gain / RANK**0.5
    # f16-representable: the files are F16 and diffusers fuses these same values in float32
    return f16(down), f16(up)


def f16(t):
    return t.to(torch.float16).to(torch.float32)


def as_f16(sd):
    out = {}
    for k, v in sd.items():
        h = v.to(torch.float16)
        assert torch.equal(h.to(torch.float32), v), k
        out[k] = h.contiguous()
    return out


def delta(down, up, shape):
    return (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(shape)


def make_kohya(pipe, g):
    sd, pairs = {}, []
    for which, name, m in targets(pipe, "unet") + targets(pipe, "text_encoder"):
        down, up = random_pair(m, g, 0.6)
        prefix = "lora_unet_" if which == "unet" else "lora_te_"
        key = prefix + name.replace(".", "_")
        sd[f"{key}.lora_down.weight"] = down
        sd[f"{key}.lora_up.weight"] = up
        sd[f"{key}.alpha"] = torch.tensor(KOHYA_ALPHA)
        pairs.append((which, name, down, up, KOHYA_ALPHA / RANK))
    return sd, pairs


def make_peft(pipe, g):
    """Every other layer (so the two files overlap on some layers and not on others)."""
    sd, pairs = {}, []
    for i, (which, name, m) in enumerate(targets(pipe, "unet") + targets(pipe, "text_encoder")):
        if i % 2:
            continue
        down, up = random_pair(m, g, 0.8)
        sd[f"{which}.{name}.lora_A.weight"] = down
        sd[f"{which}.{name}.lora_B.weight"] = up
        pairs.append((which, name, down, up, 1.0))
    return sd, pairs


# A diffusers-saved PEFT file whose LoraConfig (in the safetensors metadata
# `lora_adapter_metadata`) has lora_alpha != r, a per-module alpha_pattern, and rsLoRA.
ALPHA_UNET = dict(r=RANK, lora_alpha=8, alpha_pattern={"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": 2})
ALPHA_TE = dict(r=RANK, lora_alpha=4, use_rslora=True)  # scale alpha / sqrt(r)
ALPHA_CHECK = [
    "unet:down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "unet:down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k",
    "unet:up_blocks.1.resnets.0.conv1",
    "text_encoder:text_model.encoder.layers.1.self_attn.v_proj",
]


def make_peft_alpha(pipe, g, path):
    from peft import LoraConfig

    layers, pairs = {"unet": {}, "text_encoder": {}}, []
    for which, name, m in targets(pipe, "unet") + targets(pipe, "text_encoder"):
        if not name.endswith(("to_q", "to_k", "to_v", "to_out.0", "q_proj", "v_proj", "resnets.0.conv1")):
            continue
        down, up = random_pair(m, g, 0.8)
        layers[which][f"{name}.lora_A.weight"] = down.to(torch.float16)
        layers[which][f"{name}.lora_B.weight"] = up.to(torch.float16)
        cfg = ALPHA_UNET if which == "unet" else ALPHA_TE
        alpha = cfg.get("alpha_pattern", {}).get(name, cfg["lora_alpha"])
        pairs.append((which, name, down, up, alpha / (RANK**0.5 if cfg.get("use_rslora") else RANK)))
    meta = {}
    for which, cfg in (("unet", ALPHA_UNET), ("text_encoder", ALPHA_TE)):
        targets_ = sorted({k.rsplit(".lora_", 1)[0] for k in layers[which]})
        meta[which] = LoraConfig(target_modules=targets_, **cfg).to_dict()
    d = os.path.dirname(path)
    StableDiffusionPipeline.save_lora_weights(
        d,
        unet_lora_layers=layers["unet"],
        text_encoder_lora_layers=layers["text_encoder"],
        unet_lora_adapter_metadata=meta["unet"],
        text_encoder_lora_adapter_metadata=meta["text_encoder"],
        weight_name=os.path.basename(path),
    )
    return pairs


def module(pipe, which, name):
    return (pipe.unet if which == "unet" else pipe.text_encoder).get_submodule(name)


@torch.no_grad()
def run(pipe):
    pe, ne = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    img = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    ).images[0]
    u8 = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return pe.float(), ne.float(), u8


def load(folder):
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, torch_dtype=torch.float32)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main():
    torch.set_num_threads(1)
    fixtures = os.path.join(REPO, "tests", "fixtures")
    folder = os.path.join(fixtures, VARIANT)
    pipe = load(folder)
    base = {
        (w, n): module(pipe, w, n).weight.detach().clone() for w, n, _ in targets(pipe, "unet") + targets(pipe, "text_encoder")
    }

    g = torch.Generator("cpu").manual_seed(1234)
    kohya, kohya_pairs = make_kohya(pipe, g)
    peft, peft_pairs = make_peft(pipe, g)
    ldir = os.path.join(fixtures, "lora")
    os.makedirs(ldir, exist_ok=True)
    kohya_path = os.path.join(ldir, f"{VARIANT}-kohya.safetensors")
    peft_path = os.path.join(ldir, f"{VARIANT}-peft.safetensors")
    save_file(as_f16(kohya), kohya_path, metadata={"format": "pt"})
    save_file(as_f16(peft), peft_path, metadata={"format": "pt"})
    alpha_path = os.path.join(ldir, f"{VARIANT}-peft-alpha.safetensors")
    alpha_pairs = make_peft_alpha(pipe, g, alpha_path)
    print(f"kohya: {len(kohya_pairs)} pairs, peft: {len(peft_pairs)} pairs, peft-alpha: {len(alpha_pairs)} pairs")

    gdir = os.path.join(fixtures, "golden", VARIANT)
    cases = [
        ("lora_kohya", [(kohya_path, "kohya", kohya_pairs, KOHYA_SCALE)]),
        ("lora_both", [(kohya_path, "kohya", kohya_pairs, KOHYA_SCALE), (peft_path, "peft", peft_pairs, PEFT_SCALE)]),
    ]
    # Weights only (no image) for the LoraConfig-metadata file.
    cases.append(("lora_peft_alpha", [(alpha_path, "alpha", alpha_pairs, 1.0)]))
    for case, loras in cases:
        for path, adapter, _, _ in loras:
            pipe.load_lora_weights(path, adapter_name=adapter)
        names = [a for _, a, _, _ in loras]
        pipe.set_adapters(names, adapter_weights=[s for *_, s in loras])
        pipe.fuse_lora(components=["unet", "text_encoder"], lora_scale=1.0, adapter_names=names)
        # Every pair was applied: fused == base + sum(scale * alpha/r * up @ down).
        want = {k: v.clone() for k, v in base.items()}
        for _, _, pairs, scale in loras:
            for which, name, down, up, s in pairs:
                want[(which, name)] += scale * s * delta(down, up, want[(which, name)].shape)
        worst = 0.0
        for (which, name), w in want.items():
            m = module(pipe, which, name)
            got = m.base_layer.weight if hasattr(m, "base_layer") else m.weight
            err = ((got - w).abs().max() / w.abs().max()).item()
            assert err < 1e-5, f"{case}: {which}.{name} not fused as expected (rel err {err})"
            worst = max(worst, err)
        if case == "lora_peft_alpha":
            out = {}
            for c in ALPHA_CHECK:
                which, name = c.split(":")
                out[f"fused.{which}.{name}.weight"] = module(pipe, which, name).base_layer.weight.detach().float()
            save(out, os.path.join(gdir, f"{case}.safetensors"), {"loras": [{"file": os.path.basename(alpha_path), "scale": 1.0}]})
            print(f"{case}: fused worst rel err {worst:.2e}")
            continue
        pe, ne, u8 = run(pipe)
        out = {"prompt.last_hidden_state": pe, "negative.last_hidden_state": ne, "image_u8": torch.from_numpy(u8)}
        for c in CHECK:
            which, name = c.split(":")
            out[f"fused.{which}.{name}.weight"] = module(pipe, which, name).base_layer.weight.detach().float()
        meta = {
            "loras": [{"file": os.path.basename(p), "scale": s} for p, _, _, s in loras],
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE,
            "seed": SEED,
            "steps": STEPS,
            "guidance": GUIDANCE,
            "scheduler": "EulerDiscreteScheduler.from_config",
            "size": [WIDTH, HEIGHT],
        }
        save(out, os.path.join(gdir, f"{case}.safetensors"), meta)
        save_png(u8, os.path.join(gdir, f"{case}.png"))
        sat = float(((u8 == 0) | (u8 == 255)).mean())
        print(f"{case}: fused worst rel err {worst:.2e}, image std {u8.std():.1f}, saturated {sat:.3f}, "
              f"meta {json.dumps(meta['loras'])}")
        # A fresh pipeline for the next case: unfuse_lora subtracts, which is not exact.
        pipe = load(folder)


if __name__ == "__main__":
    main()
