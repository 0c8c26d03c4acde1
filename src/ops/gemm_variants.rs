//! The GPU-class GEMM variants of the gemm family (`ops::gemm` is the op and the selection
//! layer): the workgroup-tiled kernel (`kernels/gemm_tiled.wgsl`), the subgroup kernel
//! (`kernels/gemm_subgroup.wgsl`) and the cooperative-matrix kernel
//! (`kernels/gemm_coopmat.wgsl`). This file builds their specialisations and says what each
//! needs from the adapter.

use super::gemm::{Kernel, Problem};
use crate::gpu::{Context, DType, KernelSpec};

const PRELUDE: &str = super::gemm::GEMM_EPILOGUE;
const TILED: &str = include_str!("../../kernels/gemm_tiled.wgsl");
const SUBGROUP: &str = concat!(include_str!("../../kernels/activations.wgsl"), include_str!("../../kernels/gemm_epilogue.wgsl"), include_str!("../../kernels/gemm_subgroup.wgsl"));
const COOPMAT: &str = concat!(include_str!("../../kernels/activations.wgsl"), include_str!("../../kernels/gemm_epilogue.wgsl"), include_str!("../../kernels/gemm_coopmat.wgsl"));

/// Workgroup tile of the tiled kernel: a BM x BN block of C per workgroup, K in steps of BK,
/// a TM x TN register tile per invocation ((BM/TM)*(BN/TN) invocations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Blocking {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub tm: u32,
    pub tn: u32,
}

impl Blocking {
    /// `BMxBNxBK:TMxTN`.
    pub fn parse(s: &str) -> Option<Blocking> {
        let (outer, inner) = s.split_once(':')?;
        let o: Vec<u32> = outer.split('x').filter_map(|p| p.parse().ok()).collect();
        let i: Vec<u32> = inner.split('x').filter_map(|p| p.parse().ok()).collect();
        match (&o[..], &i[..]) {
            (&[bm, bn, bk], &[tm, tn]) => Some(Blocking { bm, bn, bk, tm, tn }),
            _ => None,
        }
    }

    pub fn threads(&self) -> u32 {
        (self.bm / self.tm.max(1)) * (self.bn / self.tn.max(1))
    }

    /// Workgroup memory: two buffers of A and B k-tiles in f32.
    pub fn shared_bytes(&self) -> u32 {
        2 * self.bk * (self.bm + self.bn) * 4
    }
}

/// Tiles the tuner tries for the tiled kernel (published practice: gpu.cpp 128x128, BK 16,
/// 8x8 per thread; ggml-webgpu 64x64, K 32), those that fit the adapter.
pub const TILED_CANDIDATES: [Blocking; 4] = [
    Blocking { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 },
    Blocking { bm: 64, bn: 64, bk: 32, tm: 4, tn: 4 },
    Blocking { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8 },
    Blocking { bm: 128, bn: 64, bk: 16, tm: 8, tn: 4 },
];

/// Register tiles the tuner tries for the subgroup kernel.
pub const SUBGROUP_CANDIDATES: [super::gemm::Tile; 2] =
    [super::gemm::Tile { tm: 4, tn: 4, wg: 64 }, super::gemm::Tile { tm: 8, tn: 2, wg: 128 }];

pub(crate) fn unsupported(kernel: &Kernel, ctx: &Context, p: &Problem) -> Option<String> {
    match kernel {
        Kernel::Register(_) => None,
        Kernel::Tiled(b) => {
            let l = &ctx.limits;
            if b.bk % 4 != 0 || b.tm == 0 || b.tn == 0 || b.bm % b.tm != 0 || b.bn % b.tn != 0 || b.bn % 4 != 0 {
                Some(format!("tile {b:?}: BK and BN must be multiples of 4, BM of TM, BN of TN"))
            } else if b.threads() > l.max_compute_invocations_per_workgroup || b.threads() > l.max_compute_workgroup_size_x {
                Some(format!("{} invocations per workgroup, over this adapter's {}", b.threads(), l.max_compute_invocations_per_workgroup))
            } else if b.shared_bytes() > l.max_compute_workgroup_storage_size {
                Some(format!("{} bytes of workgroup memory, over this adapter's {}", b.shared_bytes(), l.max_compute_workgroup_storage_size))
            } else {
                None
            }
        }
        Kernel::Subgroup(t) => {
            if !ctx.subgroups {
                Some("the adapter has no SUBGROUP feature".into())
            } else if t.wg > ctx.limits.max_compute_invocations_per_workgroup || t.tm == 0 || t.tn == 0 {
                Some(format!("tile {t:?} does not fit this adapter"))
            } else {
                None
            }
        }
        Kernel::CoopMat => {
            if !ctx.coopmat {
                Some("the adapter offers no 16x16x16 f16 cooperative matrices (EXPERIMENTAL_COOPERATIVE_MATRIX)".into())
            } else if p.dtype != DType::F16 {
                Some("cooperative matrices take f16 storage".into())
            } else {
                None
            }
        }
    }
}

/// Loop iterations per invocation, counting every loop as lavapipe's limiter does (the tiled
/// and subgroup kernels loop over their register tiles; lavapipe does not unroll them).
pub(crate) fn loop_iters(kernel: &Kernel, p: &Problem) -> usize {
    match kernel {
        Kernel::Register(_) => p.k,
        Kernel::Tiled(b) => {
            let (bm, bn, bk, tm, tn) = (b.bm as usize, b.bn as usize, b.bk as usize, b.tm as usize, b.tn as usize);
            let nt = b.threads().max(1) as usize;
            let loads = (bm * bk / 4).div_ceil(nt) + (bk * bn / 4).div_ceil(nt) + 2;
            let per_tile = loads + bk * (1 + 2 * tm + tn + tm * tn) + 1;
            (p.k.div_ceil(bk) + 1) * per_tile + tm * (tn + 1)
        }
        Kernel::Subgroup(t) => {
            // Per k: the shuffle loop's body over the register tile; per chunk, the A loads.
            // Assumes the smallest subgroup (4, SwiftShader) for the chunk overhead.
            let (tm, tn) = (t.tm as usize, t.tn as usize);
            p.k * (1 + tn + tm * (1 + tn)) + p.k.div_ceil(4) * (1 + tm) + tn + tm * (tn + 1)
        }
        Kernel::CoopMat => p.k.div_ceil(32) * (1 + 1024 / 32 + 2) + 1024 / 32,
    }
}

pub(crate) fn block(kernel: &Kernel, _p: &Problem) -> (usize, usize) {
    match kernel {
        Kernel::Register(t) | Kernel::Subgroup(t) => (t.tm as usize, (t.wg * t.tn) as usize),
        Kernel::Tiled(b) => (b.bm as usize, b.bn as usize),
        Kernel::CoopMat => (32, 32),
    }
}

pub(crate) fn spec(kernel: &Kernel, p: &Problem) -> KernelSpec {
    let u = |v: u32| format!("{v}u");
    match kernel {
        Kernel::Register(_) => unreachable!("the register kernel is built by ops::gemm"),
        // VEC4 names the loader in the pipeline-cache key (the key holds defines, not source).
        Kernel::Tiled(b) => KernelSpec::new("gemm", tiled_source(p.vec4()), "main", p.dtype)
            .define("VEC4", p.vec4())
            .define("BM", u(b.bm))
            .define("BN", u(b.bn))
            .define("BK", u(b.bk))
            .define("TM", u(b.tm))
            .define("TN", u(b.tn)),
        Kernel::Subgroup(t) => KernelSpec::new("gemm", SUBGROUP, "main", p.dtype)
            .define("TM", u(t.tm))
            .define("TN", u(t.tn))
            .define("WG", u(t.wg)),
        // One subgroup per workgroup where the adapter says how big one is (see the kernel).
        Kernel::CoopMat => KernelSpec::new("gemm", COOPMAT, "main", p.dtype).define("WG", "32u"),
    }
}

/// `kernels/gemm_tiled.wgsl` without its loaders: the tiled core (tiles, double buffering,
/// register tile, epilogue call), for kernels that bring their own `load_a4`/`load_b4` and
/// operand bindings (conv2d's implicit GEMM gathers its B tile from the image).
pub(crate) fn tiled_body() -> &'static str {
    TILED.split_once("//--- loads: scalar").expect("gemm_tiled.wgsl sections").0
}

/// `kernels/gemm_tiled.wgsl` with its scalar or vec4 loaders (the file's `//--- loads:`
/// sections; the two declare the operand bindings with different element types).
fn tiled_source(vec4: bool) -> &'static str {
    use std::sync::OnceLock;
    static SOURCES: [OnceLock<String>; 2] = [OnceLock::new(), OnceLock::new()];
    SOURCES[vec4 as usize].get_or_init(|| {
        let (body, loads) = TILED.split_once("//--- loads: scalar").expect("gemm_tiled.wgsl sections");
        let (scalar, vec) = loads.split_once("//--- loads: vec4").expect("gemm_tiled.wgsl sections");
        format!("{PRELUDE}{body}{}", if vec4 { vec } else { scalar })
    })
}

/// Every variant's WGSL for `dtype` with representative constants, as the device compiles it
/// (tests validate these with naga, including the cooperative-matrix one lavapipe cannot run).
pub fn sources_for_validation(dtype: DType) -> Vec<(String, String)> {
    let p = Problem { batch: 1, m: 64, n: 64, k: 64, trans_a: false, trans_b: false, dtype };
    let mut kernels: Vec<Kernel> = TILED_CANDIDATES.iter().map(|b| Kernel::Tiled(*b)).collect();
    kernels.extend(SUBGROUP_CANDIDATES.iter().map(|t| Kernel::Subgroup(*t)));
    if dtype == DType::F16 {
        kernels.push(Kernel::CoopMat);
    }
    let mut out = vec![];
    for k in kernels {
        for (vec4, ta, tb) in [(true, false, false), (false, true, true)] {
            let p = Problem { trans_a: ta, trans_b: tb, k: if vec4 { 64 } else { 63 }, ..p };
            let spec = k
                .spec(&p)
                .define("TRANS_A", ta)
                .define("TRANS_B", tb)
                .define("HAS_BIAS", true)
                .define("BIAS_ROWS", ta)
                .define("HAS_RES", true)
                .define("ACT", "1u");
            out.push((format!("{} vec4 {vec4} {dtype:?}", k.name()), spec.full_source()));
        }
    }
    out
}
