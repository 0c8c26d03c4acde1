#!/usr/bin/env python3
"""DiffEdit mask goldens (issue #15 item 4, mask estimation only): diffusers'
StableDiffusionDiffEditPipeline.generate_mask on tests/fixtures/sd15-tiny with a DDIMScheduler
(as diffusers' DiffEdit example), input tests/fixtures/golden/img2img/init.png.

Run from the repository root (CPU, float32, seconds):

    python tools/fixtures_diffedit.py

Writes tests/fixtures/golden/diffedit/mask_<run>.safetensors:
    map    [1, 8, 8]  mean over the maps and channels of |eps_target - eps_source| (before the
                      clamp) divided by its mean, rebuilt here from the UNet outputs the pipeline
                      computed (the mask depends on the map only through map / mean(map))
    mask   [1, 8, 8]  generate_mask's output (0/1)
    t      [1]        the encode timestep
Runs (seed 42, source "a bowl of fruits", target "a bowl of pears", both negatives NEGATIVE,
10 steps, guidance 7.5): `cfg` (10 maps, strength 0.5, ratio 2; diffusers' default 3 leaves this
random model's flat map's mask empty), `maps3` (3 maps, strength 0.7, ratio 1.8).

diffusers 0.39 quirks: generate_mask unpacks encode_prompt's (prompt, negative) as (negative,
prompt), so its guidance is `e_pos + g (e_neg - e_pos)`; with one negative prompt for source and
target that scales the map by (g - 1) / g against the intended `e_neg + g (e_pos - e_neg)`, which
the normalised map and the mask do not see. At guidance <= 1 it fails (a None embedding).

Check: each map must not be flat (std >= 5% of its mean), and the mask must be neither empty
nor full; the script fails (exit 1) otherwise.
"""

import json
import os
import sys

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_fullsize import save, t32  # noqa: E402
from make_fixtures import NEGATIVE, SEED  # noqa: E402

from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionDiffEditPipeline  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SD15 = os.path.join(REPO, "tests", "fixtures", "sd15-tiny")
INIT = os.path.join(REPO, "tests", "fixtures", "golden", "img2img", "init.png")
OUT = os.path.join(REPO, "tests", "fixtures", "golden", "diffedit")
SOURCE, TARGET = "a bowl of fruits", "a bowl of pears"
STEPS = 10
RUNS = {
    "cfg": dict(guidance_scale=7.5, num_maps_per_mask=10, mask_encode_strength=0.5, mask_thresholding_ratio=2.0),
    "maps3": dict(guidance_scale=7.5, num_maps_per_mask=3, mask_encode_strength=0.7, mask_thresholding_ratio=1.8),
}
# The edits (invert, then __call__), each on one mask above: `cfg` as diffusers' DiffEdit example
# (guidance 7.5 for both, the edit's negative prompt the source), `nocfg` without guidance
# (invert and __call__ run one batch at guidance <= 1) at strength 0.5.
EDITS = {
    "cfg": dict(mask="cfg", strength=0.8, guidance=7.5, edit_negative=SOURCE),
    "nocfg": dict(mask="maps3", strength=0.5, guidance=1.0, edit_negative=""),
}


@torch.no_grad()
def main():
    torch.set_num_threads(2)
    pipe = StableDiffusionDiffEditPipeline.from_pretrained(SD15, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.inverse_scheduler = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    image = Image.open(INIT).convert("RGB")
    os.makedirs(OUT, exist_ok=True)
    ok, stats, masks = True, {}, {}
    for name, kw in RUNS.items():
        cap = {}
        fwd = pipe.unet.forward

        def unet(sample, t, *a, **k):
            out = fwd(sample, t, *a, **k)
            cap["t"], cap["out"] = float(t), t32(out.sample if hasattr(out, "sample") else out[0])
            return out

        pipe.unet.forward = unet
        try:
            mask = pipe.generate_mask(image=image, source_prompt=SOURCE, target_prompt=TARGET, source_negative_prompt=NEGATIVE,
                                      target_negative_prompt=NEGATIVE, num_inference_steps=STEPS,
                                      generator=torch.Generator("cpu").manual_seed(SEED), output_type="np", **kw)
        finally:
            del pipe.unet.forward
        g, n = kw["guidance_scale"], kw["num_maps_per_mask"]
        if g > 1:
            neg_src, src, unc, tgt = cap["out"].chunk(4)
            src, tgt = neg_src + g * (src - neg_src), unc + g * (tgt - unc)
        else:
            src, tgt = cap["out"].chunk(2)
        m = (tgt - src).abs().reshape(1, n, *tgt.shape[-3:]).mean([1, 2])
        c = m.mean() * kw["mask_thresholding_ratio"]
        again = torch.where(m.clamp(0, c) / c <= 0.5, 0, 1)
        mask = torch.from_numpy(mask).to(torch.float32)
        assert torch.equal(again.to(torch.float32), mask), "rebuilt map disagrees with generate_mask"
        save({"map": t32(m / m.mean()), "mask": mask, "t": torch.tensor([cap["t"]])}, os.path.join(OUT, f"mask_{name}.safetensors"),
             {"source_prompt": SOURCE, "target_prompt": TARGET, "source_negative_prompt": NEGATIVE, "target_negative_prompt": NEGATIVE,
              "steps": STEPS, "seed": SEED, "scheduler": "DDIMScheduler", **kw})
        stats[name] = {"t": cap["t"], "mask_fraction": float(mask.mean()), "map_rel_std": float(m.std() / m.mean()),
                       "closest_to_threshold": float(((m.clamp(0, c) / c) - 0.5).abs().min())}
        ok &= 0 < float(mask.mean()) < 1 and stats[name]["map_rel_std"] >= 0.05
        masks[name] = mask.numpy()
    for name, kw in EDITS.items():
        inv_kw = dict(num_inference_steps=STEPS, inpaint_strength=kw["strength"], guidance_scale=kw["guidance"])
        mask = torch.from_numpy(masks[kw["mask"]])
        inverted = pipe.invert(prompt=SOURCE, image=image, negative_prompt=NEGATIVE, generator=torch.Generator("cpu").manual_seed(SEED),
                               num_reg_steps=0, **inv_kw).latents
        cap = {}
        dec = pipe.vae.decode

        def decode(z, *a, **k):
            cap["latents"] = t32(z * pipe.vae.config.scaling_factor)
            return dec(z, *a, **k)

        pipe.vae.decode = decode
        try:
            out = pipe(prompt=TARGET, mask_image=mask, image_latents=inverted, negative_prompt=kw["edit_negative"],
                       generator=torch.Generator("cpu").manual_seed(SEED), output_type="pil", **inv_kw).images[0]
        finally:
            del pipe.vae.decode
        out.save(os.path.join(OUT, f"edit_{name}.png"), optimize=False)
        save({"inverted": t32(inverted[0]), "latents": cap["latents"][0], "mask": t32(mask)}, os.path.join(OUT, f"edit_{name}.safetensors"),
             {"source_prompt": SOURCE, "target_prompt": TARGET, "negative_prompt": NEGATIVE, "steps": STEPS, "seed": SEED,
              "scheduler": "DDIMScheduler", "inverse_scheduler": "DDIMInverseScheduler", "num_reg_steps": 0, **kw})
        # how far the edit moved the masked region against the rest (a blend that did nothing shows here)
        d = (cap["latents"][0] - inverted[0, -1]).abs().mean(0)
        m = mask[0]
        stats[f"edit_{name}"] = {"inverted_steps": int(inverted.shape[1]), "mask_fraction": float(m.mean()),
                                 "moved_in_mask": float(d[m > 0].mean()), "moved_outside": float(d[m == 0].mean())}
        ok &= 0 < float(m.mean()) < 1 and stats[f"edit_{name}"]["moved_in_mask"] > 4 * stats[f"edit_{name}"]["moved_outside"]
    print(json.dumps(stats, indent=1))
    if not ok:
        print("FAIL: a flat map or an empty/full mask")
        sys.exit(1)
    print("OK")


if __name__ == "__main__":
    main()
