#!/usr/bin/env python3
"""Convert an A1111 / NovelAI hypernetwork (.pt, a pickled dict) to Pigment's safetensors layout.

    python tools/convert_hypernetwork.py IN.pt OUT.safetensors [--half]

The .pt holds, per context width `dim` (768, 320, 640, 1280, ...), a list of two state dicts
(module 0 transforms the context for to_k, module 1 for to_v) with the keys of its
`torch.nn.Sequential` (`linear.{i}.weight` / `.bias`), plus settings. Written: tensors
`{dim}.{0|1}.linear.{i}.weight|bias` (the Sequential's own indices), and `__metadata__`
activation_func, activate_output, is_layer_norm, layer_structure (JSON), name. Old NovelAI
files without settings are [1, 2, 1], linear, no layer norm. torch.load uses weights_only=False
(the file is a pickle): convert only files you trust.
"""

import argparse
import json

import torch


def write_safetensors(path, tensors, meta):
    """A safetensors file with a sorted header (reproducible bytes; the library's writer orders
    metadata keys at random)."""
    header = {"__metadata__": meta}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        data = t.numpy().tobytes()
        dtype = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16"}[t.dtype]
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for b in blobs:
            f.write(b)


def convert(state, half=False):
    """(tensors, metadata) from an A1111 hypernetwork dict."""
    tensors = {}
    for dim, pair in state.items():
        if not isinstance(dim, int):
            continue
        if len(pair) != 2:
            raise SystemExit(f"width {dim}: expected 2 modules (k, v), found {len(pair)}")
        for side, sd in enumerate(pair):
            for key, t in sd.items():
                if not key.startswith("linear."):
                    raise SystemExit(f"width {dim} module {side}: unexpected key {key}")
                t = t.detach().float()
                tensors[f"{dim}.{side}.{key}"] = t.half() if half else t
    if not tensors:
        raise SystemExit("no hypernetwork modules in this file (expected integer width keys)")
    meta = {
        "activation_func": str(state.get("activation_func") or "linear"),
        "activate_output": "true" if state.get("activate_output", False) else "false",
        "is_layer_norm": "true" if state.get("is_layer_norm", False) else "false",
        "layer_structure": json.dumps([float(x) for x in (state.get("layer_structure") or [1, 2, 1])]),
    }
    if state.get("name"):
        meta["name"] = str(state["name"])
    return tensors, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--half", action="store_true", help="store the weights as F16")
    a = ap.parse_args()
    state = torch.load(a.input, map_location="cpu", weights_only=False)
    tensors, meta = convert(state, a.half)
    write_safetensors(a.output, tensors, meta)
    print(f"{a.output}: {len(tensors)} tensors, {meta}")


if __name__ == "__main__":
    main()
