// Non-finite count and finite min/max of a tensor, for the NaN / black-image guards.
// Workgroup g reduces elements [g * WG * PER, (g + 1) * WG * PER) of this dispatch's range to
// part[3 * (p_off + g) ..] = (count of NaN/inf, min, max of the finite values); the host adds
// the partials up (one readback per check). Counts are f32: exact, a workgroup sees at most
// WG * PER < 2^24 elements.
// NaN/inf is tested on the bits (exponent all ones), not with `x != x`, which a compiler may
// fold away. f16 storage converts to f32 first; the conversion keeps NaN and inf.
// Prelude consts: WG (u32, power of two), PER (u32, elements per invocation; PER < 65535).

struct Params {
    n: u32,     // elements in this dispatch
    x_off: u32, // binding index of the range's first element
    p_off: u32, // first workgroup's partial index
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> part: array<f32>;

var<workgroup> w_count: array<f32, WG>;
var<workgroup> w_min: array<f32, WG>;
var<workgroup> w_max: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let g = wid.y * nw.x + wid.x;
    let base = g * WG * PER;
    var count = 0.0;
    var lo = 3.4e38;
    var hi = -3.4e38;
    for (var k = 0u; k < PER; k++) {
        let i = base + k * WG + li;
        if (i < p.n) {
            let v = f32(x[p.x_off + i]);
            if ((bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u) {
                count += 1.0;
            } else {
                lo = min(lo, v);
                hi = max(hi, v);
            }
        }
    }
    w_count[li] = count;
    w_min[li] = lo;
    w_max[li] = hi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (li < s) {
            w_count[li] += w_count[li + s];
            w_min[li] = min(w_min[li], w_min[li + s]);
            w_max[li] = max(w_max[li], w_max[li + s]);
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        let o = 3u * (p.p_off + g);
        part[o] = w_count[0];
        part[o + 1u] = w_min[0];
        part[o + 2u] = w_max[0];
    }
}
