// Subgroup GEMM (variant of the gemm family), same contract and epilogue as kernels/gemm.wgsl.
//
// The register-blocked layout of kernels/gemm.wgsl (a workgroup owns TM rows, invocation t
// owns columns n0 + t + j*WG), but A is read once per subgroup instead of once per invocation:
// lane l loads A[row, k0 + l] for the workgroup's TM rows, and every lane then takes element kk
// of that chunk with subgroupShuffle. Any subgroup size works (lavapipe 8, SwiftShader 4,
// NVIDIA 32, AMD 32/64) because every invocation of the workgroup shares the same rows.
//
// Prelude consts: TM, TN, WG (u32), TRANS_A, TRANS_B, HAS_BIAS, HAS_RES (bool), ACT (u32).

@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read> b: array<T>;

fn load_a(off: u32, m: u32, k: u32) -> f32 {
    if (k >= p.k) {
        return 0.0;
    }
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

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) sg: u32,
) {
    let m0 = wid.y * TM;
    let n0 = wid.x * (WG * TN) + lid;
    let a_off = wid.z * p.stride_a;
    let b_off = wid.z * p.stride_b;
    var acc: array<f32, TM * TN>;
    var nc: array<u32, TN>;
    for (var j = 0u; j < TN; j++) {
        nc[j] = min(n0 + j * WG, p.n - 1u);
    }
    for (var k0 = 0u; k0 < p.k; k0 += sg) {
        // This lane's A element of the chunk, for each of the workgroup's rows.
        var ach: array<f32, TM>;
        for (var i = 0u; i < TM; i++) {
            ach[i] = load_a(a_off, min(m0 + i, p.m - 1u), k0 + lane);
        }
        let kn = min(sg, p.k - k0);
        for (var kk = 0u; kk < kn; kk++) {
            var bv: array<f32, TN>;
            for (var j = 0u; j < TN; j++) {
                bv[j] = load_b(b_off, k0 + kk, nc[j]);
            }
            for (var i = 0u; i < TM; i++) {
                let av = subgroupShuffle(ach[i], kk);
                for (var j = 0u; j < TN; j++) {
                    acc[i * TN + j] += av * bv[j];
                }
            }
        }
    }
    let base = wid.z * p.stride_c;
    for (var i = 0u; i < TM; i++) {
        for (var j = 0u; j < TN; j++) {
            epilogue_store(base, m0 + i, n0 + j * WG, acc[i * TN + j]);
        }
    }
}
