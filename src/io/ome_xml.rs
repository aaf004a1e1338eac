//! OME-XML, as OME-TIFF writers store it in the first page's ImageDescription: the first
//! image's `Pixels` element (sizes, dimension order, pixel type, physical sizes and their units),
//! read with an XML parser, namespaced or not. Errors say what the XML holds and what was
//! expected; the caller adds the file's name.

use super::Dtype;

/// The attributes of the first `Image`'s `Pixels` element that biodc reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OmePixels {
    pub size_x: Option<usize>,
    pub size_y: Option<usize>,
    pub size_z: Option<usize>,
    pub size_c: Option<usize>,
    pub size_t: Option<usize>,
    /// `XYCZT`, `XYZTC`, …: the order of the planes in the file.
    pub dimension_order: Option<String>,
    /// `uint8`, `uint16`, `float`, …
    pub pixel_type: Option<String>,
    /// `PhysicalSizeZ/Y/X` and `PhysicalSizeZ/Y/XUnit` as written, interpreted only by
    /// [`OmePixels::physical_size_um`], so that a caller who knows the voxel size is not stopped
    /// by a unit biodc does not know.
    physical: [(Option<String>, Option<String>); 3],
}

/// The OME namespace changes with the schema's version (`…/Schemas/OME/2016-06`, before 2008
/// `…/XMLschemas/OME/FC/ome.xsd`): any under this prefix is OME.
const OME_NAMESPACE: &str = "http://www.openmicroscopy.org/";

/// Reads the OME-XML in an ImageDescription: `Ok(None)` when the text is not OME-XML (ImageJ's
/// `ImageJ=` lines, another program's XML, an OME file without `Image`, such as a
/// `BinaryOnly` one pointing to its companion file).
pub fn parse(description: &str) -> Result<Option<OmePixels>, String> {
    let text = description.trim_start_matches('\u{feff}').trim_start();
    if !text.starts_with('<') {
        return Ok(None);
    }
    let doc = match roxmltree::Document::parse(text) {
        Ok(doc) => doc,
        Err(e) if text.contains("<OME") || text.contains(OME_NAMESPACE) => {
            return Err(format!(
                "its ImageDescription looks like OME-XML but is not well-formed XML ({e})"
            ))
        }
        Err(_) => return Ok(None),
    };
    let root = doc.root_element();
    let ns = root.tag_name().namespace();
    if root.tag_name().name() != "OME" || ns.is_some_and(|ns| !ns.starts_with(OME_NAMESPACE)) {
        return Ok(None);
    }
    let Some(pixels) = child(root, "Image", ns).and_then(|image| child(image, "Pixels", ns)) else {
        return Ok(None);
    };
    let text_of = |key: &str| pixels.attribute(key).map(|v| v.trim().to_string());
    let size = |key: &str| -> Result<Option<usize>, String> {
        let Some(v) = text_of(key) else {
            return Ok(None);
        };
        match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(format!(
                "OME-XML Pixels {key}=\"{v}\" is not a positive whole number"
            )),
        }
    };
    let physical = |axis: &str| {
        let key = format!("PhysicalSize{axis}");
        (text_of(&key), text_of(&format!("{key}Unit")))
    };
    Ok(Some(OmePixels {
        size_x: size("SizeX")?,
        size_y: size("SizeY")?,
        size_z: size("SizeZ")?,
        size_c: size("SizeC")?,
        size_t: size("SizeT")?,
        dimension_order: text_of("DimensionOrder"),
        pixel_type: text_of("Type"),
        physical: [physical("Z"), physical("Y"), physical("X")],
    }))
}

/// The first child element of `node` called `name` in namespace `ns`.
fn child<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    name: &str,
    ns: Option<&str>,
) -> Option<roxmltree::Node<'a, 'i>> {
    node.children()
        .find(|n| n.tag_name().name() == name && n.tag_name().namespace() == ns)
}

impl OmePixels {
    /// Errors if the XML describes other pixels than the pages hold: several channels (biodc
    /// reads one), another plane size, another pixel type.
    pub fn check_pages(&self, height: usize, width: usize, dtype: Dtype) -> Result<(), String> {
        if let Some(c) = self.size_c.filter(|&c| c > 1) {
            return Err(format!(
                "multi-channel OME-TIFF is not supported ({c} channels)"
            ));
        }
        let (x, y) = (self.size_x.unwrap_or(width), self.size_y.unwrap_or(height));
        if (x, y) != (width, height) {
            return Err(format!(
                "OME-XML says its planes are SizeX={x} × SizeY={y} pixels but the pages are \
                 {width} × {height}"
            ));
        }
        let (expected, pages) = match dtype {
            Dtype::U8 => ("uint8", "8-bit unsigned"),
            Dtype::U16 => ("uint16", "16-bit unsigned"),
            Dtype::F32 => ("float", "32-bit float"),
        };
        match self.pixel_type.as_deref() {
            Some(t) if t != expected => Err(format!(
                "OME-XML says Type=\"{t}\" but the pages hold {pages} pixels (Type=\"{expected}\")"
            )),
            _ => Ok(()),
        }
    }

    /// Physical sizes (Z, Y, X) in µm (the unit biodc stores), each converted from its
    /// `PhysicalSize*Unit` (µm when absent, as in the OME schema). `None` for a size that is
    /// absent, not positive, or in `pixel`/`reference frame` units (no physical size).
    pub fn physical_size_um(&self) -> Result<[Option<f64>; 3], String> {
        let mut out = [None; 3];
        for ((value, unit), (slot, axis)) in
            self.physical.iter().zip(out.iter_mut().zip("ZYX".chars()))
        {
            let Some(value) = value else { continue };
            let v: f64 = value.parse().map_err(|_| {
                format!("OME-XML Pixels PhysicalSize{axis}=\"{value}\" is not a number")
            })?;
            let unit = unit.as_deref().unwrap_or("µm");
            let Some(um) = in_micrometres(v, unit) else {
                if matches!(unit, "pixel" | "reference frame") {
                    continue;
                }
                return Err(format!(
                    "OME-XML Pixels PhysicalSize{axis}Unit=\"{unit}\" is not a unit of length \
                     biodc knows (it reads the OME schema's: µm or um, nm, mm, cm, m, Å or A, pm, \
                     …); give the voxel size with import --voxel-size Z,Y,X"
                ));
            };
            // The schema wants a positive size; 0 or less says nothing about the voxel, so it
            // counts as absent rather than refusing the file.
            if um.is_finite() && um > 0.0 {
                *slot = Some(um);
            }
        }
        Ok(out)
    }
}

/// `value` in `unit` as µm, for the OME schema's units of length (`UnitsLength` in ome.xsd)
/// and `um` and `A`, the ASCII spellings of µm and Å.
fn in_micrometres(value: f64, unit: &str) -> Option<f64> {
    // A metric unit is 10^e µm. Dividing by an exact power of ten instead of multiplying by an
    // inexact one (1e-3) keeps 300 nm equal to 0.3 µm, bit for bit.
    let e = match unit {
        "Ym" => 30,
        "Zm" => 27,
        "Em" => 24,
        "Pm" => 21,
        "Tm" => 18,
        "Gm" => 15,
        "Mm" => 12,
        "km" => 9,
        "hm" => 8,
        "dam" => 7,
        "m" => 6,
        "dm" => 5,
        "cm" => 4,
        "mm" => 3,
        // The micro sign (what the schema writes), the Greek mu, ASCII.
        "\u{b5}m" | "\u{3bc}m" | "um" => 0,
        // Latin capital A with ring (what the schema writes), the angstrom sign, ASCII.
        "\u{c5}" | "\u{212b}" | "A" => -4,
        "nm" => -3,
        "pm" => -6,
        "fm" => -9,
        "am" => -12,
        "zm" => -15,
        "ym" => -18,
        _ => {
            const INCH: f64 = 25_400.0;
            const ASTRONOMICAL_UNIT: f64 = 1.495_978_707e17;
            let per = match unit {
                "thou" => INCH / 1000.0,
                "li" => INCH / 12.0,
                "in" => INCH,
                "ft" => INCH * 12.0,
                "yd" => INCH * 36.0,
                "mi" => INCH * 63_360.0,
                "pt" => INCH / 72.0,
                "ua" => ASTRONOMICAL_UNIT,
                "ly" => 9.460_730_472_580_8e21,
                "pc" => ASTRONOMICAL_UNIT * 648_000.0 / std::f64::consts::PI,
                _ => return None,
            };
            return Some(value * per);
        }
    };
    Some(if e >= 0 {
        value * 10f64.powi(e)
    } else {
        value / 10f64.powi(-e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ome(pixels_attrs: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0"><Pixels ID="Pixels:0" {pixels_attrs}><TiffData/></Pixels></Image></OME>"#
        )
    }

    fn sizes(attrs: &str) -> [Option<f64>; 3] {
        parse(&ome(attrs))
            .unwrap()
            .unwrap()
            .physical_size_um()
            .unwrap()
    }

    #[test]
    fn reads_every_pixels_attribute_it_knows() {
        let p = parse(&ome(
            r#"DimensionOrder="XYZCT" Type="uint16" SizeX="30" SizeY="20" SizeZ="4" SizeC="1" SizeT="2" PhysicalSizeX="0.3" PhysicalSizeY="0.4" PhysicalSizeZ="1.5""#,
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            [p.size_x, p.size_y, p.size_z, p.size_c, p.size_t],
            [Some(30), Some(20), Some(4), Some(1), Some(2)]
        );
        assert_eq!(p.dimension_order.as_deref(), Some("XYZCT"));
        assert_eq!(p.pixel_type.as_deref(), Some("uint16"));
        assert_eq!(
            p.physical_size_um().unwrap(),
            [Some(1.5), Some(0.4), Some(0.3)]
        );
    }

    #[test]
    fn units_are_converted_to_micrometres() {
        assert_eq!(
            sizes(
                r#"PhysicalSizeX="250" PhysicalSizeXUnit="nm" PhysicalSizeY="0.25" PhysicalSizeYUnit="µm" PhysicalSizeZ="0.002" PhysicalSizeZUnit="mm""#
            ),
            [Some(2.0), Some(0.25), Some(0.25)]
        );
        assert_eq!(
            sizes(
                r#"PhysicalSizeX="2500" PhysicalSizeXUnit="Å" PhysicalSizeY="2500" PhysicalSizeYUnit="A" PhysicalSizeZ="1" PhysicalSizeZUnit="um""#
            ),
            [Some(1.0), Some(0.25), Some(0.25)]
        );
        let [z, y, x] = sizes(
            r#"PhysicalSizeX="250000" PhysicalSizeXUnit="pm" PhysicalSizeY="0.000025" PhysicalSizeYUnit="cm" PhysicalSizeZ="0.000001" PhysicalSizeZUnit="m""#,
        );
        for (got, want) in [(z, 1.0), (y, 0.25), (x, 0.25)] {
            assert!((got.unwrap() - want).abs() < 1e-12, "{got:?} vs {want}");
        }
        // 300 nm is the same f64 as 0.3 µm.
        assert_eq!(
            sizes(r#"PhysicalSizeX="300" PhysicalSizeXUnit="nm" PhysicalSizeY="0.3""#),
            [None, Some(0.3), Some(0.3)]
        );
        // No unit: the schema's default, µm.
        assert_eq!(
            sizes(r#"PhysicalSizeX="0.5" PhysicalSizeY="0.5""#),
            [None, Some(0.5), Some(0.5)]
        );
        // Pixel units and a zero size carry no physical size.
        assert_eq!(
            sizes(
                r#"PhysicalSizeX="1" PhysicalSizeXUnit="pixel" PhysicalSizeY="1" PhysicalSizeZ="0""#
            ),
            [None, Some(1.0), None]
        );
    }

    #[test]
    fn an_unknown_unit_or_a_bad_number_is_an_error_naming_it() {
        let p = parse(&ome(r#"PhysicalSizeX="3" PhysicalSizeXUnit="furlong""#))
            .unwrap()
            .unwrap();
        let e = p.physical_size_um().unwrap_err();
        assert!(
            e.contains("PhysicalSizeXUnit=\"furlong\"") && e.contains("--voxel-size"),
            "{e}"
        );
        let p = parse(&ome(r#"PhysicalSizeY="0,25""#)).unwrap().unwrap();
        let e = p.physical_size_um().unwrap_err();
        assert!(e.contains("PhysicalSizeY=\"0,25\" is not a number"), "{e}");
        let e = parse(&ome(r#"SizeZ="three""#)).unwrap_err();
        assert!(e.contains("SizeZ=\"three\""), "{e}");
    }

    #[test]
    fn namespaces_prefixes_and_other_text() {
        let prefixed = r#"<ome:OME xmlns:ome="http://www.openmicroscopy.org/Schemas/OME/2015-01"><ome:Image><ome:Pixels SizeC="1" PhysicalSizeX="0.1" PhysicalSizeY="0.2"/></ome:Image></ome:OME>"#;
        let p = parse(prefixed).unwrap().unwrap();
        assert_eq!(p.physical_size_um().unwrap(), [None, Some(0.2), Some(0.1)]);
        let bare = r#"<OME><Image><Pixels SizeC='1' PhysicalSizeX = '0.3' PhysicalSizeY='0.3'/></Image></OME>"#;
        let p = parse(bare).unwrap().unwrap();
        assert_eq!(p.physical_size_um().unwrap(), [None, Some(0.3), Some(0.3)]);
        // Another schema's elements called OME/Image/Pixels are not OME's.
        let other =
            r#"<OME xmlns="http://example.org/x"><Image><Pixels PhysicalSizeX="1"/></Image></OME>"#;
        assert_eq!(parse(other).unwrap(), None);
        assert_eq!(parse("ImageJ=1.53\nimages=3\n").unwrap(), None);
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("<html><body>scanner</body></html>").unwrap(), None);
        let binary_only = r#"<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><BinaryOnly MetadataFile="a.companion.ome" UUID="urn:uuid:1"/></OME>"#;
        assert_eq!(parse(binary_only).unwrap(), None);
        let e = parse(r#"<OME><Image><Pixels SizeC="1"></Image></OME>"#).unwrap_err();
        assert!(e.contains("not well-formed"), "{e}");
    }

    #[test]
    fn pixels_that_disagree_with_the_pages_are_refused() {
        let p = parse(&ome(r#"Type="uint16" SizeX="30" SizeY="20" SizeC="1""#))
            .unwrap()
            .unwrap();
        assert_eq!(p.check_pages(20, 30, Dtype::U16), Ok(()));
        let e = p.check_pages(20, 30, Dtype::U8).unwrap_err();
        assert!(
            e.contains("Type=\"uint16\"") && e.contains("8-bit unsigned"),
            "{e}"
        );
        let e = p.check_pages(30, 20, Dtype::U16).unwrap_err();
        assert!(
            e.contains("SizeX=30 × SizeY=20") && e.contains("20 × 30"),
            "{e}"
        );
        let p = parse(&ome(r#"SizeC="3""#)).unwrap().unwrap();
        let e = p.check_pages(20, 30, Dtype::U16).unwrap_err();
        assert!(e.contains("3 channels"), "{e}");
    }
}
