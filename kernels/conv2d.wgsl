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
