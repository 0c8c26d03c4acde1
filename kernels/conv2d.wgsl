// 2-D convolution, NCHW, as an implicit GEMM: M = output channels, N = output pixels,
// K = Cin * KH * KW. Register-blocked without shared memory (faster than shared-memory tiling on
// CPU Vulkan and fine on GPUs): each invocation computes 8 output channels x 8 consecutive
// output pixels of one output row, in four mat4x4 accumulators written out by hand (CPU Vulkan
// puts local arrays indexed in loops in memory, ~100x slower). All invocations of a workgroup
// share the same 8 channels (workgroup_id.y), so weight loads are uniform.
//
// Prelude consts: KH, KW, STRIDE, PAD, WG, BIAS (0/1: add bias[co0+co]),
// RESID (0/1: add res at the output's index), ACCUM (0/1: add the value already in y, for
// input-channel chunks of a conv too big for one binding).
//
// The host may bind sub-ranges of x, w, y, res (aligned down to the storage offset alignment);
// *_off give where the chunk's element (0, 0, 0) sits in its binding (negative when the binding
// starts at a later row of the first channel).

struct Params {
    cin: u32,       // input channels in this chunk
    kstride: u32,   // weight elements per output channel (Cin_total * KH * KW)
    ci0: u32,       // first input channel of this chunk (weight column offset)
    h: u32,
    w: u32,
    x_off: i32,     // x binding index of (chunk channel 0, row 0, col 0) of batch entry 0
    x_bstride: u32, // x elements between batch entries (dispatch z)
    cout: u32,      // output channels in this chunk
    w_off: i32,     // w binding index of (chunk output channel 0, ci 0)
    co0: u32,       // first output channel of this chunk (bias index offset)
    ho: u32,
    wo: u32,
    oy0: u32,       // first output row of this band
    rows: u32,      // output rows in this band
    y_off: i32,     // y/res binding index of (chunk channel 0, row 0, col 0) of batch entry 0
    y_bstride: u32,
    ox_blocks: u32, // ceil(wo / TN)
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read> wt: array<T>;
@group(0) @binding(3) var<storage, read> bias: array<T>;
@group(0) @binding(4) var<storage, read> res: array<T>;
@group(0) @binding(5) var<storage, read_write> y: array<T>;

// Four output channels x four pixels of accumulator: column j is pixel j, row i channel i.
fn outer(wv: vec4<f32>, xv: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(wv * xv.x, wv * xv.y, wv * xv.z, wv * xv.w);
}

// Input value at column `c` of the row starting at `xr`, zero outside the image (padding).
fn ld(xr: i32, ok: bool, c: i32, wmax: i32) -> f32 {
    let v = f32(x[xr + clamp(c, 0, wmax)]);
    return select(0.0, v, ok && c >= 0 && c <= wmax);
}

// Four output pixels' inputs for one kernel tap: columns c, c + STRIDE, c + 2*STRIDE, ...
fn ld4(xr: i32, ok: bool, c: i32, wmax: i32) -> vec4<f32> {
    return vec4<f32>(ld(xr, ok, c, wmax), ld(xr, ok, c + STRIDE, wmax), ld(xr, ok, c + 2 * STRIDE, wmax), ld(xr, ok, c + 3 * STRIDE, wmax));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let blk = wid.x * WG + lid;
    let n = wid.z;
    let co_base = wid.y * 8u;
    let r_raw = blk / p.ox_blocks;
    let live = r_raw < p.rows;
    let r = min(r_raw, p.rows - 1u);
    let oy = p.oy0 + r;
    let ox0 = (blk % p.ox_blocks) * 8u;
    let ix0 = i32(ox0 * STRIDE) - PAD;
    let iy0 = i32(oy * STRIDE) - PAD;
    let hi = i32(p.h);
    let wmax = i32(p.w) - 1;

    // Weight row of each of the 8 output channels (clamped: channels past the end are computed
    // from the last one's weights and not stored).
    let kb = i32(p.ci0 * (KH * KW)) + p.w_off;
    let cl = p.cout - 1u;
    let w0 = kb + i32(min(co_base, cl) * p.kstride);
    let w1 = kb + i32(min(co_base + 1u, cl) * p.kstride);
    let w2 = kb + i32(min(co_base + 2u, cl) * p.kstride);
    let w3 = kb + i32(min(co_base + 3u, cl) * p.kstride);
    let w4 = kb + i32(min(co_base + 4u, cl) * p.kstride);
    let w5 = kb + i32(min(co_base + 5u, cl) * p.kstride);
    let w6 = kb + i32(min(co_base + 6u, cl) * p.kstride);
    let w7 = kb + i32(min(co_base + 7u, cl) * p.kstride);

    // acc_cp: channels 4c..4c+3 x pixels 4p..4p+3.
    var acc00 = mat4x4<f32>();
    var acc01 = mat4x4<f32>();
    var acc10 = mat4x4<f32>();
    var acc11 = mat4x4<f32>();
    let hw = i32(p.h * p.w);
    var xc = p.x_off + i32(n * p.x_bstride);
    var wk = 0;
    for (var ci = 0u; ci < p.cin; ci++) {
        for (var ky = 0; ky < KH; ky++) {
            let iy = iy0 + ky;
            let rowok = iy >= 0 && iy < hi;
            let xr = xc + clamp(iy, 0, hi - 1) * (wmax + 1);
            for (var kx = 0; kx < KW; kx++) {
                let a = ld4(xr, rowok, ix0 + kx, wmax);
                let b = ld4(xr, rowok, ix0 + kx + 4 * STRIDE, wmax);
                let o = wk + ky * KW + kx;
                let wa = vec4<f32>(f32(wt[w0 + o]), f32(wt[w1 + o]), f32(wt[w2 + o]), f32(wt[w3 + o]));
                let wb = vec4<f32>(f32(wt[w4 + o]), f32(wt[w5 + o]), f32(wt[w6 + o]), f32(wt[w7 + o]));
                acc00 += outer(wa, a);
                acc01 += outer(wa, b);
                acc10 += outer(wb, a);
                acc11 += outer(wb, b);
            }
        }
        xc += hw;
        wk += KH * KW;
    }

    if (!live) {
        return;
    }
    let hwo = p.ho * p.wo;
    let ybase = p.y_off + i32(n * p.y_bstride + oy * p.wo + ox0);
    for (var m = 0u; m < 8u; m++) {
        let co = co_base + m;
        if (co >= p.cout) {
            break;
        }
        var b = 0.0;
        if (BIAS == 1u) {
            b = f32(bias[p.co0 + co]);
        }
        var lo: vec4<f32>;
        var hi4: vec4<f32>;
        let mi = m % 4u;
        if (m < 4u) {
            lo = vec4<f32>(acc00[0][mi], acc00[1][mi], acc00[2][mi], acc00[3][mi]);
            hi4 = vec4<f32>(acc01[0][mi], acc01[1][mi], acc01[2][mi], acc01[3][mi]);
        } else {
            lo = vec4<f32>(acc10[0][mi], acc10[1][mi], acc10[2][mi], acc10[3][mi]);
            hi4 = vec4<f32>(acc11[0][mi], acc11[1][mi], acc11[2][mi], acc11[3][mi]);
        }
        let yrow = ybase + i32(co * hwo);
        for (var t = 0u; t < 8u; t++) {
            if (ox0 + t < p.wo) {
                let idx = yrow + i32(t);
                var v = select(hi4[t % 4u], lo[t % 4u], t < 4u) + b;
                if (RESID == 1u) {
                    v += f32(res[idx]);
                }
                if (ACCUM == 1u) {
                    v += f32(y[idx]);
                }
                y[idx] = T(v);
            }
        }
    }
}

// ---- Small images: output pixels flattened over batch, rows and columns ----
// At 1x1..16x16 outputs the row kernel above leaves most of a workgroup's invocations (64
// along one output row) and of each invocation's 8 pixels idle. Here an invocation's 8 pixels
// are consecutive in the flattened (n, oy, ox) order (p.rows = pixels in all), and a
// workgroup holds PB pixel blocks x (WG / PB) groups of 8 output channels, so small problems
// still fill whole workgroups. Same register tile and stores as `main`; x_bstride/y_bstride
// step between batch entries.

// Inputs of four output pixels for one tap: `base` holds each pixel's x index at tap (0, 0)
// of the current channel, `iy`/`ix` its input row and column at this tap.
fn ld4_flat(base: vec4<i32>, iy: vec4<i32>, ix: vec4<i32>, live: vec4<bool>) -> vec4<f32> {
    let hi = vec4<i32>(i32(p.h));
    let wi = vec4<i32>(i32(p.w));
    let zero = vec4<i32>(0);
    let ok = live & (iy >= zero) & (iy < hi) & (ix >= zero) & (ix < wi);
    let i = select(zero, base, ok);
    let v = vec4<f32>(f32(x[i.x]), f32(x[i.y]), f32(x[i.z]), f32(x[i.w]));
    return select(vec4<f32>(0.0), v, ok);
}

fn store_flat(pix: u32, co: u32, v: f32) {
    let hwo = p.ho * p.wo;
    let n = pix / hwo;
    let idx = p.y_off + i32(n * p.y_bstride + co * hwo + pix % hwo);
    var o = v;
    if (BIAS == 1u) {
        o += f32(bias[p.co0 + co]);
    }
    if (RESID == 1u) {
        o += f32(res[idx]);
    }
    if (ACCUM == 1u) {
        o += f32(y[idx]);
    }
    y[idx] = T(o);
}

@compute @workgroup_size(WG)
fn main_flat(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let blk = wid.x * PB + lid % PB;
    let co_base = (wid.y * (WG / PB) + lid / PB) * 8u;
    if (co_base >= p.cout) {
        return;
    }
    let hwo = p.ho * p.wo;
    let pix0 = blk * 8u;
    // Per pixel: batch entry, output row and column -> first input row/column and x index.
    let pa = vec4<u32>(pix0) + vec4<u32>(0u, 1u, 2u, 3u);
    let pb = pa + vec4<u32>(4u);
    let livea = pa < vec4<u32>(p.rows);
    let liveb = pb < vec4<u32>(p.rows);
    let last = vec4<u32>(p.rows - 1u);
    let qa = min(pa, last);
    let qb = min(pb, last);
    let ra = qa % vec4<u32>(hwo);
    let rb = qb % vec4<u32>(hwo);
    let s = vec4<i32>(STRIDE);
    let pad = vec4<i32>(PAD);
    let iya = vec4<i32>(ra / vec4<u32>(p.wo)) * s - pad;
    let ixa = vec4<i32>(ra % vec4<u32>(p.wo)) * s - pad;
    let iyb = vec4<i32>(rb / vec4<u32>(p.wo)) * s - pad;
    let ixb = vec4<i32>(rb % vec4<u32>(p.wo)) * s - pad;
    let wi = i32(p.w);
    let bsa = vec4<i32>(qa / vec4<u32>(hwo) * vec4<u32>(p.x_bstride));
    let bsb = vec4<i32>(qb / vec4<u32>(hwo) * vec4<u32>(p.x_bstride));
    let basea = vec4<i32>(p.x_off) + bsa + iya * wi + ixa;
    let baseb = vec4<i32>(p.x_off) + bsb + iyb * wi + ixb;

    let kb = i32(p.ci0 * (KH * KW)) + p.w_off;
    let cl = p.cout - 1u;
    let w0 = kb + i32(min(co_base, cl) * p.kstride);
    let w1 = kb + i32(min(co_base + 1u, cl) * p.kstride);
    let w2 = kb + i32(min(co_base + 2u, cl) * p.kstride);
    let w3 = kb + i32(min(co_base + 3u, cl) * p.kstride);
    let w4 = kb + i32(min(co_base + 4u, cl) * p.kstride);
    let w5 = kb + i32(min(co_base + 5u, cl) * p.kstride);
    let w6 = kb + i32(min(co_base + 6u, cl) * p.kstride);
    let w7 = kb + i32(min(co_base + 7u, cl) * p.kstride);

    var acc00 = mat4x4<f32>();
    var acc01 = mat4x4<f32>();
    var acc10 = mat4x4<f32>();
    var acc11 = mat4x4<f32>();
    let hw = i32(p.h * p.w);
    var xc = 0;
    var wk = 0;
    for (var ci = 0u; ci < p.cin; ci++) {
        for (var ky = 0; ky < KH; ky++) {
            let dy = vec4<i32>(ky);
            let row = xc + ky * wi;
            for (var kx = 0; kx < KW; kx++) {
                let dx = vec4<i32>(kx);
                let off = vec4<i32>(row + kx);
                let a = ld4_flat(basea + off, iya + dy, ixa + dx, livea);
                let b = ld4_flat(baseb + off, iyb + dy, ixb + dx, liveb);
                let o = wk + ky * KW + kx;
                let wa = vec4<f32>(f32(wt[w0 + o]), f32(wt[w1 + o]), f32(wt[w2 + o]), f32(wt[w3 + o]));
                let wb = vec4<f32>(f32(wt[w4 + o]), f32(wt[w5 + o]), f32(wt[w6 + o]), f32(wt[w7 + o]));
                acc00 += outer(wa, a);
                acc01 += outer(wa, b);
                acc10 += outer(wb, a);
                acc11 += outer(wb, b);
            }
        }
        xc += hw;
        wk += KH * KW;
    }

    // acc_cp[j][i]: pixel 4p + j, channel 4c + i. Stores unrolled by hand (no loops over the
    // accumulators: lavapipe would spill them to memory).
    for (var m = 0u; m < 8u; m++) {
        let co = co_base + m;
        if (co >= p.cout) {
            break;
        }
        let mi = m % 4u;
        var lo: vec4<f32>;
        var hi4: vec4<f32>;
        if (m < 4u) {
            lo = vec4<f32>(acc00[0][mi], acc00[1][mi], acc00[2][mi], acc00[3][mi]);
            hi4 = vec4<f32>(acc01[0][mi], acc01[1][mi], acc01[2][mi], acc01[3][mi]);
        } else {
            lo = vec4<f32>(acc10[0][mi], acc10[1][mi], acc10[2][mi], acc10[3][mi]);
            hi4 = vec4<f32>(acc11[0][mi], acc11[1][mi], acc11[2][mi], acc11[3][mi]);
        }
        for (var t = 0u; t < 8u; t++) {
            let pix = pix0 + t;
            if (pix < p.rows) {
                store_flat(pix, co, select(hi4[t % 4u], lo[t % 4u], t < 4u));
            }
        }
    }
}
