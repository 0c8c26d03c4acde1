// conv2d as an implicit GEMM (variant `igemm` of the conv2d family) on the gemm family's
// workgroup-tiled core: `src/ops/conv_variants.rs` appends these loaders to the body of
// kernels/gemm_tiled.wgsl (tiles in workgroup memory, double buffering, TM x TN register
// tile, the shared epilogue with BIAS_ROWS). Per batch entry (workgroup z):
//   Y[co, pixel] = sum_k W[co, k] * im2col(x)[k, pixel] + bias[co] + R[co, pixel]
// with K = Cin*KH*KW in the weights' stored order (ci, ky, kx): the A tile reads weight rows
// as checkpoints store them (vec4 where K % 4 == 0), and the B tile gathers, per (k, pixel),
// the input value that tap reads, zero outside the image (the padding). The output is NCHW
// as stored, so the epilogue writes rows of channels.
//
// The gemm Params fields as this kernel uses them: m = Cout, n = Ho*Wo, k = Cin*KH*KW,
// lda = K, ldb = W (input width), ldc = Ho*Wo, stride_a = 0, stride_b = Cin*H*W (x per batch
// entry), stride_c = Cout*Ho*Wo, _p0 = H, _p1 = Wo. Prelude consts KH, KW (u32), STRIDE,
// PAD (i32), with the tiled core's BM, BN, BK, TM, TN.

@group(0) @binding(2) var<storage, read> xin: array<T>;

// Input value tap (ky, kx) of output pixel `n` reads from channel plane `plane`.
fn tap(plane: u32, ky: i32, kx: i32, n: u32) -> f32 {
    let pix = min(n, p.n - 1u);
    let iy = i32(pix / p._p1) * STRIDE + ky - PAD;
    let ix = i32(pix % p._p1) * STRIDE + kx - PAD;
    let ok = iy >= 0 && iy < i32(p._p0) && ix >= 0 && ix < i32(p.ldb);
    let i = select(0u, plane + u32(iy) * p.ldb + u32(ix), ok);
    return select(0.0, f32(xin[i]), ok);
}

// im2col(x)[k, n..n+4] of the batch entry at `off`; k past K reads zero.
fn load_b4(off: u32, k: u32, n: u32) -> vec4<f32> {
    if (k >= p.k) {
        return vec4<f32>(0.0);
    }
    let ci = k / (KH * KW);
    let t = k % (KH * KW);
    let ky = i32(t / KW);
    let kx = i32(t % KW);
    let plane = off + ci * p._p0 * p.ldb;
    return vec4<f32>(tap(plane, ky, kx, n), tap(plane, ky, kx, n + 1u), tap(plane, ky, kx, n + 2u), tap(plane, ky, kx, n + 3u));
}

//--- weights: scalar
@group(0) @binding(1) var<storage, read> wt: array<T>;

fn ld_w(m: u32, k: u32) -> f32 {
    if (k >= p.k) {
        return 0.0;
    }
    return f32(wt[m * p.lda + k]);
}

// W[m, k..k+4]; k past K reads zero.
fn load_a4(off: u32, m: u32, k: u32) -> vec4<f32> {
    return vec4<f32>(ld_w(m, k), ld_w(m, k + 1u), ld_w(m, k + 2u), ld_w(m, k + 3u));
}

//--- weights: vec4
// K a multiple of 4: a quad is wholly inside or wholly past K.
@group(0) @binding(1) var<storage, read> wt4: array<T4>;

fn load_a4(off: u32, m: u32, k: u32) -> vec4<f32> {
    if (k >= p.k) {
        return vec4<f32>(0.0);
    }
    return vec4<f32>(wt4[(m * p.lda + k) / 4u]);
}
