// Shared activation functions, prepended by the host to the kernels that use them
// (activation.wgsl, gemm.wgsl, softmax.wgsl's GEGLU). Activation ids: 0 identity, 1 SiLU,
// 2 GELU (erf), 3 GELU (tanh approximation), 4 quick GELU (x * sigmoid(1.702x)),
// 5 ReLU, 6 tanh (TAESD's ReLUs and its latent clamp tanh(x/3)*3), 7 LeakyReLU with negative
// slope 0.2 (ESRGAN's RRDBNet); for hypernetworks' MLPs (torch defaults): 8 sigmoid, 9 ELU
// (alpha 1), 10 hardswish (A1111's "swish"), 11 LeakyReLU with negative slope 0.01.

// erf by Abramowitz–Stegun 7.1.26 is only 1.5e-7 absolute: good enough for f32 GELU, and WGSL
// has no erf builtin.
fn erf_approx(v: f32) -> f32 {
    let s = sign(v);
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return s * (1.0 - poly * exp(-a * a));
}

fn apply_act(v: f32, act: u32) -> f32 {
    if (act == 1u) {
        return v / (1.0 + exp(-v));
    } else if (act == 2u) {
        return 0.5 * v * (1.0 + erf_approx(v * 0.7071067811865476));
    } else if (act == 3u) {
        let c = 0.7978845608028654 * (v + 0.044715 * v * v * v);
        return 0.5 * v * (1.0 + tanh(clamp(c, -15.0, 15.0)));
    } else if (act == 4u) {
        return v / (1.0 + exp(-1.702 * v));
    } else if (act == 5u) {
        return max(v, 0.0);
    } else if (act == 6u) {
        // WGSL's tanh may overflow exp for large |v|; tanh is ±1 to f32 precision beyond 15.
        return tanh(clamp(v, -15.0, 15.0));
    } else if (act == 7u) {
        return select(0.2 * v, v, v >= 0.0);
    } else if (act == 8u) {
        return 1.0 / (1.0 + exp(-v));
    } else if (act == 9u) {
        return select(exp(min(v, 0.0)) - 1.0, v, v > 0.0);
    } else if (act == 10u) {
        return v * clamp(v + 3.0, 0.0, 6.0) / 6.0;
    } else if (act == 11u) {
        return select(0.01 * v, v, v >= 0.0);
    }
    return v;
}
