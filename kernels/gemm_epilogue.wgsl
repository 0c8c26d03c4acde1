// The gemm family's shared contract, prepended to every GEMM variant (gemm.wgsl, gemm_tiled,
// gemm_subgroup, gemm_coopmat): the parameters, the output/bias/residual bindings and the fused
// epilogue C = act(alpha * acc + bias[n]) + R (bias[m] with BIAS_ROWS: conv2d's channels are
// rows when it runs as a GEMM). Operands A and B (bindings 1, 2) are declared by
// each variant, as scalars or vec4.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32, // row stride of A as stored
    ldb: u32,
    ldc: u32,
    stride_a: u32, // batch strides in elements
    stride_b: u32,
    stride_c: u32,
    alpha: f32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read_write> c: array<T>;
@group(0) @binding(4) var<storage, read> bias: array<T>;
@group(0) @binding(5) var<storage, read> res: array<T>;

// Element (m, n) of the output matrix starting at `base`; rows past M and columns past N are
// skipped, so variants may compute whole tiles over the edge.
fn epilogue_store(base: u32, m: u32, n: u32, acc: f32) {
    if (m >= p.m || n >= p.n) {
        return;
    }
    var v = p.alpha * acc;
    if (HAS_BIAS) {
        v += f32(bias[select(n, m, BIAS_ROWS)]);
    }
    v = apply_act(v, ACT);
    let ci = base + m * p.ldc + n;
    if (HAS_RES) {
        v += f32(res[ci]);
    }
    c[ci] = T(v);
}
