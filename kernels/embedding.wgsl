// Embedding row gather: out[t, d] = table[ids[t], d] (+ pos[t, d]).
// The host splits a table bigger than one storage binding into row ranges [v0, v0 + vrows): each
// dispatch writes only the tokens whose id falls in its range, so every output row is written
// exactly once. Tokens may be split into ranges too (out / pos / ids bound as sub-ranges).
// No loops. Prelude consts: WG (u32), POS (0/1: add the position row of each token).

struct Params {
    n: u32,        // tokens * D in this dispatch
    d: u32,        // embedding width
    row: u32,      // invocations per grid row: i = gid.y * row + gid.x
    v0: u32,       // first table row in the table binding
    vrows: u32,    // table rows in the table binding
    t_off: i32,    // table binding index of row v0, element 0
    id_off: u32,   // ids binding index of this dispatch's first token
    pos_off: i32,  // pos binding index of this dispatch's first token's row
    out_off: i32,  // out binding index of this dispatch's first token's row
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<T>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<T>;
@group(0) @binding(4) var<storage, read> pos: array<T>; // the table again when POS == 0u

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.row + gid.x;
    if (i >= p.n) {
        return;
    }
    let t = i / p.d;
    let c = i % p.d;
    let id = ids[p.id_off + t];
    if (id < p.v0 || id >= p.v0 + p.vrows) {
        return;
    }
    var v = f32(table[p.t_off + i32((id - p.v0) * p.d + c)]);
    if (POS == 1u) {
        v += f32(pos[p.pos_off + i32(i)]);
    }
    out[p.out_off + i32(i)] = T(v);
}
