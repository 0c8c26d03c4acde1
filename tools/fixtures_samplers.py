#!/usr/bin/env python3
"""Goldens for the extra samplers (issue #6 part 5): DPM++ 2M SDE, DPM++ SDE, UniPC, LCM, DDPM,
and exponential sigma schedules, from diffusers 0.39 on CPU float32.

Run from the repository root after tools/make_fixtures.py (it reuses the tiny pipelines in
tests/fixtures/<variant>/ and make_fixtures' capture helpers; CPU only, a few seconds, no network):

    python tools/fixtures_samplers.py

Writes tests/fixtures/golden/<variant>/sampler_<name>.safetensors (+ .png) for each name below and
tests/fixtures/golden/<variant>/schedulers_extra.json. Each golden holds what make_fixtures'
sampler goldens hold minus the VAE/text tensors (to stay small), plus `step_noise`: every noise
tensor the scheduler drew during the run, in order.

DPMSolverSDEScheduler draws its noise from torchsde's BrownianTree, which Pigment does not
reproduce bit for bit. Here torchsde is not even needed: the noise sampler is replaced by one that
returns plain seeded `randn` and records it, so the Rust test can replay the deterministic step math
with exactly the noise diffusers used.
"""

import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402

# DPMSolverSDEScheduler's module imports torchsde at import time (and diffusers only exports the
# class when torchsde is installed); we replace its noise sampler anyway, so a stub module is
# enough and the class is imported from its module directly.
try:
    import torchsde  # noqa: F401
except ImportError:
    sys.modules["torchsde"] = types.ModuleType("torchsde")

import json  # noqa: E402

import torch  # noqa: E402
from diffusers import (  # noqa: E402
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    StableDiffusionPipeline,
    UniPCMultistepScheduler,
)
import diffusers.schedulers.scheduling_ddpm as m_ddpm  # noqa: E402
import diffusers.schedulers.scheduling_dpmsolver_multistep as m_dpm  # noqa: E402
import diffusers.schedulers.scheduling_dpmsolver_sde as m_sde  # noqa: E402
import diffusers.schedulers.scheduling_lcm as m_lcm  # noqa: E402
from diffusers.schedulers.scheduling_dpmsolver_sde import DPMSolverSDEScheduler  # noqa: E402

SDE = {"algorithm_type": "sde-dpmsolver++"}
KARRAS = {"use_karras_sigmas": True}
EXP = {"use_exponential_sigmas": True}
SAMPLERS = [
    ("dpmpp_2m_sde", DPMSolverMultistepScheduler, SDE),
    ("dpmpp_2m_sde_karras", DPMSolverMultistepScheduler, dict(SDE, **KARRAS)),
    ("dpmpp_sde", DPMSolverSDEScheduler, {}),
    ("dpmpp_sde_karras", DPMSolverSDEScheduler, KARRAS),
    ("unipc", UniPCMultistepScheduler, {}),
    ("unipc_karras", UniPCMultistepScheduler, KARRAS),
    ("lcm", LCMScheduler, {}),
    ("ddpm", DDPMScheduler, {}),
    ("euler_exponential", EulerDiscreteScheduler, EXP),
    ("lms_exponential", LMSDiscreteScheduler, EXP),
    ("heun_exponential", HeunDiscreteScheduler, EXP),
    ("dpmpp_2m_exponential", DPMSolverMultistepScheduler, EXP),
    ("dpmpp_sde_exponential", DPMSolverSDEScheduler, EXP),
    ("unipc_exponential", UniPCMultistepScheduler, EXP),
]
DROP = ("vae_in", "vae_out", "encoder_hidden_states", "image_u8")


class RecordingNoiseSampler:
    """Stands in for diffusers' BrownianTreeNoiseSampler: seeded randn, recorded."""

    drawn = []

    def __init__(self, x, sigma_min, sigma_max, seed=None, transform=lambda x: x):
        self.shape = x.shape
        self.gen = torch.Generator("cpu").manual_seed(20240)

    def __call__(self, sigma, sigma_next):
        n = torch.randn(self.shape, generator=self.gen, dtype=torch.float32)
        RecordingNoiseSampler.drawn.append(mf.t32(n))
        return n


def main():
    torch.set_num_threads(1)
    drawn = []
    orig = {m: m.randn_tensor for m in (m_ddpm, m_dpm, m_lcm)}

    def make_rec(f):
        def rec(*a, **kw):
            n = f(*a, **kw)
            drawn.append(mf.t32(n))
            return n

        return rec

    for m, f in orig.items():
        m.randn_tensor = make_rec(f)
    orig_sampler = m_sde.BrownianTreeNoiseSampler
    m_sde.BrownianTreeNoiseSampler = RecordingNoiseSampler
    try:
        for variant in ["sd15-tiny", "sd21-tiny"]:
            folder = os.path.join(mf.REPO, "tests", "fixtures", variant)
            pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, torch_dtype=torch.float32)
            pipe.set_progress_bar_config(disable=True)
            gdir = os.path.join(mf.REPO, "tests", "fixtures", "golden", variant)
            noise = torch.randn((1, 4, mf.HEIGHT // 8, mf.WIDTH // 8), generator=torch.Generator("cpu").manual_seed(mf.SEED))
            infos = {}
            # run_captured installs each sampler as pipe.scheduler: keep the folder's own config
            base = dict(pipe.scheduler.config)
            for name, cls, kw in SAMPLERS:
                drawn.clear()
                RecordingNoiseSampler.drawn = []
                sched = cls.from_config(base, **kw)
                t, meta, img, info = mf.sampler_golden(pipe, name, sched, noise, gdir)
                for k in DROP:
                    t.pop(k, None)
                steps = drawn + RecordingNoiseSampler.drawn
                if steps:
                    t["step_noise"] = torch.stack(steps)
                meta["options"] = kw
                if cls is DPMSolverSDEScheduler:
                    meta["note"] = "step_noise: seeded randn standing in for torchsde's BrownianTree"
                fname = f"sampler_{name}"
                mf.save(t, os.path.join(gdir, fname + ".safetensors"), meta)
                mf.save_png(img, os.path.join(gdir, fname + ".png"))
                info["golden"] = fname + ".safetensors"
                info["step_noise_draws"] = len(steps)
                infos[name] = info
                print(f"  {variant} {name:22s} evals={t['latents'].shape[0]:2d} noise draws={len(steps)} "
                      f"t={[round(x, 3) for x in info['timesteps']]}")
            with open(os.path.join(gdir, "schedulers_extra.json"), "w") as f:
                json.dump(mf.jsonable(infos), f, indent=1, sort_keys=True)
    finally:
        for m, f in orig.items():
            m.randn_tensor = f
        m_sde.BrownianTreeNoiseSampler = orig_sampler
    print("OK")


if __name__ == "__main__":
    main()
