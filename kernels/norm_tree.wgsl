// Tree-reduction norms (GPU variants of the norm family; same parameters as kernels/norm.wgsl):
// one workgroup per group (group norm) or row (layer norm), statistics in f32 by two passes
// over it (the mean, then squared deviations from it: no E[x^2] - E[x]^2 cancellation at SD's
// |mean| ~ 1e3), each pass's per-invocation partial sums reduced by `block_sum`, then a third
// pass normalises (y = (x - mean) * rstd * gamma + beta, SiLU after if SILU == 1u). The host
// appends one `//--- reduce:` section: a workgroup-memory tree, or subgroupAdd within each
// subgroup and a sum over the subgroups' totals. Control flow is uniform (barriers).
// Prelude consts: WG (u32, a power of two), SILU (u32).

struct GnParams {
    group_len: u32,
    hw: u32,
    cpg: u32,
    groups: u32,
    chunk: u32,    // unused (one workgroup per group)
    nchunks: u32,  // unused
    g0: u32,
    k0: u32,       // unused
    x_off: i32,
    y_off: i32,
    eps: f32,
    _p0: u32,
}

struct LnParams {
    d: u32,
    rows: u32,
    row_groups: u32,
    x_off: i32,
    y_off: i32,
    eps: f32,
    _p0: u32,
    _p1: u32,
}

// Group norm binds GnParams, layer norm LnParams, at binding 0; both are 48 or 32 bytes of
// u32/f32, so one uniform declaration serves both (read through the accessors below).
@group(0) @binding(0) var<uniform> up: array<vec4<u32>, 3>;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read> gamma: array<T>;
@group(0) @binding(3) var<storage, read> beta: array<T>;
@group(0) @binding(4) var<storage, read_write> y: array<T>;

fn apply(v: f32) -> f32 {
    if (SILU == 1u) {
        return v / (1.0 + exp(-v));
    }
    return v;
}

fn gn_body(wid: vec3<u32>, lid: u32) {
    let group_len = up[0].x;
    let hw = up[0].y;
    let cpg = up[0].z;
    let groups = up[0].w;
    let g0 = up[1].z;
    let x_off = bitcast<i32>(up[2].x);
    let y_off = bitcast<i32>(up[2].y);
    let eps = bitcast<f32>(up[2].z);
    let gl = wid.x;
    let gi = g0 + gl;
    let xb = x_off + i32(gl * group_len);
    let yb = y_off + i32(gl * group_len);
    var s = 0.0;
    for (var i = lid; i < group_len; i += WG) {
        s += f32(x[xb + i32(i)]);
    }
    let mean = block_sum(s, lid) / f32(group_len);
    var q = 0.0;
    for (var i = lid; i < group_len; i += WG) {
        let d = f32(x[xb + i32(i)]) - mean;
        q += d * d;
    }
    let rstd = inverseSqrt(block_sum(q, lid) / f32(group_len) + eps);
    let c0 = (gi % groups) * cpg;
    for (var i = lid; i < group_len; i += WG) {
        let c = c0 + i / hw;
        y[yb + i32(i)] = T(apply((f32(x[xb + i32(i)]) - mean) * rstd * f32(gamma[c]) + f32(beta[c])));
    }
}

fn ln_body(wid: vec3<u32>, lid: u32) {
    let d = up[0].x;
    let rows = up[0].y;
    let row_groups = up[0].z;
    let x_off = bitcast<i32>(up[0].w);
    let y_off = bitcast<i32>(up[1].x);
    let eps = bitcast<f32>(up[1].y);
    let row = wid.y * row_groups + wid.x;
    if (row >= rows) {
        return; // uniform per workgroup
    }
    let xb = x_off + i32(row * d);
    let yb = y_off + i32(row * d);
    var s = 0.0;
    for (var i = lid; i < d; i += WG) {
        s += f32(x[xb + i32(i)]);
    }
    let mean = block_sum(s, lid) / f32(d);
    var q = 0.0;
    for (var i = lid; i < d; i += WG) {
        let dv = f32(x[xb + i32(i)]) - mean;
        q += dv * dv;
    }
    let rstd = inverseSqrt(block_sum(q, lid) / f32(d) + eps);
    for (var i = lid; i < d; i += WG) {
        y[yb + i32(i)] = T((f32(x[xb + i32(i)]) - mean) * rstd * f32(gamma[i]) + f32(beta[i]));
    }
}

//--- reduce: workgroup

var<workgroup> red: array<f32, WG>;

fn block_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off /= 2u) {
        if (lid < off) {
            red[lid] += red[lid + off];
        }
        workgroupBarrier();
    }
    let s = red[0];
    workgroupBarrier();
    return s;
}

@compute @workgroup_size(WG)
fn gn_tree(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    gn_body(wid, lid);
}

@compute @workgroup_size(WG)
fn ln_tree(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    ln_body(wid, lid);
}

//--- reduce: subgroup

var<workgroup> red: array<f32, WG>; // one total per subgroup (at most WG of them)
var<private> sg_id: u32;
var<private> sg_lane: u32;
var<private> sg_count: u32;

fn block_sum(v: f32, lid: u32) -> f32 {
    let s = subgroupAdd(v);
    if (sg_lane == 0u) {
        red[sg_id] = s;
    }
    workgroupBarrier();
    var t = 0.0;
    for (var i = 0u; i < sg_count; i++) {
        t += red[i];
    }
    workgroupBarrier();
    return t;
}

@compute @workgroup_size(WG)
fn gn_tree(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sgid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(num_subgroups) nsg: u32,
) {
    sg_id = sgid;
    sg_lane = lane;
    sg_count = nsg;
    gn_body(wid, lid);
}

@compute @workgroup_size(WG)
fn ln_tree(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sgid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(num_subgroups) nsg: u32,
) {
    sg_id = sgid;
    sg_lane = lane;
    sg_count = nsg;
    ln_body(wid, lid);
}
