// Batched GEMM with fused epilogue:
//   C[b, m, n] = act(alpha * sum_k A[b, m, k] * B[b, k, n] + bias[n]) + R[b, m, n]
// A is [M, K] (or [K, M] with TRANS_A), B is [K, N] (or [N, K] with TRANS_B: a PyTorch Linear
// weight). Batch strides of 0 broadcast an operand (one weight for every batch).
//
// Register blocking, no shared memory: a workgroup owns TM rows and WG*TN columns; invocation t
// owns columns n0 + t + j*WG (j < TN). Every invocation of a workgroup reads the same A element
// at the same time, so those loads are uniform (one load, broadcast), and neighbouring
// invocations read neighbouring B columns. On lavapipe, which runs invocations as SIMD lanes,
// this beat shared-memory tiling (see PLATFORM-NOTES.md).
//
// Prelude consts: TM, TN, WG (u32), TRANS_A, TRANS_B, HAS_BIAS, HAS_RES (bool), ACT (u32, as
// in activation.wgsl). Rows past M / columns past N are clamped for loads and skipped at store.

@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read> b: array<T>;

// Scalar kernel for any layout (transposed operands, K or N not multiples of 4): entry point
// `main`, unrolled by `src/ops/gemm.rs` (`scalar_main`) for a TM-row by TN-column tile.
// Invocation t of workgroup (x, y) owns rows TM*y.. and columns x*WG*TN + t + j*WG (j < TN).
// Rows past M / columns past N are clamped for loads and skipped at store. Unrolled, as below:
// besides lavapipe not unrolling loops over private arrays, Mesa 22's lavapipe stops *every*
// loop of an invocation once 65535 iterations have run in total (silently), so inner loops
// per k would cap K at a few thousand.

fn load_a(off: u32, m: u32, k: u32) -> f32 {
    if (TRANS_A) {
        return f32(a[off + k * p.lda + m]);
    }
    return f32(a[off + m * p.lda + k]);
}

fn load_b(off: u32, k: u32, n: u32) -> f32 {
    if (TRANS_B) {
        return f32(b[off + n * p.ldb + k]);
    }
    return f32(b[off + k * p.ldb + n]);
}

// Vectorised kernel for row-major A and B with K and N multiples of 4 (every SD layer). Its
// entry point `main_vec4` is unrolled for an R-row by 4*C4-column register tile by
// `src/ops/gemm.rs` (`vec4_main`) and appended here. A is read as vec4 along K and B as vec4
// along N. Invocation t of workgroup (x, y) owns rows R*y..R*y+R-1 and columns
// 4*C4*(x*WG + t)..+4*C4-1, so the A loads are the same for the whole workgroup (uniform) and
// only the B loads differ per invocation. On lavapipe a per-invocation load costs a scalar load
// per SIMD lane whatever its width while a uniform one is a single load, so a tall tile (R up to
// 256) amortises the expensive B loads; accumulators are named variables because lavapipe does
// not unroll loops over private arrays (they would live in memory, several times slower).
@group(0) @binding(1) var<storage, read> a4: array<T4>;
@group(0) @binding(2) var<storage, read> b4: array<T4>;

fn quad(a: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>) -> vec4<f32> {
    return a.x * b0 + a.y * b1 + a.z * b2 + a.w * b3;
}

fn store1(m: u32, n: u32, acc: f32) {
    epilogue_store(store_base, m, n, acc);
}

fn store4(m: u32, nc: u32, v4: vec4<f32>) {
    for (var e = 0u; e < 4u; e++) {
        epilogue_store(store_base, m, nc + e, v4[e]);
    }
}

var<private> store_base: u32;
