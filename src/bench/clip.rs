//! Random CLIP ViT-L/14 text-encoder weights (SD 1.5's `text_encoder`) for `pigment bench clip`,
//! written once to the temp dir as a diffusers folder with only `text_encoder/`.

use half::f16;
use std::path::PathBuf;

const D: usize = 768;
const INNER: usize = 3072;
const LAYERS: usize = 12;
const VOCAB: usize = 49408;

/// (name, shape) of every tensor, in CLIPTextModel's key names.
fn shapes() -> Vec<(String, Vec<usize>)> {
    let mut t = vec![
        ("text_model.embeddings.token_embedding.weight".to_string(), vec![VOCAB, D]),
        ("text_model.embeddings.position_embedding.weight".to_string(), vec![77, D]),
    ];
    for i in 0..LAYERS {
        let p = format!("text_model.encoder.layers.{i}");
        for n in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"] {
            t.push((format!("{p}.{n}.weight"), vec![D, D]));
            t.push((format!("{p}.{n}.bias"), vec![D]));
        }
        t.push((format!("{p}.mlp.fc1.weight"), vec![INNER, D]));
        t.push((format!("{p}.mlp.fc1.bias"), vec![INNER]));
        t.push((format!("{p}.mlp.fc2.weight"), vec![D, INNER]));
        t.push((format!("{p}.mlp.fc2.bias"), vec![D]));
        for n in ["layer_norm1", "layer_norm2"] {
            t.push((format!("{p}.{n}.weight"), vec![D]));
            t.push((format!("{p}.{n}.bias"), vec![D]));
        }
    }
    t.push(("text_model.final_layer_norm.weight".to_string(), vec![D]));
    t.push(("text_model.final_layer_norm.bias".to_string(), vec![D]));
    t
}

/// A diffusers folder (in the temp dir) with a random CLIP-L text encoder in f16.
pub fn random_clip_folder() -> std::io::Result<PathBuf> {
    let done = std::env::temp_dir().join("pigment-bench-clip-random");
    if done.join("model_index.json").exists() {
        return Ok(done);
    }
    // Written under another name and renamed, so an interrupted run is not mistaken for done.
    let dir = std::env::temp_dir().join(format!("pigment-bench-clip-random-{}", std::process::id()));
    let sub = dir.join("text_encoder");
    std::fs::create_dir_all(&sub)?;
    // safetensors layout: u64 header length, JSON header, then the data in header order.
    let tensors = shapes();
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in &tensors {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(name.clone(), serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + bytes]}));
        offset += bytes;
    }
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    head.resize(head.len().next_multiple_of(8), b' ');
    let mut out = std::io::BufWriter::new(std::fs::File::create(sub.join("model.safetensors"))?);
    use std::io::Write;
    out.write_all(&(head.len() as u64).to_le_bytes())?;
    out.write_all(&head)?;
    for (i, (name, shape)) in tensors.iter().enumerate() {
        let n: usize = shape.iter().product();
        // Fan-in-scaled values; norm weights near 1, biases small.
        let (scale, base) = match shape.len() {
            1 if name.ends_with("weight") => (0.1, 1.0),
            1 => (0.1, 0.0),
            _ => ((3.0 / shape[1] as f32).sqrt(), 0.0),
        };
        let h: Vec<f16> = super::random(n, 100 + i as u64).iter().map(|x| f16::from_f32(base + scale * x)).collect();
        out.write_all(bytemuck::cast_slice(&h))?;
    }
    out.flush()?;
    let config = serde_json::json!({
        "architectures": ["CLIPTextModel"],
        "hidden_size": D,
        "intermediate_size": INNER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "vocab_size": VOCAB,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 768,
    });
    std::fs::write(sub.join("config.json"), config.to_string())?;
    std::fs::write(dir.join("model_index.json"), "{}")?;
    std::fs::rename(&dir, &done)?;
    Ok(done)
}
