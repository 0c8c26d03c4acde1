#!/usr/bin/env python3
"""Full-size random-weight SD 1.5 and SD 2.1-768-v from Pigment's synthetic weight generator, and
small diffusers goldens for them (issue #10, item 3). Rust rebuilds the same weights in memory
(src/weights/synthetic.rs), so no weight file is committed.

Run from the repository root (CPU, float32; ~6 GB RAM and ~8 minutes per model on 2 busy cores):

    flock /work/bigmem.lock python tools/fixtures_fullsize.py [--models sd15,sd21v]

Writes (overwriting):
    assets/synthetic/<model>/tensors.txt.gz      the models' state-dict names and shapes
                                                 (`component<TAB>name<TAB>d0,d1,..` per line)
    assets/synthetic/<model>/<component>.json    config.json of text_encoder, unet, vae, scheduler
    tests/fixtures/golden/fullsize/<model>/
        unet.safetensors     sample [2,4,8,8] (torch randn), timestep 981 -> out; the text encoder's
                             last_hidden_state for [negative, prompt] is the encoder_hidden_states
                             (its first HEAD_TOKENS tokens are kept as `ehs_head`, and input_ids)
        txt2img.png          StableDiffusionPipeline, 64x64, 2 steps, cfg 7.5, seed 42, model's
                             own scheduler; txt2img.safetensors: the final latents
        conditioning.json    the conditioning check (see below) and output statistics
    tests/fixtures/golden/fullsize/vae.safetensors  (both models: their VAEs' tensors are the same)
                             decode_in [1,4,16,16] (torch randn) -> decode_out [1,3,128,128]

The generator (documented in tools/README.md, identical in Rust):
    h      = FNV-1a 64 of the tensor's diffusers name (UTF-8)
    x_i    = h + i * 0x9E3779B97F4A7C15 (mod 2^64), i = flat element index
    z_i    = splitmix64 finaliser of x_i
    u_i    = (z_i >> 40) * 2^-23 - 1                in [-1, 1), exact in f32
    value  = f16(base + scale * u_i), computed in f32 then rounded to f16 (nearest even)
    role   (from name and shape only):
      1-D `*.weight`                  (GroupNorm/LayerNorm)  base 1, scale 0.1
      1-D `*.bias` of a 1-D weight    (norm bias)            base 0, scale 0.1
      `*_embedding.weight`            (token/position)       base 0, scale EMBED_SCALE
      other weights (Linear/Conv)                            base 0, scale gain / sqrt(fan_in)
      their biases                                           base 0, scale 1 / sqrt(fan_in)
    fan_in = prod(weight.shape[1:]); gain = GAINS[suffix] or 1. With gain 1 this is PyTorch's
    default Linear/Conv2d init (uniform, bound 1/sqrt(fan_in)), which diffusers' models keep.

Conditioning check (as make_fixtures.py): a 1e-6 relative perturbation of the initial noise must
move the final uint8 image by < 0.05 levels mean abs, and the image must not be flat (std >= 20)
or saturated (> 20% at 0/255). The script fails (exit 1) otherwise.
"""

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import CONDITIONING_LIMIT, NEGATIVE, PERTURBATION, PROMPT, SCHED_COMMON, SEED, make_tokenizer, write_clip_vocab  # noqa: E402

import diffusers  # noqa: E402
from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2
SIZE = 64
GUIDANCE = 7.5
HEAD_TOKENS = 16
EMBED_SCALE = 1.0
# Per-tensor gains (name suffix -> gain on the weight's scale), the same table as Rust's GAINS.
# TAESD's AutoencoderTinyBlock convs (tools/fixtures_taesd.py): sqrt(6), He-uniform for ReLU; no SD
# tensor name ends so. Same decimal literal as src/weights/synthetic.rs. GLIGEN's scalar gates
# (fuser.alpha_attn/alpha_dense, zero-initialised in diffusers: a fuser would do nothing) get 3.
GAINS = {".conv.0.weight": 2.4494897, ".conv.2.weight": 2.4494897, ".conv.4.weight": 2.4494897, ".alpha_attn": 3.0, ".alpha_dense": 3.0}

MASK = (1 << 64) - 1

# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------


def fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def uniform(name, n):
    """u_i in [-1, 1) as float32 for i in [0, n) (chunked: the big tables are 38 M elements)."""
    h = np.uint64(fnv1a64(name))
    out = np.empty(n, dtype=np.float32)
    step = 1 << 22
    with np.errstate(over="ignore"):
        for a in range(0, n, step):
            i = np.arange(a, min(n, a + step), dtype=np.uint64)
            z = h + i * np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z ^= z >> np.uint64(31)
            out[a : a + len(i)] = (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-23) - np.float32(1.0)
    return out


def role(name, shapes):
    """(base, scale) of a tensor from its name and the component's shapes."""
    shape = shapes[name]
    if len(shape) == 1 and name.endswith(".weight"):
        return 1.0, np.float32(0.1)
    if name.endswith(".bias"):
        w = shapes[name[: -len("bias")] + "weight"]
        if len(w) == 1:
            return 0.0, np.float32(0.1)
        return 0.0, np.float32(1.0) / np.sqrt(np.float32(np.prod(w[1:])))
    if name.endswith("_embedding.weight"):
        return 0.0, np.float32(EMBED_SCALE)
    gain = np.float32(1.0)
    for suffix, g in GAINS.items():
        if name.endswith(suffix):
            gain = np.float32(g)
    # gain * (1/sqrt(fan_in)), in this order, as the Rust twin rounds it
    return 0.0, gain * (np.float32(1.0) / np.sqrt(np.float32(np.prod(shape[1:]))))


def values(name, shapes):
    base, scale = role(name, shapes)
    v = uniform(name, int(np.prod(shapes[name]))) * np.float32(scale)
    if base:
        v += np.float32(base)
    return v.astype(np.float16).reshape(shapes[name])


@torch.no_grad()
def fill(model):
    sd = model.state_dict()
    names = {n for n, _ in model.named_parameters()}
    assert names == set(sd), sorted(set(sd) ^ names)  # no buffers to generate
    shapes = {n: tuple(t.shape) for n, t in sd.items()}
    for n, p in model.named_parameters():
        p.copy_(torch.from_numpy(values(n, shapes).astype(np.float32)))
    return shapes


# ---------------------------------------------------------------------------------------------
# The models (the real diffusers folders' configs)
# ---------------------------------------------------------------------------------------------

CLIP_IDS = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1, max_position_embeddings=77, vocab_size=49408, layer_norm_eps=1e-5)
UNET_COMMON = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    block_out_channels=[320, 640, 1280, 1280],
    layers_per_block=2,
    norm_num_groups=32,
    norm_eps=1e-5,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
    downsample_padding=1,
    mid_block_scale_factor=1,
    center_input_sample=False,
)
VAE_COMMON = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    scaling_factor=0.18215,
)

MODELS = {
    "sd15": dict(
        pad_token="<|endoftext|>",
        text=dict(CLIP_IDS, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768),
        unet=dict(UNET_COMMON, cross_attention_dim=768, attention_head_dim=8),
        vae=dict(VAE_COMMON, sample_size=512),
        scheduler_cls=PNDMScheduler,
        scheduler=dict(SCHED_COMMON),
    ),
    "sd21v": dict(
        pad_token="!",
        text=dict(CLIP_IDS, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu", projection_dim=512),
        unet=dict(
            UNET_COMMON,
            sample_size=96,
            cross_attention_dim=1024,
            attention_head_dim=[5, 10, 20, 20],
            use_linear_projection=True,
            upcast_attention=True,
        ),
        vae=dict(VAE_COMMON, sample_size=768),
        scheduler_cls=DDIMScheduler,
        scheduler=dict(SCHED_COMMON, prediction_type="v_prediction"),
    ),
}


def build(cfg, tok_src):
    t0 = time.time()
    text = CLIPTextModel(CLIPTextConfig(**cfg["text"])).eval()
    unet = UNet2DConditionModel(**cfg["unet"]).eval()
    vae = AutoencoderKL(**cfg["vae"]).eval()
    shapes = {c: fill(m) for c, m in (("text_encoder", text), ("unet", unet), ("vae", vae))}
    print(f"  built and filled in {time.time() - t0:.0f} s ({sum(int(np.prod(s)) for d in shapes.values() for s in d.values()) / 1e6:.0f} M values)")
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=make_tokenizer(*tok_src, pad_token=cfg["pad_token"]),
        unet=unet,
        scheduler=cfg["scheduler_cls"].from_config(cfg["scheduler"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, shapes


def write_assets(name, cfg, pipe, shapes):
    d = os.path.join(REPO, "assets", "synthetic", name)
    os.makedirs(d, exist_ok=True)
    lines = [f"{c}\t{n}\t{','.join(map(str, s))}\n" for c in ("text_encoder", "unet", "vae") for n, s in sorted(shapes[c].items())]
    with open(os.path.join(d, "tensors.txt.gz"), "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            f.write("".join(lines).encode())
    configs = {
        "text_encoder": pipe.text_encoder.config.to_dict(),
        "unet": json.loads(pipe.unet.to_json_string()),
        "vae": json.loads(pipe.vae.to_json_string()),
        "scheduler": dict(cfg["scheduler"], _class_name=cfg["scheduler_cls"].__name__),
    }
    for k in ("transformers_version", "_diffusers_version", "_name_or_path"):
        for c in configs.values():
            c.pop(k, None)
    for c, v in configs.items():
        with open(os.path.join(d, c + ".json"), "w") as f:
            json.dump(v, f, indent=1, sort_keys=True)
            f.write("\n")


def write_synthetic_assets(d, shapes, configs):
    """A synthetic model's committed part in `d`: `tensors.txt.gz` (component<TAB>name<TAB>dims,
    components in `shapes`' order, names sorted; what src/weights/synthetic.rs reads) and one
    `<name>.json` per entry of `configs`, without the version/path keys."""
    os.makedirs(d, exist_ok=True)
    lines = [f"{c}\t{n}\t{','.join(map(str, s))}\n" for c in shapes for n, s in sorted(shapes[c].items())]
    with open(os.path.join(d, "tensors.txt.gz"), "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
            f.write("".join(lines).encode())
    for name, cfg in configs.items():
        cfg = {k: v for k, v in cfg.items() if k not in ("_diffusers_version", "_name_or_path", "transformers_version")}
        with open(os.path.join(d, name + ".json"), "w") as f:
            json.dump(cfg, f, indent=1, sort_keys=True)
            f.write("\n")


def t32(x):
    return x.detach().to(torch.float32).contiguous().clone()


def save(tensors, path, meta):
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"pigment": json.dumps(meta, sort_keys=True)})


@torch.no_grad()
def run_pipe(pipe, latents=None):
    cap = {}
    orig = pipe.vae.decode

    def decode(z, *a, **kw):
        cap["latents"] = t32(z * pipe.vae.config.scaling_factor)
        out = orig(z, *a, **kw)
        cap["vae_out"] = t32(out[0] if isinstance(out, tuple) else out.sample)
        return out

    pipe.vae.decode = decode
    try:
        img = pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            height=SIZE,
            width=SIZE,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            generator=torch.Generator("cpu").manual_seed(SEED),
            latents=latents,
        ).images[0]
    finally:
        del pipe.vae.decode
    return np.asarray(img).copy(), cap


@torch.no_grad()
def goldens(name, pipe, out):
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    tok = pipe.tokenizer
    ids = [tok(t, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids for t in (NEGATIVE, PROMPT)]
    ids = torch.cat(ids)
    pe, ne = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    ehs = torch.cat([ne, pe])  # what the pipeline feeds the UNet (one prompt at a time)
    batched = pipe.text_encoder(ids).last_hidden_state
    assert torch.allclose(batched, ehs, rtol=0, atol=1e-4 * float(ehs.abs().max())), float((batched - ehs).abs().max())
    g = torch.Generator().manual_seed(1010)
    sample = torch.randn((2, 4, 8, 8), generator=g)
    out_u = pipe.unet(sample, torch.tensor(981), encoder_hidden_states=ehs).sample
    save(
        {"input_ids": ids.to(torch.int64), "ehs_head": t32(ehs[:, :HEAD_TOKENS]), "sample": sample, "timestep": torch.tensor([981.0]), "out": t32(out_u)},
        os.path.join(out, "unet.safetensors"),
        {"timestep": 981, "encoder_hidden_states": "text encoder last_hidden_state of [negative, prompt]", "prompt": PROMPT, "negative_prompt": NEGATIVE},
    )
    z = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(1011))
    dec = pipe.vae.decode(z).sample
    # SD 1.5's and SD 2.1's VAEs have the same tensors, hence the same generated weights: one file
    save({"decode_in": z, "decode_out": t32(dec)}, os.path.join(os.path.dirname(out), "vae.safetensors"), {"note": "raw z into vae.decode (post_quant_conv included, no scaling)"})
    print(f"  unet/vae goldens in {time.time() - t0:.0f} s: unet out std {out_u.std():.3f}, ehs std {ehs.std():.3f}, vae out std {dec.std():.3f}")

    t0 = time.time()
    img, cap = run_pipe(pipe)
    from PIL import Image

    Image.fromarray(img).save(os.path.join(out, "txt2img.png"), optimize=False)
    save({"latents": cap["latents"]}, os.path.join(out, "txt2img.safetensors"),
         {"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEED, "steps": STEPS, "guidance_scale": GUIDANCE, "size": SIZE, "scheduler": type(pipe.scheduler).__name__})
    print(f"  txt2img in {time.time() - t0:.0f} s")

    # conditioning: a 1e-6 relative perturbation of the initial noise
    noise = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator("cpu").manual_seed(SEED)) * pipe.scheduler.init_noise_sigma
    pert = noise * (1 + PERTURBATION * torch.randn(noise.shape, generator=torch.Generator().manual_seed(7)))
    img_a, cap_a = run_pipe(pipe, noise.clone())
    img_b, cap_b = run_pipe(pipe, pert)
    assert np.array_equal(img_a, img)
    d = float(np.abs(img_a.astype(np.float64) - img_b.astype(np.float64)).mean())
    df = float(((cap_a["vae_out"] - cap_b["vae_out"]).abs() * 127.5).mean())
    std = float(img.astype(np.float64).std())
    sat = float(((img == 0) | (img == 255)).mean())
    cond = {"perturbation_u8_mean_abs": d, "perturbation_float_levels_mean_abs": df, "image_std_u8": std, "image_saturated_fraction": sat,
            "unet_out_std": float(out_u.std()), "latents_std": float(cap["latents"].std()), "limit_u8": CONDITIONING_LIMIT}
    with open(os.path.join(out, "conditioning.json"), "w") as f:
        json.dump(cond, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"  {name}: perturb d_u8={d:.4f} d_float={df:.2e} levels, img std={std:.1f} sat={sat:.3f}")
    return d < CONDITIONING_LIMIT and std >= 20 and sat <= 0.2


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="sd15,sd21v")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}")
    tmp = tempfile.mkdtemp(prefix="pigment-tok-")
    tok_src = write_clip_vocab(tmp)
    ok = True
    for name in args.models.split(","):
        print(f"== {name}")
        cfg = MODELS[name]
        pipe, shapes = build(cfg, tok_src)
        write_assets(name, cfg, pipe, shapes)
        ok &= goldens(name, pipe, os.path.join(REPO, "tests", "fixtures", "golden", "fullsize", name))
        del pipe
    shutil.rmtree(tmp)
    if not ok:
        print("FAIL: ill-conditioned, flat or saturated (see conditioning.json)")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
