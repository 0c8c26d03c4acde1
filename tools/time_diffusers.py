#!/usr/bin/env python3
"""diffusers CPU timings of the full-size synthetic models, for comparing Pigment's figures with
diffusers on the same machine in the same run (issue #10), and a diffusers folder of those weights
for `pigment generate --model DIR`.

Run from the repository root (CPU; ~6-10 GB RAM):

    flock /work/bigmem.lock python tools/time_diffusers.py --model sd15 --unet-latents 8,64
    flock /work/bigmem.lock python tools/time_diffusers.py --model sd15 --generate 512 --steps 2
    flock /work/bigmem.lock python tools/time_diffusers.py --model sd15 --save /tmp/sd15-synthetic

--unet-latents   one warm-up and --reps timed UNet calls per latent size (batch 2, as
                 classifier-free guidance runs it), fp32 unless --fp16
--generate SIZE  a SIZExSIZE StableDiffusionPipeline run (cfg 7.5, --steps steps, the model's
                 scheduler); prints the mean time per denoising step (from step callbacks), the
                 text-encoder time before the first step and the VAE decode after the last
--save DIR       writes the pipeline as a diffusers folder (fp16 safetensors: the synthetic values
                 are f16-exact, so nothing is lost), the weights Pigment generates for
                 `--model synthetic:<model>`

The weights are the synthetic generator's (tools/fixtures_fullsize.py); timings do not depend on
the values, only the saved folder does. Threads: torch.set_num_threads(--threads, default all
cores), printed with the results.
"""

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_fullsize import MODELS, build  # noqa: E402
from make_fixtures import NEGATIVE, PROMPT, SEED, write_clip_vocab  # noqa: E402


@torch.no_grad()
def time_unet(pipe, latent, reps, dtype):
    unet = pipe.unet
    cross = pipe.text_encoder.config.hidden_size
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(2, 4, latent, latent, generator=g).to(dtype)
    ehs = torch.randn(2, 77, cross, generator=g).to(dtype)
    t = torch.tensor(981)
    t0 = time.time()
    unet(x, t, encoder_hidden_states=ehs)
    first = time.time() - t0
    times = []
    for _ in range(reps):
        t0 = time.time()
        unet(x, t, encoder_hidden_states=ehs)
        times.append(time.time() - t0)
    mean = sum(times) / len(times)
    print(f"diffusers unet latent {latent} batch 2 {str(dtype).split('.')[-1]}: first {first:.2f} s, mean of {reps} {mean:.2f} s")


@torch.no_grad()
def time_generate(pipe, size, steps):
    stamps = []

    def on_step(p, i, t, kw):
        stamps.append(time.time())
        return kw

    t0 = time.time()
    orig = pipe.vae.decode
    dec = {}

    def decode(*a, **kw):
        s = time.time()
        r = orig(*a, **kw)
        dec["s"] = time.time() - s
        return r

    pipe.vae.decode = decode
    pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(SEED),
        callback_on_step_end=on_step,
    )
    total = time.time() - t0
    pipe.vae.decode = orig
    per_step = [b - a for a, b in zip([t0] + stamps[:-1], stamps)]
    # The first interval includes the text encoder and latent set-up.
    mean = sum(per_step[1:]) / max(1, len(per_step) - 1) if len(per_step) > 1 else per_step[0]
    print(
        f"diffusers txt2img {size}x{size} {steps} steps fp32: total {total:.1f} s, "
        f"step mean {mean:.2f} s (steps 2..), first step incl. text encoder {per_step[0]:.2f} s, vae decode {dec.get('s', 0):.2f} s"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sd15", choices=sorted(MODELS))
    ap.add_argument("--unet-latents", default="")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--fp16", action="store_true", help="time the UNet in fp16 (slow on most CPUs)")
    ap.add_argument("--generate", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--save", default="")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import diffusers

    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="pigment-tok-") as tmp:
        pipe, _ = build(MODELS[args.model], write_clip_vocab(tmp))
    dtype = torch.float16 if args.fp16 else torch.float32
    for latent in [int(v) for v in args.unet_latents.split(",") if v]:
        pipe.unet.to(dtype)
        time_unet(pipe, latent, args.reps, dtype)
        pipe.unet.to(torch.float32)
    if args.generate:
        time_generate(pipe, args.generate, args.steps)
    if args.save:
        pipe.to(torch.float16).save_pretrained(args.save, safe_serialization=True)
        print(f"saved {args.save}")


if __name__ == "__main__":
    main()
