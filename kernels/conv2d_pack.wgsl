// conv2d weight packing: the centre tap of a [Cout, Cin, KH, KW] weight as a [Cin, Cout]
// matrix, the B operand of a convolution on a 1x1 image (where only that tap sees data) run as
// a GEMM: Y[N, Cout] = X[N, Cin] * Wc. Flat grid of Cin*Cout invocations (`row` per grid row).

struct Params {
    cin: u32,
    cout: u32,
    kk: u32,  // KH * KW
    tap: u32, // the centre tap's index in ky * KW + kx
    row: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> wt: array<T>;
@group(0) @binding(2) var<storage, read_write> wc: array<T>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.row + gid.x;
    if (i >= p.cin * p.cout) {
        return;
    }
    let ci = i / p.cout;
    let co = i % p.cout;
    wc[i] = wt[(co * p.cin + ci) * p.kk + p.tap];
}
