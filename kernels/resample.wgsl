// Resampling and copies for NCHW tensors.
//   up2:  nearest-neighbour 2x upsampling. NCHW viewed as rows of W: output row R comes from
//         input row R / 2 (Ho = 2H, so planes line up), so the host splits big tensors by row
//         ranges. One invocation per input element writes its 2x2 output block.
//   copy: dst[dst_off + z*dst_stride + i] = src[src_off + z*src_stride + i] for i < len,
//         z = workgroup_id.z (channel concatenation: one copy per source, z over the batch).
// *_off: binding index of the chunk's first element (bindings start aligned down).
// Prelude consts: WG (u32).

struct Params {
    len: u32,   // up2: input elements in this chunk; copy: elements per z
    w: u32,     // up2: input row width
    row: u32,   // invocations per grid row: i = gid.y * row + gid.x
    src_off: i32,
    src_stride: u32,
    dst_off: i32,
    dst_stride: u32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<T>;
@group(0) @binding(2) var<storage, read_write> dst: array<T>;

@compute @workgroup_size(WG)
fn up2(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.row + gid.x;
    if (i >= p.len) {
        return;
    }
    let r = i / p.w;
    let c = i % p.w;
    let v = src[p.src_off + i32(i)];
    let o = p.dst_off + i32(2u * r * 2u * p.w + 2u * c);
    let w2 = i32(2u * p.w);
    dst[o] = v;
    dst[o + 1] = v;
    dst[o + w2] = v;
    dst[o + w2 + 1] = v;
}

// resize: nearest-neighbour resize to any size, as torch's `interpolate(size=…, mode="nearest")`
// (source index floor(dst · in / out), in integers). One invocation per output element; the
// fields mean: len = output elements, w = W, src_stride = H, dst_stride = Wo, _p0 = Ho.
@compute @workgroup_size(WG)
fn resize(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.row + gid.x;
    if (i >= p.len) {
        return;
    }
    let wo = p.dst_stride;
    let ho = p._p0;
    let plane = i / (ho * wo);
    let rem = i % (ho * wo);
    let sy = (rem / wo) * p.src_stride / ho;
    let sx = (rem % wo) * p.w / wo;
    dst[p.dst_off + i32(i)] = src[p.src_off + i32(plane * p.src_stride * p.w + sy * p.w + sx)];
}

@compute @workgroup_size(WG)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.row + gid.x;
    if (i >= p.len) {
        return;
    }
    let z = gid.z;
    dst[p.dst_off + i32(z * p.dst_stride + i)] = src[p.src_off + i32(z * p.src_stride + i)];
}

// transpose: per batch z, dst[j * M + i] = src[i * N + j] for an M x N matrix (M = p.len,
// N = p.w): NCHW [B, C, HW] <-> token-major [B, HW, C] around the UNet's and VAE's attention.
// 16x16 invocations per workgroup, gid.x over N and gid.y over M.
@compute @workgroup_size(16, 16)
fn transpose(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let i = gid.y;
    if (i >= p.len || j >= p.w) {
        return;
    }
    let base = gid.z * p.len * p.w;
    dst[p.dst_off + i32(base + j * p.len + i)] = src[p.src_off + i32(base + i * p.w + j)];
}
