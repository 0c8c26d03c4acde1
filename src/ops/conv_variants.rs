//! The conv2d family's variants and their measured choice (`ops::conv` is the op).
//!
//! - `direct` (`kernels/conv2d.wgsl`): register-blocked direct convolution, no workgroup memory,
//!   any shape, splits over the binding limit. The CPU-adapter kernel.
//! - `igemm:BMxBNxBK:TMxTN` (`kernels/conv2d_igemm.wgsl` on `kernels/gemm_tiled.wgsl`'s core):
//!   implicit GEMM, M = output channels, N = output pixels, K = Cin*KH*KW, the im2col gather
//!   done while loading the B tile. Needs x, w and y each in one binding.
//! - `gemm`: 1x1 stride-1 unpadded convolutions, and convolutions on a 1x1 image where only
//!   the centre tap sees data, run as a GEMM (`ops::gemm`, whose own tuned variant runs).
//!   Always chosen where it applies; not timed against the others.
//!
//! The choice shares gemm's choice map, disk cache and `PIGMENT_TUNE` (`ops::gemm_tune`), with
//! keys `conv2d:f32:2x320x64x64:k3x3s1p1:320`.

use super::gemm::{Kernel, Problem};
use super::gemm_variants::{Blocking, TILED_CANDIDATES};
use crate::error::Result;
use crate::gpu::{Binding, Context, DType, KernelSpec};

const IGEMM: &str = include_str!("../../kernels/conv2d_igemm.wgsl");

/// A convolution problem: what a variant is chosen and tuned for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvProblem {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub dtype: DType,
}

impl ConvProblem {
    pub fn out_hw(&self) -> (usize, usize) {
        (super::conv::conv_out_dim(self.h, self.kh, self.stride, self.pad), super::conv::conv_out_dim(self.w, self.kw, self.stride, self.pad))
    }
    /// Reduction length of the implicit GEMM.
    pub fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    /// A 1x1, stride-1, unpadded convolution: a GEMM per batch entry.
    pub fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    /// Runs as a GEMM: a pointwise convolution on 8x8 pixels or more (GEMM's N is the pixels;
    /// on 2x2..4x4 images the register kernel filled 4-16 of its 128 columns and ran 2.5-5x
    /// slower than `direct` in a latent-8 UNet profile), or on a 1x1 image with only the
    /// centre tap seeing data (then a Linear, N = Cout).
    pub fn as_gemm(&self) -> bool {
        (self.pointwise() && self.h * self.w >= 64) || self.centre_only()
    }
    /// A 1x1 image with "same" padding (none for 1x1 kernels) and stride 1: only the centre tap
    /// sees data.
    pub fn centre_only(&self) -> bool {
        self.h == 1 && self.w == 1 && self.stride == 1 && self.kh % 2 == 1 && self.kw % 2 == 1 && self.kh == self.kw && 2 * self.pad == self.kh - 1
    }
    fn bytes(&self, elems: usize) -> u64 {
        (elems * self.dtype.size()) as u64
    }
    /// x, w and y each fit one binding (the `gemm` and `igemm` routes do not split).
    fn fits(&self, ctx: &Context) -> bool {
        let (ho, wo) = self.out_hw();
        let lim = ctx.max_binding();
        self.bytes(self.n * self.cin * self.h * self.w) <= lim && self.bytes(self.cout * self.k()) <= lim && self.bytes(self.n * self.cout * ho * wo) <= lim
    }
}

/// The conv2d kernel variants (one family, `conv2d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvKernel {
    Direct,
    Igemm(Blocking),
    Gemm,
}

/// Tiles the tuner tries for `igemm`: gemm's tiled candidates and a 32x32 block for small
/// images and channel counts.
pub fn igemm_candidates() -> Vec<Blocking> {
    let mut v = TILED_CANDIDATES.to_vec();
    v.push(Blocking { bm: 32, bn: 32, bk: 16, tm: 4, tn: 4 });
    v
}

impl ConvKernel {
    /// Stable name (tuning cache, selftest lines): `direct`, `igemm:64x64x16:4x4`, `gemm`.
    pub fn name(&self) -> String {
        match self {
            ConvKernel::Direct => "direct".into(),
            ConvKernel::Igemm(b) => format!("igemm:{}x{}x{}:{}x{}", b.bm, b.bn, b.bk, b.tm, b.tn),
            ConvKernel::Gemm => "gemm".into(),
        }
    }

    pub fn parse(s: &str) -> Option<ConvKernel> {
        match s.split_once(':') {
            None if s == "direct" => Some(ConvKernel::Direct),
            None if s == "gemm" => Some(ConvKernel::Gemm),
            Some(("igemm", b)) => Blocking::parse(b).map(ConvKernel::Igemm),
            _ => None,
        }
    }

    /// The implicit GEMM's problem as the tiled core sees it (one batch entry per z).
    fn igemm_problem(p: &ConvProblem) -> Problem {
        let (ho, wo) = p.out_hw();
        Problem { batch: p.n, m: p.cout, n: ho * wo, k: p.k(), trans_a: false, trans_b: false, dtype: p.dtype }
    }

    /// Why this adapter or problem cannot run the variant (None: it can).
    pub fn unsupported(&self, ctx: &Context, p: &ConvProblem) -> Option<String> {
        let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
        match self {
            ConvKernel::Direct => None,
            ConvKernel::Gemm if !p.as_gemm() => {
                Some("only 1x1 stride-1 unpadded convolutions on 8x8 pixels or more and convolutions on 1x1 images run as a GEMM".into())
            }
            ConvKernel::Igemm(_) | ConvKernel::Gemm if !p.fits(ctx) || p.n > max_groups => {
                Some(format!("x, w and y must each fit one {}-byte binding (direct splits them)", ctx.max_binding()))
            }
            // The GEMM's reduction is one loop over Cin (direct splits longer ones).
            ConvKernel::Gemm if ctx.info.device_type == wgpu::DeviceType::Cpu && p.cin > super::gemm::LAVAPIPE_MAX_LOOP => {
                Some(format!("a reduction of {} input channels is over the {} loop iterations this software Vulkan driver runs", p.cin, super::gemm::LAVAPIPE_MAX_LOOP))
            }
            ConvKernel::Gemm => None,
            ConvKernel::Igemm(b) => {
                let gp = Self::igemm_problem(p);
                if let Some(why) = Kernel::Tiled(*b).unsupported(ctx, &gp) {
                    return Some(why);
                }
                let iters = super::gemm_variants::loop_iters(&Kernel::Tiled(*b), &gp);
                if ctx.info.device_type == wgpu::DeviceType::Cpu && iters > super::gemm::LAVAPIPE_MAX_LOOP {
                    return Some(format!("K = {} needs {iters} loop iterations per invocation, over the {} this software Vulkan driver runs", gp.k, super::gemm::LAVAPIPE_MAX_LOOP));
                }
                if gp.n.div_ceil(b.bn as usize) > max_groups || gp.m.div_ceil(b.bm as usize) > max_groups {
                    return Some("too many workgroups".into());
                }
                None
            }
        }
    }
}

/// The cache key of a problem: `conv2d:f32:2x320x64x64:k3x3s1p1:320`.
pub fn problem_key(p: &ConvProblem) -> String {
    format!("conv2d:{}:{}x{}x{}x{}:k{}x{}s{}p{}:{}", p.dtype.name(), p.n, p.cin, p.h, p.w, p.kh, p.kw, p.stride, p.pad, p.cout)
}

/// Every variant worth timing for `p` on this adapter (those it can run).
pub fn candidates(ctx: &Context, p: &ConvProblem) -> Vec<ConvKernel> {
    if ConvKernel::Gemm.unsupported(ctx, p).is_none() {
        return vec![ConvKernel::Gemm];
    }
    let mut v = vec![ConvKernel::Direct];
    v.extend(igemm_candidates().into_iter().map(ConvKernel::Igemm));
    v.retain(|k| k.unsupported(ctx, p).is_none());
    v
}

/// The choice without measuring: `gemm` where it applies; `direct` on CPU adapters and in the
/// browser; on native GPUs `igemm:64x64x16:4x4` for problems that fill its block, else direct.
pub fn fixed(ctx: &Context, p: &ConvProblem) -> ConvKernel {
    if ConvKernel::Gemm.unsupported(ctx, p).is_none() {
        return ConvKernel::Gemm;
    }
    if ctx.info.device_type == wgpu::DeviceType::Cpu || cfg!(target_arch = "wasm32") {
        return ConvKernel::Direct;
    }
    let (ho, wo) = p.out_hw();
    let tiled = ConvKernel::Igemm(Blocking { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 });
    if p.cout >= 64 && ho * wo >= 64 && tiled.unsupported(ctx, p).is_none() {
        tiled
    } else {
        ConvKernel::Direct
    }
}

/// The variant for `p`: the context's choice if made, else `pigment tune`'s cache, else a
/// quick measurement (`run` runs the convolution with a given variant) or the fixed ranking.
pub fn choose(ctx: &Context, p: &ConvProblem, mut run: impl FnMut(ConvKernel) -> Result<()>) -> ConvKernel {
    record(p);
    if ConvKernel::Gemm.unsupported(ctx, p).is_none() {
        return ConvKernel::Gemm;
    }
    if super::gemm_tune::env_mode() == Some(false) {
        return fixed(ctx, p);
    }
    let key = problem_key(p);
    if let Some(k) = super::gemm_tune::cached_choice(ctx, &key).and_then(|s| ConvKernel::parse(&s)) {
        if k.unsupported(ctx, p).is_none() {
            return k;
        }
    }
    let kernel = if super::gemm_tune::measure_on_first_use(ctx) {
        let mut best = (fixed(ctx, p), f64::INFINITY);
        for k in candidates(ctx, p) {
            if let Ok(ms) = super::gemm_tune::time(ctx, 2, 0.0, || run(k)) {
                if ms < best.1 {
                    best = (k, ms);
                }
            }
        }
        best.0
    } else {
        fixed(ctx, p)
    };
    ctx.gemm_choices.lock().unwrap().insert(key, kernel.name());
    kernel
}

static RECORDING: std::sync::Mutex<Option<Vec<ConvProblem>>> = std::sync::Mutex::new(None);

/// Start (or stop, returning them) recording the distinct conv problems the op runs (`pigment
/// tune --model`).
pub fn set_recording(on: bool) -> Vec<ConvProblem> {
    let mut r = RECORDING.lock().unwrap();
    let old = r.take().unwrap_or_default();
    if on {
        *r = Some(vec![]);
    }
    old
}

fn record(p: &ConvProblem) {
    if let Some(list) = RECORDING.lock().unwrap().as_mut() {
        if !list.contains(p) {
            list.push(*p);
        }
    }
}

/// SD 1.5's UNet 3x3 convolutions at a `latent`² latent, batch 2 (the 1x1 ones run as GEMMs).
pub fn sd15_unet_convs(latent: usize, dtype: DType) -> Vec<ConvProblem> {
    let c = |cin: usize, s: usize, cout: usize, stride: usize| ConvProblem { n: 2, cin, h: s, w: s, cout, kh: 3, kw: 3, stride, pad: 1, dtype };
    let ch = [320, 640, 1280, 1280];
    let mut sides = vec![latent];
    for _ in 1..4 {
        sides.push(sides.last().unwrap().div_ceil(2));
    }
    let mut v = vec![c(4, latent, 320, 1), c(320, latent, 4, 1)];
    for i in 0..4 {
        let (s, co) = (sides[i], ch[i]);
        let prev = if i == 0 { 320 } else { ch[i - 1] };
        v.extend([c(prev, s, co, 1), c(co, s, co, 1)]); // down resnets
        if i < 3 {
            v.push(c(co, s, co, 2)); // downsampler
        }
        // Up blocks at this level: concatenated skips in, then the upsampler's conv.
        let next = if i == 3 { 1280 } else { ch[i + 1] };
        for cin in [co + next, 2 * co, co + prev] {
            v.push(c(cin, s, co, 1));
        }
        if i > 0 {
            v.push(c(co, s, co, 1));
        }
    }
    v.sort_by_key(|q| (q.h, q.cin, q.cout, q.stride));
    v.dedup();
    v
}

/// Records one implicit-GEMM dispatch (the caller checked [`ConvKernel::unsupported`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn igemm(ctx: &Context, b: Blocking, p: &ConvProblem, x: Binding, w: Binding, y: Binding, bias: Option<Binding>, res: Option<Binding>) -> Result<()> {
    let gp = ConvKernel::igemm_problem(p);
    let vec4 = gp.k % 4 == 0;
    let u = |v: u32| format!("{v}u");
    // VEC4 names the weight loader in the pipeline-cache key (which holds defines, not source).
    let spec = KernelSpec::new("conv2d", igemm_source(vec4), "main", p.dtype)
        .define("VEC4", vec4)
        .define("BM", u(b.bm))
        .define("BN", u(b.bn))
        .define("BK", u(b.bk))
        .define("TM", u(b.tm))
        .define("TN", u(b.tn))
        .define("KH", u(p.kh as u32))
        .define("KW", u(p.kw as u32))
        .define("STRIDE", p.stride as i32)
        .define("PAD", p.pad as i32)
        .define("TRANS_A", false)
        .define("TRANS_B", false)
        .define("HAS_BIAS", bias.is_some())
        .define("BIAS_ROWS", true)
        .define("HAS_RES", res.is_some())
        .define("ACT", "0u");
    let (ho, wo) = p.out_hw();
    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    struct Params([u32; 9], f32, [u32; 2]);
    let params = Params(
        [gp.m as u32, gp.n as u32, gp.k as u32, gp.k as u32, p.w as u32, (ho * wo) as u32, 0, (p.cin * p.h * p.w) as u32, (p.cout * ho * wo) as u32],
        1.0,
        [p.h as u32, wo as u32],
    );
    let grid = [gp.n.div_ceil(b.bn as usize) as u32, gp.m.div_ceil(b.bm as usize) as u32, p.n as u32];
    ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[w, x, y, bias.unwrap_or(w), res.unwrap_or(w)], grid)
}

/// The tiled core with the conv loaders and the scalar or vec4 weight loader.
fn igemm_source(vec4: bool) -> &'static str {
    use std::sync::OnceLock;
    static SOURCES: [OnceLock<String>; 2] = [OnceLock::new(), OnceLock::new()];
    SOURCES[vec4 as usize].get_or_init(|| {
        let (common, weights) = IGEMM.split_once("//--- weights: scalar").expect("conv2d_igemm.wgsl sections");
        let (scalar, vec) = weights.split_once("//--- weights: vec4").expect("conv2d_igemm.wgsl sections");
        format!("{}{}{common}{}", super::gemm::GEMM_EPILOGUE, super::gemm_variants::tiled_body(), if vec4 { vec } else { scalar })
    })
}

/// The igemm WGSL for `dtype` with representative constants (tests validate it with naga).
pub fn sources_for_validation(dtype: DType) -> Vec<(String, String)> {
    [true, false]
        .into_iter()
        .map(|vec4| {
            let b = TILED_CANDIDATES[0];
            let spec = KernelSpec::new("conv2d", igemm_source(vec4), "main", dtype)
                .define("VEC4", vec4)
                .define("BM", format!("{}u", b.bm))
                .define("BN", format!("{}u", b.bn))
                .define("BK", format!("{}u", b.bk))
                .define("TM", format!("{}u", b.tm))
                .define("TN", format!("{}u", b.tn))
                .define("KH", "3u")
                .define("KW", "3u")
                .define("STRIDE", 2)
                .define("PAD", 1)
                .define("TRANS_A", false)
                .define("TRANS_B", false)
                .define("HAS_BIAS", true)
                .define("BIAS_ROWS", true)
                .define("HAS_RES", true)
                .define("ACT", "0u");
            (format!("conv2d igemm vec4 {vec4} {dtype:?}"), spec.full_source())
        })
        .collect()
}
