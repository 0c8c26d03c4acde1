// Input gradients (dL/dx, never dL/dweight) of forward ops, for pix2pix-zero's cross-attention
// guidance (src/ops/grad.rs). Arithmetic in f32 whatever the storage type T. The host compiles
// the common part plus one section (a "---- name" comment line) as its own module (bindings differ).
// x_off-style fields: binding index of the dispatch's first row's (batch entry's) element 0.
// Prelude consts: WG (u32, a power of two), SILU (u32, norm section).

struct Params {
    len: u32,   // elements (conv, up2, heads, geglu) or rows (norm, softmax) in this dispatch
    row: u32,   // invocations (or workgroups) per grid row: i = gid.y * row + gid.x
    a: u32,
    b: u32,
    c: u32,
    d: u32,
    e: u32,
    f: u32,
    g: u32,
    h: u32,
    k: u32,
    s: u32,
    off0: i32,
    off1: i32,
    off2: i32,
    eps: f32,
    t: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

var<workgroup> red: array<vec2<f32>, WG>;

// Sum of `v` over the workgroup (every invocation gets it).
fn reduce2(lid: u32, v: vec2<f32>) -> vec2<f32> {
    red[lid] = v;
    workgroupBarrier();
    for (var o = WG / 2u; o > 0u; o /= 2u) {
        if (lid < o) {
            red[lid] += red[lid + o];
        }
        workgroupBarrier();
    }
    let s = red[0];
    workgroupBarrier();
    return s;
}

// ---- conv
// dx of y = conv2d(x, w, stride, pad): dx[n, ci, y, x] = sum over taps (ky, kx) with
// y + pad - ky = oy * stride (0 <= oy < Ho), same along x, and co of dy[n, co, oy, ox] *
// w[co, ci, ky, kx]. One invocation per dx element; this dispatch sums co in [co0, co0 + cs)
// and adds to dx if ACC (the host splits Cout for the loop limit and the bindings).
// a = Cin, b = H, c = W, d = Ho, e = Wo, f = k, g = Cout, h = co0, k = cs, s = stride,
// t = pad, off0 = dy, off1 = w, off2 = dx; ACC define.
@group(0) @binding(1) var<storage, read> cdy: array<T>;
@group(0) @binding(2) var<storage, read> cw: array<T>;
@group(0) @binding(3) var<storage, read_write> cdx: array<T>;

@compute @workgroup_size(WG)
fn conv_dx(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.row + gid.x;
    if (i >= p.len) {
        return;
    }
    let pad = i32(p.t);
    let k = i32(p.f);
    let st = i32(p.s);
    let xx = i32(i % p.c);
    let yy = i32((i / p.c) % p.b);
    let ci = (i / (p.c * p.b)) % p.a;
    let nb = i / (p.c * p.b * p.a);
    let plane = p.d * p.e;
    var acc = 0.0;
    for (var ky = 0; ky < k; ky++) {
        let ty = yy + pad - ky;
        if (ty < 0 || ty % st != 0 || ty / st >= i32(p.d)) {
            continue;
        }
        for (var kx = 0; kx < k; kx++) {
            let tx = xx + pad - kx;
            if (tx < 0 || tx % st != 0 || tx / st >= i32(p.e)) {
                continue;
            }
            let o = u32(ty / st) * p.e + u32(tx / st);
            let tap = u32(ky * k + kx);
            for (var co = p.h; co < p.h + p.k; co++) {
                let dv = f32(cdy[p.off0 + i32((nb * p.g + co) * plane + o)]);
                let wv = f32(cw[p.off1 + i32((co * p.a + ci) * p.f * p.f + tap)]);
                acc += dv * wv;
            }
        }
    }
    let di = p.off2 + i32(i);
    if (ACC == 1u) {
        acc += f32(cdx[di]);
    }
    cdx[di] = T(acc);
}

// ---- norm
// dx of group norm (a row = one group of cpg channels of hw elements) or layer norm (a row =
// one token, cpg = D, hw = 1, groups = 1). One workgroup per row, four passes over it:
// mean, rstd (two-pass variance, biased), sums of h = dy * act'(a) * gamma and h * xhat, then
// dx = rstd * (h - mean(h) - xhat * mean(h * xhat)), a = xhat * gamma + beta the pre-activation.
// len = rows, a = row length, b = hw, c = cpg, d = groups, e = first flat row (n * G + g);
// off0 = x, off1 = dy, off2 = dx.
@group(0) @binding(1) var<storage, read> nx: array<T>;
@group(0) @binding(2) var<storage, read> ndy: array<T>;
@group(0) @binding(3) var<storage, read> gamma: array<T>;
@group(0) @binding(4) var<storage, read> beta: array<T>;
@group(0) @binding(5) var<storage, read_write> ndx: array<T>;

// dL/d(pre-activation) from dL/dy: SiLU'(a) = s (1 + a (1 - s)), s = sigmoid(a).
fn act_grad(a: f32, g: f32) -> f32 {
    if (SILU == 1u) {
        let s = 1.0 / (1.0 + exp(-a));
        return g * s * (1.0 + a * (1.0 - s));
    }
    return g;
}

@compute @workgroup_size(WG)
fn norm_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * p.row + wid.x;
    if (r >= p.len) {
        return; // uniform per workgroup
    }
    let n = p.a;
    let c0 = ((p.e + r) % p.d) * p.c;
    let xb = p.off0 + i32(r * n);
    let gb = p.off1 + i32(r * n);
    var s = 0.0;
    for (var i = lid; i < n; i += WG) {
        s += f32(nx[xb + i32(i)]);
    }
    let mean = reduce2(lid, vec2<f32>(s, 0.0)).x / f32(n);
    var q = 0.0;
    for (var i = lid; i < n; i += WG) {
        let dv = f32(nx[xb + i32(i)]) - mean;
        q += dv * dv;
    }
    let rstd = inverseSqrt(reduce2(lid, vec2<f32>(q, 0.0)).x / f32(n) + p.eps);
    var acc = vec2<f32>(0.0);
    for (var i = lid; i < n; i += WG) {
        let ch = c0 + i / p.b;
        let xh = (f32(nx[xb + i32(i)]) - mean) * rstd;
        let gm = f32(gamma[ch]);
        let h = act_grad(xh * gm + f32(beta[ch]), f32(ndy[gb + i32(i)])) * gm;
        acc += vec2<f32>(h, h * xh);
    }
    let m = reduce2(lid, acc) / f32(n);
    for (var i = lid; i < n; i += WG) {
        let ch = c0 + i / p.b;
        let xh = (f32(nx[xb + i32(i)]) - mean) * rstd;
        let gm = f32(gamma[ch]);
        let h = act_grad(xh * gm + f32(beta[ch]), f32(ndy[gb + i32(i)])) * gm;
        ndx[p.off2 + i32(r * n + i)] = T(rstd * (h - m.x - xh * m.y));
    }
}

// ---- softmax
// ds = p * (dp - sum_j p_j dp_j) per row of a elements; one workgroup per row.
// len = rows, a = row length; off0 = p, off1 = dp, off2 = ds.
@group(0) @binding(1) var<storage, read> sp: array<T>;
@group(0) @binding(2) var<storage, read> sdp: array<T>;
@group(0) @binding(3) var<storage, read_write> sds: array<T>;

@compute @workgroup_size(WG)
fn softmax_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * p.row + wid.x;
    if (r >= p.len) {
        return; // uniform per workgroup
    }
    let n = p.a;
    var s = 0.0;
    for (var i = lid; i < n; i += WG) {
        s += f32(sp[p.off0 + i32(r * n + i)]) * f32(sdp[p.off1 + i32(r * n + i)]);
    }
    let dot = reduce2(lid, vec2<f32>(s, 0.0)).x;
    for (var i = lid; i < n; i += WG) {
        let pv = f32(sp[p.off0 + i32(r * n + i)]);
        sds[p.off2 + i32(r * n + i)] = T(pv * (f32(sdp[p.off1 + i32(r * n + i)]) - dot));
    }
}

// ---- geglu
// x [rows, 2F] = hidden | gate, y = hidden * gelu(gate) (the forward's erf_approx GELU):
// dhidden = dy * gelu(g), dgate = dy * hidden * gelu'(g), gelu'(g) = Phi(g) + g * phi(g).
// One invocation per (row, c < F); len = rows * F, a = F; off0 = x, off1 = dy, off2 = dx.
@group(0) @binding(1) var<storage, read> gx: array<T>;
@group(0) @binding(2) var<storage, read> gdy: array<T>;
@group(0) @binding(3) var<storage, read_write> gdx: array<T>;

@compute @workgroup_size(WG)
fn geglu_dx(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.row + gid.x;
    if (i >= p.len) {
        return;
    }
    let f = p.a;
    let r = i / f;
    let c = i % f;
    let xi = i32(r * 2u * f + c);
    let hv = f32(gx[p.off0 + xi]);
    let g = f32(gx[p.off0 + xi + i32(f)]);
    let dy = f32(gdy[p.off1 + i32(i)]);
    let cdf = 0.5 * (1.0 + erf_approx(g * 0.7071067811865476));
    let pdf = 0.3989422804014327 * exp(-0.5 * g * g);
    gdx[p.off2 + xi] = T(dy * g * cdf);
    gdx[p.off2 + xi + i32(f)] = T(dy * hv * (cdf + g * pdf));
}

// ---- up2
// Adjoint of nearest 2x upsampling: dx[r, c] = sum of dy's 2x2 block, NCHW viewed as rows of W
// (dx) and 2W (dy). One invocation per dx element; len = dx elements, a = W; off0 = dy, off1 = dx.
@group(0) @binding(1) var<storage, read> udy: array<T>;
@group(0) @binding(2) var<storage, read_write> udx: array<T>;

@compute @workgroup_size(WG)
fn up2_dx(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.row + gid.x;
    if (i >= p.len) {
        return;
    }
    let r = i / p.a;
    let c = i % p.a;
    let o = p.off0 + i32(4u * r * p.a + 2u * c);
    let w2 = i32(2u * p.a);
    let v = f32(udy[o]) + f32(udy[o + 1]) + f32(udy[o + w2]) + f32(udy[o + w2 + 1]);
    udx[p.off1 + i32(i)] = T(v);
}

// ---- heads
// Token-major [B, L, row stride b] columns c + h * D + j  <->  head-major [B * H, L, D].
// One invocation per head-major element i = ((bb * H + h) * L + l) * D + j of this dispatch's
// batch entries; len = elements, a = H, d = D, e = L, b = row stride, c = first column;
// off0 = token-major index of the dispatch's first batch entry, off1 = head-major index.
// to_heads reads token-major (binding 1) into head-major (2); from_heads the reverse.
@group(0) @binding(1) var<storage, read> hsrc: array<T>;
@group(0) @binding(2) var<storage, read_write> hdst: array<T>;

fn token_index(i: u32) -> i32 {
    let j = i % p.d;
    let l = (i / p.d) % p.e;
    let h = (i / (p.d * p.e)) % p.a;
    let bb = i / (p.d * p.e * p.a);
    return p.off0 + i32((bb * p.e + l) * p.b + p.c + h * p.d + j);
}

@compute @workgroup_size(WG)
fn to_heads(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.row + gid.x;
    if (i >= p.len) {
        return;
    }
    hdst[p.off1 + i32(i)] = hsrc[token_index(i)];
}

@compute @workgroup_size(WG)
fn from_heads(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.row + gid.x;
    if (i >= p.len) {
        return;
    }
    hdst[token_index(i)] = hsrc[p.off1 + i32(i)];
}

// ---- flip
// w [Cout, Cin, k, k] -> w' [Cin, Cout, k, k] with w'[ci, co, ky, kx] = w[co, ci, k-1-ky, k-1-kx]:
// a stride-1 convolution's input gradient is the convolution of dy with w' (padding k-1-p).
// One invocation per w' element; len = elements, a = Cin, b = Cout, f = k.
@group(0) @binding(1) var<storage, read> fsrc: array<T>;
@group(0) @binding(2) var<storage, read_write> fdst: array<T>;

@compute @workgroup_size(WG)
fn flip(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.row + gid.x;
    if (i >= p.len) {
        return;
    }
    let kk = p.f * p.f;
    let tap = i % kk;
    let co = (i / kk) % p.b;
    let ci = i / (kk * p.b);
    fdst[i] = fsrc[(co * p.a + ci) * kk + (kk - 1u - tap)];
}
