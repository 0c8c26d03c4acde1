// Unary elementwise ops: y = act(alpha * x + beta), ACT (prelude const) as in activations.wgsl
// (prepended by the host). Arithmetic in f32.

struct Params {
    n: u32,
    row: u32,
    alpha: f32,
    beta: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> y: array<T>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * p.row + gid.x;
    if (i >= p.n) {
        return;
    }
    y[i] = T(apply_act(p.alpha * f32(x[i]) + p.beta, ACT));
}
