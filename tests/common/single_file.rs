//! Single-file checkpoints assembled from the diffusers folders. The fixtures commit no tensor
//! twice: `tests/fixtures/<name>.manifest.json` (written by the fixture tools from the mapping
//! diffusers' `from_single_file` was checked against) lists every original key with the folder
//! tensor(s) it comes from and the op: `identity`, `reshape` (VAE attention [C,C] → [C,C,1,1]),
//! `concat` along dim 0 (OpenCLIP's fused `in_proj`), `transpose` (2-D: SDXL's OpenCLIP
//! `text_projection`) or `fill` (unused constants such as SD2's `text_projection`). Native tests get a file (`common::single_file`), the browser test bytes.
//! Shared by tests/common/mod.rs and tests/web_pipeline.rs (`#[path]`), so it needs no GPU.

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde_json::Value;
use std::collections::HashMap;

/// The safetensors bytes `manifest` (its JSON text) describes; `source(path)` returns the bytes
/// of a folder file, `path` as the manifest's `sources` spell it (relative to tests/fixtures).
pub fn assemble(manifest: &str, source: &dyn Fn(&str) -> Vec<u8>) -> Result<Vec<u8>, String> {
    let m: Value = serde_json::from_str(manifest).map_err(|e| format!("manifest: {e}"))?;
    let field = |v: &Value, k: &str| v.get(k).cloned().ok_or_else(|| format!("manifest: no '{k}' in {v}"));
    let dtype = match field(&m, "dtype")?.as_str() {
        Some("F16") => Dtype::F16,
        Some("F32") => Dtype::F32,
        d => return Err(format!("manifest: dtype {d:?} (expected \"F16\" or \"F32\")")),
    };
    let bytes: HashMap<String, Vec<u8>> = field(&m, "sources")?
        .as_object()
        .ok_or("manifest: 'sources' is not an object")?
        .iter()
        .map(|(c, p)| (c.clone(), source(p.as_str().unwrap_or_default())))
        .collect();
    let files: HashMap<&str, SafeTensors> = bytes
        .iter()
        .map(|(c, b)| SafeTensors::deserialize(b).map(|st| (c.as_str(), st)).map_err(|e| format!("source '{c}': {e}")))
        .collect::<Result<_, _>>()?;
    let mut out: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for e in field(&m, "tensors")?.as_array().ok_or("manifest: 'tensors' is not a list")? {
        let key = field(e, "key")?.as_str().unwrap_or_default().to_string();
        let shape: Vec<usize> = serde_json::from_value(field(e, "shape")?).map_err(|err| format!("{key}: shape: {err}"))?;
        let mut parts = Vec::new();
        for f in field(e, "from")?.as_array().ok_or_else(|| format!("{key}: 'from' is not a list"))? {
            let (c, t) = (f[0].as_str().unwrap_or_default(), f[1].as_str().unwrap_or_default());
            let file = files.get(c).ok_or_else(|| format!("{key}: no source '{c}'"))?;
            let v = file.tensor(t).map_err(|err| format!("{key}: '{c}' tensor '{t}': {err}"))?;
            if v.dtype() != dtype {
                return Err(format!("{key}: '{c}' tensor '{t}' is {:?}, the manifest says {dtype:?}", v.dtype()));
            }
            parts.push(v);
        }
        let op = field(e, "op")?;
        let data: Vec<u8> = match (op.as_str().unwrap_or_default(), &parts[..]) {
            // Row-major: a reshape keeps the bytes, a dim-0 concat appends them.
            ("identity", [p]) if p.shape() == &shape[..] => p.data().to_vec(),
            ("reshape", [p]) if p.shape().iter().product::<usize>() == shape.iter().product::<usize>() => p.data().to_vec(),
            ("concat", [p0, ..])
                if parts.iter().all(|p| p.shape()[1..] == p0.shape()[1..])
                    && parts.iter().map(|p| p.shape()[0]).sum::<usize>() == shape[0]
                    && p0.shape()[1..] == shape[1..] =>
            {
                parts.iter().flat_map(|p| p.data().iter().copied()).collect()
            }
            ("transpose", [p]) if p.shape().len() == 2 && shape == [p.shape()[1], p.shape()[0]] => {
                let (r, c, es) = (p.shape()[0], p.shape()[1], p.data().len() / (p.shape()[0] * p.shape()[1]).max(1));
                let mut t = vec![0u8; p.data().len()];
                for i in 0..r {
                    for j in 0..c {
                        t[(j * r + i) * es..][..es].copy_from_slice(&p.data()[(i * c + j) * es..][..es]);
                    }
                }
                t
            }
            ("fill", []) => {
                let v = field(e, "value")?.as_f64().ok_or_else(|| format!("{key}: fill value is not a number"))? as f32;
                let n: usize = shape.iter().product();
                match dtype {
                    Dtype::F16 => half::f16::from_f32(v).to_le_bytes().repeat(n),
                    _ => v.to_le_bytes().repeat(n),
                }
            }
            (op, _) => {
                let got: Vec<_> = parts.iter().map(|p| p.shape().to_vec()).collect();
                return Err(format!("{key}: op '{op}' cannot make {shape:?} from {got:?}"));
            }
        };
        out.push((key, shape, data));
    }
    let meta: HashMap<String, String> = serde_json::from_value(field(&m, "metadata")?).map_err(|e| format!("manifest metadata: {e}"))?;
    let views: Vec<(String, TensorView)> = out
        .iter()
        .map(|(k, s, d)| TensorView::new(dtype, s.clone(), d).map(|v| (k.clone(), v)).map_err(|e| format!("{k}: {e}")))
        .collect::<Result<_, _>>()?;
    safetensors::serialize(views, Some(meta)).map_err(|e| format!("serialize: {e}"))
}
