//! TIFF z-stacks in and out: single- and multi-page files, 8/16-bit unsigned and 32-bit float
//! grayscale, ImageJ hyperstacks (time points are flattened into Z in file order) and
//! single-channel OME-TIFF (its XML read by `ome_xml.rs`). Every error names the file and says
//! what is wrong with it.

use super::ome_xml::{self, OmePixels};
use super::{Dtype, Plane, Stack, StackInfo};
use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use tiff::decoder::{Decoder, DecodingResult};
use tiff::tags::Tag;
use tiff::ColorType;

/// Streams a TIFF z-stack one plane at a time.
pub struct TiffStackReader {
    path: PathBuf,
    info: StackInfo,
    decoder: Decoder<BufReader<File>>,
}

pub(super) fn open_decoder(path: &Path) -> Result<(Decoder<BufReader<File>>, u64)> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let len = file.metadata()?.len();
    let decoder = guarded(|| Decoder::new(BufReader::new(file)))
        .map_err(|e| anyhow!("{}: not a readable TIFF file ({e})", path.display()))?;
    Ok((decoder, len))
}

/// Runs a decoder call, turning a panic on malformed input into an error.
fn guarded<T>(f: impl FnOnce() -> tiff::TiffResult<T>) -> std::result::Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let mut e = e.to_string();
            if e.len() > 300 {
                // Some decoder errors print whole tag arrays of a corrupt header.
                let cut = (0..=300)
                    .rev()
                    .find(|&i| e.is_char_boundary(i))
                    .unwrap_or(0);
                e.truncate(cut);
                e.push_str(" …");
            }
            if e.contains("fill whole buffer") || e.contains("UnexpectedEof") {
                Err(format!("truncated file ({e})"))
            } else {
                Err(e)
            }
        }
        Err(_) => Err("the decoder crashed on malformed data".into()),
    }
}

/// Checks every page's header — its pixel type by `sample` (the type and its bytes per pixel),
/// that its pixel data lies inside the file and can hold the pixels it claims, that all pages
/// match — without decoding pixels: (pages, height, width, type), the decoder left at page 0.
pub(super) fn check_pages<K: Copy + PartialEq + std::fmt::Debug>(
    decoder: &mut Decoder<BufReader<File>>,
    file_len: u64,
    here: &dyn Fn(String) -> anyhow::Error,
    sample: impl Fn(&mut Decoder<BufReader<File>>) -> std::result::Result<(K, usize), String>,
) -> Result<(usize, usize, usize, K)> {
    let mut shape: Option<(usize, usize, K)> = None;
    let mut pages = 0usize;
    loop {
        let (w, h) = guarded(|| decoder.dimensions()).map_err(here)?;
        let (kind, bytes) = sample(decoder).map_err(|e| here(format!("page {pages}: {e}")))?;
        check_inside_file(decoder, file_len).map_err(|e| here(format!("page {pages}: {e}")))?;
        check_claimed_size(decoder, w as u64, h as u64, bytes as u64)
            .map_err(|e| here(format!("page {pages}: {e}")))?;
        let this = (h as usize, w as usize, kind);
        match shape {
            None => shape = Some(this),
            Some(first) if first != this => {
                return Err(here(format!(
                    "page {pages} is {}×{} {:?} but page 0 is {}×{} {:?}: \
                     pages of one stack must match",
                    this.0, this.1, this.2, first.0, first.1, first.2
                )))
            }
            Some(_) => {}
        }
        pages += 1;
        if !decoder.more_images() {
            break;
        }
        guarded(|| decoder.next_image()).map_err(|e| here(format!("page {pages}: {e}")))?;
    }
    let (h, w, kind) = shape.ok_or_else(|| here("no pages".into()))?;
    guarded(|| decoder.seek_to_image(0)).map_err(here)?;
    Ok((pages, h, w, kind))
}

/// Decodes page `z`, checking that it holds `pixels` pixels.
pub(super) fn decode_page(
    decoder: &mut Decoder<BufReader<File>>,
    path: &Path,
    z: usize,
    pixels: usize,
) -> Result<DecodingResult> {
    let path = path.display();
    guarded(|| decoder.seek_to_image(z)).map_err(|e| anyhow!("{path}: page {z}: {e}"))?;
    let data = guarded(|| decoder.read_image())
        .map_err(|e| anyhow!("{path}: page {z}: truncated or corrupt pixel data ({e})"))?;
    let len = match &data {
        DecodingResult::U8(v) => v.len(),
        DecodingResult::U16(v) => v.len(),
        DecodingResult::U32(v) => v.len(),
        DecodingResult::U64(v) => v.len(),
        DecodingResult::I8(v) => v.len(),
        DecodingResult::I16(v) => v.len(),
        DecodingResult::I32(v) => v.len(),
        DecodingResult::I64(v) => v.len(),
        DecodingResult::F16(v) => v.len(),
        DecodingResult::F32(v) => v.len(),
        DecodingResult::F64(v) => v.len(),
    };
    anyhow::ensure!(
        len == pixels,
        "{path}: page {z}: truncated pixel data ({len} of {pixels} pixels)"
    );
    Ok(data)
}

impl TiffStackReader {
    /// Opens `path` and checks every page's header (shape, sample format, that its pixel data
    /// lies inside the file, that it agrees with the OME-XML) without decoding pixels.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_voxel_size(path, None)
    }

    /// As [`TiffStackReader::open`], but with `Some` voxel size the caller's is used and the
    /// file's is not read: a unit biodc does not know does not stop an import given
    /// `--voxel-size`.
    pub fn open_with_voxel_size(path: &Path, voxel_size: Option<[f64; 3]>) -> Result<Self> {
        let (mut decoder, file_len) = open_decoder(path)?;
        let here = |msg: String| anyhow!("{}: {msg}", path.display());
        let description = decoder
            .get_tag_ascii_string(Tag::ImageDescription)
            .unwrap_or_default();
        let meta = Metadata::parse(&description).map_err(here)?;
        let (pages, h, w, dtype) = check_pages(&mut decoder, file_len, &here, |d| {
            page_dtype(d).map(|t| (t, t.size()))
        })?;
        if let Some(ome) = &meta.ome {
            ome.check_pages(h, w, dtype).map_err(here)?;
        }
        let voxel_size = match voxel_size {
            Some(given) => Some(given),
            None => {
                let x_res = resolution_um(&mut decoder, Tag::XResolution);
                let y_res = resolution_um(&mut decoder, Tag::YResolution);
                meta.voxel_size(x_res, y_res).map_err(here)?
            }
        };
        Ok(TiffStackReader {
            path: path.to_path_buf(),
            info: StackInfo {
                shape: [pages, h, w],
                dtype,
                voxel_size,
            },
            decoder,
        })
    }

    pub fn info(&self) -> &StackInfo {
        &self.info
    }

    /// Decodes plane `z` (0-based).
    pub fn read_plane(&mut self, z: usize) -> Result<Plane> {
        anyhow::ensure!(
            z < self.info.shape[0],
            "{}: no plane {z}",
            self.path.display()
        );
        let [_, h, w] = self.info.shape;
        Ok(
            match decode_page(&mut self.decoder, &self.path, z, h * w)? {
                DecodingResult::U8(v) => Plane::U8(v),
                DecodingResult::U16(v) => Plane::U16(v),
                DecodingResult::F32(v) => Plane::F32(v),
                _ => bail!("{}: page {z}: unexpected sample type", self.path.display()),
            },
        )
    }
}

/// The current page's colour type and TIFF sample format (1 unsigned, 2 signed, 3 float).
pub(super) fn page_sample(
    decoder: &mut Decoder<BufReader<File>>,
) -> std::result::Result<(ColorType, u16), String> {
    let color = guarded(|| decoder.colortype())?;
    let format = decoder
        .find_tag_unsigned::<u16>(Tag::SampleFormat)
        .ok()
        .flatten()
        .unwrap_or(1);
    Ok((color, format))
}

/// The dtype of the current page, or why it is not supported.
fn page_dtype(decoder: &mut Decoder<BufReader<File>>) -> std::result::Result<Dtype, String> {
    let (color, format) = page_sample(decoder)?;
    let kind = match format {
        1 => "unsigned integer",
        2 => "signed integer",
        3 => "floating point",
        _ => "unknown",
    };
    match (color, format) {
        (ColorType::Gray(8), 1) => Ok(Dtype::U8),
        (ColorType::Gray(16), 1) => Ok(Dtype::U16),
        (ColorType::Gray(32), 3) => Ok(Dtype::F32),
        (ColorType::Gray(bits), _) => Err(format!(
            "unsupported sample format: {bits}-bit {kind} (supported: 8/16-bit unsigned, \
             32-bit float)"
        )),
        (other, _) => Err(format!(
            "unsupported sample format: {other:?} pixels (only single-channel grayscale is \
             supported)"
        )),
    }
}

/// Errors if the page's strips or tiles point past the end of the file (a truncated file).
fn check_inside_file(
    decoder: &mut Decoder<BufReader<File>>,
    file_len: u64,
) -> std::result::Result<(), String> {
    let pairs = [
        (Tag::StripOffsets, Tag::StripByteCounts),
        (Tag::TileOffsets, Tag::TileByteCounts),
    ];
    for (off_tag, len_tag) in pairs {
        let offsets = decoder.find_tag_unsigned_vec::<u64>(off_tag).ok().flatten();
        let counts = decoder.find_tag_unsigned_vec::<u64>(len_tag).ok().flatten();
        if let (Some(offsets), Some(counts)) = (offsets, counts) {
            let end = offsets
                .iter()
                .zip(&counts)
                .map(|(o, c)| o.saturating_add(*c))
                .max()
                .unwrap_or(0);
            if end > file_len {
                return Err(format!(
                    "truncated file: pixel data runs to byte {end} but the file has {file_len} bytes"
                ));
            }
        }
    }
    Ok(())
}

/// The most raw bytes one stored byte can expand to, per compression (TIFF tag 259): none
/// stores raw bytes; PackBits repeats one byte at most 128 times per 2 bytes; Deflate expands
/// at most 1032:1; LZW with 12-bit codes at most about 1400:1. Other compressions (JPEG, ZSTD,
/// …) have no useful bound and are only limited while decoding.
fn max_expansion(compression: u16) -> Option<u64> {
    match compression {
        1 => Some(1),
        32773 => Some(64),
        8 | 32946 => Some(1032),
        5 => Some(1400),
        _ => None,
    }
}

/// Errors if the page claims more pixels than its stored data can hold: a header whose width,
/// height or sample size promises gigabytes from a file of a few bytes.
fn check_claimed_size(
    decoder: &mut Decoder<BufReader<File>>,
    w: u64,
    h: u64,
    bytes_per_pixel: u64,
) -> std::result::Result<(), String> {
    let raw = w
        .checked_mul(h)
        .and_then(|n| n.checked_mul(bytes_per_pixel))
        .ok_or_else(|| format!("the header claims an impossible size ({w}×{h} pixels)"))?;
    let compression = decoder
        .find_tag_unsigned::<u16>(Tag::Compression)
        .ok()
        .flatten()
        .unwrap_or(1);
    let Some(factor) = max_expansion(compression) else {
        return Ok(());
    };
    let stored: u64 = [Tag::StripByteCounts, Tag::TileByteCounts]
        .into_iter()
        .filter_map(|t| decoder.find_tag_unsigned_vec::<u64>(t).ok().flatten())
        .flatten()
        .fold(0u64, u64::saturating_add);
    if stored.saturating_mul(factor) < raw {
        return Err(format!(
            "the header claims {w}×{h} pixels ({raw} bytes) but the page stores only {stored} \
             bytes{}: truncated file or damaged header",
            if factor > 1 {
                format!(
                    ", which cannot expand to more than {} bytes",
                    stored * factor
                )
            } else {
                String::new()
            }
        ));
    }
    Ok(())
}

/// Pixel size in µm from a resolution tag (pixels per unit), if given and plausible.
fn resolution_um(decoder: &mut Decoder<BufReader<File>>, tag: Tag) -> Option<f64> {
    let v = decoder.find_tag(tag).ok().flatten()?;
    let per_unit = match v {
        tiff::decoder::ifd::Value::Rational(n, d) if n > 0 && d > 0 => n as f64 / d as f64,
        other => other.into_f64().ok().filter(|x| *x > 0.0)?,
    };
    let unit = decoder
        .find_tag_unsigned::<u16>(Tag::ResolutionUnit)
        .ok()
        .flatten()
        .unwrap_or(1);
    // ImageJ writes unit 1 (none) with pixels per µm; 3 = centimetre, 2 = inch.
    match unit {
        3 => Some(1e4 / per_unit),
        2 => Some(25_400.0 / per_unit),
        _ => Some(1.0 / per_unit),
    }
}

/// What ImageJ or OME metadata says about the stack.
#[derive(Debug, Default, PartialEq)]
struct Metadata {
    /// Z spacing (ImageJ `spacing=`).
    spacing: Option<f64>,
    ome: Option<OmePixels>,
    imagej: bool,
}

impl Metadata {
    fn parse(description: &str) -> std::result::Result<Metadata, String> {
        let mut m = Metadata::default();
        if description.starts_with("ImageJ=") {
            m.imagej = true;
            for line in description.lines() {
                let Some((key, value)) = line.split_once('=') else {
                    continue;
                };
                match key.trim() {
                    "channels" if value.trim().parse::<usize>().unwrap_or(1) > 1 => {
                        return Err(format!(
                            "multi-channel hyperstacks are not supported ({} channels)",
                            value.trim()
                        ))
                    }
                    "spacing" => m.spacing = value.trim().parse().ok(),
                    _ => {}
                }
            }
        } else {
            m.ome = ome_xml::parse(description)?;
        }
        Ok(m)
    }

    /// Voxel size (Z, Y, X) in µm, when the metadata gives the lateral size (Z is 1 µm when
    /// only the lateral size is given).
    fn voxel_size(
        &self,
        x_res: Option<f64>,
        y_res: Option<f64>,
    ) -> std::result::Result<Option<[f64; 3]>, String> {
        if let Some(ome) = &self.ome {
            if let [z, Some(y), Some(x)] = ome.physical_size_um()? {
                return Ok(Some([z.unwrap_or(1.0), y, x]));
            }
        }
        if self.imagej {
            if let (Some(x), Some(y)) = (x_res, y_res.or(x_res)) {
                return Ok(Some([self.spacing.unwrap_or(1.0), y, x]));
            }
        }
        Ok(None)
    }
}

/// Reads a mask stack as 0/1 voxels (any non-zero value is foreground), slices concatenated.
pub fn read_binary_mask(path: &Path) -> Result<(StackInfo, Vec<u8>)> {
    let s = read_stack(path)?;
    let mut v = Vec::with_capacity(s.info.shape.iter().product());
    for p in &s.planes {
        match p {
            Plane::U8(px) => v.extend(px.iter().map(|&x| (x > 0) as u8)),
            other => v.extend(other.to_f32().iter().map(|&x| (x > 0.0) as u8)),
        }
    }
    Ok((s.info, v))
}

/// Reads a whole stack into memory.
pub fn read_stack(path: &Path) -> Result<Stack> {
    let mut reader = TiffStackReader::open(path)?;
    let planes = (0..reader.info.shape[0])
        .map(|z| reader.read_plane(z))
        .collect::<Result<_>>()?;
    Ok(Stack {
        info: reader.info.clone(),
        planes,
    })
}

/// Writes a multi-page grayscale TIFF (one page per z) in the stack's dtype, with ImageJ
/// metadata (`images`, `slices`, `spacing`, `unit=micron`) and resolution tags when the voxel
/// size is known, so Fiji and tifffile open it as a z-stack. Written to a temp file beside the
/// target and renamed: a crash never leaves half a file.
pub fn write_stack(path: &Path, stack: &Stack) -> Result<()> {
    let [depth, h, w] = stack.info.shape;
    anyhow::ensure!(
        stack.planes.len() == depth,
        "stack has {} planes, shape says {depth}",
        stack.planes.len()
    );
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".tif")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    {
        let mut enc = tiff::encoder::TiffEncoder::new(BufWriter::new(tmp.as_file()))
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let mut description = format!("ImageJ=1.11a\nimages={depth}\nslices={depth}\n");
        if let Some([z, _, _]) = stack.info.voxel_size {
            description.push_str(&format!("unit=micron\nspacing={z}\n"));
        }
        for plane in &stack.planes {
            anyhow::ensure!(
                plane.len() == h * w,
                "plane has {} pixels, expected {h}×{w}",
                plane.len()
            );
            write_page(
                &mut enc,
                plane,
                w as u32,
                h as u32,
                &description,
                stack.info.voxel_size,
            )
            .map_err(|e| anyhow!("{}: writing: {e}", path.display()))?;
        }
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow!("{}: {}", path.display(), e.error))?;
    Ok(())
}

fn write_page<W: std::io::Write + std::io::Seek>(
    enc: &mut tiff::encoder::TiffEncoder<W>,
    plane: &Plane,
    w: u32,
    h: u32,
    description: &str,
    voxel_size: Option<[f64; 3]>,
) -> tiff::TiffResult<()> {
    use tiff::encoder::colortype::{Gray16, Gray32Float, Gray8};
    macro_rules! page {
        ($color:ty, $data:expr) => {{
            let mut img = enc.new_image::<$color>(w, h)?;
            img.encoder()
                .write_tag(Tag::ImageDescription, description)?;
            if let Some([_, y, x]) = voxel_size {
                img.resolution_unit(tiff::tags::ResolutionUnit::None);
                img.x_resolution(rational(1.0 / x));
                img.y_resolution(rational(1.0 / y));
            }
            img.write_data($data)
        }};
    }
    match plane {
        Plane::U8(v) => page!(Gray8, v),
        Plane::U16(v) => page!(Gray16, v),
        Plane::F32(v) => page!(Gray32Float, v),
    }
}

/// A rational close to `x` (pixels per µm).
fn rational(x: f64) -> tiff::encoder::Rational {
    let d = 1_000_000u32;
    tiff::encoder::Rational {
        n: (x * d as f64).round().clamp(1.0, u32::MAX as f64) as u32,
        d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagej_and_ome_metadata() {
        let m =
            Metadata::parse("ImageJ=1.53\nimages=6\nslices=3\nframes=2\nspacing=2.5\n").unwrap();
        assert_eq!(m.voxel_size(Some(0.5), None), Ok(Some([2.5, 0.5, 0.5])));
        assert!(Metadata::parse("ImageJ=1.53\nchannels=2\n")
            .unwrap_err()
            .contains("2 channels"));
        let ome = r#"<OME><Image><Pixels SizeC="1" SizeZ="4" PhysicalSizeX="0.3" PhysicalSizeY="0.3" PhysicalSizeZ="1.5"/></Image></OME>"#;
        assert_eq!(
            Metadata::parse(ome).unwrap().voxel_size(None, None),
            Ok(Some([1.5, 0.3, 0.3]))
        );
    }

    #[test]
    fn round_trip_every_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let planes = |f: &dyn Fn(usize) -> Plane| (0..3).map(f).collect::<Vec<_>>();
        let cases = [
            (
                Dtype::U8,
                planes(&|z| Plane::U8((0..35).map(|i| (i * 7 + z) as u8).collect())),
            ),
            (
                Dtype::U16,
                planes(&|z| Plane::U16((0..35).map(|i| (i * 1999 + z) as u16).collect())),
            ),
            (
                Dtype::F32,
                planes(&|z| Plane::F32((0..35).map(|i| i as f32 * -0.37 + z as f32).collect())),
            ),
        ];
        for (dtype, planes) in cases {
            let stack = Stack {
                info: StackInfo {
                    shape: [3, 5, 7],
                    dtype,
                    voxel_size: Some([2.0, 0.25, 0.25]),
                },
                planes,
            };
            let path = dir.path().join(format!("{dtype:?}.tif"));
            write_stack(&path, &stack).unwrap();
            let back = read_stack(&path).unwrap();
            assert_eq!(back.planes, stack.planes);
            assert_eq!(back.info.shape, stack.info.shape);
            let v = back.info.voxel_size.unwrap();
            assert!(
                (v[0] - 2.0).abs() < 1e-9 && (v[2] - 0.25).abs() < 1e-6,
                "{v:?}"
            );
        }
    }

    #[test]
    fn garbage_and_truncation_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.tif");
        std::fs::write(&junk, b"this is not a tiff at all").unwrap();
        let e = format!("{:#}", TiffStackReader::open(&junk).err().unwrap());
        assert!(
            e.contains("junk.tif") && e.contains("not a readable TIFF"),
            "{e}"
        );

        let good = dir.path().join("good.tif");
        let stack = Stack {
            info: StackInfo {
                shape: [2, 64, 64],
                dtype: Dtype::U16,
                voxel_size: None,
            },
            planes: vec![Plane::U16(vec![7; 4096]), Plane::U16(vec![9; 4096])],
        };
        write_stack(&good, &stack).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let cut = dir.path().join("cut.tif");
        std::fs::write(&cut, &bytes[..bytes.len() - 3000]).unwrap();
        let e = match TiffStackReader::open(&cut) {
            Err(e) => format!("{e:#}"),
            Ok(mut r) => format!(
                "{:#}",
                (0..2)
                    .map(|z| r.read_plane(z))
                    .find_map(Result::err)
                    .unwrap()
            ),
        };
        assert!(e.contains("cut.tif") && e.contains("truncated"), "{e}");
    }
}
