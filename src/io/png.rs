//! PNG previews (8-bit, auto-contrast) and PNG masks.

use super::Plane;
use anyhow::{anyhow, bail, Context, Result};
use std::io::BufWriter;
use std::path::Path;

fn write(path: &Path, w: usize, h: usize, color: png::ColorType, pixels: &[u8]) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut enc = png::Encoder::new(BufWriter::new(file), w as u32, h as u32);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()
        .and_then(|mut wr| wr.write_image_data(pixels))
        .map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Writes an 8-bit grey PNG of `h` rows of `w` pixels.
pub fn write_gray8(path: &Path, w: usize, h: usize, pixels: &[u8]) -> Result<()> {
    anyhow::ensure!(pixels.len() == w * h, "{} pixels for {w}×{h}", pixels.len());
    write(path, w, h, png::ColorType::Grayscale, pixels)
}

/// Writes an 8-bit RGB PNG (`pixels` interleaved RGB).
pub fn write_rgb8(path: &Path, w: usize, h: usize, pixels: &[u8]) -> Result<()> {
    anyhow::ensure!(
        pixels.len() == w * h * 3,
        "{} bytes for {w}×{h} RGB",
        pixels.len()
    );
    write(path, w, h, png::ColorType::Rgb, pixels)
}

/// Decodes a PNG with `transformations`: its frame's info and bytes.
fn decode(
    path: &Path,
    transformations: png::Transformations,
) -> Result<(png::OutputInfo, Vec<u8>)> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(file));
    dec.set_transformations(transformations);
    let mut reader = dec
        .read_info()
        .map_err(|e| anyhow!("{}: not a readable PNG ({e})", path.display()))?;
    let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| anyhow!("{}: corrupt PNG ({e})", path.display()))?;
    buf.truncate(info.buffer_size());
    Ok((info, buf))
}

/// Reads an 8- or 16-bit grey PNG (RGB/RGBA only when all colour channels are equal):
/// (height, width, pixels).
pub fn read_gray(path: &Path) -> Result<(usize, usize, Plane)> {
    let (info, buf) = decode(path, png::Transformations::EXPAND)?;
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = info.color_type.samples();
    let bytes = &buf[..];
    let sixteen = info.bit_depth == png::BitDepth::Sixteen;
    let sample = |i: usize| -> u16 {
        if sixteen {
            u16::from_be_bytes([bytes[2 * i], bytes[2 * i + 1]])
        } else {
            bytes[i] as u16
        }
    };
    let colour = match info.color_type {
        png::ColorType::Rgb | png::ColorType::Rgba => 3,
        _ => 1,
    };
    let mut out = Vec::with_capacity(w * h);
    for p in 0..w * h {
        let first = sample(p * channels);
        if (1..colour).any(|c| sample(p * channels + c) != first) {
            bail!(
                "{}: colour PNG (channels differ): a mask must be grey",
                path.display()
            );
        }
        out.push(first);
    }
    let plane = if sixteen {
        Plane::U16(out)
    } else {
        Plane::U8(out.into_iter().map(|v| v as u8).collect())
    };
    Ok((h, w, plane))
}

/// Reads a PNG as 8-bit RGB, whatever its colour type (palette and grey expanded, alpha
/// dropped, 16-bit cut to 8): (height, width, interleaved RGB).
pub fn read_rgb(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let (info, buf) = decode(
        path,
        png::Transformations::EXPAND | png::Transformations::STRIP_16,
    )?;
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = info.color_type.samples();
    let rgb = buf
        .chunks_exact(channels)
        .flat_map(|p| match channels {
            1 | 2 => [p[0], p[0], p[0]],
            _ => [p[0], p[1], p[2]],
        })
        .collect();
    Ok((h, w, rgb))
}

/// Stretches the 0.5–99.5 percentile range to 0…255 (a constant plane gives zeros).
pub fn auto_contrast(plane: &Plane) -> Vec<u8> {
    let v = plane.to_f32();
    if v.is_empty() {
        return Vec::new();
    }
    let mut sorted = v.clone();
    sorted.sort_by(f32::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let (lo, hi) = (at(0.005), at(0.995));
    if hi <= lo {
        return vec![0; v.len()];
    }
    v.iter()
        .map(|&x| ((x - lo) / (hi - lo) * 255.0).clamp(0.0, 255.0) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gray_round_trip_and_contrast() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.png");
        let px: Vec<u8> = (0..12).map(|i| if i % 3 == 0 { 255 } else { 0 }).collect();
        write_gray8(&path, 4, 3, &px).unwrap();
        assert_eq!(read_gray(&path).unwrap(), (3, 4, Plane::U8(px)));
        assert_eq!(auto_contrast(&Plane::U16(vec![7; 9])), vec![0; 9]);
        let c = auto_contrast(&Plane::U16((0..1000).collect()));
        assert_eq!((c[0], c[999]), (0, 255));
    }

    #[test]
    fn colour_png_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        write_rgb8(&path, 1, 1, &[10, 20, 30]).unwrap();
        assert!(format!("{:#}", read_gray(&path).unwrap_err()).contains("colour"));
        assert_eq!(read_rgb(&path).unwrap(), (1, 1, vec![10, 20, 30]));
        let grey = dir.path().join("g.png");
        write_gray8(&grey, 2, 1, &[0, 200]).unwrap();
        assert_eq!(
            read_rgb(&grey).unwrap(),
            (1, 2, vec![0, 0, 0, 200, 200, 200])
        );
    }
}
