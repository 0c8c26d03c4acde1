//! A1111 / NovelAI hypernetworks: per context width, two small MLPs that transform the text
//! context before every cross-attention's `to_k` (module 0) and `to_v` (module 1):
//! `context + mlp(context) · multiplier` (A1111's `HypernetworkModule.forward`; dropout is
//! inference-free). Self-attention is untouched.
//!
//! File layout (safetensors; `tools/convert_hypernetwork.py` writes it from A1111's `.pt`):
//! tensors `{dim}.{0|1}.linear.{i}.weight` / `.bias`, `i` the index in A1111's
//! `torch.nn.Sequential` (so activations and dropouts, which have no tensors, leave gaps); a 2-D
//! weight is a `Linear`, a 1-D weight a `LayerNorm` (eps 1e-5). `__metadata__` strings:
//! `activation_func` (default `linear`), `activate_output` (`true`/`false`, default false),
//! `is_layer_norm` and `layer_structure` (e.g. `[1, 2, 1]`; both checked against the tensors
//! when given). As in A1111 the activation follows every `Linear` but the last (that one too
//! with `activate_output`), then the layer norm.

use crate::gpu::Context;
use crate::ops::elementwise::{add, scale, Activation};
use crate::ops::gemm::{matmul, GemmOpts};
use crate::ops::norm::layer_norm;
use crate::weights::SafetensorsFile;
use crate::{Error, Result, Tensor};
use std::collections::BTreeMap;

/// torch.nn.LayerNorm's default eps.
const LAYER_NORM_EPS: f32 = 1e-5;

/// One layer of a module's MLP, weights on the host (`[in, out]` for a `Linear`).
#[derive(Clone, Debug)]
enum Layer {
    Linear { weight_t: Vec<f32>, bias: Vec<f32>, inp: usize, out: usize, act: Activation },
    LayerNorm { weight: Vec<f32>, bias: Vec<f32> },
}

/// A hypernetwork: the modules of every context width it has.
#[derive(Clone, Debug)]
pub struct Hypernetwork {
    pub name: String,
    /// width → [k module, v module].
    modules: BTreeMap<usize, [Vec<Layer>; 2]>,
}

/// A1111's activation names (its dict of the common ones; "swish" is torch's Hardswish there)
/// plus the lower-cased torch class names Pigment has a kernel for.
pub fn parse_activation(name: &str) -> Option<Activation> {
    Some(match name {
        "linear" | "identity" | "" => Activation::Identity,
        "relu" => Activation::Relu,
        "leakyrelu" => Activation::LeakyRelu001,
        "elu" => Activation::Elu,
        "swish" | "hardswish" => Activation::Hardswish,
        "tanh" => Activation::Tanh,
        "sigmoid" => Activation::Sigmoid,
        "silu" => Activation::Silu,
        "gelu" => Activation::Gelu,
        _ => return None,
    })
}

impl Hypernetwork {
    /// Open a hypernetwork `.safetensors` (the layout above); `name` is what errors call it.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path, name: &str) -> Result<Hypernetwork> {
        Self::from_file(&SafetensorsFile::open(path)?, name)
    }

    pub fn from_file(file: &SafetensorsFile, name: &str) -> Result<Hypernetwork> {
        let bad = |msg: String| Error::Unsupported(format!("hypernetwork {name} ({}): {msg}", file.path()));
        let meta = file.metadata();
        let flag = |key: &str| match meta.get(key).map(|s| s.trim().to_ascii_lowercase()) {
            None => Ok(None),
            Some(v) if v == "true" || v == "1" => Ok(Some(true)),
            Some(v) if v == "false" || v == "0" => Ok(Some(false)),
            Some(v) => Err(bad(format!("metadata {key} = {v:?}: write true or false"))),
        };
        let act_name = meta.get("activation_func").map(|s| s.trim().to_ascii_lowercase()).unwrap_or_else(|| "linear".into());
        let act = parse_activation(&act_name).ok_or_else(|| {
            bad(format!("activation_func {act_name:?} is not supported; Pigment runs linear, relu, leakyrelu, elu, swish (hardswish), tanh, sigmoid, silu, gelu"))
        })?;
        let activate_output = flag("activate_output")?.unwrap_or(false);
        let is_layer_norm = flag("is_layer_norm")?;
        let structure: Option<Vec<f64>> = match meta.get("layer_structure") {
            Some(s) => Some(serde_json::from_str(s).map_err(|_| bad(format!("metadata layer_structure {s:?}: write a JSON list such as [1, 2, 1]")))?),
            None => None,
        };
        // {dim}.{side}.linear.{i}.{weight|bias}
        let mut found: BTreeMap<(usize, usize), BTreeMap<usize, ()>> = BTreeMap::new();
        for key in file.names() {
            let parts: Vec<&str> = key.split('.').collect();
            let parsed = match parts.as_slice() {
                [d, s, "linear", i, "weight" | "bias"] => d.parse::<usize>().ok().zip(s.parse::<usize>().ok().filter(|&s| s < 2)).zip(i.parse::<usize>().ok()),
                _ => None,
            };
            let Some(((d, s), i)) = parsed else {
                return Err(bad(format!("unexpected tensor {key:?}; a hypernetwork has {{dim}}.{{0|1}}.linear.{{i}}.weight/bias (convert A1111 .pt files with tools/convert_hypernetwork.py)")));
            };
            found.entry((d, s)).or_default().insert(i, ());
        }
        let mut modules: BTreeMap<usize, [Vec<Layer>; 2]> = BTreeMap::new();
        for (&(dim, side), indices) in &found {
            let get = |i: usize, what: &str| -> Result<(Vec<f32>, Vec<usize>)> {
                let t = file.get(&format!("{dim}.{side}.linear.{i}.{what}")).map_err(|e| bad(e.to_string()))?;
                Ok((t.to_f32().map_err(|e| bad(e.to_string()))?, t.shape.clone()))
            };
            let mut shapes = Vec::new();
            for &i in indices.keys() {
                shapes.push((i, get(i, "weight")?.1));
            }
            let n_linear = shapes.iter().filter(|(_, s)| s.len() == 2).count();
            let mut layers = Vec::new();
            let (mut j, mut width) = (0, dim);
            for (i, shape) in &shapes {
                let (w, _) = get(*i, "weight")?;
                let (b, bshape) = get(*i, "bias")?;
                match shape.as_slice() {
                    &[out, inp] => {
                        if inp != width || bshape != [out] {
                            return Err(bad(format!("{dim}.{side}.linear.{i}: weight {shape:?} bias {bshape:?} after width {width}")));
                        }
                        let last = j + 1 == n_linear;
                        let act = if last && !activate_output { Activation::Identity } else { act };
                        let mut weight_t = vec![0.0; w.len()];
                        for r in 0..out {
                            for c in 0..inp {
                                weight_t[c * out + r] = w[r * inp + c];
                            }
                        }
                        layers.push(Layer::Linear { weight_t, bias: b, inp, out, act });
                        if let Some(ls) = &structure {
                            if ls.len() != n_linear + 1 || (ls[j + 1] * dim as f64) as usize != out {
                                return Err(bad(format!("layer_structure {ls:?} does not match the tensors of width {dim}")));
                            }
                        }
                        j += 1;
                        width = out;
                    }
                    &[n] if n == width && bshape == [n] => {
                        if is_layer_norm == Some(false) {
                            return Err(bad(format!("{dim}.{side}.linear.{i} is a layer norm but is_layer_norm is false")));
                        }
                        layers.push(Layer::LayerNorm { weight: w, bias: b });
                    }
                    _ => return Err(bad(format!("{dim}.{side}.linear.{i}: weight {shape:?}, bias {bshape:?} is neither a Linear nor a LayerNorm of width {width}"))),
                }
            }
            if n_linear == 0 || width != dim {
                return Err(bad(format!("module {dim}.{side} maps width {dim} to {width}; it must end at {dim}")));
            }
            modules.entry(dim).or_insert_with(|| [Vec::new(), Vec::new()])[side] = layers;
        }
        for (dim, [k, v]) in &modules {
            if k.is_empty() || v.is_empty() {
                return Err(bad(format!("width {dim} has only one of its two modules (0: k, 1: v)")));
            }
        }
        if modules.is_empty() {
            return Err(bad("no tensors".into()));
        }
        Ok(Hypernetwork { name: name.to_string(), modules })
    }

    /// The context widths it has modules for.
    pub fn widths(&self) -> Vec<usize> {
        self.modules.keys().copied().collect()
    }

    /// `(k context, v context)` for `context [B, L, D]`, `context + mlp(context) · multiplier`
    /// with each side's module, in the context's dtype.
    pub fn apply(&self, ctx: &Context, k: &Tensor, v: &Tensor, multiplier: f32) -> Result<(Tensor, Tensor)> {
        let d = k.dim(-1);
        let Some(m) = self.modules.get(&d) else {
            return Err(Error::Unsupported(format!(
                "hypernetwork {} has modules for context widths {:?}, not this model's {d} (it was trained for another model family)",
                self.name,
                self.widths()
            )));
        };
        Ok((run(ctx, &m[0], k, multiplier)?, run(ctx, &m[1], v, multiplier)?))
    }
}

fn run(ctx: &Context, layers: &[Layer], x: &Tensor, multiplier: f32) -> Result<Tensor> {
    let dtype = x.dtype();
    let mut h: Option<Tensor> = None;
    for l in layers {
        let input = h.as_ref().unwrap_or(x);
        h = Some(match l {
            Layer::Linear { weight_t, bias, inp, out, act } => {
                let w = Tensor::from_f32(ctx, weight_t, &[*inp, *out], dtype)?;
                let b = Tensor::from_f32(ctx, bias, &[*out], dtype)?;
                matmul(ctx, input, &w, GemmOpts { bias: Some(&b), act: *act, ..Default::default() })?
            }
            Layer::LayerNorm { weight, bias } => {
                let n = weight.len();
                let (w, b) = (Tensor::from_f32(ctx, weight, &[n], dtype)?, Tensor::from_f32(ctx, bias, &[n], dtype)?);
                layer_norm(ctx, input, &w, &b, LAYER_NORM_EPS)?
            }
        });
    }
    let y = h.expect("a module has at least one Linear");
    add(ctx, x, &scale(ctx, &y, multiplier, 0.0)?)
}

/// Several hypernetworks in sequence (A1111's `apply_hypernetworks`): each transforms the k
/// and v contexts the previous one left. `None` when there are none.
pub fn apply_all(ctx: &Context, nets: &[(std::sync::Arc<Hypernetwork>, f32)], context: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
    let mut kv: Option<(Tensor, Tensor)> = None;
    for (net, m) in nets {
        let (k, v) = match &kv {
            Some((k, v)) => (k, v),
            None => (context, context),
        };
        kv = Some(net.apply(ctx, k, v, *m)?);
    }
    Ok(kv)
}
