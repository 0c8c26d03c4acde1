#!/usr/bin/env python3
"""Seed corpora for the fuzz targets (fuzz/harness.rs), written to tests/fixtures/fuzz/<target>/.

Run from the repository root (CPU, a few seconds, no network):

    python tools/fuzz_seeds.py

Seeds are small valid inputs of each kind, so libFuzzer starts from real structure: safetensors
files of every dtype, micro single-file checkpoints in LDM naming (SD 1.x and SD 2.x text
encoders; 4/8-channel UNet and VAE, made with diffusers and mapped with make_fixtures.py's
key maps), LoRA/LyCORIS/PEFT/embedding files for the tiny SD 1.5 fixture's layers, a micro
ControlNet in both namings, prompts, images and server requests. Everything is deterministic;
files the fuzzers found are committed beside them (crash-*/err-*/ok-* names, see
tests/fuzz_regressions.rs) and are not touched here.
"""

import io
import json
import os
import struct
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402
from fixtures_controlnet import controlnet_key_to_ldm  # noqa: E402

REPO = mf.REPO
OUT = os.path.join(REPO, "tests", "fixtures", "fuzz")

# Selector bytes (first byte of an input) of the multi-purpose targets, as fuzz/harness.rs reads them.
SINGLE_FILE, CONFIG_JSON = 0, 1
LORA, EMBEDDING, CONTROLNET, CONTROLNET_JSON = 0, 1, 2, 3
TXT2IMG, IMG2IMG = 0, 1


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def st(tensors, metadata=None):
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata)


def rnd(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 0.1).half()


def micro_unet():
    from diffusers import UNet2DConditionModel

    cfg = dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(2, 4),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=4, attention_head_dim=1, norm_num_groups=1,
    )
    torch.manual_seed(0)
    return UNet2DConditionModel(**cfg), cfg


def micro_vae():
    from diffusers import AutoencoderKL

    cfg = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(2,), layers_per_block=1,
               down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), norm_num_groups=1)
    torch.manual_seed(0)
    return AutoencoderKL(**cfg), cfg


def micro_text():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    c = CLIPTextConfig(vocab_size=16, hidden_size=4, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
                       max_position_embeddings=8, hidden_act="quick_gelu")
    return CLIPTextModel(c)


def single_files():
    unet, ucfg = micro_unet()
    vae, vcfg = micro_vae()
    text = micro_text()
    ckpt = {}
    for k, v in unet.state_dict().items():
        ckpt["model.diffusion_model." + mf.unet_key_to_ldm(k, ucfg)] = v
    for k, v in vae.state_dict().items():
        lk, reshape = mf.vae_key_to_ldm(k, vcfg)
        ckpt["first_stage_model." + lk] = v.reshape(*v.shape, 1, 1) if reshape else v
    tsd = {k: v for k, v in text.state_dict().items() if "position_ids" not in k}
    sd1 = dict(ckpt, **mf.text_sd1_to_ldm(tsd))
    # SD 2.x: the OpenCLIP text encoder alone (a part missing is fine until it is asked for)
    sd2 = mf.text_openclip_to_ldm(tsd, 1)[0]
    for name, c in [("sd1.safetensors", sd1), ("sd2-text.safetensors", sd2)]:
        write("single_file", name, bytes([SINGLE_FILE]) + st({k: v.half() for k, v in c.items()}, {"format": "pt"}))
    unet_json = json.dumps(dict(unet.config)).encode()
    write("single_file", "unet-config.json", bytes([CONFIG_JSON]) + unet_json)
    write("single_file", "text-config.json", bytes([CONFIG_JSON]) + text.config.to_json_string().encode())
    write("single_file", "vae-config.json", bytes([CONFIG_JSON]) + json.dumps(dict(vae.config)).encode())
    return unet, ucfg


def safetensors_seeds():
    write("safetensors", "dtypes.safetensors", st({
        "f32": torch.arange(6, dtype=torch.float32).reshape(2, 3), "f16": torch.ones(3, dtype=torch.float16),
        "bf16": torch.ones(2, 2, dtype=torch.bfloat16), "f64": torch.ones(1, dtype=torch.float64),
        "i64": torch.arange(3), "u8": torch.zeros(2, dtype=torch.uint8), "scalar": torch.tensor(1.5),
        "empty": torch.zeros(0, 4),
    }, {"format": "pt", "note": "seed"}))
    header = b"{}"
    write("safetensors", "empty.safetensors", struct.pack("<Q", len(header)) + header)
    header = b'{"__metadata__":{"a":"b"},"x":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}'
    write("safetensors", "fp8.safetensors", struct.pack("<Q", len(header)) + header + b"\x00\x01")


def lora_seeds():
    # layers of tests/fixtures/sd15-tiny: text width 32, UNet 32/64 channels
    q = "text_model.encoder.layers.0.self_attn.q_proj"
    to_q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    conv = "down_blocks.0.resnets.0.conv1"
    kohya = {
        "lora_te_" + q.replace(".", "_") + ".lora_down.weight": rnd(2, 32, seed=1),
        "lora_te_" + q.replace(".", "_") + ".lora_up.weight": rnd(32, 2, seed=2),
        "lora_te_" + q.replace(".", "_") + ".alpha": torch.tensor(1.0).half(),
        "lora_unet_" + conv.replace(".", "_") + ".lora_down.weight": rnd(2, 32, 3, 3, seed=3),
        "lora_unet_" + conv.replace(".", "_") + ".lora_up.weight": rnd(32, 2, 1, 1, seed=4),
        "lora_unet_" + conv.replace(".", "_") + ".dora_scale": rnd(32, 1, 1, 1, seed=9),
    }
    write("loaders", "kohya.safetensors", bytes([LORA]) + st(kohya))
    peft = {f"unet.{to_q}.lora_A.weight": rnd(2, 32, seed=5), f"unet.{to_q}.lora_B.weight": rnd(32, 2, seed=6)}
    meta = {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 4, "unet.r": 2, "unet.use_rslora": True,
                                                  "unet.alpha_pattern": {"to_q": 2}})}
    write("loaders", "peft.safetensors", bytes([LORA]) + st(peft, meta))
    s = "lora_unet_" + to_q.replace(".", "_")
    loha = {f"{s}.hada_w1_a": rnd(32, 2, seed=7), f"{s}.hada_w1_b": rnd(2, 32, seed=8),
            f"{s}.hada_w2_a": rnd(32, 2, seed=9), f"{s}.hada_w2_b": rnd(2, 32, seed=10), f"{s}.alpha": torch.tensor(2.0).half()}
    write("loaders", "loha.safetensors", bytes([LORA]) + st(loha))
    s = "lora_te_" + q.replace(".", "_")
    lokr = {f"{s}.lokr_w1": rnd(4, 4, seed=11), f"{s}.lokr_w2_a": rnd(8, 2, seed=12), f"{s}.lokr_w2_b": rnd(2, 8, seed=13)}
    write("loaders", "lokr.safetensors", bytes([LORA + 4 * 20]) + st(lokr))
    write("loaders", "embedding-a1111.safetensors", bytes([EMBEDDING]) + st({"emb_params": rnd(2, 32, seed=14)}))
    write("loaders", "embedding-diffusers.safetensors", bytes([EMBEDDING]) + st({"<cat>": rnd(32, seed=15)}))


def controlnet_seeds(unet, ucfg):
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(2, 2))
    sd = {k: v.half() for k, v in cn.state_dict().items()}
    write("loaders", "controlnet-diffusers.safetensors", bytes([CONTROLNET]) + st(sd))
    n_blocks = len(cn.controlnet_cond_embedding.blocks)
    a1111 = {controlnet_key_to_ldm(k, ucfg, n_blocks): v for k, v in sd.items()}
    write("loaders", "controlnet-a1111.safetensors", bytes([CONTROLNET]) + st(a1111))
    write("loaders", "controlnet-config.json", bytes([CONTROLNET_JSON]) + json.dumps(dict(cn.config)).encode())


def prompt_seeds():
    for i, p in enumerate([
        "a (photograph:1.2) of an [astronaut], ((riding)) a horse BREAK in space",
        "masterpiece, (best quality), <lora:sd15-tiny-kohya:0.8> <lora:x:0.5:1.0> AND a cat :1.3",
        "\\(escaped\\) [[nested (deep:0.5)]] (unclosed (a:b) BREAKfast BREAK",
        ", " * 60 + "word",
    ]):
        write("prompt", f"{i}.txt", p.encode())


def tokenizer_seeds():
    cases = json.load(open(os.path.join(REPO, "tests", "fixtures", "tokenizer_cases.json")))
    texts = [c["text"] if isinstance(c, dict) else c for c in (cases if isinstance(cases, list) else cases.get("cases", []))]
    texts = [t for t in texts if isinstance(t, str)][:6]
    texts += ["<|startoftext|>héllo wörld &amp; ﬁ 🐴 <|endoftext|>!!", "x" * 300]
    for i, t in enumerate(texts):
        write("tokenizer", f"{i}.txt", t.encode())


def image_seeds():
    rng = np.random.default_rng(0)
    for mode, name in [("RGB", "rgb.png"), ("L", "gray.png"), ("RGBA", "rgba.png"), ("P", "palette.png"), ("I;16", "gray16.png")]:
        a = rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)
        img = Image.fromarray(a).convert(mode if mode != "I;16" else "I").convert(mode) if mode != "RGB" else Image.fromarray(a)
        b = io.BytesIO()
        img.save(b, "PNG")
        write("image", name, b.getvalue())
    b = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)).save(b, "JPEG", quality=50)
    write("image", "rgb.jpg", b.getvalue())
    b = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(b, "JPEG", quality=50, progressive=True)
    write("image", "progressive.jpg", b.getvalue())


def serve_seeds():
    import base64

    b = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(b, "PNG")
    png = base64.b64encode(b.getvalue()).decode()
    reqs = [
        (TXT2IMG, {"prompt": "a cat <lora:sd15-tiny-kohya:0.5>", "negative_prompt": "blurry", "seed": 7, "steps": 4, "width": 64,
                   "height": 64, "sampler_name": "DPM++ 2M Karras", "cfg_scale": 7.5, "batch_size": 2, "n_iter": 1,
                   "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_vae": "Automatic"}}),
        (TXT2IMG, {"prompt": "x", "scheduler": "Karras", "sampler_name": "Euler", "alwayson_scripts": {"controlnet": {"args": [
            {"enabled": True, "model": "sd15-tiny-controlnet", "image": png, "module": "canny", "weight": 0.8,
             "guidance_start": 0.1, "guidance_end": 0.9}]}}}),
        (IMG2IMG, {"prompt": "y", "init_images": ["data:image/png;base64," + png], "mask": png, "denoising_strength": 0.6,
                   "mask_blur": 2, "inpainting_mask_invert": 1, "width": 8, "height": 8, "steps": 2}),
        (TXT2IMG, {"prompt": "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512", "enable_hr": False, "styles": []}),
    ]
    for i, (sel, r) in enumerate(reqs):
        write("serve_request", f"{i}.json", bytes([sel]) + json.dumps(r).encode())


def raw_st(entries, data=b""):
    """A safetensors file from a header dict as given (shapes the writer would refuse)."""
    h = json.dumps(entries).encode()
    return struct.pack("<Q", len(h)) + h + data


def with_scalar(path, keep, key):
    """The tensors `keep` of a seed file (after its selector byte), with `key` made a 0-d F16."""
    from safetensors.torch import load

    raw = open(path, "rb").read()
    t = load(raw[1:])
    t = {k: v for k, v in t.items() if k in keep}
    assert set(t) == set(keep), set(keep) - set(t)
    t[key] = torch.tensor(0.5).half()
    return raw[:1] + st(t)


# Just what UNet inference reads, so the files stay a few KB.
UNET_INFER_DIFFUSERS = ["down_blocks.0.resnets.0.conv1.weight", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                        "mid_block.attentions.0.proj_in.weight", "conv_in.weight", "time_embedding.linear_1.weight"]


def regressions():
    """Hand-made inputs for the panics fixed with the fuzz targets (err-*: must be refused)."""
    d = os.path.join(OUT, "single_file")
    sd1 = os.path.join(d, "seed-sd1.safetensors")
    vae_up = "first_stage_model.decoder.up.0.block.0.conv2.weight"
    for keep, key, name in [([vae_up], vae_up, "vae-scalar-up-conv")]:
        with open(os.path.join(d, f"err-{name}.safetensors"), "wb") as f:
            f.write(with_scalar(sd1, keep, key))
    # OpenCLIP width 2^62 on an empty positional embedding: q;k;v row ranges overflowed
    P = "cond_stage_model.model."
    with open(os.path.join(d, "err-openclip-huge-width.safetensors"), "wb") as f:
        f.write(bytes([SINGLE_FILE]) + raw_st({
            P + "positional_embedding": {"dtype": "F16", "shape": [0, 2**62], "data_offsets": [0, 0]},
            P + "transformer.resblocks.0.attn.in_proj_weight": {"dtype": "F16", "shape": [], "data_offsets": [0, 2]},
        }, b"\0\0"))
    d = os.path.join(OUT, "loaders")
    cn = os.path.join(d, "seed-controlnet-diffusers.safetensors")
    hint = ["controlnet_cond_embedding.conv_in.weight", "controlnet_cond_embedding.blocks.1.weight"]
    with open(os.path.join(d, "err-controlnet-scalar-conv-in.safetensors"), "wb") as f:
        f.write(with_scalar(cn, UNET_INFER_DIFFUSERS + hint[:1], hint[0]))
    with open(os.path.join(d, "err-controlnet-scalar-unet-conv-in.safetensors"), "wb") as f:
        f.write(with_scalar(cn, UNET_INFER_DIFFUSERS + hint[:1], "conv_in.weight"))
    with open(os.path.join(d, "err-controlnet-scalar-block.safetensors"), "wb") as f:
        f.write(with_scalar(cn, UNET_INFER_DIFFUSERS + hint, hint[1]))
    # A LoRA down weight of an unsized dtype whose dims overflow a product
    s = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    with open(os.path.join(d, "err-lora-overflowing-dims.safetensors"), "wb") as f:
        f.write(bytes([LORA]) + raw_st({
            s + ".lora_down.weight": {"dtype": "X9", "shape": [2, 2**40, 2**40], "data_offsets": [0, 0]},
            s + ".lora_up.weight": {"dtype": "F16", "shape": [32, 2], "data_offsets": [0, 128]},
        }, bytes(128)))


def main():
    torch.set_num_threads(1)
    if sys.argv[1:] != ["--regressions-only"]:
        safetensors_seeds()
        unet, ucfg = single_files()
        lora_seeds()
        controlnet_seeds(unet, ucfg)
        prompt_seeds()
        tokenizer_seeds()
        image_seeds()
        serve_seeds()
    regressions()
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    print(f"tests/fixtures/fuzz: {total} bytes")


if __name__ == "__main__":
    main()
