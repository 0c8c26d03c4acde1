// Cooperative-matrix GEMM (variant of the gemm family; tensor cores / simdgroup matrices), f16
// storage only: f16 A and B, f32 accumulation, the same epilogue as kernels/gemm.wgsl.
//
// A workgroup of WG invocations (the host picks the adapter's subgroup size, so normally one
// subgroup) computes a 32x32 block of C as four 16x16 cooperative-matrix accumulators. Should the
// driver split it into several subgroups, each computes the same four tiles and stores the same
// values (redundant, still correct): naga requires cooperative ops in uniform control flow, so
// they cannot be shared out by subgroup id.
// K advances 32 at a time: every invocation helps stage the A (32x32) and B (32x32) blocks in
// workgroup memory, zero-padded past M, N and K, so any shape and layout works, then each
// subgroup multiplies its tiles from there. C goes through workgroup memory for the epilogue,
// which runs per element with bounds as in the other variants.
//
// Prelude consts: WG (u32), TRANS_A, TRANS_B, HAS_BIAS, HAS_RES (bool), ACT (u32).
// Needs wgpu's EXPERIMENTAL_COOPERATIVE_MATRIX (Vulkan VK_KHR_cooperative_matrix with
// 16x16x16 f16 -> f32, Metal simdgroup matrices); src/ops/gemm.rs checks the adapter first.

enable wgpu_cooperative_matrix;

@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read> b: array<T>;

var<workgroup> wa: array<f16, 1024>; // [m][k], row-major 32x32
var<workgroup> wb: array<f16, 1024>; // [k][n]
var<workgroup> wc: array<f32, 1024>; // [m][n]

fn load_a(off: u32, m: u32, k: u32) -> f16 {
    if (m >= p.m || k >= p.k) {
        return f16(0.0);
    }
    if (TRANS_A) {
        return f16(a[off + k * p.lda + m]);
    }
    return f16(a[off + m * p.lda + k]);
}

fn load_b(off: u32, k: u32, n: u32) -> f16 {
    if (n >= p.n || k >= p.k) {
        return f16(0.0);
    }
    if (TRANS_B) {
        return f16(b[off + n * p.ldb + k]);
    }
    return f16(b[off + k * p.ldb + n]);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let m0 = wid.y * 32u;
    let n0 = wid.x * 32u;
    let a_off = wid.z * p.stride_a;
    let b_off = wid.z * p.stride_b;
    var acc0 = coop_mat16x16<f32, C>();
    var acc1 = coop_mat16x16<f32, C>();
    var acc2 = coop_mat16x16<f32, C>();
    var acc3 = coop_mat16x16<f32, C>();
    for (var k0 = 0u; k0 < p.k; k0 += 32u) {
        for (var e = lid; e < 1024u; e += WG) {
            let r = e / 32u;
            let q = e % 32u;
            wa[e] = load_a(a_off, m0 + r, k0 + q);
            wb[e] = load_b(b_off, k0 + r, n0 + q);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 32u; kk += 16u) {
            // Accumulator t covers rows 16*(t/2).., columns 16*(t%2)..
            acc0 = coopMultiplyAdd(coopLoadT<coop_mat16x16<f16, A>>(&wa[kk], 32u), coopLoadT<coop_mat16x16<f16, B>>(&wb[kk * 32u], 32u), acc0);
            acc1 = coopMultiplyAdd(coopLoadT<coop_mat16x16<f16, A>>(&wa[kk], 32u), coopLoadT<coop_mat16x16<f16, B>>(&wb[kk * 32u + 16u], 32u), acc1);
            acc2 = coopMultiplyAdd(coopLoadT<coop_mat16x16<f16, A>>(&wa[16u * 32u + kk], 32u), coopLoadT<coop_mat16x16<f16, B>>(&wb[kk * 32u], 32u), acc2);
            acc3 = coopMultiplyAdd(coopLoadT<coop_mat16x16<f16, A>>(&wa[16u * 32u + kk], 32u), coopLoadT<coop_mat16x16<f16, B>>(&wb[kk * 32u + 16u], 32u), acc3);
        }
        workgroupBarrier();
    }
    coopStoreT(acc0, &wc[0], 32u);
    coopStoreT(acc1, &wc[16], 32u);
    coopStoreT(acc2, &wc[16u * 32u], 32u);
    coopStoreT(acc3, &wc[16u * 32u + 16u], 32u);
    workgroupBarrier();
    let base = wid.z * p.stride_c;
    for (var e = lid; e < 1024u; e += WG) {
        epilogue_store(base, m0 + e / 32u, n0 + e % 32u, wc[e]);
    }
}
