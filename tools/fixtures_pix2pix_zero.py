#!/usr/bin/env python3
"""pix2pix-zero goldens (issue #15 item 3): diffusers' StableDiffusionPix2PixZeroPipeline on
tests/fixtures/sd15-tiny with DDIMScheduler / DDIMInverseScheduler, float32, CPU.

Run from the repository root (CPU, float32, under a minute):

    python tools/fixtures_pix2pix_zero.py

Prompt "a cat sitting on the grass", negative "", source sentences SOURCES ("cat"), target the
same with "dog" (`pipe.get_embeds`), seed 42, 64x64, guidance 7.5, 4 DDIM steps.
Writes tests/fixtures/golden/pix2pix_zero/:

grad_step.safetensors: one cross-attention guidance gradient, as __call__'s second loop at its
first step (t = 751 of the 4-step schedule), computed by torch autograd with the pipeline's own
prepare_unet / Pix2PixZeroAttnProcessor / Pix2PixZeroL2Loss:
    x_in               [2, 4, 8, 8]  CFG batch of the seed-42 latents (init_noise_sigma 1)
    t                  [1]
    prompt_embeds      [2, 77, 32]   F16 (exact: rounded before use): [negative ""; prompt]
    prompt_embeds_edit_cond [1, 77, 32]  F16 (exact): the cond half of prompt_embeds_edit, which
                                     is [prompt_embeds[0]; prompt_embeds[1] + direction] with
                                     direction = mean target - mean source (the uncond half is
                                     prompt_embeds[0], so not stored)
    loss               [1]           sum over the 4 attn2 layers of
                                     ((probs_edit - probs_ref)^2).sum((1, 2)).mean(0)
    loss.<attn2 name>  [1]           each layer's term (e.g. loss.mid_block.attentions.0.
                                     transformer_blocks.0.attn2); the references are the
                                     attention probabilities of a forward at x_in with
                                     prompt_embeds, shape [B*heads, Lq, 77] (not stored: 4 x 79 KB;
                                     a forward recomputes them and `loss` checks them)
    grad               [2, 4, 8, 8]  dL/dx_in
    noise_pred         [2, 4, 8, 8]  the recomputed UNet call at x_in - 0.1 * grad (lr = the
                                     default cross_attention_guidance_amount), prompt_embeds_edit
The embeddings are F16 to fit the budget (Golden::f32 widens F16); everything is f32 otherwise.

call_default.png, call_<run>.safetensors (`latents` [1,4,8,8] before decode, `x_T` in default's): the whole
__call__; runs `default` (cross_attention_guidance_amount 0.1) and `strong` (AMOUNTS). Each
run's distance to amount 0 (plain txt2img with the edited embeddings) is printed and kept in the
metadata (`vs_amount0`: image mean/max levels, latents max abs).

invert_<run>.safetensors (`latents` [1,4,8,8] x_T, `x0` [1,4,8,8] the VAE posterior sample x
0.18215, the same in both, and `rolls` [400] every torch.randint(4) auto_corr_loss drew, in
order, from the generator after that sample: both stored in reg's): pipe.invert(prompt=PROMPT, image=golden/img2img/init.png, 4 steps, guidance 1,
lambda_auto_corr 20, lambda_kl 20, num_auto_corr_rolls 5, generator seed 42) with
num_reg_steps 5 (`reg`) and 0 (`plain`, a plain DDIM inversion); then
edit_reg.png + edit_reg.safetensors (`latents`): __call__ from the `reg` latents (amount 0.1).
invert_v.safetensors, invert_v_cfg.safetensors (`latents`): the `reg` inversion on sd21-tiny
(v_prediction) at guidance 1 and 3 (V_RUNS). invert_reg128.safetensors: `reg` on
golden/img2img/init_128.png, 2 steps (16x16 latents: the loss's pooled level too).

Measured (diffusers 0.39, torch CPU; the script prints them again):
- grad_step: t 751, loss 0.14144 (down_blocks.0 0.02888, mid 0.02481, up_blocks.1.attentions.0
  0.03598, .1 0.05178); |grad| max 0.0183, and exactly 0 on the uncond half (its embeddings and
  input equal the reference forward's, so its maps equal the references at this first step).
- call vs amount 0 (txt2img with the edited embeddings): default (0.1) mean 0.067 / max 1 level,
  latents max 0.073; strong (5.0) mean 3.47 / max 39 levels, latents max 3.41 (amount 1: 0.69 /
  7, 3: 2.08 / 23, 10: 6.86 / 72: roughly linear).
- invert: reg vs plain latents max 2.93 (plain's own max 3.14): the regularisation matters.
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_fullsize import save, t32  # noqa: E402
from make_fixtures import SEED  # noqa: E402

from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionPix2PixZeroPipeline  # noqa: E402
from diffusers.pipelines.deprecated.stable_diffusion_variants import pipeline_stable_diffusion_pix2pix_zero as p2pz  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SD15 = os.path.join(REPO, "tests", "fixtures", "sd15-tiny")
SD21 = os.path.join(REPO, "tests", "fixtures", "sd21-tiny")
INIT = os.path.join(REPO, "tests", "fixtures", "golden", "img2img", "init.png")
INIT_128 = os.path.join(REPO, "tests", "fixtures", "golden", "img2img", "init_128.png")
OUT = os.path.join(REPO, "tests", "fixtures", "golden", "pix2pix_zero")
PROMPT = "a cat sitting on the grass"
SOURCES = ["a cat sitting", "a photo of a cat", "a cat on a table"]
TARGETS = [s.replace("cat", "dog") for s in SOURCES]
STEPS, GUIDANCE, SIZE = 4, 7.5, 64
AMOUNTS = {"default": 0.1, "strong": 5.0}
INVERT = dict(num_inference_steps=STEPS, guidance_scale=1.0, lambda_auto_corr=20.0, lambda_kl=20.0, num_auto_corr_rolls=5)
INVERT_RUNS = {"reg": 5, "plain": 0}
# sd21-tiny (v_prediction): get_epsilon's conversion, and at guidance > 1 its broadcast against
# the CFG-batched input (epsilon twice: both losses see two copies, twice the rolls drawn)
V_RUNS = {"v": 1.0, "v_cfg": 3.0}
MEASURED = {}


def f16_exact(x):
    return x.to(torch.float16).to(torch.float32)


def gen():
    return torch.Generator("cpu").manual_seed(SEED)


def grad_step(pipe, source_embeds, target_embeds):
    pos, neg = pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt="")
    embeds = f16_exact(torch.cat([neg, pos]))
    edit = embeds.clone()
    edit[1:2] += pipe.construct_direction(source_embeds, target_embeds)
    edit = f16_exact(edit)
    pipe.scheduler.set_timesteps(STEPS)
    t = pipe.scheduler.timesteps[0]
    latents = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=gen()) * pipe.scheduler.init_noise_sigma
    x = pipe.scheduler.scale_model_input(torch.cat([latents] * 2), t)
    unet = p2pz.prepare_unet(pipe.unet)
    procs = {k.replace(".processor", ""): p for k, p in unet.attn_processors.items() if p.is_pix2pix_zero}
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=embeds, cross_attention_kwargs={"timestep": t})
    refs = {name: p.reference_cross_attn_map[t.item()] for name, p in procs.items()}

    class Loss(p2pz.Pix2PixZeroL2Loss):
        """Also records each layer's term (the processor hands over its own reference tensor)."""

        terms = {}

        def compute_loss(self, predictions, targets):
            before = float(self.loss.detach()) if torch.is_tensor(self.loss) else self.loss
            super().compute_loss(predictions, targets)
            name = next(n for n, r in refs.items() if r is targets)
            self.terms[name] = float(self.loss.detach()) - before

    x_in = x.detach().clone().requires_grad_(True)
    opt = torch.optim.SGD([x_in], lr=AMOUNTS["default"])
    with torch.enable_grad():
        loss = Loss()
        unet(x_in, t, encoder_hidden_states=edit, cross_attention_kwargs={"timestep": t, "loss": loss})
        loss.loss.backward()
        grad = x_in.grad.detach().clone()
        opt.step()
    with torch.no_grad():
        noise_pred = unet(x_in.detach(), t, encoder_hidden_states=edit, cross_attention_kwargs={"timestep": None}).sample
    assert len(loss.terms) == len(refs) == 4, (loss.terms.keys(), refs.keys())
    tensors = {"x_in": t32(x), "t": torch.tensor([float(t)]), "prompt_embeds": embeds.to(torch.float16),
               "prompt_embeds_edit_cond": edit[1:].to(torch.float16), "loss": torch.tensor([float(loss.loss)]), "grad": t32(grad),
               "noise_pred": t32(noise_pred)}
    tensors.update({f"loss.{n}": torch.tensor([v]) for n, v in loss.terms.items()})
    meta = {"prompt": PROMPT, "negative_prompt": "", "sources": SOURCES, "targets": TARGETS, "steps": STEPS, "seed": SEED,
            "lr": AMOUNTS["default"], "ref_shapes": {n: list(r.shape) for n, r in refs.items()}}
    save(tensors, os.path.join(OUT, "grad_step.safetensors"), meta)
    MEASURED["grad_step"] = {"t": float(t), "loss": float(loss.loss), "terms": loss.terms, "grad_absmax": float(grad.abs().max()),
                             "grad_cond_absmax": float(grad[1].abs().max()), "grad_uncond_absmax": float(grad[0].abs().max())}


def call(pipe, source_embeds, target_embeds, amount, latents=None):
    """__call__ -> (uint8 image, latents before decode, x_T)."""
    cap = {}
    dec = pipe.vae.decode

    def decode(z, *a, **k):
        cap["latents"] = t32(z * pipe.vae.config.scaling_factor)
        return dec(z, *a, **k)

    pipe.vae.decode = decode
    try:
        x_t = latents if latents is not None else torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=gen())
        img = pipe(prompt=PROMPT, source_embeds=source_embeds, target_embeds=target_embeds, num_inference_steps=STEPS,
                   guidance_scale=GUIDANCE, negative_prompt="", latents=x_t.clone(), height=SIZE, width=SIZE,
                   cross_attention_guidance_amount=amount, output_type="pil").images[0]
    finally:
        del pipe.vae.decode
    return img, cap["latents"], x_t


def levels(a, b):
    d = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
    return float(d.mean()), int(d.max())


def load(path):
    pipe = StableDiffusionPix2PixZeroPipeline.from_pretrained(
        path, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False, feature_extractor=None,
        caption_generator=None, caption_processor=None, inverse_scheduler=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.inverse_scheduler = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main():
    torch.set_num_threads(2)
    pipe = load(SD15)
    os.makedirs(OUT, exist_ok=True)
    source_embeds, target_embeds = pipe.get_embeds(SOURCES), pipe.get_embeds(TARGETS)
    grad_step(pipe, source_embeds, target_embeds)

    meta = {"prompt": PROMPT, "negative_prompt": "", "sources": SOURCES, "targets": TARGETS, "steps": STEPS, "seed": SEED,
            "guidance_scale": GUIDANCE, "scheduler": "DDIMScheduler", "size": SIZE}
    img0, lat0, _ = call(pipe, source_embeds, target_embeds, 0.0)
    for run, amount in AMOUNTS.items():
        img, lat, x_t = call(pipe, source_embeds, target_embeds, amount)
        mean, mx = levels(img, img0)
        MEASURED[f"call_{run}"] = {"amount": amount, "vs_amount0_mean": mean, "vs_amount0_max": mx,
                                   "vs_amount0_latents_absmax": float((lat - lat0).abs().max())}
        if run == "default":  # the budget: `strong` is checked on its latents (3.4 from amount 0's)
            img.save(os.path.join(OUT, f"call_{run}.png"), optimize=True)
        # x_T is the same seed-42 noise in every run: stored once
        save({"latents": lat, **({"x_T": t32(x_t)} if run == "default" else {})}, os.path.join(OUT, f"call_{run}.safetensors"),
             {**meta, "cross_attention_guidance_amount": amount, "vs_amount0": MEASURED[f"call_{run}"]})

    image = Image.open(INIT).convert("RGB")
    inverted = {}
    for run, reg in INVERT_RUNS.items():
        cap = {}
        enc = pipe.vae.encode

        def encode(*a, **k):
            out = enc(*a, **k)
            sample = out.latent_dist.sample

            def s(generator=None):
                cap["x0"] = t32(sample(generator) * pipe.vae.config.scaling_factor)
                return cap["x0"] / pipe.vae.config.scaling_factor

            out.latent_dist.sample = s
            return out

        rolls, randint = [], torch.randint

        def record(*a, **k):
            out = randint(*a, **k)
            rolls.append(int(out))
            return out

        pipe.vae.encode, torch.randint = encode, record
        try:
            inv = pipe.invert(prompt=PROMPT, image=image, generator=gen(), num_reg_steps=reg, **INVERT).latents
        finally:
            del pipe.vae.encode
            torch.randint = randint
        inverted[run] = t32(inv)
        save({"latents": inverted[run], **({"x0": cap["x0"], "rolls": torch.tensor(rolls, dtype=torch.float32)} if run == "reg" else {})}, os.path.join(OUT, f"invert_{run}.safetensors"),
             {"prompt": PROMPT, "image": "golden/img2img/init.png", "seed": SEED, "num_reg_steps": reg,
              "scheduler": "DDIMInverseScheduler", **INVERT})
    MEASURED["invert_reg_vs_plain_absmax"] = float((inverted["reg"] - inverted["plain"]).abs().max())
    MEASURED["invert_plain_absmax"] = float(inverted["plain"].abs().max())
    img, lat, _ = call(pipe, source_embeds, target_embeds, AMOUNTS["default"], latents=inverted["reg"])
    img.save(os.path.join(OUT, "edit_reg.png"), optimize=True)
    save({"latents": lat}, os.path.join(OUT, "edit_reg.safetensors"),
         {**meta, "cross_attention_guidance_amount": AMOUNTS["default"], "latents_from": "invert_reg.safetensors"})
    # 16x16 latents: auto_corr_loss also rolls an avg-pooled 8x8 copy (2 steps: the budget)
    big = Image.open(INIT_128).convert("RGB")
    inv = t32(pipe.invert(prompt=PROMPT, image=big, generator=gen(), num_reg_steps=INVERT_RUNS["reg"], **{**INVERT, "num_inference_steps": 2}).latents)
    save({"latents": inv}, os.path.join(OUT, "invert_reg128.safetensors"),
         {"prompt": PROMPT, "image": "golden/img2img/init_128.png", "seed": SEED, "num_reg_steps": INVERT_RUNS["reg"],
          "scheduler": "DDIMInverseScheduler", **INVERT, "num_inference_steps": 2})
    v = load(SD21)
    for run, g in V_RUNS.items():
        inv = t32(v.invert(prompt=PROMPT, image=image, generator=gen(), num_reg_steps=INVERT_RUNS["reg"], **{**INVERT, "guidance_scale": g}).latents)
        plain = t32(v.invert(prompt=PROMPT, image=image, generator=gen(), num_reg_steps=0, **{**INVERT, "guidance_scale": g}).latents)
        MEASURED[f"invert_{run}_vs_plain_absmax"] = float((inv - plain).abs().max())
        save({"latents": inv}, os.path.join(OUT, f"invert_{run}.safetensors"),
             {"model": "sd21-tiny", "prompt": PROMPT, "image": "golden/img2img/init.png", "seed": SEED, "num_reg_steps": INVERT_RUNS["reg"],
              "scheduler": "DDIMInverseScheduler", **INVERT, "guidance_scale": g})
    print(json.dumps(MEASURED, indent=1))
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"golden bytes: {total}")


if __name__ == "__main__":
    main()
