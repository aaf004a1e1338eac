//! Masks as annotators save them, read as 0/1 foreground: binary masks ({0,1}, {0,255}),
//! instance label images (napari, Fiji, Cellpose: any non-zero label is foreground), and one
//! class of a CVAT "Segmentation mask" export (`labelmap.txt` and RGB PNGs: the class's colour
//! is foreground).

use super::tiff::{check_pages, decode_page, open_decoder, page_sample};
use super::Plane;
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use tiff::decoder::DecodingResult;
use tiff::ColorType;

/// Which pixels of a mask file are foreground.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreground {
    /// Values {0,1}, or {0,255} in an integer file; any other value is refused.
    Binary,
    /// Any non-zero value (an instance label image).
    Labels,
    /// Pixels of exactly this RGB colour (a colour PNG).
    Colour([u8; 3]),
}

/// A mask file as 0/1 bytes: its (Z, Y, X) shape and Z planes of Y×X.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    pub shape: [usize; 3],
    pub planes: Vec<Vec<u8>>,
}

/// Reads a mask: a TIFF (any page count; 8- to 64-bit integers, signed or unsigned, or 32/64-bit
/// float) or a PNG (8/16-bit grey; RGB for [`Foreground::Colour`]). `shape_ok` sees the shape
/// before the values are judged (and, for a TIFF, before any pixel is decoded); its error is
/// reported as the file's. Every error names the file.
pub fn read(
    path: &Path,
    rule: Foreground,
    shape_ok: impl Fn([usize; 3]) -> std::result::Result<(), String>,
) -> Result<Mask> {
    let here = |msg: String| anyhow!("{}: {msg}", path.display());
    let png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if let Foreground::Colour(colour) = rule {
        if !png {
            bail!("{}: a CVAT mask is an RGB PNG", path.display());
        }
        let (h, w, rgb) = super::png::read_rgb(path)?;
        shape_ok([1, h, w]).map_err(here)?;
        let plane = rgb.chunks_exact(3).map(|p| (p == colour) as u8).collect();
        return Ok(Mask {
            shape: [1, h, w],
            planes: vec![plane],
        });
    }
    let mut values = Values::default();
    let (shape, planes) = if png {
        let (h, w, plane) = super::png::read_gray(path)?;
        shape_ok([1, h, w]).map_err(here)?;
        let foreground = match &plane {
            Plane::U8(v) => values.scan(v),
            Plane::U16(v) => values.scan(v),
            Plane::F32(v) => values.scan(v),
        };
        ([1, h, w], vec![foreground])
    } else {
        read_tiff(path, &mut values, &shape_ok)?
    };
    if rule == Foreground::Binary {
        values.check_binary().map_err(here)?;
    }
    Ok(Mask { shape, planes })
}

/// The sample type of a mask or label image's page, for the check that all pages match.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sample {
    Unsigned(u8),
    Signed(u8),
    Float(u8),
}

/// The current page's sample type and bytes per pixel, or why a mask cannot have it.
fn sample_of(
    decoder: &mut tiff::decoder::Decoder<std::io::BufReader<std::fs::File>>,
) -> std::result::Result<(Sample, usize), String> {
    let (color, format) = page_sample(decoder)?;
    let (sample, bits) = match (color, format) {
        (ColorType::Gray(b @ (8 | 16 | 32 | 64)), 1) => (Sample::Unsigned(b), b),
        (ColorType::Gray(b @ (8 | 16 | 32 | 64)), 2) => (Sample::Signed(b), b),
        (ColorType::Gray(b @ (32 | 64)), 3) => (Sample::Float(b), b),
        (ColorType::Gray(bits), _) => {
            return Err(format!(
                "unsupported sample format for a mask: {bits}-bit, TIFF sample format {format} \
                 (supported: 8- to 64-bit integers, 32/64-bit float)"
            ))
        }
        (other, _) => {
            return Err(format!(
                "unsupported sample format for a mask: {other:?} pixels (a mask is one grey \
                 channel)"
            ))
        }
    };
    Ok((sample, bits as usize / 8))
}

/// Every page of a TIFF mask as 0/1 planes, headers checked (and `shape_ok` asked) before any
/// pixel is decoded.
fn read_tiff(
    path: &Path,
    values: &mut Values,
    shape_ok: &dyn Fn([usize; 3]) -> std::result::Result<(), String>,
) -> Result<([usize; 3], Vec<Vec<u8>>)> {
    let (mut decoder, file_len) = open_decoder(path)?;
    let here = |msg: String| anyhow!("{}: {msg}", path.display());
    let (pages, h, w, _) = check_pages(&mut decoder, file_len, &here, sample_of)?;
    shape_ok([pages, h, w]).map_err(here)?;
    let planes = (0..pages)
        .map(|z| {
            Ok(match decode_page(&mut decoder, path, z, h * w)? {
                DecodingResult::U8(v) => values.scan(&v),
                DecodingResult::U16(v) => values.scan(&v),
                DecodingResult::U32(v) => values.scan(&v),
                DecodingResult::U64(v) => values.scan(&v),
                DecodingResult::I8(v) => values.scan(&v),
                DecodingResult::I16(v) => values.scan(&v),
                DecodingResult::I32(v) => values.scan(&v),
                DecodingResult::I64(v) => values.scan(&v),
                DecodingResult::F32(v) => values.scan(&v),
                DecodingResult::F64(v) => values.scan(&v),
                DecodingResult::F16(_) => bail!("{}: page {z}: 16-bit float", path.display()),
            })
        })
        .collect::<Result<_>>()?;
    Ok(([pages, h, w], planes))
}

/// A pixel type a mask may have.
trait Pixel: Copy {
    const INTEGER: bool;
    fn value(self) -> f64;
}

macro_rules! pixel {
    ($($t:ty: $integer:expr),*) => {
        $(impl Pixel for $t {
            const INTEGER: bool = $integer;
            fn value(self) -> f64 {
                self as f64
            }
        })*
    };
}

pixel!(u8: true, u16: true, u32: true, u64: true, i8: true, i16: true, i32: true, i64: true,
    f32: false, f64: false);

/// The first few distinct values a mask holds, to tell a binary mask from anything else.
#[derive(Default)]
struct Values {
    distinct: Vec<f64>,
    integer: bool,
}

impl Values {
    /// 0/1 for zero/non-zero pixels, noting the values seen.
    fn scan<T: Pixel>(&mut self, pixels: &[T]) -> Vec<u8> {
        self.integer = T::INTEGER;
        pixels
            .iter()
            .map(|&p| {
                let v = p.value();
                if self.distinct.len() <= 4 && !self.distinct.contains(&v) {
                    self.distinct.push(v);
                }
                (v != 0.0) as u8
            })
            .collect()
    }

    fn check_binary(&self) -> std::result::Result<(), String> {
        let mut distinct = self.distinct.clone();
        distinct.sort_by(f64::total_cmp);
        let binary = distinct.iter().all(|&v| v == 0.0 || v == 1.0)
            || (self.integer && distinct.iter().all(|&v| v == 0.0 || v == 255.0));
        if binary {
            return Ok(());
        }
        let shown: Vec<String> = distinct.iter().take(4).map(|v| v.to_string()).collect();
        Err(format!(
            "is not binary: holds {}{} (expected {{0,1}}{})",
            shown.join(", "),
            if distinct.len() > 4 { ", …" } else { "" },
            if self.integer {
                " or {0,255}; an instance label image? `annotate --labels` reads any non-zero \
                 label as foreground"
            } else {
                " for a float mask"
            }
        ))
    }
}

/// One class of a CVAT `labelmap.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub name: String,
    pub colour: [u8; 3],
}

/// Parses a CVAT `labelmap.txt`: `name:r,g,b:parts:actions` lines, `#` comments.
pub fn read_labelmap(path: &Path) -> Result<Vec<Class>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut classes = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split(':');
        let (name, colour) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        let rgb: Vec<u8> = colour
            .split(',')
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        let Ok(colour) = <[u8; 3]>::try_from(rgb) else {
            bail!(
                "{}: line {}: expected name:r,g,b:parts:actions (r, g, b 0–255), found {line:?}",
                path.display(),
                n + 1
            );
        };
        classes.push(Class {
            name: name.to_string(),
            colour,
        });
    }
    if classes.is_empty() {
        bail!("{}: no classes", path.display());
    }
    Ok(classes)
}

/// The colour of class `name` in the classes of `labelmap`.
pub fn class_colour(classes: &[Class], name: &str, labelmap: &Path) -> Result<[u8; 3]> {
    match classes.iter().find(|c| c.name == name) {
        Some(c) => Ok(c.colour),
        None => bail!(
            "{}: no class {name:?} (classes: {})",
            labelmap.display(),
            class_names(classes)
        ),
    }
}

/// The classes' names, comma-separated.
pub fn class_names(classes: &[Class]) -> String {
    classes
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_check(_: [usize; 3]) -> std::result::Result<(), String> {
        Ok(())
    }

    #[test]
    fn u32_and_signed_label_tiffs_are_read_as_foreground() {
        use tiff::encoder::{colortype, TiffEncoder};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.tif");
        {
            let mut enc = TiffEncoder::new(std::fs::File::create(&path).unwrap()).unwrap();
            enc.write_image::<colortype::Gray32>(3, 1, &[0, 70_000, 2])
                .unwrap();
            enc.write_image::<colortype::Gray32>(3, 1, &[5, 0, 0])
                .unwrap();
        }
        let m = read(&path, Foreground::Labels, no_check).unwrap();
        assert_eq!(m.shape, [2, 1, 3]);
        assert_eq!(m.planes, vec![vec![0, 1, 1], vec![1, 0, 0]]);
        let e = format!(
            "{:#}",
            read(&path, Foreground::Binary, no_check).unwrap_err()
        );
        assert!(
            e.contains("labels.tif: is not binary: holds 0, 2, 5, 70000") && e.contains("--labels"),
            "{e}"
        );

        let signed = dir.path().join("signed.tif");
        {
            let mut enc = TiffEncoder::new(std::fs::File::create(&signed).unwrap()).unwrap();
            enc.write_image::<colortype::GrayI64>(2, 1, &[0, 9])
                .unwrap();
        }
        let m = read(&signed, Foreground::Labels, no_check).unwrap();
        assert_eq!(m.planes, vec![vec![0, 1]]);
        let e = format!(
            "{:#}",
            read(&signed, Foreground::Labels, |s| Err(format!("shape {s:?}"))).unwrap_err()
        );
        assert!(e.ends_with("signed.tif: shape [1, 1, 2]"), "{e}");
    }

    #[test]
    fn labelmap_classes_and_colour_masks() {
        let dir = tempfile::tempdir().unwrap();
        let map = dir.path().join("labelmap.txt");
        std::fs::write(
            &map,
            "# label:color_rgb:parts:actions\nbackground:0,0,0::\nvessel:250,50,83::\n",
        )
        .unwrap();
        let classes = read_labelmap(&map).unwrap();
        assert_eq!(
            class_colour(&classes, "vessel", &map).unwrap(),
            [250, 50, 83]
        );
        let e = format!("{:#}", class_colour(&classes, "cell", &map).unwrap_err());
        assert!(
            e.contains("no class \"cell\" (classes: background, vessel)"),
            "{e}"
        );
        std::fs::write(&map, "vessel:250,50::\n").unwrap();
        let e = format!("{:#}", read_labelmap(&map).unwrap_err());
        assert!(e.contains("line 1: expected name:r,g,b"), "{e}");

        let png = dir.path().join("m.png");
        super::super::png::write_rgb8(&png, 3, 1, &[250, 50, 83, 0, 0, 0, 250, 50, 84]).unwrap();
        let m = read(&png, Foreground::Colour([250, 50, 83]), no_check).unwrap();
        assert_eq!(m.planes, vec![vec![1, 0, 0]]);
    }
}
