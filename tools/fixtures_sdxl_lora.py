#!/usr/bin/env python3
"""SDXL LoRA and textual-inversion fixtures for sdxl-tiny (tools/fixtures_sdxl.py) and diffusers
goldens for them (issue #12 item 4).

Run from the repository root (CPU, float32, ~30 s; needs `peft` for diffusers' LoRA loader):

    python tools/fixtures_sdxl_lora.py

Writes (overwriting):
    tests/fixtures/sdxl-lora/sdxl-tiny-kohya.safetensors  kohya's SDXL format: `lora_te1_*` (CLIP
        ViT-L), `lora_te2_*` (text_encoder_2, no text_projection) and `lora_unet_*` in LDM (sgm)
        module names (`input_blocks_4_1_transformer_blocks_1_attn1_to_q`, `input_blocks_3_0_op`,
        `label_emb_0_0`, ...) on every third Linear/Conv2d (LoCon) and the first of each kind
        (conv_in/conv_out excluded, as kohya does); rank 2 (attention q/k/v/out and the text
        encoders) or 1 (the rest), `.alpha` 1, gain 0.6
    tests/fixtures/sdxl-lora/sdxl-tiny-flat.safetensors    kohya keys with diffusers module paths
        (`lora_unet_down_blocks_1_attentions_0_...`) on every 12th UNet module, rank 2, alpha 1
    tests/fixtures/sdxl-lora/sdxl-tiny-peft.safetensors    diffusers/PEFT keys `unet.*`,
        `text_encoder.*`, `text_encoder_2.*` (`lora_A/lora_B`, no alpha: scale 1) on every 11th
        module of each part, rank 2, gain 0.8
    tests/fixtures/sdxl-lora/sdxl-tiny-emb.safetensors     an SDXL textual inversion (A1111's format):
        `clip_l` [2, 32] for text_encoder, `clip_g` [2, 32] for text_encoder_2 (f32)
    tests/fixtures/golden/sdxl-tiny/
        lora.safetensors   `fused.<part>.<module>.weight`: the weights after diffusers'
                           load_lora_weights(kohya, flat, peft) + set_adapters([0.8, 0.7, 0.5]) +
                           fuse_lora, whole for the first layer of each part and kind (Linear, Conv) where two files
                           overlap (<= 4096 values), and the first HEAD values
                           (flattened [out, in*kh*kw]) of every other merged one; metadata
                           `counts`: merged tensors per part
        lora.png           txt2img with the three LoRAs (fixtures_sdxl.py's options: 64x64, Euler,
                           2 steps, cfg 5, seed 42, its prompt and negative prompt)
        embedding.png      txt2img (no LoRA) with "sdxlword" in the prompt, loaded as diffusers'
                           documents for SDXL: load_textual_inversion(clip_l, text_encoder,
                           tokenizer) and (clip_g, text_encoder_2, tokenizer_2)
        lora.json          conditioning checks and how far each image is from the base txt2img.png

All LoRA values are f16-representable and stored as F16 (embedding F32); diffusers fuses in float32.
The script asserts that diffusers applied every pair (fused == base + sum(scale * alpha/r * up @ down),
computed here on the diffusers modules), so a key diffusers skipped cannot make a golden, and fails
(exit 1) if an image is ill-conditioned, flat or saturated (fixtures_sdxl.py's check).
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixtures_sdxl as fx  # noqa: E402
from fixtures_fullsize import save  # noqa: E402
from fixtures_lora import as_f16, delta  # noqa: E402
from make_fixtures import CONDITIONING_LIMIT, PROMPT, unet_key_to_ldm  # noqa: E402

REPO = fx.REPO
PARTS = ("text_encoder", "text_encoder_2", "unet")
ALPHA = 1.0
SCALES = {"kohya": 0.8, "flat": 0.7, "peft": 0.5}
HEAD = 24
WORD = "sdxlword"


def model(pipe, which):
    return getattr(pipe, which)


def targets(pipe):
    """(part, diffusers module name, module) for every LoRA-able layer."""
    out = []
    for which in PARTS:
        for name, m in model(pipe, which).named_modules():
            if not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            if (which, name) in (("unet", "conv_in"), ("unet", "conv_out"), ("text_encoder_2", "text_projection")):
                continue  # kohya leaves these out
            out.append((which, name, m))
    return out


def f16(t):
    return t.to(torch.float16).to(torch.float32)


def random_pair(m, rank, g, gain):
    """(down, up): Linear [r,in]/[out,r]; Conv [r,in,k,k]/[out,r,1,1] (LoCon)."""
    w = m.weight
    inner = w[0].numel()
    down = torch.randn(rank, *w.shape[1:], generator=g) / inner**0.5
    up = torch.randn(w.shape[0], rank, *([1, 1] if w.ndim == 4 else []), generator=g) * gain / rank**0.5
    return f16(down), f16(up)


def ldm_name(name):
    emb = {"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
    return emb.get(name) or unet_key_to_ldm(name + ".weight", fx.UNET)[: -len(".weight")]


def kohya_key(which, name, ldm):
    if which == "unet":
        return "lora_unet_" + (ldm_name(name) if ldm else name).replace(".", "_")
    return ("lora_te1_" if which == "text_encoder" else "lora_te2_") + name.replace(".", "_")


def make(pipe, g):
    files, pairs = {k: {} for k in SCALES}, {k: [] for k in SCALES}
    ts = targets(pipe)
    unet_i, seen = 0, set()
    for i, (which, name, m) in enumerate(ts):
        attn = name.endswith(("to_q", "to_k", "to_v", "to_out.0"))
        rank = 2 if which != "unet" or attn else 1
        # Every third layer and the first of each kind (so that every kind of layer is in the
        # file, checked below, and it stays small).
        if i % 3 == 0 or (which, kind(name)) not in seen:
            seen.add((which, kind(name)))
            down, up = random_pair(m, rank, g, 0.6)
            key = kohya_key(which, name, ldm=True)
            files["kohya"].update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(ALPHA)})
            pairs["kohya"].append((which, name, down, up, ALPHA / rank))
        if which == "unet":
            # diffusers' kohya converter turns `add_embedding_linear_1` into `add.embedding.linear`
            # (its SDXL index-stripping rule for names with "emb"): not in the flat file.
            if unet_i % 12 == 2 and not name.startswith("add_embedding"):
                down, up = random_pair(m, 2, g, 0.6)
                key = kohya_key(which, name, ldm=False)
                files["flat"].update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(ALPHA)})
                pairs["flat"].append((which, name, down, up, ALPHA / 2))
            unet_i += 1
    for which in PARTS:
        for i, (w, name, m) in enumerate(t for t in ts if t[0] == which):
            if i % 11 == 3:
                down, up = random_pair(m, 2, g, 0.8)
                files["peft"].update({f"{which}.{name}.lora_A.weight": down, f"{which}.{name}.lora_B.weight": up})
                pairs["peft"].append((which, name, down, up, 1.0))
    kinds = lambda ps: {(w, kind(n)) for w, n, *_ in ps}  # noqa: E731
    missing = kinds(ts) - kinds(pairs["kohya"])
    assert not missing, f"kinds of layer not in the kohya file: {sorted(missing)}"
    return files, pairs


def kind(name):
    """A layer's role: its name without block/layer numbers (ldm-style for the UNet)."""
    return ".".join(p for p in name.split(".") if not p.isdigit())


def weight(pipe, which, name):
    m = model(pipe, which).get_submodule(name)
    return (m.base_layer.weight if hasattr(m, "base_layer") else m.weight).detach().float()


def stats(img, base, cond):
    d = np.abs(img.astype(np.float64) - base.astype(np.float64))
    return dict(cond, vs_base_mean_u8=float(d.mean()), vs_base_max_u8=float(d.max()))


def ok(c):
    return c["perturbation_u8_mean_abs"] < CONDITIONING_LIMIT and c["image_std_u8"] >= 20 and c["image_saturated_fraction"] <= 0.2


def main():
    torch.set_num_threads(1)
    gdir = os.path.join(REPO, "tests", "fixtures", "golden", "sdxl-tiny")
    # Not under lora/: the serve tests list that folder (--lora-dir).
    ldir = os.path.join(REPO, "tests", "fixtures", "sdxl-lora")
    os.makedirs(ldir, exist_ok=True)
    base_png = np.asarray(Image.open(os.path.join(gdir, "txt2img.png")).convert("RGB"))
    pipe, _ = fx.build()
    base_img, _ = fx.run(pipe)
    # Within a level of the committed golden (package versions move single pixels by one).
    d = np.abs(base_img.astype(np.int16) - base_png.astype(np.int16))
    assert d.max() <= 1 and d.mean() < 0.01, f"sdxl-tiny is {d.mean()} / {d.max()} levels off golden/sdxl-tiny/txt2img.png: run fixtures_sdxl.py first"
    ts = targets(pipe)
    base = {(w, n): m.weight.detach().clone() for w, n, m in ts}

    g = torch.Generator("cpu").manual_seed(4321)
    files, pairs = make(pipe, g)
    paths = {}
    for k, sd in files.items():
        paths[k] = os.path.join(ldir, f"sdxl-tiny-{k}.safetensors")
        save_file(as_f16(sd), paths[k], metadata={"format": "pt"})
        print(f"{k}: {len(pairs[k])} pairs, {os.path.getsize(paths[k])} bytes")

    for k, path in paths.items():
        pipe.load_lora_weights(path, adapter_name=k)
    names = list(SCALES)
    pipe.set_adapters(names, adapter_weights=[SCALES[k] for k in names])
    pipe.fuse_lora(components=list(PARTS), lora_scale=1.0, adapter_names=names)
    want = {k: v.clone() for k, v in base.items()}
    for k in names:
        for which, name, down, up, s in pairs[k]:
            want[(which, name)] += SCALES[k] * s * delta(down, up, want[(which, name)].shape)
    touched = {(w, n) for k in names for w, n, *_ in pairs[k]}
    out, worst, wholes = {}, 0.0, set()
    for (which, name), w in want.items():
        if (which, name) not in touched:
            continue
        got = weight(pipe, which, name)
        err = ((got - w).abs().max() / w.abs().max()).item()
        assert err < 1e-5, f"{which}.{name} not fused as expected (rel err {err})"
        worst = max(worst, err)
        # Whole: the first layer of each part and kind (Linear / Conv) that two files merge into.
        two = sum((which, name) in {(w, n) for w, n, *_ in pairs[k]} for k in names) > 1
        whole = two and (which, w.ndim) not in wholes and w.numel() <= 4096
        if whole:
            wholes.add((which, w.ndim))
        out[f"fused.{which}.{name}.weight"] = got.contiguous() if whole else got.reshape(-1)[:HEAD].clone()
    counts = {p: sum(1 for w, _ in touched if w == p) for p in PARTS}
    meta = {"loras": [{"file": os.path.basename(paths[k]), "scale": SCALES[k]} for k in names], "counts": counts, "head": HEAD, "whole": sorted(k for k, v in out.items() if v.numel() > HEAD)}
    save(out, os.path.join(gdir, "lora.safetensors"), meta)
    print(f"fused: worst rel err vs base + deltas {worst:.2e}, {counts}")

    report = {}
    img, _ = fx.run(pipe)
    Image.fromarray(img).save(os.path.join(gdir, "lora.png"), optimize=False)
    report["lora"] = stats(img, base_img, fx.conditioning(pipe, img))

    # The embedding, on a fresh (LoRA-free) pipeline.
    pipe, _ = fx.build()
    emb = {"clip_l": f16(torch.randn(2, 32, generator=g)), "clip_g": f16(torch.randn(2, 32, generator=g))}
    epath = os.path.join(ldir, "sdxl-tiny-emb.safetensors")
    save_file({k: v.contiguous() for k, v in emb.items()}, epath, metadata={"format": "pt"})
    pipe.load_textual_inversion(emb["clip_l"], token=WORD, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(emb["clip_g"], token=WORD, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    prompt = PROMPT.replace("an astronaut", f"an {WORD}")
    assert prompt != PROMPT
    for tok in (pipe.tokenizer, pipe.tokenizer_2):
        ids = tok(pipe.maybe_convert_prompt(prompt, tok)).input_ids
        assert sum(i >= 49408 for i in ids) == 2, ids
    orig = fx.PROMPT
    fx.PROMPT = prompt  # fx.run's prompt
    try:
        img, _ = fx.run(pipe)
        Image.fromarray(img).save(os.path.join(gdir, "embedding.png"), optimize=False)
        report["embedding"] = dict(stats(img, base_img, fx.conditioning(pipe, img)), prompt=prompt)
    finally:
        fx.PROMPT = orig
    with open(os.path.join(gdir, "lora.json"), "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(report, indent=1))
    if not all(ok(c) for c in report.values()):
        print("FAIL: ill-conditioned, flat or saturated (see lora.json)")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
