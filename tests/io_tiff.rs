//! TIFF reading on the fixtures in fixtures/tiff (written by fixtures/make_fixtures.py):
//! value(z, y, x) = (z·1000 + y·10 + x) mod range; and on OME-TIFFs the tests write.

mod common;

use biodc::io::tiff::{read_stack, TiffStackReader};
use biodc::io::{Dtype, Plane};
use biodc::repo::Repo;
use common::{biodc, fixture, ok};
use std::path::Path;
use tiff::tags::Tag;

fn value(z: usize, y: usize, x: usize, modulo: usize) -> f64 {
    ((z * 1000 + y * 10 + x) % modulo) as f64
}

fn as_f64(p: &Plane, i: usize) -> f64 {
    match p {
        Plane::U8(v) => v[i] as f64,
        Plane::U16(v) => v[i] as f64,
        Plane::F32(v) => v[i] as f64,
    }
}

fn check(name: &str, shape: [usize; 3], dtype: Dtype, modulo: usize, scale: f64) {
    let stack =
        read_stack(&fixture(&format!("tiff/{name}"))).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    assert_eq!(stack.info.shape, shape, "{name}");
    assert_eq!(stack.info.dtype, dtype, "{name}");
    let [_, h, w] = shape;
    for (z, plane) in stack.planes.iter().enumerate() {
        for (y, x) in (0..h).flat_map(|y| (0..w).map(move |x| (y, x))) {
            assert_eq!(
                as_f64(plane, y * w + x),
                value(z, y, x, modulo) * scale,
                "{name} at {z},{y},{x}"
            );
        }
    }
}

/// The first page's compression and predictor tags, to show a fixture is what it claims.
fn compression_and_predictor(name: &str) -> (u16, u16) {
    let file = std::fs::File::open(fixture(&format!("tiff/{name}"))).unwrap();
    let mut d = tiff::decoder::Decoder::new(std::io::BufReader::new(file)).unwrap();
    let tag = |d: &mut tiff::decoder::Decoder<_>, t| d.find_tag_unsigned::<u16>(t).unwrap();
    (
        tag(&mut d, Tag::Compression).unwrap(),
        tag(&mut d, Tag::Predictor).unwrap_or(1),
    )
}

#[test]
fn supported_files_read_with_shape_dtype_and_values() {
    let u16 = |name| (name, [3, 20, 30], Dtype::U16, 65536, 1.0);
    for (name, shape, dtype, modulo, scale) in [
        ("u8_single.tif", [1, 20, 30], Dtype::U8, 256, 1.0),
        u16("u16_multipage.tif"),
        (
            "f32_multipage.tif",
            [3, 20, 30],
            Dtype::F32,
            65536,
            1.0 / 8.0,
        ),
        u16("u16_bigendian.tif"),
        u16("u16_lzw.tif"),
        u16("u16_deflate.tif"),
        u16("u16_zstd.tif"),
        u16("u16_zstd_predictor.tif"),
        u16("ome_nm_zstd.ome.tif"),
        ("u16_tiled.tif", [2, 40, 48], Dtype::U16, 65536, 1.0),
        // 2 time points × 3 slices, flattened into Z in file order.
        ("imagej_hyperstack.tif", [6, 20, 30], Dtype::U16, 65536, 1.0),
        u16("ome_zstack.ome.tif"),
    ] {
        check(name, shape, dtype, modulo, scale);
    }
}

#[test]
fn voxel_sizes_from_imagej_and_ome_metadata() {
    let ij = TiffStackReader::open(&fixture("tiff/imagej_hyperstack.tif")).unwrap();
    let v = ij.info().voxel_size.unwrap();
    assert!(
        (v[0] - 2.0).abs() < 1e-9 && (v[1] - 0.5).abs() < 1e-6 && (v[2] - 0.5).abs() < 1e-6,
        "{v:?}"
    );
    let ome = TiffStackReader::open(&fixture("tiff/ome_zstack.ome.tif")).unwrap();
    assert_eq!(ome.info().voxel_size, Some([1.5, 0.3, 0.3]));
    let plain = TiffStackReader::open(&fixture("tiff/u16_multipage.tif")).unwrap();
    assert_eq!(plain.info().voxel_size, None);
    // tifffile's OME-XML in nm (250 nm pixels) and µm (1.5 µm planes).
    let nm = TiffStackReader::open(&fixture("tiff/ome_nm_zstd.ome.tif")).unwrap();
    assert_eq!(nm.info().voxel_size, Some([1.5, 0.25, 0.25]));
}

#[test]
fn the_compressed_fixtures_are_compressed_as_named() {
    // (TIFF compression, predictor): 5 LZW, 8 Deflate, 50000 zstd; predictor 2 horizontal.
    for (name, expected) in [
        ("u16_lzw.tif", (5, 1)),
        ("u16_deflate.tif", (8, 1)),
        ("u16_zstd.tif", (50000, 1)),
        ("u16_zstd_predictor.tif", (50000, 2)),
        ("ome_nm_zstd.ome.tif", (50000, 1)),
    ] {
        assert_eq!(compression_and_predictor(name), expected, "{name}");
    }
}

#[test]
fn tiffs_the_tiff_crate_compresses_read_back_exactly() {
    use tiff::encoder::{colortype::Gray16, compression::DeflateLevel, Compression, TiffEncoder};
    use tiff::tags::Predictor;
    let dir = tempfile::tempdir().unwrap();
    // A gradient, and a blank plane that compresses as far as each method goes.
    let planes: [Vec<u16>; 2] = [
        (0..64 * 64).map(|i| (i * 13) as u16).collect(),
        vec![0; 64 * 64],
    ];
    for (name, compression) in [
        ("none", Compression::Uncompressed),
        ("lzw", Compression::Lzw),
        ("deflate", Compression::Deflate(DeflateLevel::Best)),
        ("packbits", Compression::Packbits),
    ] {
        for predictor in [Predictor::None, Predictor::Horizontal] {
            let path = dir.path().join(format!("{name}_{predictor:?}.tif"));
            let file = std::fs::File::create(&path).unwrap();
            let mut enc = TiffEncoder::new(file)
                .unwrap()
                .with_compression(compression)
                .with_predictor(predictor);
            for p in &planes {
                enc.write_image::<Gray16>(64, 64, p).unwrap();
            }
            drop(enc);
            let stack = read_stack(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(stack.info.shape, [2, 64, 64], "{name} {predictor:?}");
            assert_eq!(
                stack.planes,
                planes.iter().cloned().map(Plane::U16).collect::<Vec<_>>(),
                "{name} {predictor:?}"
            );
        }
    }
}

/// A namespaced OME-XML description of a `SizeZ`×16×16 uint16 stack; `physical` goes into its
/// `Pixels` element.
fn ome_xml(planes: usize, physical: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" SizeX="16" SizeY="16" SizeC="1" SizeZ="{planes}" SizeT="1" {physical}><Channel ID="Channel:0:0" SamplesPerPixel="1"/><TiffData IFD="0" PlaneCount="{planes}"/></Pixels></Image></OME>"#
    )
}

/// Writes `planes` 16×16 uint16 pages, value(z, y, x) = z·1000 + y·16 + x, with `description` as
/// the first page's ImageDescription (as OME-TIFF writers put it).
fn write_u16(path: &Path, planes: usize, description: &str) {
    use tiff::encoder::{colortype::Gray16, TiffEncoder};
    let mut enc = TiffEncoder::new(std::fs::File::create(path).unwrap()).unwrap();
    for z in 0..planes {
        let px: Vec<u16> = (0..256).map(|i| (z * 1000 + i) as u16).collect();
        let mut img = enc.new_image::<Gray16>(16, 16).unwrap();
        if z == 0 {
            // As OME writers do: UTF-8 (µm, Å) in an ASCII tag, which `write_tag` refuses.
            let mut bytes = description.as_bytes().to_vec();
            bytes.push(0);
            let e = img.encoder();
            let entry = e
                .write_entry_bytes(tiff::tags::Type::ASCII, &bytes)
                .unwrap();
            let mut dir = tiff::Directory::empty();
            dir.extend([(Tag::ImageDescription, entry)]);
            e.extend_from(&dir);
        }
        img.write_data(&px).unwrap();
    }
}

#[test]
fn ome_physical_sizes_are_read_in_their_units() {
    let dir = tempfile::tempdir().unwrap();
    for (name, physical, expected) in [
        (
            "nm",
            r#"PhysicalSizeX="250" PhysicalSizeXUnit="nm" PhysicalSizeY="250" PhysicalSizeYUnit="nm" PhysicalSizeZ="1.5" PhysicalSizeZUnit="µm""#,
            [1.5, 0.25, 0.25],
        ),
        (
            "um",
            r#"PhysicalSizeX="0.25" PhysicalSizeXUnit="µm" PhysicalSizeY="0.25" PhysicalSizeYUnit="um" PhysicalSizeZ="2" PhysicalSizeZUnit="µm""#,
            [2.0, 0.25, 0.25],
        ),
        (
            "default_unit",
            r#"PhysicalSizeX="0.25" PhysicalSizeY="0.5" PhysicalSizeZ="2""#,
            [2.0, 0.5, 0.25],
        ),
        (
            "angstrom_and_mm",
            r#"PhysicalSizeX="2500" PhysicalSizeXUnit="Å" PhysicalSizeY="2500" PhysicalSizeYUnit="A" PhysicalSizeZ="0.5" PhysicalSizeZUnit="mm""#,
            [500.0, 0.25, 0.25],
        ),
    ] {
        let path = dir.path().join(format!("{name}.ome.tif"));
        write_u16(&path, 2, &ome_xml(2, physical));
        let stack = read_stack(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(stack.info.voxel_size, Some(expected), "{name}");
        assert_eq!(stack.info.shape, [2, 16, 16], "{name}");
        let Plane::U16(p) = &stack.planes[1] else {
            panic!("{name}: not uint16")
        };
        assert_eq!((p[0], p[17], p[255]), (1000, 1017, 1255), "{name}");
    }
}

#[test]
fn an_unknown_ome_unit_names_the_file_and_the_unit_and_voxel_size_overrides_it() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let file = images.join("odd_unit.ome.tif");
    let physical = r#"PhysicalSizeX="0.5" PhysicalSizeXUnit="furlong" PhysicalSizeY="0.5""#;
    write_u16(&file, 2, &ome_xml(2, physical));
    let e = format!("{:#}", TiffStackReader::open(&file).err().unwrap());
    assert!(
        e.contains("odd_unit.ome.tif") && e.contains(r#"PhysicalSizeXUnit="furlong""#),
        "{e}"
    );
    let given = TiffStackReader::open_with_voxel_size(&file, Some([1.0, 0.5, 0.5])).unwrap();
    assert_eq!(given.info().voxel_size, Some([1.0, 0.5, 0.5]));

    // The same through `import`: refused, then imported with --voxel-size.
    let project = tmp.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    ok(&project, &["init", "--patch", "8"]);
    let out = biodc(&project)
        .args(["import", images.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("odd_unit.ome.tif")
            && stderr.contains("furlong")
            && stderr.contains("--voxel-size"),
        "{stderr}"
    );
    let (_, before) = Repo::discover(&project).unwrap().version(None).unwrap();
    assert!(before.stacks.is_empty());
    ok(
        &project,
        &[
            "import",
            images.to_str().unwrap(),
            "--voxel-size",
            "1,0.5,0.5",
        ],
    );
    let (_, after) = Repo::discover(&project).unwrap().version(None).unwrap();
    assert_eq!(
        after
            .stacks
            .values()
            .map(|s| s.voxel_size)
            .collect::<Vec<_>>(),
        [Some([1.0, 0.5, 0.5])]
    );
}

#[test]
fn ome_xml_that_disagrees_with_the_pages_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = ome_xml(2, r#"PhysicalSizeX="0.5" PhysicalSizeY="0.5""#);
    for (name, description, reason) in [
        (
            "wide",
            base.replace(r#"SizeX="16""#, r#"SizeX="32""#),
            "SizeX=32 × SizeY=16",
        ),
        (
            "signed",
            base.replace(r#"Type="uint16""#, r#"Type="int16""#),
            r#"Type="int16""#,
        ),
        (
            "channels",
            base.replace(r#"SizeC="1""#, r#"SizeC="2""#),
            "2 channels",
        ),
        ("broken", base.replace("</Image>", ""), "not well-formed"),
    ] {
        let path = dir.path().join(format!("{name}.ome.tif"));
        write_u16(&path, 2, &description);
        let e = format!("{:#}", read_stack(&path).err().unwrap());
        assert!(
            e.contains(&format!("{name}.ome.tif")) && e.contains(reason),
            "{name}: {e}"
        );
    }
}

#[test]
fn a_description_that_is_not_ome_xml_reads_as_before() {
    let dir = tempfile::tempdir().unwrap();
    for (name, description) in [
        ("other_xml", "<scanner><pixel size=\"3\"/></scanner>"),
        ("text", "made by a camera"),
        (
            "binary_only",
            r#"<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><BinaryOnly MetadataFile="a.companion.ome" UUID="urn:uuid:1"/></OME>"#,
        ),
    ] {
        let path = dir.path().join(format!("{name}.tif"));
        write_u16(&path, 2, description);
        let stack = read_stack(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(
            (stack.info.shape, stack.info.voxel_size),
            ([2, 16, 16], None),
            "{name}"
        );
    }
}

#[test]
fn unsupported_and_broken_files_name_the_file_and_the_reason() {
    for (name, reason) in [
        ("int16.tif", "16-bit signed integer"),
        ("float64.tif", "64-bit floating point"),
        ("rgb_u8.tif", "single-channel"),
        ("imagej_2channels.tif", "2 channels"),
        ("mismatched_pages.tif", "must match"),
        ("truncated.tif", "truncated"),
        ("random_bytes.tif", "not a readable tiff"),
    ] {
        let err = match read_stack(&fixture(&format!("tiff/{name}"))) {
            Ok(_) => panic!("{name} should not read"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(name), "{name}: {err}");
        assert!(
            err.to_lowercase().contains(&reason.to_lowercase()),
            "{name}: expected {reason:?} in {err}"
        );
    }
}
