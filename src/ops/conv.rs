//! 2-D convolution (`kernels/conv2d.wgsl`): NCHW input, weights as checkpoints store them
//! (`[Cout, Cin, kh, kw]`), optional bias and fused residual add.
//!
//! Tensors too big for one storage binding (SD's VAE decoder at 512² and up) are split: per batch
//! entry, into bands of output rows (with the input rows they need), ranges of output channels,
//! and ranges of input channels whose partial sums are accumulated in the output. Every binding
//! is a sub-range of its tensor starting on the storage offset alignment, so no binding exceeds
//! [`Context::max_binding`].

use super::conv_variants::{self, ConvKernel, ConvProblem};
use super::gemm::{self, Problem};
use super::{gemm_tune, same_dtype};
use crate::error::{shape_err, Error, Result};
use crate::gpu::{Binding, Context, KernelSpec, Tensor};
use bytemuck::{Pod, Zeroable};

const CONV2D: &str = include_str!("../../kernels/conv2d.wgsl");
const PACK: &str = include_str!("../../kernels/conv2d_pack.wgsl");

/// Register tile (fixed in the kernel): output channels x output pixels per invocation, and
/// invocations per workgroup.
const TM: usize = 8;
const TN: usize = 8;
const WG: usize = 64;
/// Loop iterations one invocation may run in total (lavapipe stops all loops at 65535).
const LOOP_BUDGET: usize = 60_000;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ConvParams {
    cin: u32,
    kstride: u32,
    ci0: u32,
    h: u32,
    w: u32,
    x_off: i32,
    x_bstride: u32,
    cout: u32,
    w_off: i32,
    co0: u32,
    ho: u32,
    wo: u32,
    oy0: u32,
    rows: u32,
    y_off: i32,
    y_bstride: u32,
    ox_blocks: u32,
    _pad: [u32; 3],
}

/// A binding of elements `start..end` of `t` (tensor-relative), starting at the aligned byte
/// offset at or below `start`. Returns the binding and the binding-relative index of tensor
/// element `origin`, which the kernel adds to its own (chunk-relative) indices.
pub(crate) fn aligned_range<'a>(ctx: &Context, t: &'a Tensor, start: usize, end: usize, origin: usize) -> (Binding<'a>, i32) {
    let es = t.dtype().size() as u64;
    let align = ctx.limits.min_storage_buffer_offset_alignment.max(4) as u64;
    let first = t.byte_offset() + start as u64 * es;
    let offset = first / align * align;
    let last = t.byte_offset() + end as u64 * es;
    let size = (last - offset).next_multiple_of(4).max(4);
    let rel = (t.byte_offset() + origin as u64 * es) as i64 - offset as i64;
    (Binding { buffer: t.buffer(), offset, size }, (rel / es as i64) as i32)
}

/// Bytes a sub-range binding may cover so that, aligned down, it stays under the limit.
pub(crate) fn usable_binding(ctx: &Context) -> u64 {
    let align = ctx.limits.min_storage_buffer_offset_alignment.max(4) as u64;
    ctx.max_binding().saturating_sub(align)
}

/// Output size of a convolution along one dimension.
pub fn conv_out_dim(input: usize, k: usize, stride: usize, padding: usize) -> usize {
    (input + 2 * padding).saturating_sub(k) / stride + 1
}

/// Floating-point operations of one convolution (2 per multiply-add), for benchmarks.
pub fn conv2d_flops(x_shape: &[usize], w_shape: &[usize], stride: usize, padding: usize) -> f64 {
    let (n, h, w) = (x_shape[0], x_shape[2], x_shape[3]);
    let (cout, cin, kh, kw) = (w_shape[0], w_shape[1], w_shape[2], w_shape[3]);
    let ho = conv_out_dim(h, kh, stride, padding);
    let wo = conv_out_dim(w, kw, stride, padding);
    2.0 * (n * cout * ho * wo) as f64 * (cin * kh * kw) as f64
}

/// A convolution weight `[Cout, Cin, kh, kw]` as checkpoints store it (the layout the `direct`
/// and `igemm` variants read: K in (ci, ky, kx) order, contiguous per output channel), and,
/// made on first use and kept, its centre tap as a `[Cin, Cout]` matrix for convolutions on
/// 1x1 images run as a GEMM (1/(kh*kw) of the weight; only convolutions that meet a 1x1 image
/// make one). Models hold their convolution weights in this form.
pub struct ConvWeight {
    weight: Tensor,
    centre: std::sync::Mutex<Option<Tensor>>,
}

/// A clone shares the weight's buffer (tensors are reference-counted) and copies the packed
/// centre tap if one was made (the VAE encoder shares the decoder's tensors this way).
impl Clone for ConvWeight {
    fn clone(&self) -> Self {
        ConvWeight { weight: self.weight.clone(), centre: std::sync::Mutex::new(self.centre.lock().unwrap().clone()) }
    }
}

impl ConvWeight {
    pub fn new(weight: Tensor) -> ConvWeight {
        ConvWeight { weight, centre: Default::default() }
    }
    /// The weight as stored, `[Cout, Cin, kh, kw]`.
    pub fn tensor(&self) -> &Tensor {
        &self.weight
    }

    /// The centre tap as `[Cin, Cout]` (packed on the GPU on first use).
    fn centre(&self, ctx: &Context) -> Result<Tensor> {
        let mut c = self.centre.lock().unwrap();
        if let Some(t) = c.as_ref() {
            return Ok(t.clone());
        }
        let w = &self.weight;
        let (cout, cin, kh, kw) = (w.dim(0), w.dim(1), w.dim(2), w.dim(3));
        let t = Tensor::empty(ctx, &[cin, cout], w.dtype())?;
        let (grid, row) = super::flat_grid(ctx, cin * cout, 64);
        let params: [u32; 8] = [cin as u32, cout as u32, (kh * kw) as u32, ((kh / 2) * kw + kw / 2) as u32, row, 0, 0, 0];
        let spec = KernelSpec::new("conv2d", PACK, "main", w.dtype());
        ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[w.binding(), t.binding()], grid)?;
        *c = Some(t.clone());
        Ok(t)
    }
}

/// `conv2d(x, w) + bias`: x `[N, Cin, H, W]`, w `[Cout, Cin, kh, kw]`, bias `[Cout]`; returns
/// `[N, Cout, Ho, Wo]` with `Ho = (H + 2*padding - kh) / stride + 1`.
pub fn conv2d(ctx: &Context, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    conv2d_with(ctx, x, &ConvWeight::new(w.clone()), bias, stride, padding, None, None)
}

/// `conv2d(x, w) + bias + residual`, with `residual` shaped like the output (the UNet/VAE
/// ResnetBlock's skip connection fused into its second convolution).
pub fn conv2d_residual(
    ctx: &Context,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    residual: &Tensor,
) -> Result<Tensor> {
    conv2d_with(ctx, x, &ConvWeight::new(w.clone()), bias, stride, padding, Some(residual), None)
}

/// The convolution with an optional residual and an explicit variant (selftest, tuning, tests;
/// `None` chooses one by [`conv_variants::choose`]).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_with(
    ctx: &Context,
    x: &Tensor,
    w: &ConvWeight,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    residual: Option<&Tensor>,
    kernel: Option<ConvKernel>,
) -> Result<Tensor> {
    let op = "conv2d";
    let w_t = &w.weight;
    if x.shape().len() != 4 || w_t.shape().len() != 4 {
        return shape_err(op, format!("x {:?} must be [N,C,H,W] and w {:?} [Cout,Cin,kh,kw]", x.shape(), w_t.shape()));
    }
    let (n, cin, h, wi) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let (cout, wcin, kh, kw) = (w_t.dim(0), w_t.dim(1), w_t.dim(2), w_t.dim(3));
    if wcin != cin {
        return shape_err(op, format!("x {:?} has {cin} channels but w {:?} expects {wcin}", x.shape(), w_t.shape()));
    }
    if stride == 0 || kh == 0 || kw == 0 || kh > 7 || kw > 7 || stride > 4 {
        return Err(Error::Unsupported(format!("conv2d with kernel {kh}x{kw} and stride {stride} (kernels up to 7x7, stride up to 4)")));
    }
    if h + 2 * padding < kh || wi + 2 * padding < kw || padding >= kh.max(kw) {
        return shape_err(op, format!("x {:?} too small for a {kh}x{kw} kernel with padding {padding}", x.shape()));
    }
    let mut ts = vec![x, w_t];
    if let Some(b) = bias {
        if b.numel() != cout {
            return shape_err(op, format!("bias {:?} for {cout} output channels", b.shape()));
        }
        ts.push(b);
    }
    let ho = conv_out_dim(h, kh, stride, padding);
    let wo = conv_out_dim(wi, kw, stride, padding);
    let out_shape = [n, cout, ho, wo];
    if let Some(r) = residual {
        if r.shape() != out_shape {
            return shape_err(op, format!("residual {:?} for output {out_shape:?}", r.shape()));
        }
        ts.push(r);
    }
    same_dtype(op, &ts)?;
    let dtype = x.dtype();
    let cp = ConvProblem { n, cin, h, w: wi, cout, kh, kw, stride, pad: padding, dtype };
    let kernel = match kernel {
        Some(k) => k,
        None => conv_variants::choose(ctx, &cp, |k| conv2d_with(ctx, x, w, bias, stride, padding, residual, Some(k)).map(drop)),
    };
    if let Some(why) = kernel.unsupported(ctx, &cp) {
        return Err(Error::Unsupported(format!("conv2d {:?} * {:?}: variant {}: {why}", x.shape(), w_t.shape(), kernel.name())));
    }
    ctx.profile_op("conv2d", || {
        (
            format!(
                "{} k{kh} s{stride} ->{cout}{}{}",
                super::dims(x.shape()),
                if residual.is_some() { " +res" } else { "" },
                if kernel == ConvKernel::Gemm { " as gemm" } else { "" }
            ),
            crate::gpu::Work::Flops(conv2d_flops(x.shape(), w_t.shape(), stride, padding) / if cp.centre_only() { (kh * kw) as f64 } else { 1.0 }),
        )
    });
    let y = Tensor::empty(ctx, &out_shape, dtype)?;
    if y.numel() == 0 {
        return Ok(y);
    }
    match kernel {
        ConvKernel::Gemm => as_gemm(ctx, x, w, bias, residual, &y, &cp)?,
        ConvKernel::Igemm(b) => conv_variants::igemm(ctx, b, &cp, x.binding(), w_t.binding(), y.binding(), bias.map(|t| t.binding()), residual.map(|t| t.binding()))?,
        ConvKernel::Direct => direct(ctx, x, w_t, bias, residual, stride, padding, &y)?,
    }
    Ok(y)
}

/// The `gemm` variant: a 1x1 convolution is Y[n] = W · X[n] per batch entry (W `[Cout, Cin]`
/// shared, bias per row), and one on a 1x1 image Y = X · Wc with X `[N, Cin]` and Wc the centre
/// tap `[Cin, Cout]` (a Linear; bias per column). The GEMM variant is gemm's own choice.
fn as_gemm(ctx: &Context, x: &Tensor, w: &ConvWeight, bias: Option<&Tensor>, residual: Option<&Tensor>, y: &Tensor, cp: &ConvProblem) -> Result<()> {
    let (n, cin, cout, hw) = (cp.n, cp.cin, cp.cout, cp.h * cp.w);
    let centre;
    let (problem, views) = if hw > 1 {
        let p = Problem { batch: n, m: cout, n: hw, k: cin, trans_a: false, trans_b: false, dtype: cp.dtype };
        let v = gemm::Views {
            a: w.weight.binding(),
            b: x.binding(),
            c: y.binding(),
            bias: bias.map(|t| t.binding()),
            bias_rows: true,
            residual: residual.map(|t| t.binding()),
            lda: cin,
            ldb: hw,
            ldc: hw,
            stride_a: 0,
            stride_b: cin * hw,
            stride_c: cout * hw,
        };
        (p, v)
    } else {
        // The centre tap even of a 1x1 weight: [Cin, Cout] row-major takes the vec4 GEMM (the
        // weight as stored, a transposed B, ran ~2x slower than `direct` there).
        centre = w.centre(ctx)?;
        let b = centre.binding();
        let p = Problem { batch: 1, m: n, n: cout, k: cin, trans_a: false, trans_b: false, dtype: cp.dtype };
        let v = gemm::Views {
            a: x.binding(),
            b,
            c: y.binding(),
            bias: bias.map(|t| t.binding()),
            bias_rows: false,
            residual: residual.map(|t| t.binding()),
            lda: cin,
            ldb: cout,
            ldc: cout,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
        };
        (p, v)
    };
    let kernel = gemm_tune::choose(ctx, &problem, |k| gemm::gemm_views(ctx, "conv2d", &problem, &views, k));
    gemm::gemm_views(ctx, "conv2d", &problem, &views, kernel)
}

/// The `direct` variant (`kernels/conv2d.wgsl`), splitting over the binding limit.
#[allow(clippy::too_many_arguments)]
fn direct(ctx: &Context, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, residual: Option<&Tensor>, stride: usize, padding: usize, y: &Tensor) -> Result<()> {
    let (n, cin, h, wi) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let (cout, kh, kw) = (w.dim(0), w.dim(2), w.dim(3));
    let (ho, wo) = (y.dim(2), y.dim(3));
    let dtype = x.dtype();
    let es = dtype.size() as u64;

    // `pb` > 0: the flattened-pixel entry point with `pb` pixel blocks per workgroup.
    let spec_for = |accum: bool, with_bias: bool, with_res: bool, pb: usize| {
        KernelSpec::new("conv2d", CONV2D, if pb > 0 { "main_flat" } else { "main" }, dtype)
            .define("PB", format!("{}u", pb.max(1)))
            .define("KH", kh)
            .define("KW", kw)
            .define("STRIDE", stride)
            .define("PAD", padding)
            .define("WG", WG)
            .define("BIAS", format!("{}u", with_bias as u32))
            .define("RESID", format!("{}u", with_res as u32))
            .define("ACCUM", format!("{}u", accum as u32))
    };

    let ox_blocks = wo.div_ceil(TN);
    let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
    let kk = kh * kw;
    let (hw, hwo) = (h * wi, ho * wo);
    // Input rows needed by output rows [oy0, oy1).
    let in_rows = |oy0: usize, oy1: usize| -> (usize, usize) {
        let lo = (oy0 * stride).saturating_sub(padding);
        let hi = ((oy1 - 1) * stride + kh).saturating_sub(padding).min(h);
        (lo.min(h), hi.max(lo.min(h)))
    };
    // Records one dispatch. Chunk: batch entries [n0, n0+nb), output channels [co0, co1),
    // output rows [oy0, oy1), input channels [ci0, ci1).
    let record = |n0: usize, nb: usize, co: (usize, usize), oy: (usize, usize), ci: (usize, usize)| -> Result<()> {
        let ((co0, co1), (oy0, oy1), (ci0, ci1)) = (co, oy, ci);
        let (r0, r1) = in_rows(oy0, oy1);
        let xs = x.numel() / n * n0;
        let (xb, x_off) = aligned_range(ctx, x, xs + ci0 * hw + r0 * wi, xs + (nb - 1) * cin * hw + (ci1 - 1) * hw + r1 * wi, xs + ci0 * hw);
        let (wb, w_off) = aligned_range(ctx, w, co0 * cin * kk, co1 * cin * kk, co0 * cin * kk);
        let ys = y.numel() / n * n0;
        let y_start = ys + co0 * hwo + oy0 * wo;
        let y_end = ys + (nb - 1) * cout * hwo + (co1 - 1) * hwo + oy1 * wo;
        let (yb, y_off) = aligned_range(ctx, y, y_start, y_end, ys + co0 * hwo);
        let first = ci0 == 0;
        let bb = match bias {
            Some(b) if first => b.binding(),
            _ => wb,
        };
        let rb = match residual {
            Some(r) if first => aligned_range(ctx, r, y_start, y_end, ys + co0 * hwo).0,
            _ => wb,
        };
        let params = ConvParams {
            cin: (ci1 - ci0) as u32,
            kstride: (cin * kk) as u32,
            ci0: ci0 as u32,
            h: h as u32,
            w: wi as u32,
            x_off,
            x_bstride: (cin * hw) as u32,
            cout: (co1 - co0) as u32,
            w_off,
            co0: co0 as u32,
            ho: ho as u32,
            wo: wo as u32,
            oy0: oy0 as u32,
            rows: (oy1 - oy0) as u32,
            y_off,
            y_bstride: (cout * hwo) as u32,
            ox_blocks: ox_blocks as u32,
            _pad: [0; 3],
        };
        let spec = spec_for(!first, first && bias.is_some(), first && residual.is_some(), 0);
        let groups = [((oy1 - oy0) * ox_blocks).div_ceil(WG) as u32, (co1 - co0).div_ceil(TM) as u32, nb as u32];
        ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[xb, wb, bb, rb, yb], groups)
    };

    // Rows per band: the grid's x dimension caps a band at max_groups * WG pixel blocks.
    let grid_rows = (max_groups * WG / ox_blocks).max(1);
    let fits = |t: &Tensor| t.byte_len() <= ctx.max_binding();
    // Mesa 22's lavapipe silently ends every loop of an invocation once 65535 iterations (all
    // loops together) have run in it. Per input channel the kernels run their ci, ky and kx
    // loops, each entry also counting its exit test when not unrolled: 1 + (KH + 1) +
    // KH * (KW + 1) iterations (17 at 3x3: measured, `main_flat` failed past ~3850 channels),
    // plus ~72 for the stores: cap the input channels per dispatch (partial sums accumulate in
    // y). SD's largest, Cin = 2560 at 3x3, stays in one dispatch (the cap is 3517 at 3x3,
    // 11960 at 1x1).
    let cin_cap = ((LOOP_BUDGET - 200) / (1 + (kh + 1) + kh * (kw + 1))).max(1);
    let whole = fits(x) && fits(w) && fits(y) && ho <= grid_rows && n <= max_groups;
    // Share of the row kernel's pixel slots (WG invocations x TN pixels per workgroup, along
    // one image's rows) that hold real pixels; small images (16x16 and below) waste most.
    let row_groups = (ho * ox_blocks).div_ceil(WG);
    let row_use = hwo as f64 / (row_groups * WG * TN) as f64;
    let pixels = n * hwo;
    let pix_blocks = pixels.div_ceil(TN);
    if whole && row_use < 0.6 && pix_blocks.div_ceil(WG) <= max_groups && x.numel() <= i32::MAX as usize {
        let pb = pix_blocks.next_power_of_two().min(WG);
        let co_per_group = WG / pb * TM;
        let groups = [pix_blocks.div_ceil(pb) as u32, cout.div_ceil(co_per_group) as u32, 1];
        let (xb, wb, yb) = (x.binding(), w.binding(), y.binding());
        let mut ci0 = 0;
        while ci0 < cin {
            let ci1 = (ci0 + cin_cap).min(cin);
            let first = ci0 == 0;
            let params = ConvParams {
                cin: (ci1 - ci0) as u32,
                kstride: (cin * kk) as u32,
                ci0: ci0 as u32,
                h: h as u32,
                w: wi as u32,
                x_off: (ci0 * hw) as i32,
                x_bstride: (cin * hw) as u32,
                cout: cout as u32,
                w_off: 0,
                co0: 0,
                ho: ho as u32,
                wo: wo as u32,
                oy0: 0,
                rows: pixels as u32,
                y_off: 0,
                y_bstride: (cout * hwo) as u32,
                ox_blocks: ox_blocks as u32,
                _pad: [0; 3],
            };
            let bb = match bias {
                Some(b) if first => b.binding(),
                _ => wb,
            };
            let rb = match residual {
                Some(r) if first => r.binding(),
                _ => wb,
            };
            let spec = spec_for(!first, first && bias.is_some(), first && residual.is_some(), pb);
            ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[xb, wb, bb, rb, yb], groups)?;
            ci0 = ci1;
        }
        return Ok(());
    }
    if whole && cin <= cin_cap {
        return record(0, n, (0, cout), (0, ho), (0, cin));
    }

    // Split path, one batch entry at a time, in elements of the usable binding size.
    let avail = (usable_binding(ctx) / es) as usize;
    // Most input rows a band of `rows` output rows can need.
    let band_of_rows = |rows: usize| ((rows - 1) * stride + kh).min(h);
    let mut rb = ho.min(grid_rows);
    if rb * wo > avail || band_of_rows(rb) * wi > avail {
        // Largest band whose output rows and input rows (with halo) each fit one binding.
        let by_out = avail / wo;
        let by_in = (avail / wi).saturating_sub(kh) / stride + 1;
        rb = rb.min(by_out).min(by_in);
        while rb > 0 && band_of_rows(rb) * wi > avail {
            rb -= 1;
        }
    }
    if rb == 0 {
        return Err(Error::BindingTooLarge {
            what: format!("conv2d on {:?} (one output row with its input rows)", x.shape()),
            bytes: ((kh * wi).max(wo) as u64) * es,
            limit: ctx.max_binding(),
        });
    }
    // Output channels per chunk: the output band of `cc` channels and their weights must fit.
    let w_per_co = cin * kk;
    if w_per_co > avail {
        return Err(Error::BindingTooLarge { what: format!("conv2d weights {:?}", w.shape()), bytes: (w_per_co as u64) * es, limit: ctx.max_binding() });
    }
    for n0 in 0..n {
        let mut oy0 = 0;
        while oy0 < ho {
            let oy1 = (oy0 + rb).min(ho);
            let (r0, r1) = in_rows(oy0, oy1);
            let cc = (1 + (avail - (oy1 - oy0) * wo) / hwo).min(avail / w_per_co).min(cout).min(max_groups * TM);
            let cic = (1 + (avail - (r1 - r0) * wi) / hw).min(cin).min(cin_cap);
            let mut co0 = 0;
            while co0 < cout {
                let co1 = (co0 + cc).min(cout);
                let mut ci0 = 0;
                while ci0 < cin {
                    let ci1 = (ci0 + cic).min(cin);
                    record(n0, 1, (co0, co1), (oy0, oy1), (ci0, ci1))?;
                    ci0 = ci1;
                }
                co0 = co1;
            }
            oy0 = oy1;
        }
    }
    Ok(())
}
