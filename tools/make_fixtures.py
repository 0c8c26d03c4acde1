#!/usr/bin/env python3
"""Build Pigment's test fixtures: tiny random-weight Stable Diffusion pipelines and goldens.

Run from the repository root (CPU only, ~1 minute, no network):

    pip install -r tools/requirements.txt
    python tools/make_fixtures.py

Writes (overwriting):
    assets/bpe_simple_vocab_16e6.txt.gz          copy of open_clip's CLIP BPE merges file
    tests/fixtures/<variant>/                     diffusers folder (model_index.json, unet/, vae/,
                                                  text_encoder/, tokenizer/, scheduler/), F16 safetensors
                                                  (f16-representable values; goldens in float32)
    tests/fixtures/<variant>.manifest.json        how the tests assemble the original (LDM /
                                                  CompVis) single file from the folder's tensors
    tests/fixtures/golden/<variant>/*.safetensors goldens from diffusers on CPU float32
    tests/fixtures/golden/<variant>/*.png         final images
    tests/fixtures/golden/<variant>/schedulers.json
    tests/fixtures/tokenizer_cases.json

Variants: sd15-tiny (SD1.5-like, PNDM, epsilon) and sd21-tiny (SD2.1-like, DDIM, v_prediction).
Every weight (norms included) is random and deterministically seeded. The script fails if the
pipeline is not well-conditioned (a 1e-6 relative perturbation of the initial noise must move the
final uint8 image by < 0.05 levels mean abs) or if the image is flat/saturated.
"""

import argparse
import functools
import gzip
import hashlib
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import diffusers
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"
SEED = 42
HEIGHT = WIDTH = 64
STEPS = 4
GUIDANCE = 7.5
CONDITIONING_LIMIT = 0.05  # uint8 levels, mean abs
PERTURBATION = 1e-6

# ---------------------------------------------------------------------------------------------
# Variant configurations
# ---------------------------------------------------------------------------------------------

SCHED_COMMON = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    skip_prk_steps=True,
    set_alpha_to_one=False,
    steps_offset=1,
    clip_sample=False,
    trained_betas=None,
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 16, 16, 16],  # 4 blocks -> scale factor 8, like real SD
    layers_per_block=2,  # as real SD's VAE (encoder 2 resnets/level, decoder 3)
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=4,
    sample_size=64,
    scaling_factor=0.18215,
)

VARIANTS = {
    "sd15-tiny": dict(
        seed=1500,
        pad_token="<|endoftext|>",
        text=dict(
            vocab_size=49408,
            hidden_size=32,  # narrow: the 49408-row token embedding is most of the file
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            projection_dim=32,
            # the legacy ids real SD checkpoints ship: eos_token_id == 2 makes transformers pool
            # at argmax(input_ids), i.e. at the first <|endoftext|> (49407)
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        ),
        unet=dict(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            mid_block_type="UNetMidBlock2DCrossAttn",
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
            block_out_channels=[32, 64],
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=2,  # diffusers' name: this is the NUMBER of heads (SD1 real: 8)
            norm_num_groups=8,
            norm_eps=1e-5,
            act_fn="silu",
            flip_sin_to_cos=True,
            freq_shift=0,
            use_linear_projection=False,
            upcast_attention=False,
        ),
        scheduler_cls=PNDMScheduler,
        scheduler=dict(SCHED_COMMON),  # real SD1.5 config has no prediction_type key (-> epsilon)
    ),
    "sd21-tiny": dict(
        seed=2100,
        pad_token="!",
        text=dict(
            vocab_size=49408,
            # 64 = the narrowest width whose head count a single file's OpenCLIP text encoder
            # implies (width / 64): tests/weights.rs infers the config from it
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=5,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            projection_dim=64,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        ),
        unet=dict(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            mid_block_type="UNetMidBlock2DCrossAttn",
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
            block_out_channels=[40, 80],
            layers_per_block=1,
            cross_attention_dim=64,
            attention_head_dim=[2, 4],  # per-block NUMBER of heads (SD2 real: 5,10,20,20)
            norm_num_groups=8,
            norm_eps=1e-5,
            act_fn="silu",
            flip_sin_to_cos=True,
            freq_shift=0,
            use_linear_projection=True,
            upcast_attention=True,
        ),
        scheduler_cls=DDIMScheduler,
        scheduler=dict(SCHED_COMMON, prediction_type="v_prediction"),
    ),
}

SAMPLERS = [
    ("ddim", DDIMScheduler, {}),
    ("pndm", PNDMScheduler, {}),
    ("lms", LMSDiscreteScheduler, {}),
    ("euler", EulerDiscreteScheduler, {}),
    ("euler_a", EulerAncestralDiscreteScheduler, {}),
    ("heun", HeunDiscreteScheduler, {}),
    ("dpmpp_2m", DPMSolverMultistepScheduler, {}),
    ("lms_karras", LMSDiscreteScheduler, {"use_karras_sigmas": True}),
    ("euler_karras", EulerDiscreteScheduler, {"use_karras_sigmas": True}),
    ("heun_karras", HeunDiscreteScheduler, {"use_karras_sigmas": True}),
    ("dpmpp_2m_karras", DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
]

# ---------------------------------------------------------------------------------------------
# Tokenizer from open_clip's BPE file
# ---------------------------------------------------------------------------------------------


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def bpe_gz_path():
    import open_clip

    return os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")


def write_clip_vocab(dst_dir):
    """vocab.json + merges.txt exactly as openai/clip-vit-large-patch14 ships them."""
    lines = gzip.open(bpe_gz_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    encoder = {v: i for i, v in enumerate(vocab)}
    assert len(encoder) == 49408
    os.makedirs(dst_dir, exist_ok=True)
    with open(os.path.join(dst_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(encoder, f, ensure_ascii=False)
    with open(os.path.join(dst_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in merges:
            f.write(" ".join(m) + "\n")
    return os.path.join(dst_dir, "vocab.json"), os.path.join(dst_dir, "merges.txt")


def make_tokenizer(vocab_file, merges_file, pad_token):
    tok = CLIPTokenizer(
        vocab_file,
        merges_file,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token=pad_token,
        model_max_length=77,
    )
    assert len(tok) == 49408, len(tok)
    return tok


# ---------------------------------------------------------------------------------------------
# Random weights
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def randomize(model, seed, gains=None, emb_std=0.5):
    """Every parameter random: norm weight 1+0.1N, norm/other biases 0.1N, linear/conv weights
    N(0,1)*gain/sqrt(fan_in) (gain 1 unless a module-name suffix in `gains` says otherwise),
    embeddings N(0,1)*emb_std."""
    gains = gains or {}
    g = torch.Generator().manual_seed(seed)
    seen = set()
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            seen.add(full)
            if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if pname == "weight":
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif isinstance(mod, torch.nn.Embedding):
                p.copy_(emb_std * torch.randn(p.shape, generator=g))
            elif isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
                if pname == "weight":
                    gain = 1.0
                    for suffix, gval in gains.items():
                        if mname.endswith(suffix):
                            gain = gval
                    fan_in = p[0].numel()
                    p.copy_(torch.randn(p.shape, generator=g) * (gain / fan_in**0.5))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                raise RuntimeError(f"unhandled parameter {full} in {type(mod).__name__}")
    assert seen == {n for n, _ in model.named_parameters()}
    # f16-representable values: the fixtures are stored as F16 and every golden is computed in
    # float32 from these same values, so f32 tests stay exact
    for p in model.parameters():
        p.copy_(p.to(torch.float16).to(torch.float32))


def f16_round(t):
    return t.to(torch.float16).to(torch.float32)


def store_f16(folder):
    """Rewrite every .safetensors under `folder` as F16 (the values are f16-representable, checked)."""
    from safetensors import safe_open

    for dp, _, fns in os.walk(folder):
        for fn in sorted(fns):
            if not fn.endswith(".safetensors") or os.path.islink(os.path.join(dp, fn)):
                continue
            path = os.path.join(dp, fn)
            with safe_open(path, "pt") as f:
                meta = f.metadata()
            sd = load_file(path)
            out = {}
            for k, v in sd.items():
                if v.dtype == torch.float32:
                    h = v.to(torch.float16)
                    assert torch.equal(h.to(torch.float32), v), f"{path}: {k} is not f16-representable"
                    v = h
                out[k] = v.contiguous()
            save_file(out, path, metadata=meta)


# gains chosen so that the UNet output has std ~1 (like a real eps/v model), the decoded image
# has real variation without saturating, and the sampler is well-conditioned
UNET_GAINS = {"conv_out": 2.0}  # UNet output std ~1
VAE_GAINS = {"decoder.conv_out": 0.6}


def build_pipeline(name, cfg, tok_src):
    seed = cfg["seed"]
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text"]))
    randomize(text_encoder, seed + 1)
    unet = UNet2DConditionModel(**cfg["unet"])
    randomize(unet, seed + 2, UNET_GAINS)
    vae = AutoencoderKL(**VAE_CONFIG)
    randomize(vae, seed + 3, VAE_GAINS)
    tokenizer = make_tokenizer(*tok_src, pad_token=cfg["pad_token"])
    scheduler = cfg["scheduler_cls"].from_config(cfg["scheduler"])
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for m in (vae, text_encoder, unet):
        m.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------
# diffusers <-> original (LDM / CompVis) single-file key mapping
# ---------------------------------------------------------------------------------------------

RESNET_UNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
]


def unet_key_to_ldm(key, cfg):
    L = cfg["layers_per_block"]
    parts = key.split(".")
    top = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for d, s in top.items():
        if key.startswith(d + "."):
            return s + key[len(d) :]

    def resnet(prefix, rest):
        sub = rest[0]
        for d, s in RESNET_UNET:
            if sub == d:
                return ".".join([prefix, s] + rest[1:])
        raise KeyError(key)

    if parts[0] == "down_blocks":
        i = int(parts[1])
        kind = parts[2]
        if kind == "resnets":
            j = int(parts[3])
            return resnet(f"input_blocks.{(L + 1) * i + j + 1}.0", parts[4:])
        if kind == "attentions":
            j = int(parts[3])
            return ".".join([f"input_blocks.{(L + 1) * i + j + 1}.1"] + parts[4:])
        if kind == "downsamplers":  # down_blocks.i.downsamplers.0.conv.*
            assert parts[3] == "0" and parts[4] == "conv"
            return ".".join([f"input_blocks.{(L + 1) * (i + 1)}.0.op"] + parts[5:])
    if parts[0] == "mid_block":
        j = int(parts[2])
        if parts[1] == "resnets":
            return resnet(f"middle_block.{2 * j}", parts[3:])
        if parts[1] == "attentions":
            return ".".join(["middle_block.1"] + parts[3:])
    if parts[0] == "up_blocks":
        i = int(parts[1])
        kind = parts[2]
        has_attn = cfg["up_block_types"][i].startswith("CrossAttn")
        if kind == "resnets":
            j = int(parts[3])
            return resnet(f"output_blocks.{(L + 1) * i + j}.0", parts[4:])
        if kind == "attentions":
            j = int(parts[3])
            return ".".join([f"output_blocks.{(L + 1) * i + j}.1"] + parts[4:])
        if kind == "upsamplers":  # up_blocks.i.upsamplers.0.conv.*
            assert parts[3] == "0"
            return ".".join([f"output_blocks.{(L + 1) * i + L}.{2 if has_attn else 1}"] + parts[4:])
    raise KeyError(key)


def vae_key_to_ldm(key, cfg):
    """Returns (ldm_key, needs_conv_reshape)."""
    n = len(cfg["block_out_channels"])
    parts = key.split(".")
    if parts[0] in ("quant_conv", "post_quant_conv"):
        return key, False
    coder = parts[0]  # encoder / decoder
    rest = parts[1:]
    if rest[0] == "conv_norm_out":
        return ".".join([coder, "norm_out"] + rest[1:]), False
    if rest[0] in ("conv_in", "conv_out"):
        return key, False

    def resnet(prefix, r):
        sub = {"conv_shortcut": "nin_shortcut"}.get(r[0], r[0])
        assert sub in ("norm1", "conv1", "norm2", "conv2", "nin_shortcut"), key
        return ".".join([prefix, sub] + r[1:])

    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            return resnet(f"{coder}.mid.block_{int(rest[2]) + 1}", rest[3:]), False
        if rest[1] == "attentions":
            assert rest[2] == "0"
            sub = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v"}
            r = rest[3:]
            if r[0] == "to_out":
                assert r[1] == "0"
                name, tail = "proj_out", r[2:]
            else:
                name, tail = sub[r[0]], r[1:]
            return ".".join([f"{coder}.mid.attn_1", name] + tail), name != "norm" and tail[0] == "weight"
    if coder == "encoder" and rest[0] == "down_blocks":
        i = int(rest[1])
        if rest[2] == "resnets":
            return resnet(f"encoder.down.{i}.block.{int(rest[3])}", rest[4:]), False
        if rest[2] == "downsamplers":
            return ".".join([f"encoder.down.{i}.downsample"] + rest[4:]), False
    if coder == "decoder" and rest[0] == "up_blocks":
        i = int(rest[1])
        if rest[2] == "resnets":
            return resnet(f"decoder.up.{n - 1 - i}.block.{int(rest[3])}", rest[4:]), False
        if rest[2] == "upsamplers":
            return ".".join([f"decoder.up.{n - 1 - i}.upsample"] + rest[4:]), False
    raise KeyError(key)


def text_sd1_to_ldm(sd):
    return {"cond_stage_model.transformer." + k: v for k, v in sd.items()}


def text_openclip_to_ldm(sd, num_layers):
    """(tensors, manifest ops) for the OpenCLIP text keys of an SD2 single file."""
    P = "cond_stage_model.model."
    out, ops = {}, {}

    def same(k, dk):
        out[k] = sd[dk]
        ops[k] = ("identity", [("text_encoder", dk)])

    same(P + "token_embedding.weight", "text_model.embeddings.token_embedding.weight")
    same(P + "positional_embedding", "text_model.embeddings.position_embedding.weight")
    same(P + "ln_final.weight", "text_model.final_layer_norm.weight")
    same(P + "ln_final.bias", "text_model.final_layer_norm.bias")
    for k in range(num_layers):
        d = f"text_model.encoder.layers.{k}."
        o = f"{P}transformer.resblocks.{k}."
        for wb in ("weight", "bias"):
            src = [d + f"self_attn.{x}_proj.{wb}" for x in "qkv"]
            out[o + f"attn.in_proj_{wb}"] = torch.cat([sd[x] for x in src], 0).contiguous()
            ops[o + f"attn.in_proj_{wb}"] = ("concat", [("text_encoder", x) for x in src])
        same(o + "attn.out_proj.weight", d + "self_attn.out_proj.weight")
        same(o + "attn.out_proj.bias", d + "self_attn.out_proj.bias")
        for a, b in [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]:
            same(o + b + ".weight", d + a + ".weight")
            same(o + b + ".bias", d + a + ".bias")
    # Present in real SD2 checkpoints but unused by SD and by diffusers' conversion: constants
    # here, so the manifest can make them without storing a tensor
    D = sd["text_model.final_layer_norm.weight"].shape[0]
    out[P + "text_projection"] = torch.zeros((D, D))
    ops[P + "text_projection"] = ("fill", [], 0.0)
    logit = float(f16_round(torch.tensor(np.log(1 / 0.07), dtype=torch.float32)))
    out[P + "logit_scale"] = torch.tensor(logit, dtype=torch.float32)
    ops[P + "logit_scale"] = ("fill", [], logit)
    assert len(out) == 4 + 12 * num_layers + 2
    return out, ops


def text_openclip_from_ldm(ckpt, num_layers):
    P = "cond_stage_model.model."
    sd = {}
    sd["text_model.embeddings.token_embedding.weight"] = ckpt[P + "token_embedding.weight"]
    sd["text_model.embeddings.position_embedding.weight"] = ckpt[P + "positional_embedding"]
    sd["text_model.final_layer_norm.weight"] = ckpt[P + "ln_final.weight"]
    sd["text_model.final_layer_norm.bias"] = ckpt[P + "ln_final.bias"]
    for k in range(num_layers):
        d = f"text_model.encoder.layers.{k}."
        o = f"{P}transformer.resblocks.{k}."
        w = ckpt[o + "attn.in_proj_weight"]
        b = ckpt[o + "attn.in_proj_bias"]
        for idx, x in enumerate("qkv"):
            n = w.shape[0] // 3
            sd[d + f"self_attn.{x}_proj.weight"] = w[idx * n : (idx + 1) * n]
            sd[d + f"self_attn.{x}_proj.bias"] = b[idx * n : (idx + 1) * n]
        sd[d + "self_attn.out_proj.weight"] = ckpt[o + "attn.out_proj.weight"]
        sd[d + "self_attn.out_proj.bias"] = ckpt[o + "attn.out_proj.bias"]
        for a, bb in [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]:
            sd[d + a + ".weight"] = ckpt[o + bb + ".weight"]
            sd[d + a + ".bias"] = ckpt[o + bb + ".bias"]
    return sd


def to_single_file(pipe, variant, cfg):
    """The original-layout checkpoint (key -> tensor) and, per key, how it is made from the
    folder's tensors: (op, [(component, tensor)], fill value) with op identity, reshape (VAE
    attention [C,C] -> [C,C,1,1]), concat (dim 0: OpenCLIP's fused in_proj) or fill."""
    ckpt, ops = {}, {}
    unet_map = {}
    for k, v in pipe.unet.state_dict().items():
        lk = "model.diffusion_model." + unet_key_to_ldm(k, cfg["unet"])
        assert lk not in ckpt, lk
        ckpt[lk] = v.contiguous()
        ops[lk] = ("identity", [("unet", k)])
        unet_map[lk] = k
    vae_map = {}
    for k, v in pipe.vae.state_dict().items():
        lk, reshape = vae_key_to_ldm(k, VAE_CONFIG)
        lk = "first_stage_model." + lk
        assert lk not in ckpt, lk
        ckpt[lk] = (v.reshape(*v.shape, 1, 1) if reshape else v).contiguous()
        ops[lk] = ("reshape" if reshape else "identity", [("vae", k)])
        vae_map[lk] = (k, reshape)
    tsd = pipe.text_encoder.state_dict()
    if variant == "sd15-tiny":
        text = text_sd1_to_ldm(tsd)
        text_ops = {"cond_stage_model.transformer." + k: ("identity", [("text_encoder", k)]) for k in tsd}
    else:
        text, text_ops = text_openclip_to_ldm(tsd, cfg["text"]["num_hidden_layers"])
    for k in text:
        assert k not in ckpt
    ckpt.update({k: v.contiguous() for k, v in text.items()})
    ops.update(text_ops)
    assert set(ops) == set(ckpt)
    return ckpt, ops, unet_map, vae_map


# ---------------------------------------------------------------------------------------------
# Single-file manifests: the single-file checkpoints are not committed (their tensors are the
# folders'); `<name>.manifest.json` says how to assemble one from the folder files, which
# tests/common/single_file.rs does for the Rust tests and assemble_single_file() here.
# ---------------------------------------------------------------------------------------------


def write_manifest(path, sources, ops, ckpt, about):
    """sources: component -> safetensors path relative to the manifest's folder."""
    lines = []
    for k in sorted(ops):
        op = ops[k]
        e = {"key": k, "op": op[0], "from": [list(x) for x in op[1]], "shape": list(ckpt[k].shape)}
        if op[0] == "fill":
            e["value"] = op[2]
        lines.append(json.dumps(e, sort_keys=True))
    head = {"about": about, "dtype": "F16", "metadata": {"format": "pt"}, "sources": sources}
    text = json.dumps(head, sort_keys=True, indent=1)[:-2] + ',\n "tensors": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"
    json.loads(text)
    with open(path, "w") as f:
        f.write(text)


def assemble_single_file(manifest_path):
    """(tensors, metadata) of the single file a manifest describes, from the folder files."""
    m = json.load(open(manifest_path))
    root = os.path.dirname(manifest_path)
    files = {c: load_file(os.path.join(root, p)) for c, p in m["sources"].items()}
    dtype = {"F16": torch.float16, "F32": torch.float32}[m["dtype"]]
    out = {}
    for e in m["tensors"]:
        src = [files[c][t] for c, t in e["from"]]
        op = e["op"]
        if op == "identity":
            (x,) = src
        elif op == "reshape":
            x = src[0].reshape(e["shape"])
        elif op == "concat":
            x = torch.cat(src, 0)
        elif op == "transpose":
            x = src[0].T
        elif op == "fill":
            x = torch.full(e["shape"], e["value"], dtype=dtype)
        else:
            raise ValueError(f"{manifest_path}: op {op}")
        assert list(x.shape) == e["shape"] and x.dtype == dtype, e["key"]
        assert e["key"] not in out, e["key"]
        out[e["key"]] = x.contiguous()
    return out, m["metadata"]


def check_assembled(manifest_path, ckpt, tmp_dir):
    """Assemble the manifest's file into tmp_dir, check it equals `ckpt`, return its path."""
    got, meta = assemble_single_file(manifest_path)
    assert set(got) == set(ckpt), set(got) ^ set(ckpt)
    for k, v in ckpt.items():
        assert torch.equal(got[k].to(torch.float32), v.to(torch.float32)), k
    path = os.path.join(tmp_dir, os.path.basename(manifest_path).replace(".manifest.json", ".safetensors"))
    save_file(got, path, metadata=meta)
    return path


def verify_single_file(path, pipe, variant, cfg, unet_map, vae_map, folder):
    ckpt = load_file(path)
    # 1) our own inverse mapping
    unet_sd = {unet_map[k]: v for k, v in ckpt.items() if k.startswith("model.diffusion_model.")}
    vae_sd = {}
    for k, v in ckpt.items():
        if k.startswith("first_stage_model."):
            dk, reshape = vae_map[k]
            vae_sd[dk] = v.reshape(v.shape[0], v.shape[1]) if reshape else v
    if variant == "sd15-tiny":
        P = "cond_stage_model.transformer."
        text_sd = {k[len(P) :]: v for k, v in ckpt.items() if k.startswith(P)}
    else:
        text_sd = text_openclip_from_ldm(ckpt, cfg["text"]["num_hidden_layers"])
    n_other = sum(1 for k in ckpt if not k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")))
    assert n_other == 0
    for model, sd in ((pipe.unet, unet_sd), (pipe.vae, vae_sd), (pipe.text_encoder, text_sd)):
        ref = model.state_dict()
        assert set(ref) == set(sd), (set(ref) ^ set(sd))
        for k in ref:
            assert torch.equal(ref[k], sd[k].to(torch.float32)), k
    # 2) diffusers' own loader (offline, config from our folder)
    sf = StableDiffusionPipeline.from_single_file(
        path,
        config=folder,
        local_files_only=True,
        safety_checker=None,
        requires_safety_checker=False,
        torch_dtype=torch.float32,
    )
    for name in ("unet", "vae", "text_encoder"):
        ref = getattr(pipe, name).state_dict()
        got = getattr(sf, name).state_dict()
        assert set(ref) == set(got), (name, set(ref) ^ set(got))
        for k in ref:
            assert torch.equal(ref[k], got[k]), (name, k)
    return "own inverse mapping + diffusers from_single_file: all tensors identical"


# ---------------------------------------------------------------------------------------------
# Capturing a pipeline run
# ---------------------------------------------------------------------------------------------


def t32(x):
    return x.detach().to(torch.float32).contiguous().clone()


def run_captured(pipe, scheduler, latents=None, output_type="pil"):
    """Run the real StableDiffusionPipeline and capture every intermediate of interest."""
    pipe.scheduler = scheduler
    rec = dict(unet_in=[], unet_t=[], unet_ehs=[], unet_out=[], noise_pred=[], step_t=[], latents=[], anc_noise=[])

    def unet_hook(module, args, kwargs, output):
        sample = args[0] if len(args) > 0 else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        ehs = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[2]
        rec["unet_in"].append(t32(sample))
        rec["unet_t"].append(torch.as_tensor(t, dtype=torch.float32).reshape(1).clone())
        rec["unet_ehs"].append(t32(ehs))
        out = output[0] if isinstance(output, tuple) else output.sample
        rec["unet_out"].append(t32(out))

    h = pipe.unet.register_forward_hook(unet_hook, with_kwargs=True)
    orig_step = scheduler.step

    # functools.wraps keeps the signature visible to the pipeline's prepare_extra_step_kwargs
    # (it passes `generator`/`eta` only to a step() that declares them)
    @functools.wraps(orig_step)
    def step(model_output, timestep, sample, *a, **kw):
        rec["noise_pred"].append(t32(model_output))
        rec["step_t"].append(torch.as_tensor(timestep, dtype=torch.float32).reshape(1).clone())
        out = orig_step(model_output, timestep, sample, *a, **kw)
        prev = out[0] if isinstance(out, tuple) else out.prev_sample
        rec["latents"].append(t32(prev))
        return out

    scheduler.step = step
    orig_decode = pipe.vae.decode
    dec = {}

    def decode(z, *a, **kw):
        dec["in"] = t32(z)
        out = orig_decode(z, *a, **kw)
        dec["out"] = t32(out[0] if isinstance(out, tuple) else out.sample)
        return out

    pipe.vae.decode = decode
    orig_prep = pipe.prepare_latents

    def prep(*a, **kw):
        out = orig_prep(*a, **kw)
        dec["prepared"] = t32(out)
        return out

    pipe.prepare_latents = prep
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as ea

    orig_randn = ea.randn_tensor

    def randn_rec(*a, **kw):
        n = orig_randn(*a, **kw)
        rec["anc_noise"].append(t32(n))
        return n

    ea.randn_tensor = randn_rec
    try:
        gen = torch.Generator("cpu").manual_seed(SEED)
        with torch.no_grad():
            result = pipe(
                PROMPT,
                negative_prompt=NEGATIVE,
                height=HEIGHT,
                width=WIDTH,
                num_inference_steps=STEPS,
                guidance_scale=GUIDANCE,
                generator=gen,
                latents=latents,
                output_type=output_type,
            )
    finally:
        h.remove()
        del scheduler.step
        del pipe.vae.decode
        del pipe.prepare_latents
        ea.randn_tensor = orig_randn
    img = np.asarray(result.images[0]).copy()
    assert img.dtype == np.uint8 and img.shape == (HEIGHT, WIDTH, 3)
    return rec, dec, img


def sched_info(s):
    cfg = {k: (sorted(v) if k == "_use_default_values" else v) for k, v in dict(s.config).items()}
    info = {"class": type(s).__name__, "config": cfg, "order": getattr(s, "order", 1)}
    info["init_noise_sigma"] = float(s.init_noise_sigma)
    info["timesteps"] = [float(t) for t in s.timesteps]
    if getattr(s, "sigmas", None) is not None:
        info["sigmas"] = [float(x) for x in s.sigmas]
    return info


def jsonable(o):
    if isinstance(o, dict):
        return {k: jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return o


def sampler_golden(pipe, name, sched, noise, out_dir):
    rec, dec, img = run_captured(pipe, sched)
    S = len(rec["latents"])
    assert len(rec["unet_in"]) == S == len(rec["noise_pred"]), (name, S)
    for e in rec["unet_ehs"]:
        assert torch.equal(e, rec["unet_ehs"][0])
    for a, b in zip(rec["unet_t"], rec["step_t"]):
        assert torch.equal(a, b)
    # reproduce the pipeline's initial latents: randn(seed 42) * init_noise_sigma
    assert torch.equal(dec["prepared"], noise * sched.init_noise_sigma), name
    info = sched_info(sched)
    t = {
        "noise": noise,
        "init_noise_sigma": torch.tensor([float(sched.init_noise_sigma)], dtype=torch.float32),
        "timesteps": torch.tensor(info["timesteps"], dtype=torch.float32),
        "encoder_hidden_states": rec["unet_ehs"][0],
        "unet_in": torch.stack(rec["unet_in"]),
        "t": torch.cat(rec["unet_t"]),
        "unet_out": torch.stack(rec["unet_out"]),
        "noise_pred": torch.stack(rec["noise_pred"]),
        "latents": torch.stack(rec["latents"]),
        "vae_in": dec["in"],
        "vae_out": dec["out"],
        "image_u8": torch.from_numpy(img),
    }
    if "sigmas" in info:
        t["sigmas"] = torch.tensor(info["sigmas"], dtype=torch.float32)
    if rec["anc_noise"]:
        t["ancestral_noise"] = torch.stack(rec["anc_noise"])
    # image pipeline postprocess: uint8 = round(clamp(x/2+0.5, 0, 1) * 255)
    ref = ((dec["out"][0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(ref, img), name
    meta = {
        "sampler": name,
        "scheduler_class": info["class"],
        "scheduler_config": jsonable(info["config"]),
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "seed": SEED,
        "steps": STEPS,
        "guidance_scale": GUIDANCE,
        "height": HEIGHT,
        "width": WIDTH,
    }
    return t, meta, img, info


def save(tensors, path, meta=None):
    """safetensors file; metadata goes in ONE key "pigment" (a sorted JSON string), because the
    safetensors writer orders several metadata keys randomly (the bytes would not be reproducible)."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, path, metadata={"pigment": json.dumps(meta or {}, sort_keys=True)})


def save_png(img, path):
    from PIL import Image

    Image.fromarray(img).save(path, optimize=False)


# ---------------------------------------------------------------------------------------------
# Goldens
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def text_golden(pipe):
    out = {}
    for tag, text in (("prompt", PROMPT), ("negative", NEGATIVE)):
        ids = pipe.tokenizer(
            text, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        o = pipe.text_encoder(ids, output_hidden_states=True)
        hs = o.hidden_states
        out[f"{tag}.input_ids"] = ids.to(torch.int64)
        out[f"{tag}.last_hidden_state"] = t32(o.last_hidden_state)
        out[f"{tag}.penultimate"] = t32(hs[-2])
        out[f"{tag}.penultimate_ln"] = t32(pipe.text_encoder.text_model.final_layer_norm(hs[-2]))
        out[f"{tag}.pooled"] = t32(o.pooler_output)
        out[f"{tag}.hidden_states"] = torch.stack([t32(h) for h in hs])
        out[f"{tag}.embeddings"] = t32(hs[0])
    # cross-check with the pipeline's own encode_prompt (clip_skip None and 1)
    pe, ne = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    assert torch.equal(pe, out["prompt.last_hidden_state"]) and torch.equal(ne, out["negative.last_hidden_state"])
    pe1, ne1 = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE, clip_skip=1)
    assert torch.equal(pe1, out["prompt.penultimate_ln"])
    assert torch.equal(ne1, out["negative.last_hidden_state"])  # diffusers: clip_skip not applied to negative
    return out


@torch.no_grad()
def vae_golden(pipe, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((1, 4, 8, 8), generator=g)
    img = torch.rand((1, 3, 64, 64), generator=g) * 2 - 1
    vae = pipe.vae
    out = {"decode_in": z}
    acts = {}
    hooks = []
    # The intermediates tests/vae.rs checks (the deeper up/down blocks' big maps are left out:
    # the tracked-tree budget; the final outputs cover them).
    for n in ["post_quant_conv", "decoder.conv_in", "decoder.mid_block", "decoder.up_blocks.0", "decoder.conv_norm_out", "encoder.conv_in", "encoder.down_blocks.0",
        "encoder.mid_block",
        "encoder.conv_out",
        "quant_conv",
    ]:
        hooks.append(vae.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: acts.__setitem__(n, t32(o))))
    out["decode_out"] = t32(vae.decode(z).sample)
    for k in list(acts):
        out["dbg.decode." + k] = acts.pop(k)
    dist = vae.encode(img).latent_dist
    for k in list(acts):
        out["dbg.encode." + k] = acts.pop(k)
    for h in hooks:
        h.remove()
    out["encode_in"] = img
    out["encode_mean"] = t32(dist.mean)
    out["encode_std"] = t32(dist.std)
    out["encode_logvar"] = t32(dist.logvar)
    return out


@torch.no_grad()
def unet_golden(pipe, text, seed):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn((2, 4, 8, 8), generator=g)
    ehs = torch.cat([text["negative.last_hidden_state"], text["prompt.last_hidden_state"]])
    t = torch.tensor(981, dtype=torch.int64)
    unet = pipe.unet
    acts = {}
    names = ["time_proj", "time_embedding", "conv_in"]
    names += [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
    names += ["mid_block"] + [f"up_blocks.{i}" for i in range(len(unet.up_blocks))] + ["conv_norm_out"]
    hooks = []
    for n in names:
        def hook(m, a, o, n=n):
            acts[n] = t32(o[0] if isinstance(o, tuple) else o)
        hooks.append(unet.get_submodule(n).register_forward_hook(hook))
    out = unet(sample, t, encoder_hidden_states=ehs).sample
    for h in hooks:
        h.remove()
    res = {
        "sample": sample,
        "timestep": torch.tensor([981.0]),
        "encoder_hidden_states": ehs,
        "out": t32(out),
    }
    for n in names:
        res["dbg." + n] = acts[n]
    # float timestep (Euler-style schedulers pass floats) must give the same output
    out_f = unet(sample, torch.tensor(981.0), encoder_hidden_states=ehs).sample
    assert torch.allclose(out_f, out, atol=1e-6)
    return res


TOKENIZER_PROMPTS = [
    "a photo of a cat",
    "A Photo Of A CAT",
    "",
    "   leading and trailing whitespace   ",
    "multiple    spaces\tand\ttabs\nand newlines",
    "hello, world! how are you?",
    "don't stop, it's fine, we're here, they'll go, I'd say, you've",
    "numbers 1234567890 and 3.14159 and 1,000,000",
    "a photo of a cat, (masterpiece:1.2), [blurry]",
    "((best quality)), <lora:foo:0.8>, {a|b}",
    "emoji 🐱🚀✨ and 👍🏽",
    "日本語のテキスト 猫",
    "中文提示词，一只猫",
    "한국어 고양이",
    "café naïve façade résumé Ægir",
    "HTML &amp; entities &lt;3 &quot;quoted&quot;",
    "“curly quotes” and ‘single’ — em dash … ellipsis",
    "full-width ＡＢＣ１２３",
    "mojibake: Ã©tÃ© and ligature ﬁne",
    "underscores_and-hyphens/slashes\\backslashes",
    "trailing punctuation!!!???...",
    "a" * 60,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "hyper detailed, 8k, octane render, trending on artstation, by greg rutkowski and alphonse mucha",
    " ".join(["a photograph of an astronaut riding a horse on the moon"] * 8),  # > 77 tokens
    "<|startoftext|> literal special tokens <|endoftext|>",
]


def tokenizer_cases(t1, t2):
    """t1: SD1 tokenizer (pad <|endoftext|>), t2: SD2 tokenizer (pad "!"), both as diffusers loads them.
    NOTE: with pad_token "!", HF's slow tokenizer treats "!" as a special (never-split) token, so any
    "!" in the text becomes id 0 ("!" without </w>) instead of going through BPE ("!</w>" = 256,
    "!!!</w>" = 11194, ...). That is what diffusers does with the real SD2.x tokenizer too."""
    assert t2.pad_token_id == 0 and t1.pad_token_id == 49407
    cases = []
    for text in TOKENIZER_PROMPTS:
        ids = t1(text).input_ids
        ids2 = t2(text).input_ids
        p1 = t1(text, padding="max_length", max_length=77, truncation=True).input_ids
        p2 = t2(text, padding="max_length", max_length=77, truncation=True).input_ids
        assert len(p1) == len(p2) == 77
        cases.append(
            {
                "text": text,
                "ids": ids,
                "ids_padded_77": p1,
                "ids_pad0": ids2,
                "ids_padded_77_pad0": p2,
                "tokens": t1.convert_ids_to_tokens(ids),
            }
        )
    return cases


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()[:16]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures"))
    ap.add_argument("--assets", default=os.path.join(REPO, "assets"))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}")
    out_root = args.out
    os.makedirs(out_root, exist_ok=True)
    os.makedirs(args.assets, exist_ok=True)
    shutil.copyfile(bpe_gz_path(), os.path.join(args.assets, "bpe_simple_vocab_16e6.txt.gz"))

    tmp = tempfile.mkdtemp(prefix="pigment-tok-")
    tok_src = write_clip_vocab(tmp)

    summary = {}
    for variant in args.variants.split(","):
        cfg = VARIANTS[variant]
        print(f"== {variant}")
        pipe = build_pipeline(variant, cfg, tok_src)
        folder = os.path.join(out_root, variant)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        pipe.save_pretrained(folder, safe_serialization=True)
        # Write scheduler_config.json with exactly the keys the real SD checkpoints ship: save_pretrained
        # would add defaults (timestep_spacing "leading", ...) explicitly, and X.from_config() would
        # then carry them over instead of taking X's own defaults as it does with the real configs.
        sched_json = dict(_class_name=cfg["scheduler_cls"].__name__, _diffusers_version=diffusers.__version__)
        sched_json.update(cfg["scheduler"])
        with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
            json.dump(sched_json, f, indent=2, sort_keys=True)
            f.write("\n")
        for dp, _, fns in os.walk(folder):
            for fn in fns:
                assert not fn.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")), fn
        store_f16(folder)
        if variant != "sd15-tiny":
            # one real copy of the CLIP vocabulary (sd15-tiny's, which the Rust tokenizer tests
            # read); the other folders link to it
            for fn in ("vocab.json", "merges.txt"):
                p = os.path.join(folder, "tokenizer", fn)
                real = os.path.join(out_root, "sd15-tiny", "tokenizer", fn)
                assert open(p, "rb").read() == open(real, "rb").read(), fn
                os.remove(p)
                os.symlink(os.path.join("..", "..", "sd15-tiny", "tokenizer", fn), p)
        # reload from the folder and use that for everything below (what Pigment loads)
        mem = {n: {k: v.clone() for k, v in getattr(pipe, n).state_dict().items()} for n in ("unet", "vae", "text_encoder")}
        pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        assert pipe.tokenizer.pad_token == cfg["pad_token"]
        for n, sd in mem.items():  # the F16 files upcast back to exactly the f32 values
            got = getattr(pipe, n).state_dict()
            assert all(got[k].dtype == torch.float32 and torch.equal(got[k], v) for k, v in sd.items()), n

        ckpt, ops, unet_map, vae_map = to_single_file(pipe, variant, cfg)
        old = os.path.join(out_root, variant + ".safetensors")
        if os.path.exists(old):
            os.remove(old)  # from before the manifests
        manifest = os.path.join(out_root, variant + ".manifest.json")
        write_manifest(
            manifest,
            {
                "unet": f"{variant}/unet/diffusion_pytorch_model.safetensors",
                "vae": f"{variant}/vae/diffusion_pytorch_model.safetensors",
                "text_encoder": f"{variant}/text_encoder/model.safetensors",
            },
            ops,
            ckpt,
            f"{variant}.safetensors (original single-file layout) assembled from the {variant}/ folder; "
            "written by tools/make_fixtures.py",
        )
        sf_path = check_assembled(manifest, ckpt, tmp)
        print("single file:", verify_single_file(sf_path, pipe, variant, cfg, unet_map, vae_map, folder))
        os.remove(sf_path)

        gdir = os.path.join(out_root, "golden", variant)
        if os.path.isdir(gdir):
            shutil.rmtree(gdir)
        os.makedirs(gdir)

        text = text_golden(pipe)
        save(text, os.path.join(gdir, "text.safetensors"), {"prompt": PROMPT, "negative_prompt": NEGATIVE})
        save(
            vae_golden(pipe, cfg["seed"] + 7),
            os.path.join(gdir, "vae.safetensors"),
            {
                "scaling_factor": VAE_CONFIG["scaling_factor"],
                "note": "decode_in is the raw z given to vae.decode (post_quant_conv included, no scaling); "
                "encode_* is vae.encode(encode_in).latent_dist (quant_conv included, no scaling)",
            },
        )
        save(
            unet_golden(pipe, text, cfg["seed"] + 8),
            os.path.join(gdir, "unet.safetensors"),
            {"timestep": 981, "encoder_hidden_states": "[negative, prompt] last_hidden_state from text.safetensors"},
        )

        noise = torch.randn((1, 4, HEIGHT // 8, WIDTH // 8), generator=torch.Generator("cpu").manual_seed(SEED))
        scheds = {}
        cond = {}
        default_sched = pipe.scheduler
        runs = [("default", default_sched)] + [
            (n, cls.from_config(default_sched.config, **kw)) for n, cls, kw in SAMPLERS
        ]
        for name, sched in runs:
            t, meta, img, info = sampler_golden(pipe, name, sched, noise, gdir)
            fname = "txt2img" if name == "default" else f"sampler_{name}"
            save(t, os.path.join(gdir, fname + ".safetensors"), meta)
            save_png(img, os.path.join(gdir, fname + ".png"))
            # well-conditioning: 1e-6 relative perturbation of the initial noise
            g = torch.Generator().manual_seed(7)
            pert = noise * (1 + PERTURBATION * torch.randn(noise.shape, generator=g))
            _, dec_a, img_a = run_captured(pipe, sched, latents=noise.clone())
            _, dec_b, img_b = run_captured(pipe, sched, latents=pert)
            # explicit latents == generated ones (euler_a differs: its generator then skips the initial draw)
            assert np.array_equal(img_a, img) or name == "euler_a", name
            d = float(np.abs(img_a.astype(np.float64) - img_b.astype(np.float64)).mean())
            # the same on the float image, in uint8 levels (finer than the quantised figure)
            df = float(((dec_a["out"] - dec_b["out"]).abs() * 127.5).mean())
            std = float(img.astype(np.float64).std())
            sat = float(((img == 0) | (img == 255)).mean())
            info.update(
                {
                    "golden": fname + ".safetensors",
                    "perturbation_u8_mean_abs": d,
                    "perturbation_float_levels_mean_abs": df,
                    "image_std_u8": std,
                    "image_saturated_fraction": sat,
                    "steps_recorded": int(t["latents"].shape[0]),
                }
            )
            scheds[name] = info
            cond[name] = (d, df, std, sat)
            print(
                f"  {name:16s} {info['class']:34s} evals={t['latents'].shape[0]:2d} "
                f"perturb d_u8={d:.4f} d_float={df:.2e} levels  img std={std:.1f} sat={sat:.3f}"
            )
        with open(os.path.join(gdir, "schedulers.json"), "w") as f:
            json.dump(jsonable(scheds), f, indent=1, sort_keys=True)
        bad = [n for n, (d, df, std, sat) in cond.items() if d >= CONDITIONING_LIMIT]
        flat = [n for n, (d, df, std, sat) in cond.items() if std < 20 or sat > 0.2]
        if bad or flat:
            print(f"FAIL {variant}: ill-conditioned {bad}, flat/saturated {flat}")
            sys.exit(1)
        summary[variant] = {n: {"d_u8": c[0], "d_float_levels": c[1], "img_std": c[2], "saturated": c[3]} for n, c in cond.items()}

    t1 = CLIPTokenizer.from_pretrained(os.path.join(out_root, "sd15-tiny", "tokenizer"))
    t2 = CLIPTokenizer.from_pretrained(os.path.join(out_root, "sd21-tiny", "tokenizer"))
    cases = tokenizer_cases(t1, t2)
    ref = tokenizer_cases(make_tokenizer(*tok_src, "<|endoftext|>"), make_tokenizer(*tok_src, "!"))
    assert cases == ref
    with open(os.path.join(out_root, "tokenizer_cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
    n_bang = sum(1 for c in cases if c["ids"] != c["ids_pad0"])
    print(f"tokenizer cases: {len(cases)} ({n_bang} differ between pad <|endoftext|> and pad '!' tokenizers)")

    with open(os.path.join(out_root, "golden", "conditioning.json"), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
    shutil.rmtree(tmp)
    print("files:")
    for dp, _, fns in sorted(os.walk(out_root)):
        for fn in sorted(fns):
            p = os.path.join(dp, fn)
            print(f"  {os.path.relpath(p, REPO):70s} {os.path.getsize(p):>10d}  {sha(p)}")
    print("OK")


if __name__ == "__main__":
    main()
