mod common;
use common::*;
use pigment::ops::elementwise::{self, Activation, BinaryOp};

fn erf(x: f64) -> f64 {
    pigment::ops::reference::erf(x)
}

#[test]
fn binary_ops_broadcast_over_nchw() {
    for dtype in dtypes() {
        let (n, c, hw) = (3, 5, 37);
        let a = quantize(&rand_vec(n * c * hw, 1), dtype);
        let b = quantize(&rand_vec(c, 2), dtype);
        let ta = upload(&a, &[n, c, hw], dtype);
        let tb = upload(&b, &[c], dtype);
        for (op, f) in [(BinaryOp::Add, (|x, y| x + y) as fn(f32, f32) -> f32), (BinaryOp::Mul, |x, y| x * y)] {
            let y = elementwise::binary_broadcast(ctx(), op, &ta, &tb, hw, 0.5).unwrap().to_vec(ctx()).unwrap();
            let want: Vec<f32> = a.iter().enumerate().map(|(i, &x)| 0.5 * f(x, b[(i / hw) % c])).collect();
            let (at, rt) = tol(dtype, 1e-6);
            assert_close(&y, &want, at, rt, &format!("{op:?} {dtype:?}"));
        }
    }
}

#[test]
fn activations_match_cpu() {
    for dtype in dtypes() {
        let x: Vec<f32> = quantize(&rand_vec(4099, 3).iter().map(|v| v * 6.0).collect::<Vec<_>>(), dtype);
        let t = upload(&x, &[4099], dtype);
        let cases: [(Activation, fn(f64) -> f64); 7] = [
            (Activation::LeakyRelu, |v| if v >= 0.0 { v } else { 0.2 * v }),
            (Activation::Silu, |v| v / (1.0 + (-v).exp())),
            (Activation::Gelu, |v| 0.5 * v * (1.0 + erf(v / 2f64.sqrt()))),
            (Activation::QuickGelu, |v| v / (1.0 + (-1.702 * v).exp())),
            (Activation::Identity, |v| v),
            (Activation::Relu, |v| v.max(0.0)),
            (Activation::Tanh, |v| v.tanh()),
        ];
        for (act, f) in cases {
            let y = elementwise::unary(ctx(), act, &t, 1.5, -0.25).unwrap().to_vec(ctx()).unwrap();
            let want: Vec<f32> = x.iter().map(|&v| f(1.5 * v as f64 - 0.25) as f32).collect();
            let (at, rt) = tol(dtype, 2e-6);
            assert_close(&y, &want, at, rt, &format!("{act:?} {dtype:?}"));
        }
    }
}

#[test]
fn same_shape_add_rejects_mismatch() {
    let a = upload(&[1.0; 6], &[2, 3], pigment::DType::F32);
    let b = upload(&[1.0; 6], &[3, 2], pigment::DType::F32);
    let err = elementwise::add(ctx(), &a, &b).unwrap_err().to_string();
    assert!(err.contains("[2, 3]"), "{err}");
}
