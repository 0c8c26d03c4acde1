// Flash-style attention: O = softmax(scale * Q K^T [+ causal mask]) V, per (batch, head), with an
// online softmax over key blocks so the Lq x Lk score matrix never exists.
//
// Layout: row-major rows of `*_stride` elements; head h of row i of batch b starts at element
// `*_base + b * *_bstride + i * *_stride + h * D` (heads interleaved in the last dim, as the
// linear projections produce them; a fused QKV projection is read in place via base/stride).
//
// Each invocation owns R query rows (rows lid, lid + WG, ...) with q and the output accumulator in
// registers (straight-line code, generated per (D, R, KB)); every key/value row is read straight from storage at a workgroup-uniform address
// and used by all R rows. On CPU Vulkan (lavapipe) this beats staging tiles in workgroup memory:
// there is no faster memory to stage into, and barriers cost a context switch. All control flow
// is uniform (padding rows clamp their index and only skip the store) so uniform loads stay
// scalar.
//
// Prelude consts: D (head dim, u32), DF = D / 4, TAIL = D % 4, D4 = ceil(D / 4), R (rows per
// invocation), KB (keys per online-softmax block), WG (workgroup size), CAUSAL (bool).
// Arithmetic and accumulation in f32 whatever the storage type T.

struct Params {
    rows: u32,      // query rows per batch in this dispatch
    lk: u32,        // keys per batch
    row0: u32,      // global index of this dispatch's first query row (for the causal mask)
    scale_log2: f32, // softmax scale * log2(e): scores are taken base 2
    q_base: u32,
    q_bstride: u32,
    q_stride: u32,
    k_base: u32,
    k_bstride: u32,
    k_stride: u32,
    v_base: u32,
    v_bstride: u32,
    v_stride: u32,
    o_base: u32,
    o_bstride: u32,
    o_stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<T>;
@group(0) @binding(2) var<storage, read> k: array<T>;
@group(0) @binding(3) var<storage, read> v: array<T>;
@group(0) @binding(4) var<storage, read_write> o: array<T>;

// Chunk c (4 elements) of a row starting at i; the tail chunk (c == DF) reads only D % 4
// elements and zero-fills, never touching the next row or past the binding.
fn load_q(i: u32, c: u32) -> vec4<f32> {
    let j = i + c * 4u;
    if (c < DF) {
        return vec4<f32>(f32(q[j]), f32(q[j + 1u]), f32(q[j + 2u]), f32(q[j + 3u]));
    }
    var r = vec4<f32>(f32(q[j]), 0.0, 0.0, 0.0);
    if (TAIL > 1u) { r.y = f32(q[j + 1u]); }
    if (TAIL > 2u) { r.z = f32(q[j + 2u]); }
    return r;
}

fn load_k(i: u32, c: u32) -> vec4<f32> {
    let j = i + c * 4u;
    if (c < DF) {
        return vec4<f32>(f32(k[j]), f32(k[j + 1u]), f32(k[j + 2u]), f32(k[j + 3u]));
    }
    var r = vec4<f32>(f32(k[j]), 0.0, 0.0, 0.0);
    if (TAIL > 1u) { r.y = f32(k[j + 1u]); }
    if (TAIL > 2u) { r.z = f32(k[j + 2u]); }
    return r;
}

fn load_v(i: u32, c: u32) -> vec4<f32> {
    let j = i + c * 4u;
    if (c < DF) {
        return vec4<f32>(f32(v[j]), f32(v[j + 1u]), f32(v[j + 2u]), f32(v[j + 3u]));
    }
    var r = vec4<f32>(f32(v[j]), 0.0, 0.0, 0.0);
    if (TAIL > 1u) { r.y = f32(v[j + 1u]); }
    if (TAIL > 2u) { r.z = f32(v[j + 2u]); }
    return r;
}

// Chunk c of an output row; the tail chunk writes only D % 4 elements.
fn store_o(i: u32, c: u32, val: vec4<f32>) {
    let j = i + c * 4u;
    o[j] = T(val.x);
    if (c < DF || TAIL > 1u) { o[j + 1u] = T(val.y); }
    if (c < DF || TAIL > 2u) { o[j + 2u] = T(val.z); }
    if (c < DF) { o[j + 3u] = T(val.w); }
}

const NEG_BIG: f32 = -1.0e30;
const MASKED: f32 = -3.0e38;

// The entry point is appended by src/ops/attention.rs with every loop over head-dim chunks,
// rows and keys of a block written out (see `main_source` there): lavapipe (Mesa 22) counts
// every iteration of every loop an invocation runs against one limit of 65535 and silently
// leaves all loops once it is spent, so only the loop over key blocks may stay a loop.
