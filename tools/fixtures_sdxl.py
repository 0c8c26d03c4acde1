#!/usr/bin/env python3
"""A tiny random-weight SDXL pipeline (diffusers' StableDiffusionXLPipeline with its real classes)
whose weights come from Pigment's synthetic generator (tools/fixtures_fullsize.py, the twin of
src/weights/synthetic.rs), and diffusers goldens for it (issue #12). No weight file is committed:
the tests rebuild the folder from the tensor list and configs (tests/common/sdxl.rs).

Run from the repository root (CPU, float32, ~1 minute):

    python tools/fixtures_sdxl.py

Model (SDXL's structure at small widths):
    text_encoder    CLIPTextModel, 32 wide, 4 layers, quick_gelu (the ViT-L role)
    text_encoder_2  CLIPTextModelWithProjection, 32 wide, 4 layers, gelu, projection 32 (bigG)
    tokenizer(_2)   tests/fixtures/sd15-tiny/tokenizer (the real 49408-token CLIP BPE);
                    tokenizer_2 pads with "!" as SDXL's does
    unet            block_out_channels (32, 64), DownBlock2D + CrossAttnDownBlock2D (no attention
                    at the first level), transformer_layers_per_block (1, 2), heads (2, 4),
                    cross_attention_dim 64 = 32 + 32, linear projections, addition_embed_type
                    "text_time", addition_time_embed_dim 8, projection_class_embeddings_input_dim
                    32 + 6 * 8 = 80
    vae             the sd15-tiny VAE layout with scaling_factor 0.13025 (SDXL's)
    scheduler       EulerDiscreteScheduler as SDXL base's scheduler_config.json

Writes (overwriting):
    assets/synthetic/sdxl-tiny/tensors.txt.gz        names and shapes (component<TAB>name<TAB>dims)
    assets/synthetic/sdxl-tiny/<component>.json      config.json of text_encoder, text_encoder_2,
                                                     unet, vae; scheduler.json; model_index.json;
                                                     tokenizer_2.json (its special tokens)
    tests/fixtures/golden/sdxl-tiny/
        text.safetensors     input_ids / input_ids_2 of [negative, prompt]; prompt_embeds
                             [2, 77, 64] (both encoders' penultimate hidden states concatenated)
                             and pooled [2, 32] (text_encoder_2's text_embeds), from encode_prompt
        unet.safetensors     sample [2,4,8,8] (torch randn), timestep 981, text_embeds, time_ids
                             (original 96x80, crop (8, 4), target 64x64) -> out
        txt2img.png/.safetensors   64x64, 2 steps, cfg 5, seed 42 (final latents)
        turbo.png/.safetensors     the same model with SDXL-Turbo's scheduler (Euler a,
                             trailing), 1 step, guidance 0 (no negative batch)
        conditioning.json    the conditioning check (as make_fixtures.py) and statistics
    tests/fixtures/golden/sd15-tiny/cfg1.png/.safetensors   sd15-tiny, guidance_scale 1 (diffusers
                             runs no unconditional batch), PNDM 4 steps, seed 42

Conditioning check: a 1e-6 relative perturbation of the initial noise must move the final uint8
image by < 0.05 levels mean abs, and the image must not be flat (std >= 20) or saturated
(> 20% at 0/255). The script fails (exit 1) otherwise.
"""

import gzip
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_fullsize import fill, save, t32  # noqa: E402
from make_fixtures import CONDITIONING_LIMIT, NEGATIVE, PERTURBATION, PROMPT, SEED  # noqa: E402

import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(REPO, "tests", "fixtures", "sd15-tiny", "tokenizer")
SIZE = 64
STEPS = 2
GUIDANCE = 5.0
TIME_IDS = ((96, 80), (8, 4), (64, 64))  # original size, crop top-left, target size (h, w)

CLIP_IDS = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1, max_position_embeddings=77, vocab_size=49408, layer_norm_eps=1e-5)
TEXT = dict(CLIP_IDS, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, hidden_act="quick_gelu", projection_dim=32)
TEXT_2 = dict(TEXT, hidden_act="gelu")
UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[32, 64],
    layers_per_block=2,
    transformer_layers_per_block=[1, 2],
    attention_head_dim=[2, 4],
    cross_attention_dim=64,
    norm_num_groups=8,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=32 + 6 * 8,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 16, 16, 16],
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=64,
    scaling_factor=0.13025,
)
# stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json
SCHEDULER = dict(
    beta_end=0.012,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    clip_sample=False,
    interpolation_type="linear",
    num_train_timesteps=1000,
    prediction_type="epsilon",
    sample_max_value=1.0,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    timestep_spacing="leading",
    trained_betas=None,
    use_karras_sigmas=False,
)
# stabilityai/sdxl-turbo scheduler/scheduler_config.json
TURBO_SCHEDULER = dict(SCHEDULER, timestep_spacing="trailing")
del TURBO_SCHEDULER["use_karras_sigmas"], TURBO_SCHEDULER["interpolation_type"]


def build():
    text = CLIPTextModel(CLIPTextConfig(**TEXT)).eval()
    text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_2)).eval()
    unet = UNet2DConditionModel(**UNET).eval()
    vae = AutoencoderKL(**VAE).eval()
    parts = (("text_encoder", text), ("text_encoder_2", text_2), ("unet", unet), ("vae", vae))
    shapes = {c: fill(m) for c, m in parts}
    tok = CLIPTokenizer.from_pretrained(TOKENIZER)
    tok_2 = CLIPTokenizer.from_pretrained(TOKENIZER, pad_token="!")
    assert len(tok) == len(tok_2) == 49408 and tok_2.pad_token_id == 0
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text,
        text_encoder_2=text_2,
        tokenizer=tok,
        tokenizer_2=tok_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SCHEDULER),
        force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, shapes


def write_assets(pipe, shapes):
    d = os.path.join(REPO, "assets", "synthetic", "sdxl-tiny")
    os.makedirs(d, exist_ok=True)
    lines = [f"{c}\t{n}\t{','.join(map(str, s))}\n" for c in shapes for n, s in sorted(shapes[c].items())]
    with open(os.path.join(d, "tensors.txt.gz"), "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            f.write("".join(lines).encode())
    index = {k: v for k, v in pipe.config.items() if not k.startswith("_")}
    index = {k: (list(v) if isinstance(v, tuple) else v) for k, v in index.items()}
    configs = {
        "text_encoder": pipe.text_encoder.config.to_dict(),
        "text_encoder_2": pipe.text_encoder_2.config.to_dict(),
        "unet": json.loads(pipe.unet.to_json_string()),
        "vae": json.loads(pipe.vae.to_json_string()),
        "scheduler": dict(SCHEDULER, _class_name="EulerDiscreteScheduler"),
        "model_index": dict(index, _class_name="StableDiffusionXLPipeline"),
        "tokenizer_2": {"pad_token": "!"},
    }
    for k in ("transformers_version", "_diffusers_version", "_name_or_path"):
        for c in configs.values():
            c.pop(k, None)
    for c, v in configs.items():
        with open(os.path.join(d, c + ".json"), "w") as f:
            json.dump(v, f, indent=1, sort_keys=True)
            f.write("\n")


@torch.no_grad()
def run(pipe, latents=None, guidance=GUIDANCE, steps=STEPS, negative=NEGATIVE, prompt=PROMPT, **kw):
    cap = {}
    orig = pipe.vae.decode

    def decode(z, *a, **k):
        cap["latents"] = t32(z * pipe.vae.config.scaling_factor)
        out = orig(z, *a, **k)
        cap["vae_out"] = t32(out[0] if isinstance(out, tuple) else out.sample)
        return out

    pipe.vae.decode = decode
    try:
        img = pipe(
            prompt,
            negative_prompt=negative,
            height=SIZE,
            width=SIZE,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator("cpu").manual_seed(SEED),
            latents=latents,
            **kw,
        ).images[0]
    finally:
        del pipe.vae.decode
    return np.asarray(img).copy(), cap


def conditioning(pipe, img, **kw):
    sigma = pipe.scheduler.init_noise_sigma
    noise = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator("cpu").manual_seed(SEED))
    pert = noise * (1 + PERTURBATION * torch.randn(noise.shape, generator=torch.Generator().manual_seed(7)))
    # SDXL's prepare_latents scales given latents by init_noise_sigma too
    img_a, cap_a = run(pipe, noise.clone(), **kw)
    img_b, cap_b = run(pipe, pert, **kw)
    assert np.array_equal(img_a, img), "latents= path differs from the generator path"
    d = float(np.abs(img_a.astype(np.float64) - img_b.astype(np.float64)).mean())
    std = float(img.astype(np.float64).std())
    sat = float(((img == 0) | (img == 255)).mean())
    del sigma
    return {"perturbation_u8_mean_abs": d, "image_std_u8": std, "image_saturated_fraction": sat, "limit_u8": CONDITIONING_LIMIT,
            "latents_std": float(cap_a["latents"].std())}


@torch.no_grad()
def goldens(pipe, out):
    os.makedirs(out, exist_ok=True)
    ids = [tok(t, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids for tok in (pipe.tokenizer, pipe.tokenizer_2) for t in (NEGATIVE, PROMPT)]
    pe, ne, pp, npool = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=NEGATIVE)
    ehs, pooled = torch.cat([ne, pe]), torch.cat([npool, pp])
    assert ehs.shape == (2, 77, 64) and pooled.shape == (2, 32), (ehs.shape, pooled.shape)
    save({"input_ids": torch.cat(ids[:2]).to(torch.int64), "input_ids_2": torch.cat(ids[2:]).to(torch.int64), "prompt_embeds": t32(ehs), "pooled": t32(pooled)},
         os.path.join(out, "text.safetensors"), {"prompt": PROMPT, "negative_prompt": NEGATIVE, "order": "[negative, prompt]"})

    sample = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(1010))
    time_ids = torch.tensor([sum(TIME_IDS, ())] * 2, dtype=torch.float32)
    out_u = pipe.unet(sample, torch.tensor(981), encoder_hidden_states=ehs, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    save({"sample": sample, "timestep": torch.tensor([981.0]), "encoder_hidden_states": t32(ehs), "text_embeds": t32(pooled), "time_ids": time_ids, "out": t32(out_u)},
         os.path.join(out, "unet.safetensors"), {"timestep": 981, "time_ids": "original (h, w), crop (top, left), target (h, w)"})

    img, cap = run(pipe)
    Image.fromarray(img).save(os.path.join(out, "txt2img.png"), optimize=False)
    save({"latents": cap["latents"]}, os.path.join(out, "txt2img.safetensors"),
         {"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEED, "steps": STEPS, "guidance_scale": GUIDANCE, "size": SIZE, "scheduler": "EulerDiscreteScheduler"})
    cond = {"txt2img": conditioning(pipe, img), "unet_out_std": float(out_u.std()), "prompt_embeds_std": float(ehs.std())}

    base = pipe.scheduler
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(TURBO_SCHEDULER)
    img_t, cap_t = run(pipe, guidance=0.0, steps=1)
    Image.fromarray(img_t).save(os.path.join(out, "turbo.png"), optimize=False)
    save({"latents": cap_t["latents"]}, os.path.join(out, "turbo.safetensors"),
         {"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEED, "steps": 1, "guidance_scale": 0.0, "size": SIZE,
          "scheduler": "EulerAncestralDiscreteScheduler", "scheduler_config": json.dumps(TURBO_SCHEDULER, sort_keys=True)})
    cond["turbo"] = conditioning(pipe, img_t, guidance=0.0, steps=1)
    pipe.scheduler = base
    with open(os.path.join(out, "conditioning.json"), "w") as f:
        json.dump(cond, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(cond, indent=1))
    return all(c["perturbation_u8_mean_abs"] < CONDITIONING_LIMIT and c["image_std_u8"] >= 20 and c["image_saturated_fraction"] <= 0.2 for c in (cond["txt2img"], cond["turbo"]))


@torch.no_grad()
def sd15_cfg1(out):
    """sd15-tiny at guidance_scale 1: diffusers skips the unconditional batch (one UNet batch of 1)."""
    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(REPO, "tests", "fixtures", "sd15-tiny"), torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    batches = []
    fwd = pipe.unet.forward
    pipe.unet.forward = lambda sample, *a, **k: (batches.append(sample.shape[0]), fwd(sample, *a, **k))[1]
    cap = {}
    orig = pipe.vae.decode

    def decode(z, *a, **k):
        cap["latents"] = t32(z * pipe.vae.config.scaling_factor)
        return orig(z, *a, **k)

    pipe.vae.decode = decode
    img = pipe(PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, num_inference_steps=4, guidance_scale=1.0,
               generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    assert batches and set(batches) == {1}, batches  # PNDM: 5 evaluations for 4 steps
    img.save(os.path.join(out, "cfg1.png"), optimize=False)
    save({"latents": cap["latents"]}, os.path.join(out, "cfg1.safetensors"),
         {"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEED, "steps": 4, "guidance_scale": 1.0, "size": SIZE, "scheduler": "PNDMScheduler", "unet_batches": json.dumps(batches)})


def main():
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}")
    pipe, shapes = build()
    write_assets(pipe, shapes)
    ok = goldens(pipe, os.path.join(REPO, "tests", "fixtures", "golden", "sdxl-tiny"))
    sd15_cfg1(os.path.join(REPO, "tests", "fixtures", "golden", "sd15-tiny"))
    if not ok:
        print("FAIL: ill-conditioned, flat or saturated (see conditioning.json)")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
