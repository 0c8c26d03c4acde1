//! Batched GEMM with transposes, bias, activation and residual fused (`kernels/gemm.wgsl`).

use super::elementwise::Activation;
use crate::error::{shape_err, Error, Result};
use crate::gpu::{Binding, Context, KernelSpec, Tensor, Work};
use bytemuck::{Pod, Zeroable};

/// The epilogue every GEMM variant shares (parameters, output bindings, bias/activation/residual).
pub(crate) const GEMM_EPILOGUE: &str = concat!(include_str!("../../kernels/activations.wgsl"), include_str!("../../kernels/gemm_epilogue.wgsl"));
const GEMM: &str = concat!(include_str!("../../kernels/activations.wgsl"), include_str!("../../kernels/gemm_epilogue.wgsl"), include_str!("../../kernels/gemm.wgsl"));

/// Loop iterations an invocation may run on Mesa 22's lavapipe (its loop limiter), with margin
/// for the store loops.
pub const LAVAPIPE_MAX_LOOP: usize = 60_000;

#[derive(Clone, Copy)]
pub struct GemmOpts<'a> {
    /// A is stored [.., K, M].
    pub trans_a: bool,
    /// B is stored [.., N, K] (a PyTorch `Linear` weight).
    pub trans_b: bool,
    pub alpha: f32,
    /// Added per output column, before the activation.
    pub bias: Option<&'a Tensor>,
    pub act: Activation,
    /// Added after the activation; same shape as the output.
    pub residual: Option<&'a Tensor>,
}

impl Default for GemmOpts<'_> {
    fn default() -> Self {
        GemmOpts { trans_a: false, trans_b: false, alpha: 1.0, bias: None, act: Activation::Identity, residual: None }
    }
}

/// Register tile of one invocation (TM rows x TN columns) and invocations per workgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    pub tm: u32,
    pub tn: u32,
    pub wg: u32,
}

impl Tile {
    /// The tile for a problem on this adapter; `PIGMENT_GEMM_TILE=TMxTNxWG` overrides (tuning).
    /// For the vec4 kernel TN must be a multiple of 4 (columns per invocation).
    pub fn choose(ctx: &Context, m: usize, n: usize, vec4: bool) -> Tile {
        if let Some(t) = std::env::var("PIGMENT_GEMM_TILE").ok().and_then(|s| Tile::parse(&s)) {
            if !vec4 || t.tn % 4 == 0 {
                return t;
            }
        }
        let cpu = ctx.info.device_type == wgpu::DeviceType::Cpu;
        match (vec4, cpu) {
            // Software Vulkan: every load costs a scalar load per SIMD lane, so the tile that
            // loads least per multiply-add. Measured on lavapipe (4096x1280x320 f32, CPU time):
            // 16x16 ~ 64x8 > 32x8 > 16x8 > 8x8 (1.9x); taller tiles compile for many seconds.
            (true, true) => Tile { tm: (m.next_power_of_two() as u32).clamp(4, 16), tn: 16, wg: 8 },
            // GPUs: a conventional 8x8 register tile and enough invocations to fill the machine.
            (true, false) => Tile { tm: 8, tn: 8, wg: 64 },
            // Narrow outputs (attention heads, 4-channel latents) waste most lanes of a wide tile.
            (false, _) if n <= 64 => Tile { tm: 8, tn: 1, wg: 64 },
            (false, _) => Tile { tm: 16, tn: 4, wg: 64 },
        }
    }

    pub fn parse(s: &str) -> Option<Tile> {
        let v: Vec<u32> = s.split('x').filter_map(|p| p.parse().ok()).collect();
        match v[..] {
            [tm, tn, wg] if tm > 0 && tn > 0 && wg > 0 => Some(Tile { tm, tn, wg }),
            _ => None,
        }
    }
}

/// A GEMM problem after batch folding: what a variant is chosen and tuned for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Problem {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub dtype: crate::DType,
}

impl Problem {
    /// Row-major operands whose rows stay 16-byte aligned: vec4 loads apply.
    pub fn vec4(&self) -> bool {
        !self.trans_a && !self.trans_b && self.k % 4 == 0 && self.n % 4 == 0
    }
}

/// The GEMM kernel variants (one family, `gemm`). Every variant fuses the same epilogue and
/// runs under the same splitting; which one runs is chosen by measurement
/// ([`super::gemm_tune`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `kernels/gemm.wgsl`: register-blocked, no workgroup memory. The CPU-adapter kernel.
    Register(Tile),
    /// `kernels/gemm_tiled.wgsl`: workgroup-memory tiles, double-buffered.
    Tiled(super::gemm_variants::Blocking),
    /// `kernels/gemm_subgroup.wgsl`: register-blocked with A shared by subgroup shuffles
    /// (TM rows x TN columns per invocation, WG invocations).
    Subgroup(Tile),
    /// `kernels/gemm_coopmat.wgsl`: 16x16 f16 cooperative matrices, f32 accumulation.
    CoopMat,
}

impl Kernel {
    /// Stable name (`pigment adapters`, the tuning cache, selftest lines): `register:16x16x8`,
    /// `tiled:64x64x16:4x4`, `subgroup:4x4x64`, `coopmat`.
    pub fn name(&self) -> String {
        match self {
            Kernel::Register(t) => format!("register:{}x{}x{}", t.tm, t.tn, t.wg),
            Kernel::Tiled(b) => format!("tiled:{}x{}x{}:{}x{}", b.bm, b.bn, b.bk, b.tm, b.tn),
            Kernel::Subgroup(t) => format!("subgroup:{}x{}x{}", t.tm, t.tn, t.wg),
            Kernel::CoopMat => "coopmat".into(),
        }
    }

    pub fn parse(s: &str) -> Option<Kernel> {
        let (family, rest) = s.split_once(':').unwrap_or((s, ""));
        match family {
            "register" => Tile::parse(rest).map(Kernel::Register),
            "subgroup" => Tile::parse(rest).map(Kernel::Subgroup),
            "tiled" => super::gemm_variants::Blocking::parse(rest).map(Kernel::Tiled),
            "coopmat" if rest.is_empty() => Some(Kernel::CoopMat),
            _ => None,
        }
    }

    /// The family part of the name (`register`, `tiled`, ...).
    pub fn family(&self) -> &'static str {
        match self {
            Kernel::Register(_) => "register",
            Kernel::Tiled(_) => "tiled",
            Kernel::Subgroup(_) => "subgroup",
            Kernel::CoopMat => "coopmat",
        }
    }

    /// Why this adapter or problem cannot run the variant (None: it can).
    pub fn unsupported(&self, ctx: &Context, p: &Problem) -> Option<String> {
        match self {
            Kernel::Register(_) => None,
            _ => super::gemm_variants::unsupported(self, ctx, p),
        }
    }

    /// Loop iterations one invocation runs (lavapipe's limiter counts them all).
    pub fn loop_iters(&self, p: &Problem) -> usize {
        match self {
            // Only the k loop iterates: the register tile is unrolled.
            Kernel::Register(t) => if register_vec4(p, *t) { p.k / 4 } else { p.k },
            _ => super::gemm_variants::loop_iters(self, p),
        }
    }

    /// Output rows and columns one workgroup covers.
    pub fn block(&self, p: &Problem) -> (usize, usize) {
        match self {
            Kernel::Register(t) => (t.tm as usize, (t.wg * t.tn) as usize),
            _ => super::gemm_variants::block(self, p),
        }
    }

    /// The kernel and its tile constants (the op adds the layout and epilogue defines).
    pub fn spec(&self, p: &Problem) -> KernelSpec {
        match self {
            Kernel::Register(t) => {
                let vec4 = register_vec4(p, *t);
                KernelSpec::new("gemm", gemm_source(vec4, *t), if vec4 { "main_vec4" } else { "main" }, p.dtype)
                    .define("TM", format!("{}u", t.tm))
                    .define("TN", format!("{}u", t.tn))
                    .define("WG", format!("{}u", t.wg))
            }
            _ => super::gemm_variants::spec(self, p),
        }
    }
}

/// The register kernel's vec4 entry point needs aligned row-major operands and TN % 4 == 0.
fn register_vec4(p: &Problem, t: Tile) -> bool {
    p.vec4() && t.tn % 4 == 0
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    alpha: f32,
    _pad: [u32; 2],
}

/// `act(alpha * A·B + bias) + residual`. A: [batch.., M, K]; B: [K, N] shared by every batch, or
/// [batch.., K, N] (shapes as stored: transposed operands swap their last two dims). Output
/// [batch.., M, N] in A's dtype. Work is split over batches and rows so that no binding exceeds
/// the device limit.
pub fn matmul(ctx: &Context, a: &Tensor, b: &Tensor, o: GemmOpts) -> Result<Tensor> {
    matmul_tiled(ctx, a, b, o, None)
}

/// [`matmul`] with an explicit register tile for the register-blocked kernel (benchmarks and
/// tests).
pub fn matmul_tiled(ctx: &Context, a: &Tensor, b: &Tensor, o: GemmOpts, tile: Option<Tile>) -> Result<Tensor> {
    matmul_with(ctx, a, b, o, tile.map(Kernel::Register))
}

/// [`matmul`] with an explicit kernel variant (selftest, tuning, tests); `None` chooses one as
/// [`matmul`] does ([`super::gemm_tune::choose`]).
pub fn matmul_with(ctx: &Context, a: &Tensor, b: &Tensor, o: GemmOpts, kernel: Option<Kernel>) -> Result<Tensor> {
    let (ar, br) = (a.shape().len(), b.shape().len());
    if ar < 2 || br < 2 {
        return shape_err("matmul", format!("operands need 2+ dims: {:?} x {:?}", a.shape(), b.shape()));
    }
    super::same_dtype("matmul", &[a, b])?;
    let (a0, a1) = (a.dim(-2), a.dim(-1));
    let (b0, b1) = (b.dim(-2), b.dim(-1));
    let (m, k) = if o.trans_a { (a1, a0) } else { (a0, a1) };
    let (kb, n) = if o.trans_b { (b1, b0) } else { (b0, b1) };
    let batch: usize = a.shape()[..ar - 2].iter().product();
    let b_batch: usize = b.shape()[..br - 2].iter().product();
    if k != kb || (b_batch != 1 && b_batch != batch) {
        return shape_err("matmul", format!("{:?} x {:?} (trans_a {}, trans_b {})", a.shape(), b.shape(), o.trans_a, o.trans_b));
    }
    let mut out_shape = a.shape()[..ar - 2].to_vec();
    out_shape.extend([m, n]);
    if let Some(bias) = o.bias {
        if bias.numel() != n {
            return shape_err("matmul", format!("bias {:?} for {n} output columns", bias.shape()));
        }
    }
    if let Some(r) = o.residual {
        if r.shape() != out_shape.as_slice() {
            return shape_err("matmul", format!("residual {:?} for output {out_shape:?}", r.shape()));
        }
    }
    ctx.profile_op("gemm", || {
        let t = match (o.trans_a, o.trans_b) { (false, false) => "", (true, false) => " tA", (false, true) => " tB", (true, true) => " tAB" };
        (format!("{batch}x {m}x{n}x{k}{t}"), Work::Flops(flops(batch * m, n, k)))
    });
    let c = Tensor::empty(ctx, &out_shape, a.dtype())?;
    if m == 0 || n == 0 {
        return Ok(c);
    }
    // A weight shared by every batch with a row-major A: fold the batch into the rows.
    let (batch, m) = if b_batch == 1 && !o.trans_a { (1, batch * m) } else { (batch, m) };
    let problem = Problem { batch, m, n, k, trans_a: o.trans_a, trans_b: o.trans_b, dtype: a.dtype() };
    let kernel = match kernel {
        Some(kernel) => kernel,
        None => super::gemm_tune::choose(ctx, &problem, |kernel| matmul_with(ctx, a, b, o, Some(kernel)).map(drop)),
    };
    // Mesa 22's lavapipe silently ends an invocation's loops after 65535 iterations in total:
    // bound them rather than return partial sums.
    let loop_iters = kernel.loop_iters(&problem);
    if ctx.info.device_type == wgpu::DeviceType::Cpu && loop_iters > LAVAPIPE_MAX_LOOP {
        return Err(Error::Unsupported(format!(
            "matmul {:?} x {:?} ({}): a reduction of {k} needs {loop_iters} loop iterations per invocation, \
             over the {LAVAPIPE_MAX_LOOP} this software Vulkan driver runs; split K or use a GPU",
            a.shape(),
            b.shape(),
            kernel.name()
        )));
    }
    if let Some(why) = kernel.unsupported(ctx, &problem) {
        return Err(Error::Unsupported(format!("matmul {:?} x {:?}: gemm variant {}: {why}", a.shape(), b.shape(), kernel.name())));
    }
    let spec = kernel
        .spec(&problem)
        .define("TRANS_A", o.trans_a)
        .define("TRANS_B", o.trans_b)
        .define("HAS_BIAS", o.bias.is_some())
        .define("BIAS_ROWS", false)
        .define("HAS_RES", o.residual.is_some())
        .define("ACT", format!("{}u", o.act as u32));
    let (block_rows, block_cols) = kernel.block(&problem);

    let es = a.dtype().size() as u64;
    let limit = ctx.max_binding();
    let b_bytes = (k * n) as u64 * es;
    if b_bytes > limit {
        return Err(Error::BindingTooLarge { what: format!("matmul operand B {:?}", b.shape()), bytes: b_bytes, limit });
    }
    // Absent bias/residual still need a binding (the kernel declares them): a 1-element dummy.
    let dummy = Tensor::empty(ctx, &[1], a.dtype())?;
    let bias = o.bias.unwrap_or(&dummy);
    let (a_mat, c_mat) = (m * k, m * n);
    // Rows per dispatch: bounded by the binding limit (A and C rows; a transposed A cannot be
    // split by rows) and by the grid's per-dimension limit; chunk starts stay 256-row aligned,
    // which keeps byte offsets on the storage alignment.
    let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
    let row_bytes = (k.max(n) as u64) * es;
    let mut rows = m.min(max_groups * block_rows);
    if (rows as u64) * row_bytes > limit {
        if o.trans_a {
            return Err(Error::BindingTooLarge { what: format!("transposed matmul operand A {:?}", a.shape()), bytes: (a_mat as u64) * es, limit });
        }
        rows = ((limit / row_bytes) as usize / 256) * 256;
        if rows == 0 {
            return Err(Error::BindingTooLarge { what: format!("one row of matmul {:?} x {:?}", a.shape(), b.shape()), bytes: row_bytes * 256, limit });
        }
    } else if rows < m {
        rows = rows / 256 * 256;
    }
    // Batches per dispatch (only when a whole matrix fits).
    let per_batch = (a_mat.max(c_mat) as u64) * es;
    let batches_per = if rows < m { 1 } else { ((limit / per_batch.max(1)) as usize).clamp(1, max_groups) };
    let col_groups = n.div_ceil(block_cols) as u32;

    let mut bstart = 0;
    while bstart < batch {
        let nb = batches_per.min(batch - bstart);
        let mut mstart = 0;
        while mstart < m {
            let mrows = rows.min(m - mstart);
            let (a_lo, a_len) = if nb == 1 && rows < m {
                (bstart * a_mat + mstart * k, mrows * k)
            } else {
                (bstart * a_mat, nb * a_mat)
            };
            let (c_lo, c_len) = if nb == 1 && rows < m { (bstart * c_mat + mstart * n, mrows * n) } else { (bstart * c_mat, nb * c_mat) };
            let b_bind: Binding = if b_batch == 1 { b.binding() } else { b.binding_range(bstart * k * n, nb * k * n) };
            let res_bind = match o.residual {
                Some(r) => r.binding_range(c_lo, c_len),
                None => dummy.binding(),
            };
            let params = Params {
                m: mrows as u32,
                n: n as u32,
                k: k as u32,
                lda: if o.trans_a { m as u32 } else { k as u32 },
                ldb: if o.trans_b { k as u32 } else { n as u32 },
                ldc: n as u32,
                stride_a: a_mat as u32,
                stride_b: if b_batch == 1 { 0 } else { (k * n) as u32 },
                stride_c: c_mat as u32,
                alpha: o.alpha,
                _pad: [0; 2],
            };
            let grid = [col_groups, mrows.div_ceil(block_rows) as u32, nb as u32];
            ctx.dispatch(
                &spec,
                bytemuck::bytes_of(&params),
                &[a.binding_range(a_lo, a_len), b_bind, c.binding_range(c_lo, c_len), bias.binding(), res_bind],
                grid,
            )?;
            mstart += mrows;
        }
        bstart += nb;
    }
    Ok(c)
}

/// Operand views for [`gemm_views`]: bindings the caller laid out, with row and batch strides
/// in elements (a batch stride of 0 broadcasts that operand to every batch).
#[derive(Clone, Copy)]
pub(crate) struct Views<'a> {
    pub a: Binding<'a>,
    pub b: Binding<'a>,
    pub c: Binding<'a>,
    pub bias: Option<Binding<'a>>,
    /// The bias is indexed by output row (conv2d's channels), not by column.
    pub bias_rows: bool,
    pub residual: Option<Binding<'a>>,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

/// One GEMM dispatch of `kernel` on views that are not whole tensors (conv2d's 1x1 and
/// centre-tap routes: the weight shared by every batch entry as A, the image as B). The batch
/// runs on the grid's z. The caller checks that every binding fits the device limit; profile
/// rows count to `family` (the op the user called).
pub(crate) fn gemm_views(ctx: &Context, family: &'static str, p: &Problem, v: &Views, kernel: Kernel) -> Result<()> {
    let loop_iters = kernel.loop_iters(p);
    if ctx.info.device_type == wgpu::DeviceType::Cpu && loop_iters > LAVAPIPE_MAX_LOOP {
        return Err(Error::Unsupported(format!(
            "{family} as gemm {}x{}x{} ({}): {loop_iters} loop iterations per invocation, over the {LAVAPIPE_MAX_LOOP} this software Vulkan driver runs",
            p.m,
            p.n,
            p.k,
            kernel.name()
        )));
    }
    if let Some(why) = kernel.unsupported(ctx, p) {
        return Err(Error::Unsupported(format!("{family} as gemm: variant {}: {why}", kernel.name())));
    }
    let mut spec = kernel
        .spec(p)
        .define("TRANS_A", p.trans_a)
        .define("TRANS_B", p.trans_b)
        .define("HAS_BIAS", v.bias.is_some())
        .define("BIAS_ROWS", v.bias_rows)
        .define("HAS_RES", v.residual.is_some())
        .define("ACT", format!("{}u", Activation::Identity as u32));
    spec.name = family;
    let (block_rows, block_cols) = kernel.block(p);
    let params = Params {
        m: p.m as u32,
        n: p.n as u32,
        k: p.k as u32,
        lda: v.lda as u32,
        ldb: v.ldb as u32,
        ldc: v.ldc as u32,
        stride_a: v.stride_a as u32,
        stride_b: v.stride_b as u32,
        stride_c: v.stride_c as u32,
        alpha: 1.0,
        _pad: [0; 2],
    };
    // Absent bias/residual bind A (read-only, like them) as a stand-in the kernel never reads.
    let grid = [p.n.div_ceil(block_cols) as u32, p.m.div_ceil(block_rows) as u32, p.batch as u32];
    ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[v.a, v.b, v.c, v.bias.unwrap_or(v.a), v.residual.unwrap_or(v.a)], grid)
}

/// `kernels/gemm.wgsl` with `main_vec4` unrolled for this tile; made once per tile shape (a
/// handful per process) and kept, so pipeline-cache hits cost no formatting.
fn gemm_source(vec4: bool, tile: Tile) -> &'static str {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static SOURCES: OnceLock<Mutex<HashMap<(bool, u32, u32), &'static str>>> = OnceLock::new();
    let mut map = SOURCES.get_or_init(Default::default).lock().unwrap();
    map.entry((vec4, tile.tm, tile.tn)).or_insert_with(|| {
        let main = if vec4 { vec4_main(tile.tm, tile.tn / 4) } else { scalar_main(tile.tm, tile.tn) };
        Box::leak(format!("{GEMM}\n{main}").into_boxed_str())
    })
}

/// The `main` entry point of `kernels/gemm.wgsl`, unrolled for a `r` x `c` register tile.
fn scalar_main(r: u32, c: u32) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "@compute @workgroup_size(WG)");
    let _ = writeln!(w, "fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {{");
    let _ = writeln!(w, "    let m0 = wid.y * {r}u;\n    let n0 = wid.x * (WG * {c}u) + lid;");
    let _ = writeln!(w, "    let a_off = wid.z * p.stride_a;\n    let b_off = wid.z * p.stride_b;");
    for i in 0..r {
        let _ = writeln!(w, "    let mr{i} = min(m0 + {i}u, p.m - 1u);");
    }
    for j in 0..c {
        let _ = writeln!(w, "    let nc{j} = min(n0 + {j}u * WG, p.n - 1u);");
    }
    for i in 0..r {
        for j in 0..c {
            let _ = writeln!(w, "    var c{i}_{j} = 0.0;");
        }
    }
    let _ = writeln!(w, "    for (var kk = 0u; kk < p.k; kk++) {{");
    for j in 0..c {
        let _ = writeln!(w, "        let bv{j} = load_b(b_off, kk, nc{j});");
    }
    for i in 0..r {
        let _ = writeln!(w, "        let av{i} = load_a(a_off, mr{i}, kk);");
        for j in 0..c {
            let _ = writeln!(w, "        c{i}_{j} += av{i} * bv{j};");
        }
    }
    let _ = writeln!(w, "    }}\n    store_base = wid.z * p.stride_c;");
    for i in 0..r {
        for j in 0..c {
            let _ = writeln!(w, "    store1(m0 + {i}u, n0 + {j}u * WG, c{i}_{j});");
        }
    }
    s.push_str("}\n");
    s
}

/// The `main_vec4` entry point of `kernels/gemm.wgsl`, unrolled for an `r`-row by `4*c4`-column
/// register tile (see the comment there for why it is unrolled rather than looped).
fn vec4_main(r: u32, c4: u32) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "@compute @workgroup_size(WG)");
    let _ = writeln!(w, "fn main_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {{");
    let _ = writeln!(w, "    let m0 = wid.y * {r}u;\n    let k4 = p.k / 4u;\n    let n4 = p.n / 4u;\n    let last_m = p.m - 1u;");
    let _ = writeln!(w, "    let g = wid.x * WG + lid;\n    let a_off = wid.z * p.stride_a / 4u;\n    let b_off = wid.z * p.stride_b / 4u;");
    for j in 0..c4 {
        let _ = writeln!(w, "    let col{j} = min({c4}u * g + {j}u, n4 - 1u);");
    }
    for i in 0..r {
        let _ = writeln!(w, "    let r{i} = a_off + min(m0 + {i}u, last_m) * k4;");
        for j in 0..c4 {
            let _ = writeln!(w, "    var c{i}_{j} = vec4<f32>(0.0);");
        }
    }
    let _ = writeln!(w, "    for (var kq = 0u; kq < k4; kq++) {{\n        let br = b_off + kq * 4u * n4;");
    for q in 0..4 {
        for j in 0..c4 {
            let _ = writeln!(w, "        let bq{q}_{j} = vec4<f32>(b4[br + {q}u * n4 + col{j}]);");
        }
    }
    for i in 0..r {
        // (`av`, not `a`: a local `a4` would shadow the binding of that name.)
        let _ = writeln!(w, "        let av{i} = vec4<f32>(a4[r{i} + kq]);");
        for j in 0..c4 {
            let _ = writeln!(w, "        c{i}_{j} += quad(av{i}, bq0_{j}, bq1_{j}, bq2_{j}, bq3_{j});");
        }
    }
    let _ = writeln!(w, "    }}\n    store_base = wid.z * p.stride_c;");
    for i in 0..r {
        for j in 0..c4 {
            let _ = writeln!(w, "    store4(m0 + {i}u, {}u * g + {}u, c{i}_{j});", 4 * c4, 4 * j);
        }
    }
    s.push_str("}\n");
    s
}

/// FLOPs of an M×K by K×N product (for benchmarks).
pub fn flops(m: usize, n: usize, k: usize) -> f64 {
    2.0 * m as f64 * n as f64 * k as f64
}
