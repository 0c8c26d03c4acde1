//! `pigment generate --edit-from A --edit-to B`: pix2pix-zero's concept sentences.

use crate::pipeline::pix2pix_zero::Pix2PixZeroOptions;

/// The sentences of `--edit-from` / `--edit-to`: each value is a sentence, or a `.txt` file with
/// one sentence per line (blank lines skipped).
fn sentences(flag: &str, values: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for v in values {
        if v.ends_with(".txt") {
            let text = std::fs::read_to_string(v).map_err(|e| anyhow::anyhow!("{flag} {v}: {e} (a .txt value is read as a file of sentences, one per line)"))?;
            let lines: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
            if lines.is_empty() {
                anyhow::bail!("{flag} {v}: the file has no sentences");
            }
            out.extend(lines);
        } else {
            out.push(v.clone());
        }
    }
    Ok(out)
}

/// pix2pix-zero's options when either flag is given (both must be).
pub fn options(edit_from: &[String], edit_to: &[String], amount: f32) -> anyhow::Result<Option<Pix2PixZeroOptions>> {
    if edit_from.is_empty() && edit_to.is_empty() {
        return Ok(None);
    }
    if edit_from.is_empty() || edit_to.is_empty() {
        anyhow::bail!("pix2pix-zero needs both --edit-from (the concept now, e.g. \"a cat\") and --edit-to (the new one, \"a dog\")");
    }
    let (source, target) = (sentences("--edit-from", edit_from)?, sentences("--edit-to", edit_to)?);
    Ok(Some(Pix2PixZeroOptions { source, target, guidance_amount: amount, latents: None }))
}
