#!/usr/bin/env python3
"""SD-Turbo's recipe on the tiny SD 2.x fixture (issue #12): diffusers' golden for a 1-step,
guidance-0 txt2img with stabilityai/sd-turbo's scheduler config (EulerDiscreteScheduler,
`timestep_spacing: "trailing"`, epsilon prediction; SD-Turbo is an SD 2.1-base architecture at
512). The weights are tests/fixtures/sd21-tiny's (its own scheduler is DDIM v-prediction; the
Turbo config replaces it, as the page test does with the folder it picks).

Run from the repository root (CPU, float32, seconds):

    python tools/fixtures_sd_turbo.py

Writes (overwriting) tests/fixtures/golden/sd21-tiny/turbo.png and turbo.safetensors (the final
latents; metadata `scheduler_config` is the JSON the Rust and page tests install).
"""

import json
import os
import sys

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_fullsize import save  # noqa: E402
from fixtures_sdxl import SIZE, run  # noqa: E402
from make_fixtures import PROMPT, SEED  # noqa: E402

from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline  # noqa: E402

# stabilityai/sd-turbo scheduler/scheduler_config.json (the fields diffusers reads)
TURBO_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "trailing",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def main():
    pipe = StableDiffusionPipeline.from_pretrained("tests/fixtures/sd21-tiny", safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(TURBO_SCHEDULER)
    img, cap = run(pipe, guidance=0.0, steps=1)
    out = "tests/fixtures/golden/sd21-tiny"
    Image.fromarray(img).save(os.path.join(out, "turbo.png"), optimize=False)
    save({"latents": cap["latents"]}, os.path.join(out, "turbo.safetensors"),
         {"prompt": PROMPT, "seed": SEED, "steps": 1, "guidance_scale": 0.0, "size": SIZE,
          "scheduler": "EulerDiscreteScheduler", "scheduler_config": json.dumps(TURBO_SCHEDULER, sort_keys=True)})
    print(f"turbo.png: std {img.std():.1f}, latents std {float(cap['latents'].std()):.3f}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
