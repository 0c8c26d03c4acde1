// FA2 attention (GPU variant of the attention family; same contract, Params and bindings as
// kernels/attention.wgsl): O = softmax(scale * Q K^T [+ causal mask]) V per (batch, head).
//
// A workgroup owns BR query rows; each row is worked by a team of TEAM lanes (FA2's quad). Per tile
// of BC keys the workgroup stages K and V (BC x D, as f32) in workgroup memory with coalesced
// loads, then:
//   scores:  lane t of a team takes keys t, t + TEAM, ... of the tile (q row in registers);
//   softmax: the team's running max and sum in f32 (online: earlier tiles are rescaled), the
//            row max / sum across the team by `team_max` / `team_sum` (subgroup shuffles in the
//            subgroup section, workgroup memory in the workgroup section);
//   P.V:     the tile's probabilities go to workgroup memory; lane t accumulates output chunks
//            t, t + TEAM, ... (4 columns each) over the tile's keys.
// Control flow is workgroup-uniform (padding rows clamp their q row and only skip the store;
// keys past Lk are clamped and masked), as barriers and subgroup operations need.
//
// Prelude consts: D, DF = D / 4, TAIL = D % 4, D4 = ceil(D / 4) (u32), BR, BC, TEAM, WG = BR * TEAM,
// D4T = ceil(D4 / TEAM), KPL = BC / TEAMEAM (u32), CAUSAL (bool). The host appends one of the two
// `//--- reduce:` sections, which also holds the entry point.

// Params, bindings, load_q/k/v, store_o, NEG_BIG, MASKED: kernels/attention_io.wgsl.

var<workgroup> kt: array<vec4<f32>, BC * D4>;
var<workgroup> vt: array<vec4<f32>, BC * D4>;
var<workgroup> pt: array<f32, BR * BC>;


// Row r (0..BR) of workgroup `wid`, lane t (0..TEAM) of its team; `lid` indexes the cooperative
// loads and the workgroup-memory reductions.
fn fa2(wid: vec3<u32>, lid: u32, r: u32, t: u32) {
    let h = wid.y;
    let b = wid.z;
    let first = wid.x * BR;
    let row = first + r;
    let qi = p.row0 + row;
    let qbase = p.q_base + b * p.q_bstride + min(row, p.rows - 1u) * p.q_stride + h * D;
    let kb = p.k_base + b * p.k_bstride + h * D;
    let vb = p.v_base + b * p.v_bstride + h * D;
    var qr: array<vec4<f32>, D4>;
    for (var c = 0u; c < D4; c++) {
        qr[c] = load_q(qbase, c) * p.scale_log2;
    }
    var acc: array<vec4<f32>, D4T>;
    var m = NEG_BIG;
    var l = 0.0;
    var kend = p.lk;
    if (CAUSAL) {
        kend = min(p.lk, p.row0 + min(first + BR, p.rows));
    }
    for (var j0 = 0u; j0 < kend; j0 += BC) {
        for (var e = lid; e < BC * D4; e += WG) {
            let key = min(j0 + e / D4, p.lk - 1u);
            kt[e] = load_k(kb + key * p.k_stride, e % D4);
            vt[e] = load_v(vb + key * p.v_stride, e % D4);
        }
        workgroupBarrier();
        var s: array<f32, KPL>;
        var mx = m;
        for (var i = 0u; i < KPL; i++) {
            let jj = i * TEAM + t;
            var d4 = vec4<f32>(0.0);
            for (var c = 0u; c < D4; c++) {
                d4 += qr[c] * kt[jj * D4 + c];
            }
            let j = j0 + jj;
            let sc = select(dot(d4, vec4<f32>(1.0)), MASKED, j >= p.lk || (CAUSAL && j > qi));
            s[i] = sc;
            mx = max(mx, sc);
        }
        mx = team_max(mx, lid);
        let al = exp2(m - mx);
        m = mx;
        var sum = 0.0;
        for (var i = 0u; i < KPL; i++) {
            let e = exp2(s[i] - mx);
            pt[r * BC + i * TEAM + t] = e;
            sum += e;
        }
        l = l * al + team_sum(sum, lid);
        for (var c = 0u; c < D4T; c++) {
            acc[c] *= al;
        }
        workgroupBarrier();
        for (var jj = 0u; jj < BC; jj++) {
            let pe = pt[r * BC + jj];
            for (var c = 0u; c < D4T; c++) {
                // Lanes past the last chunk accumulate a valid chunk they never store.
                acc[c] += pe * vt[jj * D4 + min(c * TEAM + t, D4 - 1u)];
            }
        }
        workgroupBarrier();
    }
    if (row < p.rows) {
        let inv = 1.0 / l;
        let ob = p.o_base + b * p.o_bstride + row * p.o_stride + h * D;
        for (var c = 0u; c < D4T; c++) {
            let cc = c * TEAM + t;
            if (cc < D4) {
                store_o(ob, cc, acc[c] * inv);
            }
        }
    }
}

//--- reduce: workgroup
// Teams are TEAM consecutive invocations; the reductions go through workgroup memory.

var<workgroup> red: array<f32, WG>;

fn team_max(x: f32, lid: u32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    let base = lid / TEAM * TEAM;
    var r = red[base];
    for (var i = 1u; i < TEAM; i++) {
        r = max(r, red[base + i]);
    }
    workgroupBarrier();
    return r;
}

fn team_sum(x: f32, lid: u32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    let base = lid / TEAM * TEAM;
    var r = red[base];
    for (var i = 1u; i < TEAM; i++) {
        r += red[base + i];
    }
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    fa2(wid, lid, lid / TEAM, lid % TEAM);
}

//--- reduce: subgroup
// Teams are TEAM adjacent lanes of one subgroup (any subgroup size >= TEAM that divides WG or exceeds
// it): butterflies of subgroupShuffleXor, no barriers.

fn team_max(x: f32, lid: u32) -> f32 {
    var r = x;
    for (var off = 1u; off < TEAM; off *= 2u) {
        r = max(r, subgroupShuffleXor(r, off));
    }
    return r;
}

fn team_sum(x: f32, lid: u32) -> f32 {
    var r = x;
    for (var off = 1u; off < TEAM; off *= 2u) {
        r += subgroupShuffleXor(r, off);
    }
    return r;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sgid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) sg: u32,
) {
    // Rows by subgroup lanes, not by lid: the lid -> subgroup mapping is up to the driver.
    fa2(wid, lid, sgid * (sg / TEAM) + lane / TEAM, lane % TEAM);
}
