#!/usr/bin/env python3
"""SDXL txt2img goldens with more samplers (issue #12: "txt2img with several samplers") on the
tiny SDXL pipeline of tools/fixtures_sdxl.py (same weights, from the synthetic generator):
Euler a, DPM++ 2M Karras and DDIM, 64x64, 4 steps, cfg 5, seed 42, each scheduler built from
SDXL base's scheduler config (leading spacing) as diffusers' `from_config` does.

Run from the repository root (CPU, float32, seconds):

    python tools/fixtures_sdxl_samplers.py

Writes (overwriting) tests/fixtures/golden/sdxl-tiny/sampler_<name>.png.
"""

import os
import sys

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_sdxl import REPO, SCHEDULER, build, run  # noqa: E402

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler  # noqa: E402

STEPS = 4
SAMPLERS = [
    ("euler_a", EulerAncestralDiscreteScheduler, {}),
    ("dpmpp_2m_karras", DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    ("ddim", DDIMScheduler, {}),
]


def main():
    pipe, _ = build()
    out = os.path.join(REPO, "tests", "fixtures", "golden", "sdxl-tiny")
    for name, cls, extra in SAMPLERS:
        pipe.scheduler = cls.from_config(dict(SCHEDULER, **extra))
        img, cap = run(pipe, steps=STEPS)
        Image.fromarray(img).save(os.path.join(out, f"sampler_{name}.png"), optimize=False)
        print(f"{name}: image std {img.std():.1f}, latents std {float(cap['latents'].std()):.3f}")


if __name__ == "__main__":
    main()
