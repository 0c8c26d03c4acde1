// The attention family's shared contract (kernels/attention.wgsl, kernels/attention_fa2.wgsl):
// Params, bindings, and row-chunk loads and stores that never touch the next row or pass the
// binding. Prelude consts: DF = D / 4, TAIL = D % 4; T the storage type.

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
