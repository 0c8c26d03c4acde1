//! Flash-style multi-head attention (`kernels/attention.wgsl`).
//!
//! `q [B, Lq, H*D]`, `k`/`v [B, Lk, H*D]` (heads interleaved in the last dim, as the linear
//! projections produce them), output `[B, Lq, H*D]`. The softmax is computed online over key
//! blocks, so memory is O(L * H * D), never O(Lq * Lk). Work is split across dispatches so no
//! binding exceeds the device's storage binding limit: over batches, then over query rows.

use super::attention_variants::{self, AttnKernel, AttnProblem};
use super::same_dtype;
use crate::error::{shape_err, Error, Result};
use crate::gpu::{Binding, Context, KernelSpec, Tensor};
use bytemuck::{Pod, Zeroable};

const SOURCE: &str = concat!(include_str!("../../kernels/attention_io.wgsl"), include_str!("../../kernels/attention.wgsl"));

/// Largest head dim the kernel is specialised for (SD's biggest is 160).
pub const MAX_HEAD_DIM: usize = 160;

/// Most key blocks one invocation may loop over (lavapipe's loop limit is 65535 iterations).
const MAX_KEY_BLOCKS: usize = 60_000;

/// One attention operand read in place from a wider tensor: columns
/// `offset_cols .. offset_cols + H*D` of every row of `tensor`, which is `[B, L, row_stride]`
/// (e.g. the q, k or v third of a fused QKV projection `[B, L, 3*H*D]`).
#[derive(Clone, Copy, Debug)]
pub struct AttnInput<'a> {
    pub tensor: &'a Tensor,
    pub offset_cols: usize,
    pub row_stride: usize,
}

impl<'a> AttnInput<'a> {
    /// A plain `[B, L, H*D]` tensor.
    pub fn whole(tensor: &'a Tensor) -> Self {
        AttnInput { tensor, offset_cols: 0, row_stride: tensor.dim(-1) }
    }
    /// Columns `offset_cols..` of a `[B, L, C]` tensor (row stride C).
    pub fn cols(tensor: &'a Tensor, offset_cols: usize) -> Self {
        AttnInput { tensor, offset_cols, row_stride: tensor.dim(-1) }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    rows: u32,
    lk: u32,
    row0: u32,
    scale_log2: f32,
    q_base: u32,
    q_bstride: u32,
    q_stride: u32,
    k_base: u32,
    k_bstride: u32,
    k_stride: u32,
    v_base: u32,
    v_bstride: u32,
    v_stride: u32,
    o_base: u32,
    o_bstride: u32,
    o_stride: u32,
}

/// `softmax(scale * q k^T) v` per head, with an optional causal mask (key j visible to query i
/// iff j <= i, top-left aligned like PyTorch's `is_causal`).
pub fn attention(ctx: &Context, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f32, causal: bool) -> Result<Tensor> {
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        if t.shape().len() != 3 {
            return shape_err("attention", format!("{name} must be [B, L, H*D], got {:?}", t.shape()));
        }
    }
    if heads == 0 || q.dim(2) % heads != 0 {
        return shape_err("attention", format!("width {} is not a multiple of {heads} heads", q.dim(2)));
    }
    attention_strided(
        ctx,
        AttnInput::whole(q),
        AttnInput::whole(k),
        AttnInput::whole(v),
        heads,
        q.dim(2) / heads,
        scale,
        causal,
    )
}

/// Self attention straight from a fused QKV projection `[B, L, 3*H*D]` (q, k, v thirds).
pub fn attention_qkv(ctx: &Context, qkv: &Tensor, heads: usize, scale: f32, causal: bool) -> Result<Tensor> {
    if qkv.shape().len() != 3 || heads == 0 || qkv.dim(2) % (3 * heads) != 0 {
        return shape_err("attention", format!("fused qkv must be [B, L, 3*H*D] with {heads} heads, got {:?}", qkv.shape()));
    }
    let hd = qkv.dim(2) / 3;
    attention_strided(
        ctx,
        AttnInput::cols(qkv, 0),
        AttnInput::cols(qkv, hd),
        AttnInput::cols(qkv, 2 * hd),
        heads,
        hd / heads,
        scale,
        causal,
    )
}

/// The kernel source for one (D4, R, KB): `kernels/attention.wgsl` plus a generated entry point
/// with every loop but the one over key blocks unrolled. Generated once per variant and kept for
/// the process (the pipeline cache holds `&'static str` sources).
fn kernel_source(d4: usize, r: usize, kb: usize) -> &'static str {
    use std::collections::HashMap;
    use std::fmt::Write;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<(usize, usize, usize), &'static str>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    if let Some(s) = cache.get(&(d4, r, kb)) {
        return s;
    }
    let mut m = String::from(SOURCE);
    let w = &mut m;
    let _ = writeln!(w, "@compute @workgroup_size(WG)");
    let _ = writeln!(w, "fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {{");
    let _ = writeln!(w, "    let h = wid.y;\n    let b = wid.z;\n    let first = wid.x * (WG * R);");
    let _ = writeln!(w, "    let qb = p.q_base + b * p.q_bstride + h * D;");
    let _ = writeln!(w, "    let kb = p.k_base + b * p.k_bstride + h * D;");
    let _ = writeln!(w, "    let vb = p.v_base + b * p.v_bstride + h * D;");
    for ri in 0..r {
        let _ = writeln!(w, "    let row{ri} = first + {ri}u * WG + lid;");
        let _ = writeln!(w, "    let qi{ri} = p.row0 + row{ri};");
        let _ = writeln!(w, "    let qbase{ri} = qb + min(row{ri}, p.rows - 1u) * p.q_stride;");
        for c in 0..d4 {
            let _ = writeln!(w, "    let q{ri}_{c} = load_q(qbase{ri}, {c}u) * p.scale_log2;");
            let _ = writeln!(w, "    var a{ri}_{c} = vec4<f32>(0.0);");
        }
        let _ = writeln!(w, "    var m{ri} = NEG_BIG;\n    var l{ri} = 0.0;");
    }
    let _ = writeln!(w, "    var kend = p.lk;");
    let _ = writeln!(w, "    if (CAUSAL) {{ kend = min(p.lk, p.row0 + min(first + WG * R, p.rows)); }}");
    let _ = writeln!(w, "    for (var j0 = 0u; j0 < kend; j0 += KB) {{");
    for jj in 0..kb {
        let _ = writeln!(w, "        let krow{jj} = kb + min(j0 + {jj}u, p.lk - 1u) * p.k_stride;");
        let _ = writeln!(w, "        let out{jj} = j0 + {jj}u >= p.lk;");
        for c in 0..d4 {
            let _ = writeln!(w, "        let k{jj}_{c} = load_k(krow{jj}, {c}u);");
            for ri in 0..r {
                if c == 0 {
                    let _ = writeln!(w, "        var t{ri}_{jj} = q{ri}_0 * k{jj}_0;");
                } else {
                    let _ = writeln!(w, "        t{ri}_{jj} += q{ri}_{c} * k{jj}_{c};");
                }
            }
        }
        for ri in 0..r {
            let _ = writeln!(
                w,
                "        let s{ri}_{jj} = select(dot(t{ri}_{jj}, vec4<f32>(1.0)), MASKED, out{jj} || (CAUSAL && j0 + {jj}u > qi{ri}));"
            );
        }
    }
    for ri in 0..r {
        let mut mx = format!("m{ri}");
        for jj in 0..kb {
            mx = format!("max({mx}, s{ri}_{jj})");
        }
        let _ = writeln!(w, "        let mx{ri} = {mx};");
        let _ = writeln!(w, "        let al{ri} = exp2(m{ri} - mx{ri});\n        m{ri} = mx{ri};");
        let mut sum = format!("l{ri} * al{ri}");
        for jj in 0..kb {
            let _ = writeln!(w, "        let e{ri}_{jj} = exp2(s{ri}_{jj} - mx{ri});");
            sum = format!("{sum} + e{ri}_{jj}");
        }
        let _ = writeln!(w, "        l{ri} = {sum};");
        for c in 0..d4 {
            let _ = writeln!(w, "        a{ri}_{c} *= al{ri};");
        }
    }
    for jj in 0..kb {
        let _ = writeln!(w, "        let vrow{jj} = vb + min(j0 + {jj}u, p.lk - 1u) * p.v_stride;");
        for c in 0..d4 {
            let _ = writeln!(w, "        let v{jj}_{c} = load_v(vrow{jj}, {c}u);");
            for ri in 0..r {
                let _ = writeln!(w, "        a{ri}_{c} += e{ri}_{jj} * v{jj}_{c};");
            }
        }
    }
    let _ = writeln!(w, "    }}");
    for ri in 0..r {
        let _ = writeln!(w, "    if (row{ri} < p.rows) {{");
        let _ = writeln!(w, "        let inv = 1.0 / l{ri};");
        let _ = writeln!(w, "        let ob = p.o_base + b * p.o_bstride + row{ri} * p.o_stride + h * D;");
        for c in 0..d4 {
            let _ = writeln!(w, "        store_o(ob, {c}u, a{ri}_{c} * inv);");
        }
        let _ = writeln!(w, "    }}");
    }
    let _ = writeln!(w, "}}");
    let leaked: &'static str = Box::leak(m.into_boxed_str());
    cache.insert((d4, r, kb), leaked);
    leaked
}

/// Element range `[start, end)` of a flat tensor as a binding whose offset is aligned down to the
/// device's storage offset alignment; returns the binding and the element index of `start`
/// inside it.
fn aligned_range<'t>(ctx: &Context, t: &'t Tensor, start: usize, end: usize) -> (Binding<'t>, usize) {
    let es = t.dtype().size() as u64;
    let align = ctx.limits.min_storage_buffer_offset_alignment.max(4) as u64;
    let abs = t.byte_offset() + start as u64 * es;
    let off = abs / align * align;
    let skip = ((abs - off) / es) as usize;
    let size = ((end - start) as u64 * es + (abs - off)).next_multiple_of(4).max(4);
    (Binding { buffer: t.buffer(), offset: off, size }, skip)
}

/// General form: any row strides and column offsets. `q` is `[B, Lq, ..]`, `k`/`v`
/// `[B, Lk, ..]`, each operand's head h at columns `offset_cols + h*head_dim`.
#[allow(clippy::too_many_arguments)]
pub fn attention_strided(
    ctx: &Context,
    q: AttnInput,
    k: AttnInput,
    v: AttnInput,
    heads: usize,
    head_dim: usize,
    scale: f32,
    causal: bool,
) -> Result<Tensor> {
    attention_strided_with(ctx, q, k, v, heads, head_dim, scale, causal, None)
}

/// [`attention_strided`] with an explicit kernel variant (selftest, tuning, tests); `None`
/// chooses one by measurement ([`attention_variants::choose`]).
#[allow(clippy::too_many_arguments)]
pub fn attention_strided_with(
    ctx: &Context,
    q: AttnInput,
    k: AttnInput,
    v: AttnInput,
    heads: usize,
    head_dim: usize,
    scale: f32,
    causal: bool,
    kernel: Option<AttnKernel>,
) -> Result<Tensor> {
    same_dtype("attention", &[q.tensor, k.tensor, v.tensor])?;
    let dtype = q.tensor.dtype();
    let width = heads * head_dim;
    for (name, a) in [("q", &q), ("k", &k), ("v", &v)] {
        let s = a.tensor.shape();
        if s.len() != 3 || s[2] != a.row_stride || a.offset_cols + width > a.row_stride {
            return shape_err(
                "attention",
                format!("{name} {s:?}: columns {}..{} of rows of {} do not fit", a.offset_cols, a.offset_cols + width, a.row_stride),
            );
        }
    }
    let (b, lq, lk) = (q.tensor.dim(0), q.tensor.dim(1), k.tensor.dim(1));
    if k.tensor.dim(0) != b || v.tensor.dim(0) != b || v.tensor.dim(1) != lk {
        return shape_err(
            "attention",
            format!("q {:?}, k {:?}, v {:?}: batch and key lengths must agree", q.tensor.shape(), k.tensor.shape(), v.tensor.shape()),
        );
    }
    if head_dim == 0 || head_dim > MAX_HEAD_DIM {
        return Err(Error::Unsupported(format!("attention head dim {head_dim} (1..={MAX_HEAD_DIM} supported)")));
    }
    if lk == 0 {
        return shape_err("attention", "no keys (Lk = 0)");
    }
    let problem = AttnProblem { batch: b, heads, lq, lk, head_dim, causal, dtype };
    let kernel = match kernel {
        Some(kernel) => kernel,
        None if b == 0 || lq == 0 || heads == 0 => AttnKernel::Direct,
        None => attention_variants::choose(ctx, &problem, |kern| attention_strided_with(ctx, q, k, v, heads, head_dim, scale, causal, Some(kern)).map(drop)),
    };
    if let Some(why) = kernel.unsupported(ctx, &problem) {
        return Err(Error::Unsupported(format!("attention {}: variant {}: {why}", problem.key(), kernel.name())));
    }
    ctx.profile_op("attention", || {
        (
            format!("{b}x{heads}h {lq}x{lk} d{head_dim}{}", if causal { " causal" } else { "" }),
            crate::gpu::Work::Flops(4.0 * (b * heads * lq * lk * head_dim) as f64),
        )
    });
    let out = Tensor::empty(ctx, &[b, lq, width], dtype)?;
    if b == 0 || lq == 0 || heads == 0 {
        return Ok(out);
    }

    // Rows per invocation (R rows share each K/V load) and keys per online-softmax block (one
    // rescale per block). The entry point is straight-line code of size ~ D/4 * R * KB, and
    // lavapipe's LLVM compile time grows faster than linearly with it (seconds for the biggest
    // variants), so big heads take fewer rows and smaller blocks.
    let d4 = head_dim.div_ceil(4);
    let (rows_per_inv, kb) = match d4 {
        0..=16 => (2usize, 4usize),
        17..=20 => (1, 2),
        _ => (1, 1),
    };
    // Mesa 22's lavapipe silently ends every loop of an invocation once 65535 iterations (all
    // loops together) have run in it; the entry point's only loop is over key blocks. SD's longest
    // is 9216 keys (96x96 latents) at D = 40 (2304 blocks); 4096 keys at D = 160 is 4096 blocks.
    if kernel == AttnKernel::Direct && lk.div_ceil(kb) > MAX_KEY_BLOCKS {
        return Err(Error::Unsupported(format!(
            "attention over {lk} keys at head dim {head_dim} ({} key blocks of {kb}; at most {MAX_KEY_BLOCKS} per invocation on this adapter's kernel): use a smaller --width/--height",
            lk.div_ceil(kb)
        )));
    }
    // 64 invocations per workgroup, fewer for short queries (SD's low-resolution levels: 64, 16,
    // 4 or 1 rows per head at small latents), where most of a 64-wide group would idle.
    let wg = lq.div_ceil(rows_per_inv).next_power_of_two().clamp(8, 64);
    let spec = match kernel {
        AttnKernel::Direct => KernelSpec::new("attention", kernel_source(head_dim.div_ceil(4), rows_per_inv, kb), "main", dtype)
            .define("D", format!("{head_dim}u"))
            .define("DF", format!("{}u", head_dim / 4))
            .define("TAIL", format!("{}u", head_dim % 4))
            .define("D4", format!("{}u", head_dim.div_ceil(4)))
            .define("R", format!("{rows_per_inv}u"))
            .define("KB", format!("{kb}u"))
            .define("WG", format!("{wg}u"))
            .define("CAUSAL", causal),
        AttnKernel::Fa2 { .. } => kernel.fa2_spec(ctx, head_dim, causal, dtype),
    };
    let rows_per_group = kernel.rows_per_group(rows_per_inv, wg);

    // Capacity of one binding in elements, keeping room for the alignment slack.
    let es = dtype.size();
    let align_elems = (ctx.limits.min_storage_buffer_offset_alignment as usize).div_ceil(es).max(1);
    let cap = (ctx.max_binding() as usize / es).saturating_sub(align_elems + 4);
    // Elements spanned by `n` consecutive rows of an operand (first row start to last row end).
    let span = |rows: usize, a: &AttnInput| if rows == 0 { 0 } else { (rows - 1) * a.row_stride + width };
    let (kspan, vspan) = (span(lk, &k), span(lk, &v));
    if kspan.max(vspan) > cap {
        return Err(Error::BindingTooLarge {
            what: format!(
                "attention: one batch's keys/values ({lk} rows x {} columns, {heads} heads x {head_dim}, {})",
                k.row_stride.max(v.row_stride),
                dtype.name()
            ),
            bytes: (kspan.max(vspan) * es) as u64,
            limit: ctx.max_binding(),
        });
    }
    let o_in = AttnInput::whole(&out);
    // Batches per dispatch: everything whose q/k/v/out ranges fit one binding each.
    let fits_batches = |nb: usize| {
        let all = |a: &AttnInput, l: usize| span((nb - 1) * l + l, a) <= cap;
        all(&q, lq) && all(&k, lk) && all(&v, lk) && all(&o_in, lq)
    };
    let mut nb = b.min(ctx.limits.max_compute_workgroups_per_dimension as usize);
    while nb > 1 && !fits_batches(nb) {
        nb = (nb / 2).max(1).min(nb - 1);
    }
    // Query rows per dispatch when a single batch's q/out is too big.
    let mut nr = lq;
    if !fits_batches(1) {
        let row_cap = |a: &AttnInput| (cap - width) / a.row_stride + 1;
        nr = row_cap(&q).min(row_cap(&o_in)).max(1);
        // Whole workgroups per chunk where the limit allows (a partial one only wastes lanes).
        if nr >= rows_per_group {
            nr = nr / rows_per_group * rows_per_group;
        }
        nr = nr.min(lq);
        nb = 1;
    }
    let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
    if heads > max_groups {
        return Err(Error::Unsupported(format!("attention with {heads} heads (max {max_groups})")));
    }
    nr = nr.min(max_groups * rows_per_group);

    let mut b0 = 0;
    while b0 < b {
        let nbb = nb.min(b - b0);
        let mut r0 = 0;
        while r0 < lq {
            let rows = nr.min(lq - r0);
            // Per operand: binding over the batches [b0, b0+nbb), rows [r0, r0+rows) (all keys).
            fn bind<'t>(ctx: &Context, a: &AttnInput<'t>, l: usize, batches: (usize, usize), first: usize, n: usize, width: usize) -> (Binding<'t>, usize) {
                let start = (batches.0 * l + first) * a.row_stride + a.offset_cols;
                let end = ((batches.0 + batches.1 - 1) * l + first + n - 1) * a.row_stride + a.offset_cols + width;
                aligned_range(ctx, a.tensor, start, end)
            }
            let bs = (b0, nbb);
            let (qbind, qbase) = bind(ctx, &q, lq, bs, r0, rows, width);
            let (kbind, kbase) = bind(ctx, &k, lk, bs, 0, lk, width);
            let (vbind, vbase) = bind(ctx, &v, lk, bs, 0, lk, width);
            let (obind, obase) = bind(ctx, &o_in, lq, bs, r0, rows, width);
            let params = Params {
                rows: rows as u32,
                lk: lk as u32,
                row0: r0 as u32,
                scale_log2: scale * std::f32::consts::LOG2_E,
                q_base: qbase as u32,
                q_bstride: (lq * q.row_stride) as u32,
                q_stride: q.row_stride as u32,
                k_base: kbase as u32,
                k_bstride: (lk * k.row_stride) as u32,
                k_stride: k.row_stride as u32,
                v_base: vbase as u32,
                v_bstride: (lk * v.row_stride) as u32,
                v_stride: v.row_stride as u32,
                o_base: obase as u32,
                o_bstride: (lq * width) as u32,
                o_stride: width as u32,
            };
            let grid = [rows.div_ceil(rows_per_group) as u32, heads as u32, nbb as u32];
            ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[qbind, kbind, vbind, obind], grid)?;
            r0 += rows;
        }
        b0 += nbb;
    }
    Ok(out)
}
