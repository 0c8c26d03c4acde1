//! Hypernetworks in a generation ([`crate::models::hypernetwork`]): `<hypernet:name:w>` prompt
//! tags resolved in `--hypernetwork-dir`, and [`StableDiffusion::set_hypernetworks`]. The k and
//! v contexts are computed once per generation: A1111 applies the modules in every
//! cross-attention layer at every step, but always to the same text context, so it is the
//! same result. ControlNet's cross-attentions see the plain text.

use super::StableDiffusion;
use crate::gpu::Context;
use crate::models::hypernetwork::{self, Hypernetwork};
use crate::{Error, Result, Tensor};
use std::sync::Arc;

/// A `<hypernet:name[:multiplier]>` tag (multiplier 1 when omitted, as A1111).
#[derive(Clone, Debug, PartialEq)]
pub struct HypernetTag {
    pub name: String,
    pub multiplier: f32,
}

/// The prompt's `<hypernet:…>` tags, in order.
pub fn hypernet_tags(prompt: &str) -> Result<Vec<HypernetTag>> {
    let (_, tags) = crate::prompt::extra_networks(prompt);
    let mut out = Vec::new();
    for (kind, args) in tags.iter().filter(|(k, _)| k == "hypernet") {
        let items: Vec<&str> = args.split(':').collect();
        let multiplier = match items.get(1) {
            None => 1.0,
            Some(m) => m.trim().parse::<f32>().map_err(|_| Error::Unsupported(format!("<{kind}:{args}>: multiplier {m:?} is not a number (write e.g. <hypernet:{}:0.8>)", items[0])))?,
        };
        out.push(HypernetTag { name: items[0].to_string(), multiplier });
    }
    Ok(out)
}

/// The hypernetworks a prompt's tags ask for, by file stem under `dir` (`--hypernetwork-dir`);
/// a tag with no such file is an error listing what the folder has.
#[cfg(not(target_arch = "wasm32"))]
pub fn uses_for_prompt(prompt: &str, dir: Option<&std::path::Path>) -> Result<Vec<(Arc<Hypernetwork>, f32)>> {
    let tags = hypernet_tags(prompt)?;
    if tags.is_empty() {
        return Ok(Vec::new());
    }
    let Some(dir) = dir else {
        return Err(Error::Unsupported(format!("the prompt asks for <hypernet:{}>, but no hypernetwork folder was given (--hypernetwork-dir DIR)", tags[0].name)));
    };
    let files = crate::lora::list_dir(dir)?;
    let mut uses = Vec::new();
    for t in tags {
        let Some((_, path)) = files.iter().find(|(stem, _)| *stem == t.name) else {
            let have: Vec<&str> = files.iter().map(|(s, _)| s.as_str()).take(30).collect();
            return Err(Error::Unsupported(format!(
                "<hypernet:{}> in the prompt: no {}.safetensors in {} (it has {}; convert A1111 .pt files with tools/convert_hypernetwork.py)",
                t.name,
                t.name,
                dir.display(),
                if have.is_empty() { "none".to_string() } else { have.join(", ") }
            )));
        };
        uses.push((Arc::new(Hypernetwork::open(path, &t.name)?), t.multiplier));
    }
    Ok(uses)
}

impl StableDiffusion {
    /// The hypernetworks every following generation applies, in order, each with its
    /// multiplier (an empty list removes them). Their context width must be the UNet's.
    pub fn set_hypernetworks(&mut self, nets: Vec<(Arc<Hypernetwork>, f32)>) -> Result<()> {
        let d = self.unet.config.cross_attention_dim;
        for (n, _) in &nets {
            if !n.widths().contains(&d) {
                return Err(Error::Unsupported(format!(
                    "hypernetwork {} has modules for context widths {:?}, not {}'s {d} (it was trained for another model family)",
                    n.name,
                    n.widths(),
                    self.name
                )));
            }
        }
        self.hypernetworks = nets;
        Ok(())
    }

    /// The k and v contexts of `text` through the hypernetworks; `None` without any.
    pub(super) fn hyper_contexts(&self, ctx: &Context, text: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        hypernetwork::apply_all(ctx, &self.hypernetworks, text)
    }
}
