// Softmax over the last dimension, y = exp(s - max(s)) / sum(exp(s - max(s))) with s = scale * x,
// and GEGLU. Arithmetic in f32 whatever the storage type T.
//
// The host compiles one section of this file at a time (after the common part), because the
// sections' bindings differ:
//   rows:     softmax_small  one invocation per row (short rows: no barriers);
//             softmax_rows   one workgroup per row.
//   segments: long rows are cut into segments of `seg` elements:
//             softmax_stats  workgroup (k, r) reduces segment k of row r to (max, sum exp(s - max));
//             softmax_apply  workgroup (k, r) merges row r's segment partials (a uniform loop) and
//                            writes segment k.
//   geglu:    y[r, c] = x[r, c] * gelu_erf(x[r, F + c]) (diffusers' GEGLU: hidden, gate = chunk(2)).
//
// Lavapipe (Mesa 22) stops every loop of an invocation once 65535 loop iterations have run in it,
// so the host bounds each invocation's trip counts: rows / segments of at most SEG elements per
// workgroup (SEG / WG iterations per pass), short rows of at most SMALL elements per invocation.
//
// Each invocation keeps an online (max m, sum l): a new value v with d = v - m either rescales
// (d > 0: l = l * exp(-d) + 1, m = v) or adds exp(d); one exp per element either way.
// The host may bind sub-ranges: x_off / y_off are the binding indices of the dispatch's first
// row's element 0 (negative when the binding starts at a later segment of that row).
// Prelude consts: WG (u32, power of two).

struct Params {
    n: u32,          // row length
    rows: u32,       // rows in this dispatch
    row_groups: u32, // grid x extent (workgroups, or invocations for softmax_small): row = y * row_groups + x
    seg: u32,        // segment length (segments section)
    nsegs: u32,      // segments per row
    k0: u32,         // first segment of this dispatch
    x_off: i32,
    y_off: i32,
    p_off: u32,      // part binding index (in pairs) of this dispatch's first row's segment 0
    scale: f32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const NEG: f32 = -3.0e38;

fn online(ml: vec2<f32>, v: f32) -> vec2<f32> {
    let d = v - ml.x;
    let e = exp(-abs(d));
    return select(vec2<f32>(ml.x, ml.y + e), vec2<f32>(v, ml.y * e + 1.0), d > 0.0);
}

fn merge2(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let m = max(a.x, b.x);
    return vec2<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

// ---- rows
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> y: array<T>;

var<workgroup> red_m: array<f32, WG>;
var<workgroup> red_l: array<f32, WG>;

@compute @workgroup_size(WG)
fn softmax_small(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.y * p.row_groups + gid.x;
    if (row >= p.rows) {
        return;
    }
    let xb = p.x_off + i32(row * p.n);
    let yb = p.y_off + i32(row * p.n);
    var ml = vec2<f32>(NEG, 0.0);
    for (var i = 0u; i < p.n; i++) {
        ml = online(ml, p.scale * f32(x[xb + i32(i)]));
    }
    let inv = 1.0 / ml.y;
    for (var i = 0u; i < p.n; i++) {
        y[yb + i32(i)] = T(exp(p.scale * f32(x[xb + i32(i)]) - ml.x) * inv);
    }
}

@compute @workgroup_size(WG)
fn softmax_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * p.row_groups + wid.x;
    if (row >= p.rows) {
        return; // uniform per workgroup
    }
    let xb = p.x_off + i32(row * p.n);
    let yb = p.y_off + i32(row * p.n);
    var ml = vec2<f32>(NEG, 0.0);
    for (var i = lid; i < p.n; i += WG) {
        ml = online(ml, p.scale * f32(x[xb + i32(i)]));
    }
    red_m[lid] = ml.x;
    red_l[lid] = ml.y;
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off /= 2u) {
        if (lid < off) {
            let r = merge2(vec2<f32>(red_m[lid], red_l[lid]), vec2<f32>(red_m[lid + off], red_l[lid + off]));
            red_m[lid] = r.x;
            red_l[lid] = r.y;
        }
        workgroupBarrier();
    }
    let m = red_m[0];
    let inv = 1.0 / red_l[0];
    for (var i = lid; i < p.n; i += WG) {
        y[yb + i32(i)] = T(exp(p.scale * f32(x[xb + i32(i)]) - m) * inv);
    }
}

// ---- segments
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> part: array<f32>; // (max, sum) pairs, [rows, nsegs]
@group(0) @binding(3) var<storage, read_write> y: array<T>;

var<workgroup> red_m: array<f32, WG>;
var<workgroup> red_l: array<f32, WG>;

@compute @workgroup_size(WG)
fn softmax_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = p.k0 + wid.x;
    let row = wid.y;
    let start = k * p.seg;
    let end = min(start + p.seg, p.n);
    let xb = p.x_off + i32(row * p.n);
    var ml = vec2<f32>(NEG, 0.0);
    for (var i = start + lid; i < end; i += WG) {
        ml = online(ml, p.scale * f32(x[xb + i32(i)]));
    }
    red_m[lid] = ml.x;
    red_l[lid] = ml.y;
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off /= 2u) {
        if (lid < off) {
            let r = merge2(vec2<f32>(red_m[lid], red_l[lid]), vec2<f32>(red_m[lid + off], red_l[lid + off]));
            red_m[lid] = r.x;
            red_l[lid] = r.y;
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let pi = 2u * (p.p_off + row * p.nsegs + k);
        part[pi] = red_m[0];
        part[pi + 1u] = red_l[0];
    }
}

@compute @workgroup_size(WG)
fn softmax_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = p.k0 + wid.x;
    let row = wid.y;
    var ml = vec2<f32>(NEG, 0.0);
    let pb = 2u * (p.p_off + row * p.nsegs);
    for (var j = 0u; j < p.nsegs; j++) {
        ml = merge2(ml, vec2<f32>(part[pb + 2u * j], part[pb + 2u * j + 1u]));
    }
    let inv = 1.0 / ml.y;
    let start = k * p.seg;
    let end = min(start + p.seg, p.n);
    let xb = p.x_off + i32(row * p.n);
    let yb = p.y_off + i32(row * p.n);
    for (var i = start + lid; i < end; i += WG) {
        y[yb + i32(i)] = T(exp(p.scale * f32(x[xb + i32(i)]) - ml.x) * inv);
    }
}

// ---- geglu
// Params reused: n = F (output row length), rows = rows in this dispatch, row_groups = threads per
// grid row, seg = columns in this dispatch, k0 = 2F (input row stride), x_off / p_off / y_off:
// binding indices of the first row's hidden / gate / output column 0 of this dispatch.
@group(0) @binding(1) var<storage, read> xh: array<T>;
@group(0) @binding(2) var<storage, read> xg: array<T>;
@group(0) @binding(3) var<storage, read_write> gy: array<T>;

@compute @workgroup_size(WG)
fn geglu(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.row_groups + gid.x;
    if (i >= p.rows * p.seg) {
        return;
    }
    let r = i / p.seg;
    let c = i % p.seg;
    let hv = f32(xh[p.x_off + i32(r * p.k0 + c)]);
    let g = f32(xg[i32(p.p_off) + i32(r * p.k0 + c)]);
    let gel = 0.5 * g * (1.0 + erf_approx(g * 0.7071067811865476));
    gy[p.y_off + i32(r * p.n + c)] = T(hv * gel);
}
