#!/usr/bin/env python3
"""Full-size SDXL base 1.0 for Pigment's synthetic generator (`--model synthetic:sdxl`, issue #12
item 5): the diffusers / transformers classes at the real configs. Two jobs:

    python tools/fixtures_fullsize_sdxl.py            (seconds) the architecture only: built on
        PyTorch's meta device (no memory, no values), its tensor names, shapes and configs
    flock /work/bigmem.lock python tools/fixtures_fullsize_sdxl.py --goldens
        (CPU, float32, ~10 minutes on 2 busy cores, peak ~11 GB RSS) also materialises the weights
        with the generator of tools/fixtures_fullsize.py (the twin of src/weights/synthetic.rs), one
        component at a time (the f32 UNet alone is 10.3 GB; the text encoders are freed before it
        is built), and writes small diffusers goldens

Writes (overwriting) assets/synthetic/sdxl/: tensors.txt.gz (`component<TAB>name<TAB>d0,d1,..`) and
text_encoder.json, text_encoder_2.json, unet.json, vae.json, scheduler.json, model_index.json.
The configs are those of stabilityai/stable-diffusion-xl-base-1.0 (written out here: no download).
With --goldens, tests/fixtures/golden/fullsize/sdxl/:
    text.safetensors    input_ids / input_ids_2 of [negative, prompt] (tokenizer pads with
                        <|endoftext|>, tokenizer_2 with "!"); encode_prompt's prompt_embeds (both
                        encoders' penultimate hidden states, 768 + 1280 wide) kept as `ehs_head`,
                        its first HEAD_TOKENS tokens and every CHANNEL_STRIDE-th channel (the
                        tracked-tree budget; the UNet's `out_text` below sees all of it), and the
                        pooled bigG text_embeds `pooled` [2, 1280]
    unet.safetensors    sample [2,4,8,8] (torch randn, seed 1010), timestep 981, time_ids (original
                        96x80, crop (8, 4), target 64x64), text_embeds (= text's pooled) ->
                        `out` with encoder_hidden_states = torch.randn([2, 77, 2048], seed 1012)
                        (Pigment's rng reproduces it: the UNet check needs no text encoder; its
                        first 16 values are kept as `ehs_probe`), and `out_text` with
                        encode_prompt's prompt_embeds (the chain: text encoders -> UNet)
    txt2img.png         fixtures_sdxl.py's 64x64 2-step Euler txt2img (cfg 5, seed 42), run from
                        encode_prompt's embeddings (the text encoders are freed by then: the
                        pipeline holds the UNet and VAE, ~11 GB); txt2img.safetensors: its latents
    conditioning.json   the conditioning checks (below) and statistics
The VAE decode is not checked alone: SDXL's has SD 1.5's tensor names and shapes, hence the same
generated weights, and tests/fixtures/golden/fullsize/vae.safetensors already checks that decode
(the scaling factor 0.13025 is the pipeline's, not the decoder's).

Conditioning checks: a 1e-6 relative perturbation of the UNet's sample must move `out` by at most
AMPLIFICATION_LIMIT x 1e-6 of max |out| (so f32 rounding stays far below the 1e-4 tolerance), and
`out` must not be flat or non-finite; the txt2img passes make_fixtures.py's image check (a 1e-6
noise perturbation moves the PNG by < 0.05 levels; std >= 20, <= 20 % saturated). The script
fails (exit 1) otherwise.
"""

import argparse
import gc
import gzip
import json
import os
import resource
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_fullsize import CLIP_IDS, HEAD_TOKENS, MODELS, UNET_COMMON, VAE_COMMON, fill, save, t32  # noqa: E402
from fixtures_sdxl import GUIDANCE, SCHEDULER, SIZE, STEPS, TIME_IDS  # noqa: E402
from fixtures_sdxl import run as sdxl_run  # noqa: E402
from make_fixtures import CONDITIONING_LIMIT, NEGATIVE, PERTURBATION, PROMPT, SEED, make_tokenizer, write_clip_vocab  # noqa: E402

import numpy as np  # noqa: E402
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel  # noqa: E402
from PIL import Image  # noqa: E402
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
CHANNEL_STRIDE = 8  # ehs_head keeps channels 0, 8, 16, .. of 2048 (32 KB instead of 256 KB)
AMPLIFICATION_LIMIT = 100.0
GOLDEN = os.path.join(REPO, "tests", "fixtures", "golden", "fullsize", "sdxl")
BUILD = {
    "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**TEXT)),
    "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_2)),
    "unet": lambda: UNet2DConditionModel(**UNET),
    "vae": lambda: AutoencoderKL(**VAE),
}


def materialise(name):
    """One component on the CPU with the generator's values: built on the meta device, given
    uninitialised storage (no PyTorch init pass over 2.6 G values), then filled."""
    with torch.device("meta"):
        m = BUILD[name]()
    m = m.to_empty(device="cpu").eval()
    for n, b in m.named_buffers():
        # CLIP's position_ids (not in the state dict, so not generated): what its __init__ sets
        assert n.endswith("position_ids"), n
        b.copy_(torch.arange(b.shape[-1]).expand_as(b))
    t0 = time.time()
    fill(m)
    print(f"  {name}: filled in {time.time() - t0:.0f} s, peak RSS {peak_gb():.1f} GB")
    return m


def peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@torch.no_grad()
def goldens():
    os.makedirs(GOLDEN, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="pigment-tok-")
    vocab = write_clip_vocab(tmp)
    pipe = StableDiffusionXLPipeline(
        vae=None,
        text_encoder=materialise("text_encoder"),
        text_encoder_2=materialise("text_encoder_2"),
        tokenizer=make_tokenizer(*vocab, pad_token="<|endoftext|>"),
        tokenizer_2=make_tokenizer(*vocab, pad_token="!"),
        unet=None,
        scheduler=None,
        force_zeros_for_empty_prompt=True,
    )
    shutil.rmtree(tmp)
    t0 = time.time()
    ids = [tok(t, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids for tok in (pipe.tokenizer, pipe.tokenizer_2) for t in (NEGATIVE, PROMPT)]
    pe, ne, pp, npool = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=NEGATIVE)
    ehs, pooled = t32(torch.cat([ne, pe])), t32(torch.cat([npool, pp]))
    assert ehs.shape == (2, 77, 2048) and pooled.shape == (2, 1280), (ehs.shape, pooled.shape)
    print(f"  encode_prompt in {time.time() - t0:.0f} s: ehs std {ehs.std():.3f} max {ehs.abs().max():.2f}, pooled std {pooled.std():.3f}")
    save({"input_ids": torch.cat(ids[:2]).to(torch.int64), "input_ids_2": torch.cat(ids[2:]).to(torch.int64),
          "ehs_head": ehs[:, :HEAD_TOKENS, ::CHANNEL_STRIDE].contiguous(), "pooled": pooled},
         os.path.join(GOLDEN, "text.safetensors"),
         {"prompt": PROMPT, "negative_prompt": NEGATIVE, "order": "[negative, prompt]",
          "ehs_head": f"prompt_embeds[:, :{HEAD_TOKENS}, ::{CHANNEL_STRIDE}]"})
    del pipe, pe, ne, pp, npool
    gc.collect()

    unet = materialise("unet")
    sample = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(1010))
    ehs_rand = torch.randn((2, 77, 2048), generator=torch.Generator().manual_seed(1012))
    added = {"text_embeds": pooled, "time_ids": torch.tensor([sum(TIME_IDS, ())] * 2, dtype=torch.float32)}
    t0 = time.time()
    out = unet(sample, torch.tensor(981), encoder_hidden_states=ehs_rand, added_cond_kwargs=added).sample
    print(f"  unet call in {time.time() - t0:.0f} s, peak RSS {peak_gb():.1f} GB")
    out_text = unet(sample, torch.tensor(981), encoder_hidden_states=ehs, added_cond_kwargs=added).sample
    pert = sample * (1 + PERTURBATION * torch.randn(sample.shape, generator=torch.Generator().manual_seed(7)))
    out_p = unet(pert, torch.tensor(981), encoder_hidden_states=ehs_rand, added_cond_kwargs=added).sample
    amp = float((out_p - out).abs().max() / out.abs().max()) / PERTURBATION
    save({"sample": sample, "timestep": torch.tensor([981.0]), "time_ids": added["time_ids"], "text_embeds": pooled,
          "ehs_probe": ehs_rand.flatten()[:16].clone(), "out": t32(out), "out_text": t32(out_text)},
         os.path.join(GOLDEN, "unet.safetensors"),
         {"timestep": 981, "time_ids": "original (h, w), crop (top, left), target (h, w)",
          "out": "encoder_hidden_states = torch.randn((2, 77, 2048), generator=manual_seed(1012))",
          "out_text": "encoder_hidden_states = encode_prompt's [negative, prompt] prompt_embeds"})
    cond = {"unet_perturbation_amplification": amp, "amplification_limit": AMPLIFICATION_LIMIT,
            "unet_out_std": float(out.std()), "unet_out_abs_max": float(out.abs().max()), "unet_out_text_std": float(out_text.std()),
            "prompt_embeds_std": float(ehs.std()), "prompt_embeds_abs_max": float(ehs.abs().max()), "pooled_std": float(pooled.std()),
            "python_peak_rss_gb": round(peak_gb(), 2)}
    cond["txt2img"] = txt2img(unet, ehs, pooled)
    with open(os.path.join(GOLDEN, "conditioning.json"), "w") as f:
        json.dump(cond, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(cond, indent=1))
    finite = bool(torch.isfinite(out).all() and torch.isfinite(out_text).all())
    t = cond["txt2img"]
    image_ok = t["perturbation_u8_mean_abs"] < CONDITIONING_LIMIT and t["image_std_u8"] >= 20 and t["image_saturated_fraction"] <= 0.2
    return finite and amp <= AMPLIFICATION_LIMIT and cond["unet_out_std"] > 1e-3 and image_ok


@torch.no_grad()
def txt2img(unet, ehs, pooled):
    """fixtures_sdxl.py's 64x64 2-step Euler txt2img (cfg 5, seed 42) and its conditioning check,
    with encode_prompt's embeddings passed in: the text encoders are freed already, so the
    pipeline holds only the UNet and the VAE (~11 GB in f32)."""
    pipe = StableDiffusionXLPipeline(vae=materialise("vae"), text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
                                     unet=unet, scheduler=EulerDiscreteScheduler.from_config(SCHEDULER), force_zeros_for_empty_prompt=True)
    pipe.set_progress_bar_config(disable=True)
    emb = dict(prompt_embeds=ehs[1:], negative_prompt_embeds=ehs[:1], pooled_prompt_embeds=pooled[1:], negative_pooled_prompt_embeds=pooled[:1])
    run_emb = lambda latents=None: sdxl_run(pipe, latents, prompt=None, negative=None, **emb)  # noqa: E731
    t0 = time.time()
    img, cap = run_emb()
    print(f"  txt2img 2 steps in {time.time() - t0:.0f} s, peak RSS {peak_gb():.1f} GB")
    Image.fromarray(img).save(os.path.join(GOLDEN, "txt2img.png"), optimize=False)
    save({"latents": cap["latents"]}, os.path.join(GOLDEN, "txt2img.safetensors"),
         {"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEED, "steps": STEPS, "guidance_scale": GUIDANCE, "size": SIZE, "scheduler": "EulerDiscreteScheduler"})
    noise = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator("cpu").manual_seed(SEED))
    pert = noise * (1 + PERTURBATION * torch.randn(noise.shape, generator=torch.Generator().manual_seed(7)))
    img_a, _ = run_emb(noise.clone())
    img_b, _ = run_emb(pert)
    assert np.array_equal(img_a, img), "latents= path differs from the generator path"
    return {"perturbation_u8_mean_abs": float(np.abs(img_a.astype(np.float64) - img_b.astype(np.float64)).mean()),
            "image_std_u8": float(img.astype(np.float64).std()), "image_saturated_fraction": float(((img == 0) | (img == 255)).mean()),
            "limit_u8": CONDITIONING_LIMIT, "latents_std": float(cap["latents"].std())}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--goldens", action="store_true", help="also materialise the weights and write the goldens")
    args = ap.parse_args()
    with torch.device("meta"):
        parts = {c: build() for c, build in BUILD.items()}
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
    del parts
    if args.goldens:
        torch.set_num_threads(2)
        if not goldens():
            print("FAIL: ill-conditioned, flat or non-finite (see conditioning.json)")
            sys.exit(1)
        print("OK")


if __name__ == "__main__":
    main()
