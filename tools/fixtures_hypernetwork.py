#!/usr/bin/env python3
"""Random A1111 hypernetworks for sd15-tiny and diffusers goldens for them (tests/hypernetwork.rs).

    python tools/fixtures_hypernetwork.py      (after tools/make_fixtures.py; CPU, ~5 s)

There is no diffusers hypernetwork loader, so the reference is built here: A1111's
`HypernetworkModule` Sequential is rebuilt in torch from its rules (Linear per layer_structure
step; the activation after every Linear but the last unless activate_output; then LayerNorm when
is_layer_norm; then Dropout, a no-op at inference that still takes a Sequential index; forward
`x + seq(x) * multiplier`), saved as an A1111-style .pt dict, converted with
tools/convert_hypernetwork.py, and applied to diffusers' UNet by an attention processor on every
cross-attention (attn2) that feeds `to_k` and `to_v` their own transformed context.

Writes (overwriting):
    tests/fixtures/hypernetwork/hn-a.safetensors  width 32, [1, 2, 1], "swish" (torch Hardswish in
        A1111), layer norm, dropout [0, 0.3, 0] (index gaps), multiplier 0.8 in the goldens
    tests/fixtures/hypernetwork/hn-b.safetensors  width 32, [1, 1], tanh with activate_output,
        multiplier 0.5, applied after hn-a
    tests/fixtures/golden/sd15-tiny/hypernet_unet.safetensors  sample [1,4,8,8], context
        [1,8,32], timestep; UNet outputs `out_a` (hn-a) and `out_ab` (hn-a then hn-b)
    tests/fixtures/golden/sd15-tiny/hypernet.png  the pipeline at 32x32 (Euler, seed 42, 4 steps, cfg 7.5,
        the usual prompt) with hn-a ×0.8 then hn-b ×0.5
"""

import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_hypernetwork import convert, write_safetensors  # noqa: E402
from make_fixtures import GUIDANCE, NEGATIVE, PROMPT, REPO, SEED, STEPS, save, save_png  # noqa: E402

from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline  # noqa: E402

SIZE = 32  # the image golden (32x32: a smaller PNG for the tree budget)
ACTS = {"linear": None, "relu": torch.nn.ReLU, "swish": torch.nn.Hardswish, "tanh": torch.nn.Tanh}


def module(dim, structure, act, layer_norm, dropout, activate_output, g):
    """A1111's HypernetworkModule layers, random (f16-representable) weights."""
    layers = []
    n = len(structure) - 1
    for i in range(n):
        lin = torch.nn.Linear(int(dim * structure[i]), int(dim * structure[i + 1]))
        layers.append(lin)
        if ACTS[act] is not None and (i < n - 1 or activate_output):
            layers.append(ACTS[act]())
        if layer_norm:
            layers.append(torch.nn.LayerNorm(int(dim * structure[i + 1])))
        if dropout is not None and dropout[i + 1] > 0:
            layers.append(torch.nn.Dropout(p=dropout[i + 1]))
    seq = torch.nn.Sequential(*layers).eval()
    with torch.no_grad():
        for m in seq:
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 1.5 / m.in_features**0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
            elif isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        for p in seq.parameters():
            p.copy_(p.half().float())
    return seq


def a1111_dict(dim, settings, g):
    mods = [module(dim, settings["layer_structure"], settings["activation_func"], settings["is_layer_norm"], settings.get("dropout_structure"), settings["activate_output"], g) for _ in range(2)]
    # A1111 keeps the Sequential as `HypernetworkModule.linear`.
    state = {dim: [{f"linear.{k}": v for k, v in m.state_dict().items()} for m in mods], **settings}
    return state, mods


class HypernetProcessor:
    """diffusers cross-attention with A1111's hypernetworks on the k and v contexts."""

    def __init__(self, nets):
        self.nets = nets  # [(k module, v module, multiplier)], applied in order

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        assert encoder_hidden_states is not None and attention_mask is None
        ck = cv = encoder_hidden_states
        for hk, hv, m in self.nets:
            ck = ck + hk(ck) * m
            cv = cv + hv(cv) * m
        b = hidden_states.shape[0]
        q, k, v = attn.to_q(hidden_states), attn.to_k(ck), attn.to_v(cv)
        hd = q.shape[-1] // attn.heads
        q, k, v = (t.view(b, -1, attn.heads, hd).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, attn.heads * hd)
        return attn.to_out[1](attn.to_out[0](o))


def set_nets(unet, nets):
    procs = {}
    for name, p in unet.attn_processors.items():
        procs[name] = HypernetProcessor(nets) if ".attn2." in name else p
    unet.set_attn_processor(procs)


@torch.no_grad()
def main():
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1234)
    fixtures = os.path.join(REPO, "tests", "fixtures")
    out_dir = os.path.join(fixtures, "hypernetwork")
    gdir = os.path.join(fixtures, "golden", "sd15-tiny")
    os.makedirs(out_dir, exist_ok=True)
    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(fixtures, "sd15-tiny"), local_files_only=True, torch_dtype=torch.float32)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    unet = pipe.unet
    dim = unet.config.cross_attention_dim
    a_set = dict(layer_structure=[1, 2, 1], activation_func="swish", is_layer_norm=True, activate_output=False,
                 use_dropout=True, dropout_structure=[0, 0.3, 0], name="hn-a")
    b_set = dict(layer_structure=[1, 1], activation_func="tanh", is_layer_norm=False, activate_output=True, name="hn-b")
    nets = {}
    for name, settings in [("hn-a", a_set), ("hn-b", b_set)]:
        state, mods = a1111_dict(dim, settings, g)
        # Through the converter, as a user would: .pt dict -> safetensors.
        with tempfile.TemporaryDirectory() as tmp:
            pt = os.path.join(tmp, f"{name}.pt")
            torch.save(state, pt)
            tensors, meta = convert(torch.load(pt, map_location="cpu", weights_only=False), half=True)
        write_safetensors(os.path.join(out_dir, f"{name}.safetensors"), tensors, meta)
        nets[name] = mods
    print("hn-a keys:", sorted(k for k in nets["hn-a"][0].state_dict()))

    # The processor with no nets is diffusers' own attention (sanity for the processor).
    sample = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 8, dim, generator=g)
    t = 500.0
    plain = unet(sample, t, context).sample
    set_nets(unet, [])
    assert torch.allclose(unet(sample, t, context).sample, plain, atol=1e-5)
    a = (nets["hn-a"][0], nets["hn-a"][1], 0.8)
    b = (nets["hn-b"][0], nets["hn-b"][1], 0.5)
    set_nets(unet, [a])
    out_a = unet(sample, t, context).sample
    set_nets(unet, [a, b])
    out_ab = unet(sample, t, context).sample
    print("mean |out_a - plain|", (out_a - plain).abs().mean().item(), "mean |out_ab - out_a|", (out_ab - out_a).abs().mean().item())
    save({"sample": sample, "context": context, "timestep": torch.tensor([t]), "out_a": out_a, "out_ab": out_ab},
         os.path.join(gdir, "hypernet_unet.safetensors"), {"multipliers": [0.8, 0.5]})

    img = pipe(PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, num_inference_steps=STEPS,
               guidance_scale=GUIDANCE, generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images[0]
    save_png(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8), os.path.join(gdir, "hypernet.png"))


if __name__ == "__main__":
    main()
