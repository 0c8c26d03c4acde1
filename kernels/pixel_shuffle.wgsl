// Pixel unshuffle (torch's `F.pixel_unshuffle(x, r)`): x [N, C, H, W] -> y [N, C*r*r, H/r, W/r]
// with y[n, c*r*r + i*r + j, oy, ox] = x[n, c, oy*r + i, ox*r + j]. One invocation per output
// element; the host binds whole tensors (Real-ESRGAN x2/x1 feed it the RGB input tile only).
// Prelude consts: WG (u32).

struct Params {
    len: u32,   // output elements
    r: u32,     // factor
    ho: u32,    // H / r
    wo: u32,    // W / r
    row: u32,   // invocations per grid row: i = gid.y * row + gid.x
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<T>;
@group(0) @binding(2) var<storage, read_write> dst: array<T>;

@compute @workgroup_size(WG)
fn unshuffle(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.row + gid.x;
    if (i >= p.len) {
        return;
    }
    let ox = i % p.wo;
    let oy = (i / p.wo) % p.ho;
    let plane = i / (p.wo * p.ho);          // n * C*r*r + c*r*r + di*r + dj
    let rr = p.r * p.r;
    let sub = plane % rr;
    let src_plane = plane / rr;             // n * C + c
    let y = oy * p.r + sub / p.r;
    let x = ox * p.r + sub % p.r;
    let w = p.wo * p.r;
    let h = p.ho * p.r;
    dst[i] = src[(src_plane * h + y) * w + x];
}
