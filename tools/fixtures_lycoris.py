#!/usr/bin/env python3
"""LyCORIS fixtures: LoHa, LoKr and DoRA files for sd15-tiny in kohya naming, and the merged
weights the LyCORIS reference (`lycoris-lora`, its torch functional code) makes from them.

    pip install lycoris-lora==4.1.3   # (not in requirements.txt: only this script needs it)
    python tools/fixtures_lycoris.py

Writes:
    tests/fixtures/lora/sd15-tiny-lycoris.safetensors   random factors (f16), `.alpha` per module,
        one module per variant:
          LoHa   linear and 3x3 conv           (hada_w1_a/b, hada_w2_a/b)
          LoKr   w1 full + w2 factors, linear  (lokr_w1, lokr_w2_a/b)
                 w1 factors + w2 full, linear  (lokr_w1_a/b, lokr_w2), alpha ignored (scale 1)
                 w1 full + w2 full 4-D, conv   (lokr_w1, lokr_w2)
          DoRA   LoRA + dora_scale per out row (wd_on_out), LoHa + dora_scale per in column
    tests/fixtures/golden/sd15-tiny/lycoris.safetensors  target diffusers name -> merged f32 weight
        at multiplier MULT, from lycoris.functional (loha.diff_weight, lokr.kron_weight,
        general.weight_decompose) on the f32 values of the fixture's f16 base weights.

Scales are A1111's / LyCORIS's: alpha / rank, with rank the inner dim of the first factored pair
(LoKr with no factored pair: 1). DoRA: W' = weight_decompose(W + scale·ΔW, dora_scale, MULT),
otherwise W' = W + MULT·scale·ΔW.
"""

import os

import torch
from lycoris.functional import general, loha, lokr
from safetensors.torch import load_file, save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(REPO, "tests", "fixtures")
MULT = 0.7
ALPHA = 3.0
RANK = 4


def f16(t):
    return t.to(torch.float16).contiguous()


def main():
    g = torch.Generator().manual_seed(7)
    unet = load_file(os.path.join(FIX, "sd15-tiny", "unet", "diffusion_pytorch_model.safetensors"))
    te = load_file(os.path.join(FIX, "sd15-tiny", "text_encoder", "model.safetensors"))
    base = {("unet", k): v.float() for k, v in unet.items()} | {("te", k): v.float() for k, v in te.items()}

    def rnd(*shape, s=0.3):
        return f16(torch.randn(*shape, generator=g) * s)

    sd, golden = {}, {}

    def key(part, name):
        return ("lora_unet_" if part == "unet" else "lora_te_") + name.removesuffix(".weight").replace(".", "_")

    def finish(part, name, k, diff, dora=None, alpha=True):
        w = base[(part, name)]
        if alpha:
            sd[f"{k}.alpha"] = torch.tensor(ALPHA)
        if dora is not None:
            per_out = dora.shape[0] == w.shape[0] and dora.numel() == w.shape[0]
            sd[f"{k}.dora_scale"] = dora
            merged = general.weight_decompose(w + diff, dora.float(), MULT, wd_on_out=per_out, backend="torch")
        else:
            merged = w + MULT * diff
        golden[name] = merged.float().contiguous()

    def loha_module(part, name, dora_per_out=None):
        w = base[(part, name)]
        out, inner = w.shape[0], w[0].numel()
        k = key(part, name)
        t = {n: rnd(*s) for n, s in [("hada_w1_a", (out, RANK)), ("hada_w1_b", (RANK, inner)), ("hada_w2_a", (out, RANK)), ("hada_w2_b", (RANK, inner))]}
        sd.update({f"{k}.{n}": v for n, v in t.items()})
        f = {n: v.float() for n, v in t.items()}
        diff = loha.diff_weight(f["hada_w1_b"], f["hada_w1_a"], f["hada_w2_b"], f["hada_w2_a"], None, None, gamma=ALPHA / RANK, backend="torch")
        dora = None
        if dora_per_out is not None:
            shape = [out] + [1] * (w.dim() - 1) if dora_per_out else [1, w.shape[1]] + [1] * (w.dim() - 2)
            dora = f16(w.reshape(out, -1).norm(dim=1).mean() * (1 + 0.2 * torch.rand(*shape, generator=g)))
        finish(part, name, k, diff.reshape(w.shape), dora)

    def lokr_module(part, name, a, b, w1_factors, w2_factors):
        """ΔW = kron(w1 [a, b], w2 [out/a, in/b, (k, k)])."""
        w = base[(part, name)]
        out, cin = w.shape[0], w.shape[1]
        c, d, ks = out // a, cin // b, list(w.shape[2:])
        k = key(part, name)
        t = {}
        if w1_factors:
            t["lokr_w1_a"], t["lokr_w1_b"] = rnd(a, RANK), rnd(RANK, b)
        else:
            t["lokr_w1"] = rnd(a, b)
        if w2_factors:
            t["lokr_w2_a"], t["lokr_w2_b"] = rnd(c, RANK), rnd(RANK, d * max(1, int(torch.tensor(ks).prod().item()) if ks else 1))
        else:
            t["lokr_w2"] = rnd(c, d, *ks)
        sd.update({f"{k}.{n}": v for n, v in t.items()})
        f = {n: v.float() for n, v in t.items()}
        rank = RANK if (w1_factors or w2_factors) else None
        scale = ALPHA / rank if rank else 1.0
        diff = lokr.kron_weight(f.get("lokr_w1"), f.get("lokr_w1_a"), f.get("lokr_w1_b"), f.get("lokr_w2"), f.get("lokr_w2_a"), f.get("lokr_w2_b"), None, scale=scale, backend="torch")
        finish(part, name, k, diff.reshape(w.shape), None, alpha=True)

    def dora_lora_module(part, name):
        w = base[(part, name)]
        out, inner = w.shape[0], w[0].numel()
        k = key(part, name)
        down, up = rnd(RANK, *w.shape[1:]), rnd(out, RANK, *[1] * (w.dim() - 2))
        sd[f"{k}.lora_down.weight"], sd[f"{k}.lora_up.weight"] = down, up
        diff = (up.float().reshape(out, RANK) @ down.float().reshape(RANK, inner)).reshape(w.shape) * (ALPHA / RANK)
        dora = f16(w.reshape(out, -1).norm(dim=1, keepdim=True).reshape(out, *[1] * (w.dim() - 1)) * (1 + 0.2 * torch.rand(out, *[1] * (w.dim() - 1), generator=g)))
        finish(part, name, k, diff, dora)

    blk = "down_blocks.0.attentions.0.transformer_blocks.0"
    loha_module("unet", f"{blk}.attn1.to_q.weight")
    loha_module("unet", "down_blocks.1.resnets.0.conv1.weight")
    lokr_module("te", "text_model.encoder.layers.0.mlp.fc1.weight", a=4, b=2, w1_factors=False, w2_factors=True)
    lokr_module("unet", f"{blk}.ff.net.2.weight", a=4, b=8, w1_factors=True, w2_factors=False)
    lokr_module("unet", "mid_block.resnets.0.conv1.weight", a=4, b=4, w1_factors=False, w2_factors=False)
    dora_lora_module("te", "text_model.encoder.layers.0.self_attn.q_proj.weight")
    dora_lora_module("unet", "up_blocks.1.resnets.0.conv1.weight")
    loha_module("unet", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight", dora_per_out=False)

    save_file(sd, os.path.join(FIX, "lora", "sd15-tiny-lycoris.safetensors"))
    save_file(golden, os.path.join(FIX, "golden", "sd15-tiny", "lycoris.safetensors"), metadata={"multiplier": str(MULT)})
    print(f"{len(sd)} tensors, {len(golden)} merged targets")


if __name__ == "__main__":
    main()
