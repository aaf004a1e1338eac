//! A contact sheet: patches side by side, each auto-contrasted, in a near-square grid.

use crate::io::{png::auto_contrast, png::write_gray8, Plane};
use anyhow::Result;
use std::path::Path;

/// Edge of one thumbnail in the sheet.
pub const THUMB: usize = 128;

/// Nearest-neighbour resize of an `n`×`n` 8-bit image to `m`×`m`.
fn resize(px: &[u8], n: usize, m: usize) -> Vec<u8> {
    (0..m * m)
        .map(|i| px[(i / m * n / m) * n + (i % m * n / m)])
        .collect()
}

/// Writes `planes` (square, `size`×`size`) as one PNG grid with 2-pixel gaps.
pub fn contact_sheet(path: &Path, planes: &[Plane], size: usize) -> Result<()> {
    let n = planes.len().max(1);
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let t = THUMB.min(size);
    let gap = 2;
    let (w, h) = (cols * (t + gap) + gap, rows * (t + gap) + gap);
    let mut sheet = vec![40u8; w * h];
    for (k, plane) in planes.iter().enumerate() {
        let thumb = resize(&auto_contrast(plane), size, t);
        let (oy, ox) = (gap + k / cols * (t + gap), gap + k % cols * (t + gap));
        for y in 0..t {
            sheet[(oy + y) * w + ox..(oy + y) * w + ox + t]
                .copy_from_slice(&thumb[y * t..(y + 1) * t]);
        }
    }
    write_gray8(path, w, h, &sheet)
}

/// A heat colour (black → red → yellow → white) for `v` in [0, 1].
pub fn heat(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0) * 3.0;
    let c = |x: f32| (x.clamp(0.0, 1.0) * 255.0) as u8;
    [c(v), c(v - 1.0), c(v - 2.0)]
}

/// Writes an RGB PNG of three `size`×`size` panels side by side: the auto-contrasted image,
/// the image with the predicted mask in red, and the uncertainty (entropy in bits, 0–1) as heat.
pub fn triptych(
    path: &Path,
    image: &Plane,
    mask: &[u8],
    uncertainty: &[f32],
    size: usize,
) -> Result<()> {
    let gray = auto_contrast(image);
    let gap = 4;
    let w = 3 * size + 2 * gap;
    let mut px = vec![255u8; w * size * 3];
    for y in 0..size {
        for x in 0..size {
            let i = y * size + x;
            let g = gray[i];
            let panels = [
                [g, g, g],
                if mask[i] != 0 {
                    [255, (g / 3), (g / 3)]
                } else {
                    [g, g, g]
                },
                heat(uncertainty[i]),
            ];
            for (k, rgb) in panels.iter().enumerate() {
                let o = (y * w + k * (size + gap) + x) * 3;
                px[o..o + 3].copy_from_slice(rgb);
            }
        }
    }
    crate::io::png::write_rgb8(path, w, size, &px)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheet_has_the_grid_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.png");
        let planes: Vec<Plane> = (0..5)
            .map(|i| Plane::U16((0..64 * 64).map(|p| (p * i) as u16).collect()))
            .collect();
        contact_sheet(&path, &planes, 64).unwrap();
        let (h, w, _) = crate::io::png::read_gray(&path).unwrap();
        assert_eq!((h, w), (2 * 66 + 2, 3 * 66 + 2));
    }
}
