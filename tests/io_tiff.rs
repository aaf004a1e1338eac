//! TIFF reading on the fixtures in fixtures/tiff (written by fixtures/make_fixtures.py):
//! value(z, y, x) = (z·1000 + y·10 + x) mod range.

mod common;

use biodc::io::tiff::{read_stack, TiffStackReader};
use biodc::io::{Dtype, Plane};
use common::fixture;

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
        for (y, x) in [(0, 0), (h - 1, w - 1), (h / 2, w / 3)] {
            assert_eq!(
                as_f64(plane, y * w + x),
                value(z, y, x, modulo) * scale,
                "{name} at {z},{y},{x}"
            );
        }
    }
}

#[test]
fn supported_files_read_with_shape_dtype_and_values() {
    check("u8_single.tif", [1, 20, 30], Dtype::U8, 256, 1.0);
    check("u16_multipage.tif", [3, 20, 30], Dtype::U16, 65536, 1.0);
    check(
        "f32_multipage.tif",
        [3, 20, 30],
        Dtype::F32,
        65536,
        1.0 / 8.0,
    );
    check("u16_bigendian.tif", [3, 20, 30], Dtype::U16, 65536, 1.0);
    check("u16_lzw.tif", [3, 20, 30], Dtype::U16, 65536, 1.0);
    check("u16_tiled.tif", [2, 40, 48], Dtype::U16, 65536, 1.0);
    // 2 time points × 3 slices, flattened into Z in file order.
    check("imagej_hyperstack.tif", [6, 20, 30], Dtype::U16, 65536, 1.0);
    check("ome_zstack.ome.tif", [3, 20, 30], Dtype::U16, 65536, 1.0);
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
