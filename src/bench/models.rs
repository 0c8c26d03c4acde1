//! Random-weight Stable Diffusion 1.5 UNet and VAE decoder at full size, for `pigment bench
//! unet|vae` when no checkpoint is given: the same tensor names and shapes as the real
//! diffusers folders (weights cannot be downloaded everywhere; timing does not need real ones).

use crate::bench::random;
use half::f16;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

type Shapes = BTreeMap<String, Vec<usize>>;

fn put(t: &mut Shapes, name: String, shape: &[usize]) {
    t.insert(name, shape.to_vec());
}

fn resnet(t: &mut Shapes, p: &str, cin: usize, cout: usize, temb: Option<usize>) {
    put(t, format!("{p}.norm1.weight"), &[cin]);
    put(t, format!("{p}.norm1.bias"), &[cin]);
    put(t, format!("{p}.conv1.weight"), &[cout, cin, 3, 3]);
    put(t, format!("{p}.conv1.bias"), &[cout]);
    if let Some(temb) = temb {
        put(t, format!("{p}.time_emb_proj.weight"), &[cout, temb]);
        put(t, format!("{p}.time_emb_proj.bias"), &[cout]);
    }
    put(t, format!("{p}.norm2.weight"), &[cout]);
    put(t, format!("{p}.norm2.bias"), &[cout]);
    put(t, format!("{p}.conv2.weight"), &[cout, cout, 3, 3]);
    put(t, format!("{p}.conv2.bias"), &[cout]);
    if cin != cout {
        put(t, format!("{p}.conv_shortcut.weight"), &[cout, cin, 1, 1]);
        put(t, format!("{p}.conv_shortcut.bias"), &[cout]);
    }
}

fn transformer(t: &mut Shapes, p: &str, c: usize, ctx_dim: usize) {
    put(t, format!("{p}.norm.weight"), &[c]);
    put(t, format!("{p}.norm.bias"), &[c]);
    put(t, format!("{p}.proj_in.weight"), &[c, c, 1, 1]);
    put(t, format!("{p}.proj_in.bias"), &[c]);
    put(t, format!("{p}.proj_out.weight"), &[c, c, 1, 1]);
    put(t, format!("{p}.proj_out.bias"), &[c]);
    let b = format!("{p}.transformer_blocks.0");
    for n in ["norm1", "norm2", "norm3"] {
        put(t, format!("{b}.{n}.weight"), &[c]);
        put(t, format!("{b}.{n}.bias"), &[c]);
    }
    for (a, kv) in [("attn1", c), ("attn2", ctx_dim)] {
        put(t, format!("{b}.{a}.to_q.weight"), &[c, c]);
        put(t, format!("{b}.{a}.to_k.weight"), &[c, kv]);
        put(t, format!("{b}.{a}.to_v.weight"), &[c, kv]);
        put(t, format!("{b}.{a}.to_out.0.weight"), &[c, c]);
        put(t, format!("{b}.{a}.to_out.0.bias"), &[c]);
    }
    put(t, format!("{b}.ff.net.0.proj.weight"), &[8 * c, c]);
    put(t, format!("{b}.ff.net.0.proj.bias"), &[8 * c]);
    put(t, format!("{b}.ff.net.2.weight"), &[c, 4 * c]);
    put(t, format!("{b}.ff.net.2.bias"), &[c]);
}

/// SD 1.5's UNet: block_out_channels (320, 640, 1280, 1280), 2 layers per block, 8 heads,
/// cross-attention width 768.
fn sd15_unet() -> (Shapes, serde_json::Value) {
    let ch = [320usize, 640, 1280, 1280];
    let (temb, ctx_dim) = (1280, 768);
    let mut t = Shapes::new();
    put(&mut t, "time_embedding.linear_1.weight".into(), &[temb, ch[0]]);
    put(&mut t, "time_embedding.linear_1.bias".into(), &[temb]);
    put(&mut t, "time_embedding.linear_2.weight".into(), &[temb, temb]);
    put(&mut t, "time_embedding.linear_2.bias".into(), &[temb]);
    put(&mut t, "conv_in.weight".into(), &[ch[0], 4, 3, 3]);
    put(&mut t, "conv_in.bias".into(), &[ch[0]]);
    let mut skips = vec![ch[0]];
    let mut cin = ch[0];
    for i in 0..4 {
        for j in 0..2 {
            resnet(&mut t, &format!("down_blocks.{i}.resnets.{j}"), cin, ch[i], Some(temb));
            cin = ch[i];
            if i < 3 {
                transformer(&mut t, &format!("down_blocks.{i}.attentions.{j}"), ch[i], ctx_dim);
            }
            skips.push(cin);
        }
        if i < 3 {
            put(&mut t, format!("down_blocks.{i}.downsamplers.0.conv.weight"), &[ch[i], ch[i], 3, 3]);
            put(&mut t, format!("down_blocks.{i}.downsamplers.0.conv.bias"), &[ch[i]]);
            skips.push(ch[i]);
        }
    }
    resnet(&mut t, "mid_block.resnets.0", 1280, 1280, Some(temb));
    resnet(&mut t, "mid_block.resnets.1", 1280, 1280, Some(temb));
    transformer(&mut t, "mid_block.attentions.0", 1280, ctx_dim);
    let mut prev = 1280;
    for i in 0..4 {
        let c = ch[3 - i];
        for j in 0..3 {
            let skip = skips.pop().unwrap();
            resnet(&mut t, &format!("up_blocks.{i}.resnets.{j}"), prev + skip, c, Some(temb));
            prev = c;
            if i > 0 {
                transformer(&mut t, &format!("up_blocks.{i}.attentions.{j}"), c, ctx_dim);
            }
        }
        if i < 3 {
            put(&mut t, format!("up_blocks.{i}.upsamplers.0.conv.weight"), &[c, c, 3, 3]);
            put(&mut t, format!("up_blocks.{i}.upsamplers.0.conv.bias"), &[c]);
        }
    }
    put(&mut t, "conv_norm_out.weight".into(), &[320]);
    put(&mut t, "conv_norm_out.bias".into(), &[320]);
    put(&mut t, "conv_out.weight".into(), &[4, 320, 3, 3]);
    put(&mut t, "conv_out.bias".into(), &[4]);
    let config = serde_json::json!({
        "_class_name": "UNet2DConditionModel",
        "block_out_channels": ch,
        "layers_per_block": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": ctx_dim,
        "norm_num_groups": 32,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "in_channels": 4,
        "out_channels": 4,
        "sample_size": 64,
    });
    (t, config)
}

/// SD's VAE decoder: block_out_channels (128, 256, 512, 512), 2 layers per block.
fn sd_vae_decoder() -> (Shapes, serde_json::Value) {
    let ch = [128usize, 256, 512, 512];
    let mut t = Shapes::new();
    put(&mut t, "post_quant_conv.weight".into(), &[4, 4, 1, 1]);
    put(&mut t, "post_quant_conv.bias".into(), &[4]);
    put(&mut t, "decoder.conv_in.weight".into(), &[512, 4, 3, 3]);
    put(&mut t, "decoder.conv_in.bias".into(), &[512]);
    resnet(&mut t, "decoder.mid_block.resnets.0", 512, 512, None);
    resnet(&mut t, "decoder.mid_block.resnets.1", 512, 512, None);
    let a = "decoder.mid_block.attentions.0";
    put(&mut t, format!("{a}.group_norm.weight"), &[512]);
    put(&mut t, format!("{a}.group_norm.bias"), &[512]);
    for n in ["to_q", "to_k", "to_v", "to_out.0"] {
        put(&mut t, format!("{a}.{n}.weight"), &[512, 512]);
        put(&mut t, format!("{a}.{n}.bias"), &[512]);
    }
    let mut prev = 512;
    for i in 0..4 {
        let c = ch[3 - i];
        for j in 0..3 {
            resnet(&mut t, &format!("decoder.up_blocks.{i}.resnets.{j}"), prev, c, None);
            prev = c;
        }
        if i < 3 {
            put(&mut t, format!("decoder.up_blocks.{i}.upsamplers.0.conv.weight"), &[c, c, 3, 3]);
            put(&mut t, format!("decoder.up_blocks.{i}.upsamplers.0.conv.bias"), &[c]);
        }
    }
    put(&mut t, "decoder.conv_norm_out.weight".into(), &[128]);
    put(&mut t, "decoder.conv_norm_out.bias".into(), &[128]);
    put(&mut t, "decoder.conv_out.weight".into(), &[3, 128, 3, 3]);
    put(&mut t, "decoder.conv_out.bias".into(), &[3]);
    let config = serde_json::json!({
        "_class_name": "AutoencoderKL",
        "block_out_channels": ch,
        "layers_per_block": 2,
        "latent_channels": 4,
        "in_channels": 3,
        "out_channels": 3,
        "norm_num_groups": 32,
        "scaling_factor": 0.18215,
        "sample_size": 512,
    });
    (t, config)
}

/// Write `shapes` as f16 safetensors with fan-in-scaled random values (norm weights near 1).
fn write_component(dir: &Path, folder: &str, file: &str, shapes: &Shapes, config: &serde_json::Value) -> std::io::Result<()> {
    let sub = dir.join(folder);
    std::fs::create_dir_all(&sub)?;
    // safetensors layout: u64 header length, JSON header, then the data in header order.
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in shapes {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(name.clone(), serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + bytes]}));
        offset += bytes;
    }
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    head.resize(head.len().next_multiple_of(8), b' ');
    let mut out = std::io::BufWriter::new(std::fs::File::create(sub.join(file))?);
    use std::io::Write;
    out.write_all(&(head.len() as u64).to_le_bytes())?;
    out.write_all(&head)?;
    for (i, (name, shape)) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product();
        let r = random(n, 1 + i as u64);
        let (scale, base) = if shape.len() == 1 {
            (0.1, if name.ends_with("weight") { 1.0 } else { 0.0 })
        } else {
            ((3.0 / shape[1..].iter().product::<usize>() as f32).sqrt(), 0.0)
        };
        let h: Vec<f16> = r.iter().map(|x| f16::from_f32(base + scale * x)).collect();
        out.write_all(bytemuck::cast_slice(&h))?;
    }
    out.flush()?;
    std::fs::write(sub.join("config.json"), config.to_string())
}

/// A diffusers folder (in the temp dir) with random SD 1.5-sized UNet and VAE decoder weights.
pub fn random_sd15_folder() -> std::io::Result<PathBuf> {
    let done = std::env::temp_dir().join("pigment-bench-sd15-random");
    if done.join("model_index.json").exists() {
        return Ok(done);
    }
    // Written under another name and renamed, so an interrupted run is not mistaken for done.
    let dir = std::env::temp_dir().join(format!("pigment-bench-sd15-random-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (u, uc) = sd15_unet();
    write_component(&dir, "unet", "diffusion_pytorch_model.safetensors", &u, &uc)?;
    let (v, vc) = sd_vae_decoder();
    write_component(&dir, "vae", "diffusion_pytorch_model.safetensors", &v, &vc)?;
    std::fs::write(dir.join("model_index.json"), "{}")?;
    std::fs::rename(&dir, &done)?;
    Ok(done)
}
