//! Elementwise kernels (`kernels/elementwise.wgsl`, `kernels/activation.wgsl`).

use super::{chunk_elems, flat_grid, same_dtype};
use crate::error::{shape_err, Result};
use crate::gpu::{Context, KernelSpec, Tensor};
use bytemuck::{Pod, Zeroable};

const ELEMENTWISE: &str = include_str!("../../kernels/elementwise.wgsl");
const ACTIVATION: &str = concat!(include_str!("../../kernels/activations.wgsl"), include_str!("../../kernels/activation.wgsl"));

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add = 0,
    Mul = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Identity = 0,
    Silu = 1,
    Gelu = 2,
    GeluTanh = 3,
    QuickGelu = 4,
    Relu = 5,
    Tanh = 6,
    /// LeakyReLU with negative slope 0.2 (ESRGAN's; fixed, as the model never uses another).
    LeakyRelu = 7,
    /// Hypernetwork activations (torch's defaults): sigmoid, ELU (alpha 1), hardswish
    /// (A1111's "swish"), LeakyReLU with torch's slope 0.01.
    Sigmoid = 8,
    Elu = 9,
    Hardswish = 10,
    LeakyRelu001 = 11,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BinaryParams {
    n: u32,
    inner: u32,
    bn: u32,
    base: u32,
    row: u32,
    alpha: f32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct UnaryParams {
    n: u32,
    row: u32,
    alpha: f32,
    beta: f32,
}

/// `alpha * (a OP b)` where `b` is broadcast: `b` has `bn` elements and element `i` of `a`
/// pairs with `b[(i / inner) % bn]`. Same shape: `inner = 1`. Per-channel bias on NCHW:
/// `inner = H*W`, `bn = C`. Per-(batch, channel) on NCHW: `inner = H*W`, `bn = N*C`.
pub fn binary_broadcast(ctx: &Context, op: BinaryOp, a: &Tensor, b: &Tensor, inner: usize, alpha: f32) -> Result<Tensor> {
    same_dtype("elementwise", &[a, b])?;
    let (n, bn) = (a.numel(), b.numel());
    if inner == 0 || bn == 0 || n % (inner * bn) != 0 && (n / inner) % bn != 0 {
        return shape_err("elementwise", format!("cannot broadcast {:?} over {:?} (inner {inner})", b.shape(), a.shape()));
    }
    ctx.profile_op("elementwise", || (format!("{op:?} {}", super::dims(a.shape())), super::bytes_of(a, 3 * n)));
    let y = Tensor::empty(ctx, a.shape(), a.dtype())?;
    let spec = KernelSpec::new("elementwise", ELEMENTWISE, "main", a.dtype()).define("OP", format!("{}u", op as u32));
    let chunk = chunk_elems(ctx, a.dtype().size());
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let (grid, row) = flat_grid(ctx, len, 256);
        let params = BinaryParams { n: len as u32, inner: inner as u32, bn: bn as u32, base: start as u32, row, alpha, _pad: [0; 2] };
        ctx.dispatch(
            &spec,
            bytemuck::bytes_of(&params),
            &[a.binding_range(start, len), b.binding(), y.binding_range(start, len)],
            grid,
        )?;
        start += len;
    }
    Ok(y)
}

pub fn add(ctx: &Context, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return shape_err("add", format!("{:?} + {:?}", a.shape(), b.shape()));
    }
    binary_broadcast(ctx, BinaryOp::Add, a, b, 1, 1.0)
}

pub fn mul(ctx: &Context, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return shape_err("mul", format!("{:?} * {:?}", a.shape(), b.shape()));
    }
    binary_broadcast(ctx, BinaryOp::Mul, a, b, 1, 1.0)
}

/// `act(alpha * x + beta)`.
pub fn unary(ctx: &Context, act: Activation, x: &Tensor, alpha: f32, beta: f32) -> Result<Tensor> {
    let n = x.numel();
    ctx.profile_op("activation", || (format!("{act:?} {}", super::dims(x.shape())), super::bytes_of(x, 2 * n)));
    let y = Tensor::empty(ctx, x.shape(), x.dtype())?;
    let spec = KernelSpec::new("activation", ACTIVATION, "main", x.dtype()).define("ACT", format!("{}u", act as u32));
    let chunk = chunk_elems(ctx, x.dtype().size());
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let (grid, row) = flat_grid(ctx, len, 256);
        let params = UnaryParams { n: len as u32, row, alpha, beta };
        ctx.dispatch(&spec, bytemuck::bytes_of(&params), &[x.binding_range(start, len), y.binding_range(start, len)], grid)?;
        start += len;
    }
    Ok(y)
}

pub fn silu(ctx: &Context, x: &Tensor) -> Result<Tensor> {
    unary(ctx, Activation::Silu, x, 1.0, 0.0)
}
pub fn gelu(ctx: &Context, x: &Tensor) -> Result<Tensor> {
    unary(ctx, Activation::Gelu, x, 1.0, 0.0)
}
pub fn quick_gelu(ctx: &Context, x: &Tensor) -> Result<Tensor> {
    unary(ctx, Activation::QuickGelu, x, 1.0, 0.0)
}
pub fn relu(ctx: &Context, x: &Tensor) -> Result<Tensor> {
    unary(ctx, Activation::Relu, x, 1.0, 0.0)
}

/// LeakyReLU with slope 0.2 for negative inputs.
pub fn leaky_relu(ctx: &Context, x: &Tensor) -> Result<Tensor> {
    unary(ctx, Activation::LeakyRelu, x, 1.0, 0.0)
}
/// `alpha * x + beta`.
pub fn scale(ctx: &Context, x: &Tensor, alpha: f32, beta: f32) -> Result<Tensor> {
    unary(ctx, Activation::Identity, x, alpha, beta)
}
