//! The variants of the attention family and their choice by measurement (`ops::attention` is
//! the op: checks, binding splits, dispatch). `direct` is today's kernel
//! (`kernels/attention.wgsl`, K/V read straight from storage, the CPU-adapter variant); `fa2`
//! is `kernels/attention_fa2.wgsl` (K/V tiles in workgroup memory, team reductions by subgroup
//! shuffles or through workgroup memory), for GPUs.

use crate::error::Result;
use crate::gpu::{Context, DType, KernelSpec};

const FA2: &str = concat!(include_str!("../../kernels/attention_io.wgsl"), include_str!("../../kernels/attention_fa2.wgsl"));

/// Lanes per query row in the FA2 kernel (FA2's quad; every subgroup size in use is >= 4).
pub const TEAM: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttnKernel {
    /// `kernels/attention.wgsl`: R rows per invocation, K/V from storage, generated unrolled code.
    Direct,
    /// `kernels/attention_fa2.wgsl`: `br` query rows per workgroup; team reductions by subgroup
    /// shuffles (`subgroup`) or through workgroup memory.
    Fa2 { br: u32, subgroup: bool },
}

/// The shape a variant is chosen for (strides and offsets do not matter to the choice).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttnProblem {
    pub batch: usize,
    pub heads: usize,
    pub lq: usize,
    pub lk: usize,
    pub head_dim: usize,
    pub causal: bool,
    pub dtype: DType,
}

impl AttnProblem {
    /// `attention:f16:2x8x4096x77x40` (batch x heads x Lq x Lk x D), `:causal` when masked.
    pub fn key(&self) -> String {
        let (b, h, q, k, d) = (self.batch, self.heads, self.lq, self.lk, self.head_dim);
        format!("attention:{}:{b}x{h}x{q}x{k}x{d}{}", self.dtype.name(), if self.causal { ":causal" } else { "" })
    }
}

/// Every variant this build has (selftest and tests force each one).
pub const ALL: [AttnKernel; 5] = [
    AttnKernel::Direct,
    AttnKernel::Fa2 { br: 16, subgroup: false },
    AttnKernel::Fa2 { br: 32, subgroup: false },
    AttnKernel::Fa2 { br: 16, subgroup: true },
    AttnKernel::Fa2 { br: 32, subgroup: true },
];

impl AttnKernel {
    /// `direct`, `fa2:wg:16`, `fa2:subgroup:32` (selftest lines, the tuning cache).
    pub fn name(&self) -> String {
        match self {
            AttnKernel::Direct => "direct".into(),
            AttnKernel::Fa2 { br, subgroup } => format!("fa2:{}:{br}", if *subgroup { "subgroup" } else { "wg" }),
        }
    }

    pub fn parse(s: &str) -> Option<AttnKernel> {
        ALL.into_iter().find(|k| k.name() == s)
    }

    /// Keys per staged tile: the largest of 64, 32, 16, 8 whose K, V and P tiles (and the
    /// reduction scratch) fit the adapter's workgroup memory.
    fn bc(&self, ctx: &Context, head_dim: usize) -> Option<u32> {
        let AttnKernel::Fa2 { br, subgroup } = *self else { return None };
        let d4 = head_dim.div_ceil(4) as u32;
        let red = if subgroup { 0 } else { br * TEAM * 4 };
        [64u32, 32, 16, 8].into_iter().find(|bc| 2 * bc * d4 * 16 + br * bc * 4 + red <= ctx.limits.max_compute_workgroup_storage_size)
    }

    /// Why this adapter cannot run the variant at `p`, if it cannot.
    pub fn unsupported(&self, ctx: &Context, p: &AttnProblem) -> Option<String> {
        let AttnKernel::Fa2 { br, subgroup } = *self else { return None };
        let wg = br * TEAM;
        if wg > ctx.limits.max_compute_invocations_per_workgroup || wg > ctx.limits.max_compute_workgroup_size_x {
            return Some(format!("{wg} invocations per workgroup, over this adapter's limit"));
        }
        if subgroup && !ctx.subgroups {
            return Some("the adapter has no SUBGROUP feature".into());
        }
        if subgroup && ctx.info.subgroup_min_size < TEAM {
            return Some(format!("subgroups of {} lanes, under the team of {TEAM}", ctx.info.subgroup_min_size));
        }
        if self.bc(ctx, p.head_dim).is_none() {
            return Some(format!("head dim {} tiles do not fit {} bytes of workgroup memory", p.head_dim, ctx.limits.max_compute_workgroup_storage_size));
        }
        // Mesa 22's lavapipe silently ends an invocation's loops after 65535 iterations in total.
        if ctx.info.device_type == wgpu::DeviceType::Cpu && self.loop_iters(ctx, p) > super::gemm::LAVAPIPE_MAX_LOOP {
            return Some(format!("{} loop iterations per invocation, over the {} this software Vulkan driver runs", self.loop_iters(ctx, p), super::gemm::LAVAPIPE_MAX_LOOP));
        }
        None
    }

    /// Loop iterations per invocation, counting every loop as lavapipe's limiter does.
    pub fn loop_iters(&self, ctx: &Context, p: &AttnProblem) -> usize {
        let AttnKernel::Fa2 { br, .. } = *self else { return p.lk };
        let bc = self.bc(ctx, p.head_dim).unwrap_or(8) as usize;
        let (d4, t) = (p.head_dim.div_ceil(4), TEAM as usize);
        let d4t = d4.div_ceil(t);
        let per_tile = (bc * d4).div_ceil(br as usize * t) + bc / t * (d4 + 2) + 2 * t + d4t + bc * (d4t + 1) + 1;
        d4 + p.lk.div_ceil(bc) * per_tile + d4t
    }

    /// Query rows one workgroup covers.
    pub fn rows_per_group(&self, rows_per_inv: usize, wg: usize) -> usize {
        match self {
            AttnKernel::Direct => rows_per_inv * wg,
            AttnKernel::Fa2 { br, .. } => *br as usize,
        }
    }

    /// The FA2 kernel's specialisation (the direct one is generated by `ops::attention`).
    pub fn fa2_spec(&self, ctx: &Context, head_dim: usize, causal: bool, dtype: DType) -> KernelSpec {
        let AttnKernel::Fa2 { br, subgroup } = *self else { unreachable!("the direct kernel is built by ops::attention") };
        let bc = self.bc(ctx, head_dim).unwrap_or(8);
        let d4 = head_dim.div_ceil(4) as u32;
        let u = |v: u32| format!("{v}u");
        KernelSpec::new("attention", fa2_source(subgroup), "main", dtype)
            .define("D", u(head_dim as u32))
            .define("DF", u(head_dim as u32 / 4))
            .define("TAIL", u(head_dim as u32 % 4))
            .define("D4", u(d4))
            .define("BR", u(br))
            .define("BC", u(bc))
            .define("TEAM", u(TEAM))
            .define("WG", u(br * TEAM))
            .define("D4T", u(d4.div_ceil(TEAM)))
            .define("KPL", u(bc / TEAM))
            .define("SUBGROUP", subgroup)
            .define("CAUSAL", causal)
    }
}

/// `kernels/attention_fa2.wgsl` with its workgroup or subgroup reduction section.
fn fa2_source(subgroup: bool) -> &'static str {
    use std::sync::OnceLock;
    static SOURCES: [OnceLock<String>; 2] = [OnceLock::new(), OnceLock::new()];
    SOURCES[subgroup as usize].get_or_init(|| {
        let (body, red) = FA2.split_once("//--- reduce: workgroup").expect("attention_fa2.wgsl sections");
        let (wg, sg) = red.split_once("//--- reduce: subgroup").expect("attention_fa2.wgsl sections");
        format!("{body}{}", if subgroup { sg } else { wg })
    })
}

/// The variants worth timing for `p` on this adapter (those it can run).
pub fn candidates(ctx: &Context, p: &AttnProblem) -> Vec<AttnKernel> {
    ALL.into_iter().filter(|k| k.unsupported(ctx, p).is_none()).collect()
}

/// The choice without measuring: the direct kernel on CPU adapters and in the browser (the
/// browser tests do not cover FA2 yet); on native GPUs FA2, subgroup reductions where offered.
pub fn fixed(ctx: &Context, p: &AttnProblem) -> AttnKernel {
    if ctx.info.device_type == wgpu::DeviceType::Cpu || cfg!(target_arch = "wasm32") {
        return AttnKernel::Direct;
    }
    let cands = candidates(ctx, p);
    [AttnKernel::Fa2 { br: 16, subgroup: true }, AttnKernel::Fa2 { br: 16, subgroup: false }]
        .into_iter()
        .find(|k| cands.contains(k))
        .unwrap_or(AttnKernel::Direct)
}

/// The variant for `p` (context choice, disk cache, quick measurement or fixed ranking, as
/// GEMM's: [`super::gemm_tune::choose_named`]).
pub fn choose(ctx: &Context, p: &AttnProblem, mut run: impl FnMut(AttnKernel) -> Result<()>) -> AttnKernel {
    record(p);
    let names: Vec<String> = candidates(ctx, p).iter().map(|k| k.name()).collect();
    let name = super::gemm_tune::choose_named(ctx, p.key(), &names, &fixed(ctx, p).name(), |n| run(AttnKernel::parse(n).unwrap_or(AttnKernel::Direct)));
    AttnKernel::parse(&name).filter(|k| k.unsupported(ctx, p).is_none()).unwrap_or(AttnKernel::Direct)
}

static RECORDING: std::sync::Mutex<Option<Vec<AttnProblem>>> = std::sync::Mutex::new(None);

/// Start (or stop, returning them) recording the distinct attention problems run (`pigment tune
/// --model`).
pub fn set_recording(on: bool) -> Vec<AttnProblem> {
    let mut r = RECORDING.lock().unwrap();
    let old = r.take().unwrap_or_default();
    if on {
        *r = Some(vec![]);
    }
    old
}

fn record(p: &AttnProblem) {
    if let Some(list) = RECORDING.lock().unwrap().as_mut() {
        if !list.contains(p) {
            list.push(*p);
        }
    }
}

/// SD 1.5's UNet attention at a `latent`² latent, batch 2: self-attention and cross-attention
/// to 77 tokens, 8 heads of 40/80/160 at the levels that have attention.
pub fn sd15_unet_problems(latent: usize, dtype: DType) -> Vec<AttnProblem> {
    let mut v = vec![];
    let mut side = latent;
    for d in [40, 80, 160] {
        let l = side * side;
        for lk in [l, 77] {
            v.push(AttnProblem { batch: 2, heads: 8, lq: l, lk, head_dim: d, causal: false, dtype });
        }
        side = side.div_ceil(2);
    }
    v
}

/// Every FA2 specialisation's WGSL with representative constants (tests validate them with naga).
pub fn sources_for_validation(ctx: &Context, dtype: DType) -> Vec<(String, String)> {
    let mut out = vec![];
    for k in ALL.into_iter().filter(|k| *k != AttnKernel::Direct) {
        for d in [40, 64, 80, 160, 33] {
            out.push((format!("{} d{d} {dtype:?}", k.name()), k.fa2_spec(ctx, d, true, dtype).full_source()));
        }
    }
    out
}
