"""Goldens for the Real-ESRGAN upscaler (tests/esrgan.rs): a PyTorch RRDBNet on random weights.

The architecture is basicsr's `RRDBNet` (basicsr/archs/rrdbnet_arch.py, v1.4.2), written out
below line for line because basicsr and spandrel pull in torchvision; the state-dict names are
basicsr's. Weights come from Pigment's synthetic generator (`fixtures_fullsize.values`, the twin
of src/weights/synthetic.rs), so the Rust test rebuilds the same model from the tensor list and
no weight is committed. Tiling follows Real-ESRGAN's `RealESRGANer.tile_process`
(realesrgan/utils.py, v0.3.0): output tiles of `tile` input pixels, each computed from the tile
grown by `tile_pad` on every side (clipped to the image) and cropped back.

    /work/venv/bin/python tools/fixtures_esrgan.py   # writes tests/fixtures/golden/esrgan/
    /work/venv/bin/python tools/fixtures_esrgan.py --time 64 [--blocks 23]
        # PyTorch CPU fp32 time of one full-size x4plus call on a 64x64 input (README figures)
"""

import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from fixtures_fullsize import values  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "golden", "esrgan")

# The test model: small enough for a seconds-long test on lavapipe.
NUM_FEAT, NUM_GROW_CH, NUM_BLOCK = 16, 8, 2
# Image 12 wide, 10 high; tiles of 4 with 2 px of padding give a 3x3 grid of tiles, so seams and
# clipped edge tiles are exercised.
W, H, TILE, TILE_PAD = 12, 10, 4, 2


# --- basicsr/archs/rrdbnet_arch.py --------------------------------------------------------------


def pixel_unshuffle(x, scale):
    b, c, hh, hw = x.size()
    out_channel = c * (scale**2)
    assert hh % scale == 0 and hw % scale == 0
    h = hh // scale
    w = hw // scale
    x_view = x.view(b, c, h, scale, w, scale)
    return x_view.permute(0, 1, 3, 5, 2, 4).reshape(b, out_channel, h, w)


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat=64, num_grow_ch=32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat, num_grow_ch=32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x):
        out = self.rdb1(x)
        out = self.rdb2(out)
        out = self.rdb3(out)
        return out * 0.2 + x


class RRDBNet(nn.Module):
    def __init__(self, num_in_ch, num_out_ch, scale=4, num_feat=64, num_block=23, num_grow_ch=32):
        super().__init__()
        self.scale = scale
        if scale == 2:
            num_in_ch = num_in_ch * 4
        elif scale == 1:
            num_in_ch = num_in_ch * 16
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        if self.scale == 2:
            feat = pixel_unshuffle(x, scale=2)
        elif self.scale == 1:
            feat = pixel_unshuffle(x, scale=4)
        else:
            feat = x
        feat = self.conv_first(feat)
        body_feat = self.conv_body(self.body(feat))
        feat = feat + body_feat
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        out = self.conv_last(self.lrelu(self.conv_hr(feat)))
        return out


# --- realesrgan/utils.py: RealESRGANer.tile_process ---------------------------------------------


@torch.no_grad()
def tile_process(model, img, scale, tile_size, tile_pad):
    batch, channel, height, width = img.shape
    output = img.new_zeros((batch, channel, height * scale, width * scale))
    tiles_x = math.ceil(width / tile_size)
    tiles_y = math.ceil(height / tile_size)
    for y in range(tiles_y):
        for x in range(tiles_x):
            ofs_x = x * tile_size
            ofs_y = y * tile_size
            input_start_x = ofs_x
            input_end_x = min(ofs_x + tile_size, width)
            input_start_y = ofs_y
            input_end_y = min(ofs_y + tile_size, height)
            input_start_x_pad = max(input_start_x - tile_pad, 0)
            input_end_x_pad = min(input_end_x + tile_pad, width)
            input_start_y_pad = max(input_start_y - tile_pad, 0)
            input_end_y_pad = min(input_end_y + tile_pad, height)
            input_tile_width = input_end_x - input_start_x
            input_tile_height = input_end_y - input_start_y
            input_tile = img[:, :, input_start_y_pad:input_end_y_pad, input_start_x_pad:input_end_x_pad]
            output_tile = model(input_tile)
            output_start_x = input_start_x * scale
            output_end_x = input_end_x * scale
            output_start_y = input_start_y * scale
            output_end_y = input_end_y * scale
            output_start_x_tile = (input_start_x - input_start_x_pad) * scale
            output_end_x_tile = output_start_x_tile + input_tile_width * scale
            output_start_y_tile = (input_start_y - input_start_y_pad) * scale
            output_end_y_tile = output_start_y_tile + input_tile_height * scale
            output[:, :, output_start_y:output_end_y, output_start_x:output_end_x] = output_tile[
                :, :, output_start_y_tile:output_end_y_tile, output_start_x_tile:output_end_x_tile
            ]
    return output


def build(scale):
    model = RRDBNet(3, 3, scale=scale, num_feat=NUM_FEAT, num_block=NUM_BLOCK, num_grow_ch=NUM_GROW_CH).eval()
    sd = model.state_dict()
    shapes = {n: tuple(t.shape) for n, t in sd.items()}
    model.load_state_dict({n: torch.from_numpy(values(n, shapes).astype(np.float32)) for n in sd})
    return model, shapes


def main():
    os.makedirs(OUT, exist_ok=True)
    # The input: a seeded random RGB8 image (what the upscaler sees after /255).
    rgb = np.random.default_rng(14).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    x = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()
    tensors = {"input_rgb8": torch.from_numpy(rgb.astype(np.float32))}
    meta = {"num_feat": NUM_FEAT, "num_grow_ch": NUM_GROW_CH, "num_block": NUM_BLOCK, "width": W, "height": H, "tile": TILE, "tile_pad": TILE_PAD}
    for scale in (4, 2):
        model, shapes = build(scale)
        with torch.no_grad():
            whole = model(x)
        tiled = tile_process(model, x, scale, TILE, TILE_PAD)
        tensors[f"x{scale}_whole"] = whole[0].contiguous()
        tensors[f"x{scale}_tiled"] = tiled[0].contiguous()
        meta[f"x{scale}_tensors"] = len(shapes)
        print(f"x{scale}: {len(shapes)} tensors, out {tuple(whole.shape)}, |out| max {whole.abs().max():.4f}, "
              f"whole-vs-tiled max diff {(whole - tiled).abs().max():.4f}")
    save_file(tensors, os.path.join(OUT, "rrdbnet.safetensors"), metadata={"config": json.dumps(meta)})


@torch.no_grad()
def time_fullsize(size, blocks):
    """One RealESRGAN_x4plus-shaped call (num_feat 64, num_grow_ch 32) on a size x size input,
    after a warm-up call; generated weights (the values do not change the time)."""
    import time

    model = RRDBNet(3, 3, scale=4, num_feat=64, num_block=blocks, num_grow_ch=32).eval()
    sd = model.state_dict()
    shapes = {n: tuple(t.shape) for n, t in sd.items()}
    model.load_state_dict({n: torch.from_numpy(values(n, shapes).astype(np.float32)) for n in sd})
    x = torch.rand(1, 3, size, size)
    model(x)
    t = time.perf_counter()
    model(x)
    secs = time.perf_counter() - t
    print(f"PyTorch {torch.__version__} CPU fp32, {torch.get_num_threads()} threads: x4plus ({blocks} blocks) on {size}x{size}: {secs:.2f} s")


if __name__ == "__main__":
    if "--time" in sys.argv:
        a = sys.argv
        time_fullsize(int(a[a.index("--time") + 1]), int(a[a.index("--blocks") + 1]) if "--blocks" in a else 23)
    else:
        main()
