//! Group norm (with optional fused SiLU) and layer norm (`kernels/norm.wgsl`). Statistics are
//! computed in f32 with shifted sums per invocation merged by Chan's formula; big groups are
//! reduced by many workgroups (chunks), and tensors over one storage binding are split by ranges
//! of groups (or of chunks within a group) / rows.

use super::conv::{aligned_range, usable_binding};
use super::{flat_grid, same_dtype};
use crate::error::{shape_err, Error, Result};
use crate::gpu::{Context, DType, KernelSpec, Tensor};
use bytemuck::{Pod, Zeroable};

const NORM: &str = include_str!("../../kernels/norm.wgsl");
const LN_MARKER: &str = "// ---- layer norm";
const TREE: &str = include_str!("../../kernels/norm_tree.wgsl");
/// Invocations of a tree-reduction workgroup.
const TREE_WG: usize = 256;

fn gn_source() -> &'static str {
    &NORM[..NORM.find(LN_MARKER).expect("layer-norm marker in norm.wgsl")]
}
fn ln_source() -> &'static str {
    &NORM[NORM.find(LN_MARKER).expect("layer-norm marker in norm.wgsl")..]
}

const WG: u32 = 256;
const LN_WG: u32 = 64;
/// Elements one group-norm workgroup reduces / normalises.
const CHUNK: usize = 8192;
/// Most chunks per group (and elements per invocation of a chunk), so that gn_apply's loops stay
/// far below lavapipe's 65535-iteration limit.
const MAX_CHUNKS: usize = 16384;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GnParams {
    group_len: u32,
    hw: u32,
    cpg: u32,
    groups: u32,
    chunk: u32,
    nchunks: u32,
    g0: u32,
    k0: u32,
    x_off: i32,
    y_off: i32,
    eps: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LnParams {
    d: u32,
    rows: u32,
    row_groups: u32,
    x_off: i32,
    y_off: i32,
    eps: f32,
    _pad: [u32; 2],
}

/// Bytes moved by a norm over `numel` elements of `dtype` (read twice, written once), for
/// bandwidth figures in benchmarks.
pub fn norm_bytes(numel: usize, dtype: DType) -> f64 {
    3.0 * (numel * dtype.size()) as f64
}

/// GroupNorm over x `[N, C, ...]` with `groups` groups of C/groups channels; per-channel affine
/// `weight`, `bias` `[C]`; `silu` fuses SiLU after the affine (SD's ResnetBlock norm + act).
pub fn group_norm(ctx: &Context, x: &Tensor, groups: usize, weight: &Tensor, bias: &Tensor, eps: f32, silu: bool) -> Result<Tensor> {
    group_norm_with(ctx, x, groups, weight, bias, eps, silu, None)
}

/// [`group_norm`] with an explicit variant (selftest, tuning, tests); `None` chooses one by
/// measurement ([`choose`]).
#[allow(clippy::too_many_arguments)]
pub fn group_norm_with(ctx: &Context, x: &Tensor, groups: usize, weight: &Tensor, bias: &Tensor, eps: f32, silu: bool, kernel: Option<NormKernel>) -> Result<Tensor> {
    let op = "group_norm";
    if x.shape().len() < 2 {
        return shape_err(op, format!("x {:?} must be [N, C, ...]", x.shape()));
    }
    let (n, c) = (x.dim(0), x.dim(1));
    if groups == 0 || c % groups != 0 {
        return shape_err(op, format!("{c} channels in {groups} groups"));
    }
    if weight.numel() != c || bias.numel() != c {
        return shape_err(op, format!("weight {:?} / bias {:?} for {c} channels", weight.shape(), bias.shape()));
    }
    same_dtype(op, &[x, weight, bias])?;
    let dtype = x.dtype();
    let es = dtype.size();
    ctx.profile_op("norm", || {
        let act = if silu { "+silu" } else { "" };
        (format!("group_norm{act} {} g{groups}", super::dims(x.shape())), crate::gpu::Work::Bytes(norm_bytes(x.numel(), dtype)))
    });
    let y = Tensor::empty(ctx, x.shape(), dtype)?;
    let hw = x.numel() / (n * c).max(1);
    let cpg = c / groups;
    let group_len = cpg * hw;
    let ng = n * groups;
    if y.numel() == 0 {
        return Ok(y);
    }
    let avail = usable_binding(ctx) as usize / es;
    // Loop budget (lavapipe ends all loops of an invocation after 65535 iterations in total):
    // gn_apply merges all of a group's chunk partials (nchunks iterations) and then walks its
    // chunk (chunk / WG), so groups over MAX_CHUNKS * CHUNK elements (~134M) take bigger chunks.
    let chunk = CHUNK.max(group_len.div_ceil(MAX_CHUNKS).next_multiple_of(WG as usize)).min(avail);
    if chunk == 0 {
        return Err(Error::BindingTooLarge { what: "group_norm".into(), bytes: es as u64, limit: ctx.max_binding() });
    }
    let nchunks = group_len.div_ceil(chunk);
    let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
    if nchunks > max_groups.min(MAX_CHUNKS) || chunk / WG as usize > MAX_CHUNKS {
        return Err(Error::Unsupported(format!("group_norm with {group_len} elements per group")));
    }
    let problem = NormProblem::Group { n, c, hw, groups, dtype };
    let kernel = match kernel {
        Some(k) => k,
        None => choose(ctx, &problem, |k| group_norm_with(ctx, x, groups, weight, bias, eps, silu, Some(k)).map(drop)),
    };
    if let Some(why) = kernel.unsupported(ctx, &problem) {
        return Err(Error::Unsupported(format!("{}: variant {}: {why}", problem.key(), kernel.name())));
    }
    if kernel != NormKernel::Direct {
        // One workgroup per group, as many groups per dispatch as fit one binding.
        let per = (avail / group_len).min(max_groups);
        let spec = tree_spec(kernel, "gn_tree", dtype, silu);
        let mut g0 = 0;
        while g0 < ng {
            let gs = per.min(ng - g0);
            let (start, end) = (g0 * group_len, (g0 + gs) * group_len);
            let (xb, x_off) = aligned_range(ctx, x, start, end, start);
            let (yb, y_off) = aligned_range(ctx, &y, start, end, start);
            let params = GnParams {
                group_len: group_len as u32,
                hw: hw as u32,
                cpg: cpg as u32,
                groups: groups as u32,
                chunk: group_len as u32,
                nchunks: 1,
                g0: g0 as u32,
                k0: 0,
                x_off,
                y_off,
                eps,
                _pad: 0,
            };
            ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[xb, weight.binding(), bias.binding(), yb], [gs as u32, 1, 1])?;
            g0 += gs;
        }
        return Ok(y);
    }
    let part = Tensor::empty(ctx, &[ng * nchunks * 4], DType::F32)?;
    // Dispatch ranges: (first group, groups, first chunk, chunks).
    let mut ranges = vec![];
    if group_len <= avail {
        let per = (avail / group_len).min(max_groups);
        let mut g0 = 0;
        while g0 < ng {
            let gs = per.min(ng - g0);
            ranges.push((g0, gs, 0, nchunks));
            g0 += gs;
        }
    } else {
        let per = (avail / chunk).max(1);
        for g in 0..ng {
            let mut k0 = 0;
            while k0 < nchunks {
                let ks = per.min(nchunks - k0);
                ranges.push((g, 1, k0, ks));
                k0 += ks;
            }
        }
    }
    let spec = |entry: &'static str| {
        KernelSpec::new("norm", gn_source(), entry, dtype)
            .define("WG", format!("{WG}u"))
            .define("SILU", format!("{}u", silu as u32))
    };
    for entry in ["gn_stats", "gn_apply"] {
        for &(g0, gs, k0, ks) in &ranges {
            let start = g0 * group_len + k0 * chunk;
            let end = (g0 + gs - 1) * group_len + ((k0 + ks) * chunk).min(group_len);
            let (xb, x_off) = aligned_range(ctx, x, start, end, g0 * group_len);
            let (yb, y_off) = aligned_range(ctx, &y, start, end, g0 * group_len);
            let params = GnParams {
                group_len: group_len as u32,
                hw: hw as u32,
                cpg: cpg as u32,
                groups: groups as u32,
                chunk: chunk as u32,
                nchunks: nchunks as u32,
                g0: g0 as u32,
                k0: k0 as u32,
                x_off,
                y_off,
                eps,
                _pad: 0,
            };
            let grid = [ks as u32, gs as u32, 1];
            if entry == "gn_stats" {
                ctx.dispatch(&spec(entry), bytemuck::bytes_of(&params), &[xb, part.binding()], grid)?;
            } else {
                ctx.dispatch(&spec(entry), bytemuck::bytes_of(&params), &[xb, part.binding(), weight.binding(), bias.binding(), yb], grid)?;
            }
        }
    }
    Ok(y)
}

/// LayerNorm over the last dimension D of x `[..., D]`, affine `weight`, `bias` `[D]`.
pub fn layer_norm(ctx: &Context, x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    layer_norm_with(ctx, x, weight, bias, eps, None)
}

/// [`layer_norm`] with an explicit variant; `None` chooses one by measurement ([`choose`]).
pub fn layer_norm_with(ctx: &Context, x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32, kernel: Option<NormKernel>) -> Result<Tensor> {
    let op = "layer_norm";
    if x.shape().is_empty() {
        return shape_err(op, "x is a scalar");
    }
    let d = x.dim(-1);
    if weight.numel() != d || bias.numel() != d {
        return shape_err(op, format!("weight {:?} / bias {:?} for last dim {d}", weight.shape(), bias.shape()));
    }
    same_dtype(op, &[x, weight, bias])?;
    let dtype = x.dtype();
    ctx.profile_op("norm", || (format!("layer_norm {}", super::dims(x.shape())), crate::gpu::Work::Bytes(norm_bytes(x.numel(), dtype))));
    let y = Tensor::empty(ctx, x.shape(), dtype)?;
    if y.numel() == 0 {
        return Ok(y);
    }
    let rows = x.numel() / d;
    let avail = usable_binding(ctx) as usize / dtype.size();
    let per = avail / d;
    if per == 0 {
        return Err(Error::BindingTooLarge { what: format!("layer_norm row of {d}"), bytes: (d * dtype.size()) as u64, limit: ctx.max_binding() });
    }
    let problem = NormProblem::Layer { rows, d, dtype };
    let kernel = match kernel {
        Some(k) => k,
        None => choose(ctx, &problem, |k| layer_norm_with(ctx, x, weight, bias, eps, Some(k)).map(drop)),
    };
    if let Some(why) = kernel.unsupported(ctx, &problem) {
        return Err(Error::Unsupported(format!("{}: variant {}: {why}", problem.key(), kernel.name())));
    }
    let spec = match kernel {
        NormKernel::Direct => KernelSpec::new("norm", ln_source(), "ln_main", dtype).define("WG", format!("{LN_WG}u")),
        _ => tree_spec(kernel, "ln_tree", dtype, false),
    };
    let mut r0 = 0;
    while r0 < rows {
        let rs = per.min(rows - r0);
        let (xb, x_off) = aligned_range(ctx, x, r0 * d, (r0 + rs) * d, r0 * d);
        let (yb, y_off) = aligned_range(ctx, &y, r0 * d, (r0 + rs) * d, r0 * d);
        let (grid, row) = flat_grid(ctx, rs, 1);
        let params = LnParams { d: d as u32, rows: rs as u32, row_groups: row, x_off, y_off, eps, _pad: [0; 2] };
        // The tree kernels read both norms' parameters through one 48-byte uniform.
        let mut bytes = bytemuck::bytes_of(&params).to_vec();
        if kernel != NormKernel::Direct {
            bytes.resize(std::mem::size_of::<GnParams>(), 0);
        }
        ctx.dispatch(&spec, &bytes, &[xb, weight.binding(), bias.binding(), yb], grid)?;
        r0 += rs;
    }
    Ok(y)
}

/// The norm family's variants: `direct` (kernels/norm.wgsl: chunked group norm, 64-wide layer
/// norm rows; the CPU-adapter kernels), `tree` and `subgroup` (kernels/norm_tree.wgsl: one
/// 256-wide workgroup per group or row, reduced through workgroup memory or by subgroupAdd).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormKernel {
    Direct,
    Tree,
    Subgroup,
}

pub const ALL: [NormKernel; 3] = [NormKernel::Direct, NormKernel::Tree, NormKernel::Subgroup];

/// A norm problem as variants are chosen for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormProblem {
    Group { n: usize, c: usize, hw: usize, groups: usize, dtype: DType },
    Layer { rows: usize, d: usize, dtype: DType },
}

impl NormProblem {
    /// `group_norm:f16:2x320x4096:g32` (N x C x H*W, groups), `layer_norm:f32:8192x320` (rows x D).
    pub fn key(&self) -> String {
        match *self {
            NormProblem::Group { n, c, hw, groups, dtype } => format!("group_norm:{}:{n}x{c}x{hw}:g{groups}", dtype.name()),
            NormProblem::Layer { rows, d, dtype } => format!("layer_norm:{}:{rows}x{d}", dtype.name()),
        }
    }
    /// Elements one tree workgroup reduces.
    fn span(&self) -> usize {
        match *self {
            NormProblem::Group { c, hw, groups, .. } => c / groups.max(1) * hw,
            NormProblem::Layer { d, .. } => d,
        }
    }
    fn dtype(&self) -> DType {
        match *self {
            NormProblem::Group { dtype, .. } | NormProblem::Layer { dtype, .. } => dtype,
        }
    }
}

impl NormKernel {
    pub fn name(&self) -> &'static str {
        match self {
            NormKernel::Direct => "direct",
            NormKernel::Tree => "tree",
            NormKernel::Subgroup => "subgroup",
        }
    }

    pub fn parse(s: &str) -> Option<NormKernel> {
        ALL.into_iter().find(|k| k.name() == s)
    }

    /// Why this adapter cannot run the variant at `p`, if it cannot.
    pub fn unsupported(&self, ctx: &Context, p: &NormProblem) -> Option<String> {
        if *self == NormKernel::Direct {
            return None;
        }
        if *self == NormKernel::Subgroup && !ctx.subgroups {
            return Some("the adapter has no SUBGROUP feature".into());
        }
        if TREE_WG as u32 > ctx.limits.max_compute_invocations_per_workgroup {
            return Some(format!("{TREE_WG} invocations per workgroup, over this adapter's limit"));
        }
        let span = p.span();
        if span > usable_binding(ctx) as usize / p.dtype().size() {
            return Some(format!("a group of {span} elements does not fit one storage binding (the direct kernel splits it)"));
        }
        // Three passes over the group plus the reduction loops, against lavapipe's 65535-iteration limit.
        let iters = 3 * span.div_ceil(TREE_WG) + 2 * TREE_WG;
        if ctx.info.device_type == wgpu::DeviceType::Cpu && iters > super::gemm::LAVAPIPE_MAX_LOOP {
            return Some(format!("{iters} loop iterations per invocation, over the {} this software Vulkan driver runs", super::gemm::LAVAPIPE_MAX_LOOP));
        }
        None
    }
}

fn tree_spec(kernel: NormKernel, entry: &'static str, dtype: DType, silu: bool) -> KernelSpec {
    use std::sync::OnceLock;
    static SOURCES: [OnceLock<String>; 2] = [OnceLock::new(), OnceLock::new()];
    let subgroup = kernel == NormKernel::Subgroup;
    let src = SOURCES[subgroup as usize].get_or_init(|| {
        let (body, red) = TREE.split_once("//--- reduce: workgroup").expect("norm_tree.wgsl sections");
        let (wg, sg) = red.split_once("//--- reduce: subgroup").expect("norm_tree.wgsl sections");
        format!("{body}{}", if subgroup { sg } else { wg })
    });
    KernelSpec::new("norm", src.as_str(), entry, dtype)
        .define("WG", format!("{TREE_WG}u"))
        .define("SILU", format!("{}u", silu as u32))
        .define("SUBGROUP", subgroup)
}

/// The variants that can run `p` on this adapter.
pub fn candidates(ctx: &Context, p: &NormProblem) -> Vec<NormKernel> {
    ALL.into_iter().filter(|k| k.unsupported(ctx, p).is_none()).collect()
}

/// Without measuring: the direct kernels on CPU adapters and in the browser; on native GPUs
/// the subgroup (else tree) kernel for groups up to 64K elements (SD's UNet), the chunked direct
/// kernel for bigger ones (the VAE's 1M-element groups: one workgroup each would idle the GPU).
pub fn fixed(ctx: &Context, p: &NormProblem) -> NormKernel {
    if ctx.info.device_type == wgpu::DeviceType::Cpu || cfg!(target_arch = "wasm32") || p.span() > 65536 {
        return NormKernel::Direct;
    }
    let cands = candidates(ctx, p);
    [NormKernel::Subgroup, NormKernel::Tree].into_iter().find(|k| cands.contains(k)).unwrap_or(NormKernel::Direct)
}

/// The variant for `p`, as GEMM's choice ([`super::gemm_tune::choose_named`]).
pub fn choose(ctx: &Context, p: &NormProblem, mut run: impl FnMut(NormKernel) -> Result<()>) -> NormKernel {
    record(p);
    let names: Vec<String> = candidates(ctx, p).iter().map(|k| k.name().to_string()).collect();
    let name = super::gemm_tune::choose_named(ctx, p.key(), &names, fixed(ctx, p).name(), |n| run(NormKernel::parse(n).unwrap_or(NormKernel::Direct)));
    NormKernel::parse(&name).filter(|k| k.unsupported(ctx, p).is_none()).unwrap_or(NormKernel::Direct)
}

static RECORDING: std::sync::Mutex<Option<Vec<NormProblem>>> = std::sync::Mutex::new(None);

/// Start (or stop, returning them) recording the distinct norm problems run (`pigment tune --model`).
pub fn set_recording(on: bool) -> Vec<NormProblem> {
    let mut r = RECORDING.lock().unwrap();
    let old = r.take().unwrap_or_default();
    if on {
        *r = Some(vec![]);
    }
    old
}

fn record(p: &NormProblem) {
    if let Some(list) = RECORDING.lock().unwrap().as_mut() {
        if !list.contains(p) {
            list.push(*p);
        }
    }
}

/// SD 1.5's UNet norms at a `latent`² latent, batch 2: group norms (32 groups) of 320/640/1280
/// channels per level and the transformer blocks' layer norms.
pub fn sd15_unet_problems(latent: usize, dtype: DType) -> Vec<NormProblem> {
    let mut v = vec![];
    let mut side = latent;
    for c in [320, 640, 1280, 1280] {
        let hw = side * side;
        v.push(NormProblem::Group { n: 2, c, hw, groups: 32, dtype });
        v.push(NormProblem::Layer { rows: 2 * hw, d: c, dtype }); // the mid block has one too
        side = side.div_ceil(2);
    }
    v.dedup();
    v
}

/// Both tree kernels' WGSL as the device compiles it (tests validate them with naga).
pub fn sources_for_validation(dtype: DType) -> Vec<(String, String)> {
    let mut out = vec![];
    for k in [NormKernel::Tree, NormKernel::Subgroup] {
        for entry in ["gn_tree", "ln_tree"] {
            out.push((format!("{} {entry} {dtype:?}", k.name()), tree_spec(k, entry, dtype, true).full_source()));
        }
    }
    out
}
