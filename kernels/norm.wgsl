// Normalisation kernels, statistics in f32 whatever the storage type T.
//
// Group norm (NCHW viewed as [N*G, group_len], group_len = C/G * H*W) is two dispatches so that
// big groups (SD's VAE: 16 channels of 256x256 per group) are reduced by many workgroups:
//   gn_stats: workgroup (k, g) reduces chunk k (CHUNK elements) of group g to (count, mean, M2);
//             each invocation sums (x - shift) and (x - shift)^2 with shift = its first element
//             (no cancellation when |mean| >> std), then a tree merges with Chan's formula.
//   gn_apply: workgroup (k, g) merges the group's chunk partials (uniform: every invocation the
//             same) and normalises chunk k: y = (x - mean) * rsqrt(var + eps) * gamma[c] + beta[c],
//             SiLU after if SILU == 1u.
// Layer norm (ln_main): one workgroup per row of D elements, two passes (mean, then squared
// deviations) over the row.
// The host may bind sub-ranges of x and y: x_off / y_off is the binding index of the first
// dispatched group's (row's) element 0 (negative when the binding starts at a later chunk).
// Prelude consts: WG (u32, a power of two), SILU (u32). The host compiles the group-norm and
// layer-norm halves of this file as separate modules (their bindings overlap).

struct GnParams {
    group_len: u32,
    hw: u32,       // elements per channel
    cpg: u32,      // channels per group
    groups: u32,   // G (channel group index = flat group % G)
    chunk: u32,    // elements per workgroup
    nchunks: u32,  // chunks per group
    g0: u32,       // first flat group (n * G + g) of this dispatch
    k0: u32,       // first chunk of this dispatch
    x_off: i32,
    y_off: i32,
    eps: f32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> gp: GnParams;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> part: array<vec4<f32>>; // [N*G, nchunks]
@group(0) @binding(3) var<storage, read> gamma: array<T>;
@group(0) @binding(4) var<storage, read> beta: array<T>;
@group(0) @binding(5) var<storage, read_write> y: array<T>;

var<workgroup> s_n: array<f32, WG>;
var<workgroup> s_mean: array<f32, WG>;
var<workgroup> s_m2: array<f32, WG>;

// Chan et al.: merge (na, ma, qa) and (nb, mb, qb) partial (count, mean, M2).
fn merge(a: vec3<f32>, b: vec3<f32>) -> vec3<f32> {
    let n = a.x + b.x;
    if (n == 0.0) {
        return vec3<f32>(0.0);
    }
    let d = b.y - a.y;
    let f = b.x / n;
    return vec3<f32>(n, a.y + d * f, a.z + b.z + d * d * a.x * f);
}

@compute @workgroup_size(WG)
fn gn_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = gp.k0 + wid.x;
    let gl = wid.y;
    let start = k * gp.chunk;
    let end = min(start + gp.chunk, gp.group_len);
    let base = gp.x_off + i32(gl * gp.group_len);
    var cnt = 0.0;
    var shift = 0.0;
    var s1 = 0.0;
    var s2 = 0.0;
    if (start + lid < end) {
        shift = f32(x[base + i32(start + lid)]);
    }
    for (var i = start + lid; i < end; i += WG) {
        let d = f32(x[base + i32(i)]) - shift;
        s1 += d;
        s2 += d * d;
        cnt += 1.0;
    }
    var mean = shift;
    var m2 = 0.0;
    if (cnt > 0.0) {
        mean = shift + s1 / cnt;
        m2 = max(s2 - s1 * s1 / cnt, 0.0);
    }
    s_n[lid] = cnt;
    s_mean[lid] = mean;
    s_m2[lid] = m2;
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off /= 2u) {
        if (lid < off) {
            let m = merge(vec3<f32>(s_n[lid], s_mean[lid], s_m2[lid]), vec3<f32>(s_n[lid + off], s_mean[lid + off], s_m2[lid + off]));
            s_n[lid] = m.x;
            s_mean[lid] = m.y;
            s_m2[lid] = m.z;
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        part[(gp.g0 + gl) * gp.nchunks + k] = vec4<f32>(s_n[0], s_mean[0], s_m2[0], 0.0);
    }
}

@compute @workgroup_size(WG)
fn gn_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = gp.k0 + wid.x;
    let gl = wid.y;
    let gi = gp.g0 + gl;
    var acc = vec3<f32>(0.0);
    for (var j = 0u; j < gp.nchunks; j++) {
        let q = part[gi * gp.nchunks + j];
        acc = merge(acc, q.xyz);
    }
    let mean = acc.y;
    let rstd = inverseSqrt(acc.z / max(acc.x, 1.0) + gp.eps);
    let c0 = (gi % gp.groups) * gp.cpg;
    let start = k * gp.chunk;
    let end = min(start + gp.chunk, gp.group_len);
    let xb = gp.x_off + i32(gl * gp.group_len);
    let yb = gp.y_off + i32(gl * gp.group_len);
    for (var i = start + lid; i < end; i += WG) {
        let c = c0 + i / gp.hw;
        var v = (f32(x[xb + i32(i)]) - mean) * rstd * f32(gamma[c]) + f32(beta[c]);
        if (SILU == 1u) {
            v = v / (1.0 + exp(-v));
        }
        y[yb + i32(i)] = T(v);
    }
}

// ---- layer norm (the host compiles the text after this line as its own module) ----

struct LnParams {
    d: u32,
    rows: u32,
    row_groups: u32, // workgroups per grid row: row = wid.y * row_groups + wid.x
    x_off: i32,
    y_off: i32,
    eps: f32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> lp: LnParams;
@group(0) @binding(1) var<storage, read> lx: array<T>;
@group(0) @binding(2) var<storage, read> lw: array<T>;
@group(0) @binding(3) var<storage, read> lb: array<T>;
@group(0) @binding(4) var<storage, read_write> ly: array<T>;

var<workgroup> red: array<f32, WG>;

fn reduce_sum(lid: u32, v: f32) -> f32 {
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
fn ln_main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * lp.row_groups + wid.x;
    if (row >= lp.rows) {
        return; // uniform per workgroup
    }
    let xb = lp.x_off + i32(row * lp.d);
    let yb = lp.y_off + i32(row * lp.d);
    var s = 0.0;
    for (var i = lid; i < lp.d; i += WG) {
        s += f32(lx[xb + i32(i)]);
    }
    let mean = reduce_sum(lid, s) / f32(lp.d);
    var q = 0.0;
    for (var i = lid; i < lp.d; i += WG) {
        let dv = f32(lx[xb + i32(i)]) - mean;
        q += dv * dv;
    }
    let rstd = inverseSqrt(reduce_sum(lid, q) / f32(lp.d) + lp.eps);
    for (var i = lid; i < lp.d; i += WG) {
        ly[yb + i32(i)] = T((f32(lx[xb + i32(i)]) - mean) * rstd * f32(lw[i]) + f32(lb[i]));
    }
}
