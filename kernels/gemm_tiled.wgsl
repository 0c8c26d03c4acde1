// Workgroup-tiled GEMM (GPU variant of the gemm family), same contract and epilogue as
// kernels/gemm.wgsl: C = act(alpha * op(A)·op(B) + bias) + R, batched by workgroup z.
//
// A workgroup computes a BM x BN block of C with NT = (BM/TM)*(BN/TN) invocations, each a
// TM x TN register tile. K advances BK at a time through two workgroup-memory buffers (double
// buffered: the next k-tile is loaded while the current one is multiplied, one barrier per
// k-tile). Global loads are vec4 (4 consecutive k of A, 4 consecutive n of B; real vec4 loads
// when `src/ops/gemm_tiled.rs` picks the aligned loader, four scalar loads otherwise).
// Invocation (tx, ty) owns rows ty + i*(BM/TM) and columns tx + j*(BN/TN): neighbouring
// invocations read neighbouring workgroup-memory words (no bank conflicts) and store
// neighbouring columns (coalesced).
//
// Prelude consts: BM, BN, BK, TM, TN (u32; BK a multiple of 4, BM % TM == BN % TN == 0),
// TRANS_A, TRANS_B, HAS_BIAS, HAS_RES (bool), ACT (u32). Rows/columns past M/N are clamped for
// loads and skipped at store; k past K loads as zero.


const NT: u32 = (BM / TM) * (BN / TN);
const TX: u32 = BN / TN;
const TY: u32 = BM / TM;

var<workgroup> sa: array<f32, 2u * BK * BM>; // [buffer][k][m]
var<workgroup> sb: array<f32, 2u * BK * BN>; // [buffer][k][n]

fn load_tiles(buf: u32, k0: u32, m0: u32, n0: u32, a_off: u32, b_off: u32, lid: u32) {
    for (var q = lid; q < BM * BK / 4u; q += NT) {
        let mi = q / (BK / 4u);
        let kq = (q % (BK / 4u)) * 4u;
        let v = load_a4(a_off, min(m0 + mi, p.m - 1u), k0 + kq);
        let s = buf * BK * BM + kq * BM + mi;
        sa[s] = v.x;
        sa[s + BM] = v.y;
        sa[s + 2u * BM] = v.z;
        sa[s + 3u * BM] = v.w;
    }
    for (var q = lid; q < BK * BN / 4u; q += NT) {
        let ki = q / (BN / 4u);
        let nq = (q % (BN / 4u)) * 4u;
        let v = load_b4(b_off, k0 + ki, n0 + nq);
        let s = buf * BK * BN + ki * BN + nq;
        sb[s] = v.x;
        sb[s + 1u] = v.y;
        sb[s + 2u] = v.z;
        sb[s + 3u] = v.w;
    }
}

@compute @workgroup_size(NT)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let a_off = wid.z * p.stride_a;
    let b_off = wid.z * p.stride_b;
    let tx = lid % TX;
    let ty = lid / TX;
    var acc: array<f32, TM * TN>; // zero-initialised
    let tiles = (p.k + BK - 1u) / BK;
    load_tiles(0u, 0u, m0, n0, a_off, b_off, lid);
    workgroupBarrier();
    for (var t = 0u; t < tiles; t++) {
        let cur = t % 2u;
        if (t + 1u < tiles) {
            load_tiles(1u - cur, (t + 1u) * BK, m0, n0, a_off, b_off, lid);
        }
        let sa0 = cur * BK * BM + ty;
        let sb0 = cur * BK * BN + tx;
        for (var kk = 0u; kk < BK; kk++) {
            var ar: array<f32, TM>;
            var br: array<f32, TN>;
            for (var i = 0u; i < TM; i++) {
                ar[i] = sa[sa0 + kk * BM + i * TY];
            }
            for (var j = 0u; j < TN; j++) {
                br[j] = sb[sb0 + kk * BN + j * TX];
            }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i * TN + j] += ar[i] * br[j];
                }
            }
        }
        workgroupBarrier();
    }
    let base = wid.z * p.stride_c;
    for (var i = 0u; i < TM; i++) {
        for (var j = 0u; j < TN; j++) {
            epilogue_store(base, m0 + ty + i * TY, n0 + tx + j * TX, acc[i * TN + j]);
        }
    }
}

//--- loads: scalar
// Any layout: four scalar loads; k past K reads zero, n past N is clamped (skipped at store).
@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read> b: array<T>;

fn ld_a(off: u32, m: u32, k: u32) -> f32 {
    if (k >= p.k) {
        return 0.0;
    }
    if (TRANS_A) {
        return f32(a[off + k * p.lda + m]);
    }
    return f32(a[off + m * p.lda + k]);
}

fn ld_b(off: u32, k: u32, n: u32) -> f32 {
    if (k >= p.k) {
        return 0.0;
    }
    let nn = min(n, p.n - 1u);
    if (TRANS_B) {
        return f32(b[off + nn * p.ldb + k]);
    }
    return f32(b[off + k * p.ldb + nn]);
}

fn load_a4(off: u32, m: u32, k: u32) -> vec4<f32> {
    return vec4<f32>(ld_a(off, m, k), ld_a(off, m, k + 1u), ld_a(off, m, k + 2u), ld_a(off, m, k + 3u));
}

fn load_b4(off: u32, k: u32, n: u32) -> vec4<f32> {
    return vec4<f32>(ld_b(off, k, n), ld_b(off, k, n + 1u), ld_b(off, k, n + 2u), ld_b(off, k, n + 3u));
}

//--- loads: vec4
// Row-major A and B with K and N multiples of 4: one vec4 load each (a quad is wholly inside
// or wholly past K / N).
@group(0) @binding(1) var<storage, read> a4: array<T4>;
@group(0) @binding(2) var<storage, read> b4: array<T4>;

fn load_a4(off: u32, m: u32, k: u32) -> vec4<f32> {
    if (k >= p.k) {
        return vec4<f32>(0.0);
    }
    return vec4<f32>(a4[(off + m * p.lda + k) / 4u]);
}

fn load_b4(off: u32, k: u32, n: u32) -> vec4<f32> {
    if (k >= p.k) {
        return vec4<f32>(0.0);
    }
    return vec4<f32>(b4[(off + k * p.ldb + min(n, p.n - 4u)) / 4u]);
}
