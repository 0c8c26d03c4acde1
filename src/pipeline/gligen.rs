//! GLIGEN grounded generation (diffusers' `StableDiffusionGLIGENPipeline`): phrases placed in
//! boxes. Each phrase's pooled text embedding and its box become a grounding token
//! ([`PositionNet`](crate::models::gligen::PositionNet)); the UNet's fusers attend to them for the
//! first `int(beta · len(timesteps))` evaluations ("scheduled sampling") and are off after. With
//! CFG the uncond half gets the null tokens, as the reference masks it.

use super::{GenerateOptions, StableDiffusion};
use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use crate::models::gligen::MAX_OBJECTS;
use crate::models::unet::UNet2DConditionModel;

/// Phrases in boxes, and the fraction of the schedule they steer.
#[derive(Clone, Debug, PartialEq)]
pub struct GligenOptions {
    pub boxes: Vec<GroundingBox>,
    /// diffusers' `gligen_scheduled_sampling_beta` (default 0.3): the fusers run for the first
    /// `int(beta · len(timesteps))` model evaluations.
    pub scheduled_sampling_beta: f32,
}

/// One phrase and its box `(x0, y0, x1, y1)` as fractions of the width and height.
#[derive(Clone, Debug, PartialEq)]
pub struct GroundingBox {
    pub phrase: String,
    pub bbox: [f32; 4],
}

impl std::str::FromStr for GroundingBox {
    type Err = Error;
    /// `"x0,y0,x1,y1:phrase"` (the CLI's `--box`).
    fn from_str(s: &str) -> Result<GroundingBox> {
        let bad = |why: &str| Error::Unsupported(format!("--box '{s}': {why} (expected \"x0,y0,x1,y1:phrase\" with fractions of the image, e.g. \"0.1,0.2,0.5,0.8:a red ball\")"));
        let (coords, phrase) = s.split_once(':').ok_or_else(|| bad("no ':' before the phrase"))?;
        let v: Vec<f32> = coords.split(',').map(|c| c.trim().parse::<f32>()).collect::<std::result::Result<_, _>>().map_err(|_| bad("the box is not 4 numbers"))?;
        let [x0, y0, x1, y1] = v[..] else { return Err(bad("the box is not 4 numbers")) };
        let b = GroundingBox { phrase: phrase.trim().to_string(), bbox: [x0, y0, x1, y1] };
        b.check().map_err(|e| bad(&e))?;
        Ok(b)
    }
}

impl GroundingBox {
    fn check(&self) -> std::result::Result<(), String> {
        let [x0, y0, x1, y1] = self.bbox;
        if !self.bbox.iter().all(|v| (0.0..=1.0).contains(v)) {
            return Err("coordinates must lie in [0, 1]".into());
        }
        if x0 >= x1 || y0 >= y1 {
            return Err("x0 < x1 and y0 < y1 are needed".into());
        }
        if self.phrase.is_empty() {
            return Err("the phrase is empty".into());
        }
        Ok(())
    }
}

/// The grounding tokens of one generation and how many evaluations use them.
pub(crate) struct Grounding {
    objs: Option<Tensor>,
    steps: usize,
}

impl Grounding {
    pub(crate) async fn prepare(sd: &StableDiffusion, ctx: &Context, o: &GenerateOptions, unet: &UNet2DConditionModel, guided: bool, total: usize, dtype: DType) -> Result<Grounding> {
        let Some(g) = &o.gligen else { return Ok(Grounding { objs: None, steps: 0 }) };
        let refuse = |why: &str| Err(Error::Unsupported(format!("GLIGEN boxes (--box) {why}")));
        let Some(net) = &unet.position_net else {
            return refuse(&format!("need a GLIGEN checkpoint (a UNet with attention_type \"gated\" and position_net); {} has none", sd.name));
        };
        if g.boxes.is_empty() {
            return refuse("were given as an empty list");
        }
        if g.boxes.len() > MAX_OBJECTS {
            return refuse(&format!("are at most {MAX_OBJECTS} (diffusers' max_objs); got {}", g.boxes.len()));
        }
        for b in &g.boxes {
            b.check().map_err(|e| Error::Unsupported(format!("GLIGEN box '{}': {e}", b.phrase)))?;
        }
        let beta = g.scheduled_sampling_beta;
        if !(0.0..=1.0).contains(&beta) {
            return refuse(&format!("need a scheduled-sampling beta in [0, 1]; got {beta}"));
        }
        if o.init_image.is_some() || o.control.is_some() || sd.is_sdxl() {
            return refuse("work in SD 1.x/2.x txt2img (no init image, mask or ControlNet), as diffusers' GLIGEN pipeline");
        }
        // Each phrase alone through the text encoder: with the causal mask its pooled token (the
        // first EOS) does not depend on the padding diffusers adds to the longest phrase.
        let mut pooled = Vec::with_capacity(g.boxes.len() * net.positive_len);
        for b in &g.boxes {
            let ids = sd.tokenizer.encode_padded(&b.phrase, crate::prompt::CHUNK_LEN);
            let out = sd.clip.forward(ctx, &ids, ids.len(), 1, false)?;
            let p = out.pooled(0)?.to_f32(ctx).await?;
            if p.len() != net.positive_len {
                return refuse(&format!("need a text encoder {} wide for this position_net; it is {}", net.positive_len, p.len()));
            }
            pooled.extend(p);
        }
        let bboxes: Vec<[f32; 4]> = g.boxes.iter().map(|b| b.bbox).collect();
        let grounded: Vec<bool> = if guided { vec![false, true] } else { vec![true] };
        let objs = net.objs(ctx, &pooled, &bboxes, &grounded, dtype)?;
        // Python's int(beta * len(timesteps)), beta read as the decimal the user gave
        let beta: f64 = format!("{beta}").parse().unwrap_or(beta as f64);
        Ok(Grounding { objs: Some(objs), steps: (beta * total as f64) as usize })
    }

    /// The tokens for model evaluation `i`, while the schedule grounds.
    pub(crate) fn objs(&self, i: usize) -> Option<&Tensor> {
        self.objs.as_ref().filter(|_| i < self.steps)
    }
}

impl StableDiffusion {
    /// GLIGEN's grounding tokens for `o`, `[B, 30, C]` row-major (B = 2 with CFG: uncond, cond),
    /// as the UNet's fusers receive them; `None` without boxes.
    pub fn grounding_tokens(&self, ctx: &Context, o: &GenerateOptions) -> Result<Option<Vec<f32>>> {
        pollster::block_on(async {
            let g = Grounding::prepare(self, ctx, o, &self.unet, super::uses_cfg(o.guidance), 1, self.unet.dtype).await?;
            match g.objs {
                Some(t) => Ok(Some(t.to_f32(ctx).await?)),
                None => Ok(None),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_parse_and_bad_ones_name_the_form() {
        let b: GroundingBox = "0.1, 0.2,0.5,0.8: a red ball".parse().unwrap();
        assert_eq!(b, GroundingBox { phrase: "a red ball".into(), bbox: [0.1, 0.2, 0.5, 0.8] });
        // a phrase may hold ':' itself
        assert_eq!("0,0,1,1:a: b".parse::<GroundingBox>().unwrap().phrase, "a: b");
        for bad in ["0.1,0.2,0.5:x", "a red ball", "0.5,0.2,0.1,0.8:x", "0,0,1.5,1:x", "0,0,1,1:", "0,0,1,nan:x"] {
            let e = bad.parse::<GroundingBox>().unwrap_err().to_string();
            assert!(e.contains("x0,y0,x1,y1:phrase"), "{bad}: {e}");
        }
    }
}
