//! Image files for the native front ends (`pigment generate`, `pigment serve`): PNG/JPEG/WebP in
//! as RGB8, Lanczos resizing, PNG out with A1111's `parameters` text chunk, and reading that
//! chunk back (A1111's PNG info).

use crate::pipeline::Image;
use anyhow::{anyhow, Result};

/// A PNG, JPEG or WebP file as 8-bit RGB (alpha dropped, as PIL's `convert("RGB")`); errors name
/// the file and what it was for.
pub fn read_image(path: &std::path::Path, what: &str) -> Result<Image> {
    let bytes = std::fs::read(path).map_err(|e| anyhow!("cannot read {what} {}: {e}", path.display()))?;
    decode_image(&bytes).map_err(|e| anyhow!("cannot read {what} {}: {e}", path.display()))
}

/// The most pixels an input image may have (8192 x 8192): its RGB copy is then at most 192 MiB,
/// beside the decoder's own buffer (at most the `image` crate's 512 MiB default allocation limit).
pub const MAX_PIXELS: u64 = 8192 * 8192;

/// Encoded image bytes (PNG or JPEG, format guessed from the content) as 8-bit RGB.
pub fn decode_image(bytes: &[u8]) -> Result<Image> {
    let reader = || image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| anyhow!("{e}"));
    // The size from the header first: a few bytes can declare a huge image.
    let (w, h) = reader()?.into_dimensions().map_err(|e| anyhow!("{e} (give a PNG or JPEG)"))?;
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(anyhow!("the image is {w}x{h}, more than {MAX_PIXELS} pixels (8192x8192); resize it first"));
    }
    let img = reader()?
        .decode()
        .map_err(|e| anyhow!("{e} (give a PNG or JPEG)"))?
        .to_rgb8();
    Ok(Image { width: img.width() as usize, height: img.height() as usize, rgb: img.into_raw() })
}

/// Lanczos3 resize (diffusers' `VaeImageProcessor` and A1111 resize with PIL's Lanczos): the
/// hires fix's PIL-exact resize, so every Lanczos in Pigment is the same one.
pub fn resize_rgb(img: &Image, width: usize, height: usize) -> Image {
    crate::pipeline::hires::resize_lanczos(img, width, height)
}

/// Nearest-neighbour resize (A1111's "Nearest" upscaler, PIL's `NEAREST`).
pub fn resize_nearest_rgb(img: &Image, width: usize, height: usize) -> Image {
    let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.rgb.clone()).expect("RGB buffer of its own size");
    let out = image::imageops::resize(&buf, width as u32, height as u32, image::imageops::FilterType::Nearest);
    Image { width, height, rgb: out.into_raw() }
}

/// PNG bytes with A1111's `parameters` text chunk, so its PNG-info tab (and ComfyUI) reads the
/// settings; no chunk when `parameters` is empty.
pub fn encode_png(image: &Image, parameters: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, image.width as u32, image.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        // tEXt is Latin-1; other prompts go in an iTXt chunk (UTF-8), as A1111 (PIL) does.
        if parameters.is_empty() {
        } else if parameters.chars().all(|c| (c as u32) < 256) {
            enc.add_text_chunk("parameters".to_string(), parameters.to_string())?;
        } else {
            enc.add_itxt_chunk("parameters".to_string(), parameters.to_string())?;
        }
        let mut writer = enc.write_header()?;
        writer.write_image_data(&image.rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

/// [`encode_png`] into a file.
pub fn write_png(path: &std::path::Path, image: &Image, parameters: &str) -> Result<()> {
    let bytes = encode_png(image, parameters)?;
    std::fs::write(path, bytes).map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
}

/// The PNG's text chunks (tEXt, zTXt, iTXt), keyword → text, in file order. Not a PNG (e.g. a
/// JPEG) gives an empty list, as A1111's PNG info shows nothing for it.
pub fn png_text_chunks(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    if !bytes.starts_with(&[0x89, b'P', b'N', b'G']) {
        decode_image(bytes)?;
        return Ok(Vec::new());
    }
    let reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().map_err(|e| anyhow!("not a readable PNG: {e}"))?;
    let info = reader.info();
    let mut out: Vec<(String, String)> = info.uncompressed_latin1_text.iter().map(|t| (t.keyword.clone(), t.text.clone())).collect();
    for t in &info.compressed_latin1_text {
        out.push((t.keyword.clone(), t.get_text().map_err(|e| anyhow!("zTXt chunk '{}': {e}", t.keyword))?));
    }
    for t in &info.utf8_text {
        out.push((t.keyword.clone(), t.get_text().map_err(|e| anyhow!("iTXt chunk '{}': {e}", t.keyword))?));
    }
    Ok(out)
}

/// The canny preprocessor: the image to grey, `imageproc`'s Canny (Gaussian blur σ 1.4, Sobel
/// gradient magnitude, non-maximum suppression, hysteresis between `low` and `high`), edges white
/// on black in all three channels. A1111 runs OpenCV's Canny (no blur, |dx|+|dy|) with the same
/// default thresholds 100/200: edges land in the same places, weak ones may differ.
pub fn canny_map(img: &Image, low: f32, high: f32) -> anyhow::Result<Image> {
    if !(low >= 0.0 && low <= high) {
        anyhow::bail!("canny thresholds: need 0 <= --canny-low ({low}) <= --canny-high ({high})");
    }
    let rgb = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.rgb.clone())
        .ok_or_else(|| anyhow::anyhow!("control image: {} bytes for {}x{} RGB", img.rgb.len(), img.width, img.height))?;
    let grey = image::DynamicImage::ImageRgb8(rgb).to_luma8();
    let edges = imageproc::edges::canny(&grey, low, high);
    let rgb = edges.pixels().flat_map(|p| [p.0[0]; 3]).collect();
    Ok(Image { width: img.width, height: img.height, rgb })
}
