//! Vessel geometry: branching 3D centrelines grown as random walks with momentum until the
//! condition's coverage is reached, and their rasterisation as tubes, slice by slice: the
//! ground-truth footprint and the intensity profile across each tube.

use super::render::gauss;
use super::style::Style;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::f32::consts::{FRAC_PI_2, PI, TAU};

/// Thinnest radius (pixels) a vessel tapers to.
const MIN_RADIUS: f32 = 1.0;
/// Relative radius lost per pixel step along a vessel.
const TAPER: f32 = 0.0003;
/// Deepest branch generation (roots are generation 0).
const MAX_GENERATION: u8 = 2;
/// Most segments grown in one stack, whatever the coverage (a guard for odd shapes).
const MAX_SEGMENTS: usize = 20_000;

/// One sample of a centreline; samples are one pixel apart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Column (pixels).
    pub x: f32,
    /// Row (pixels).
    pub y: f32,
    /// Slice (fractional).
    pub z: f32,
    /// Tube radius in the xy plane (pixels).
    pub r: f32,
    /// Relative brightness of the vessel.
    pub b: f32,
}

impl Point {
    /// The tube's cross-section in slice `z`: its radius there and the squared z offset in
    /// units of the tube's half extent in z, or `None` where the tube does not reach `z`.
    /// Slices are coarser than pixels (2 µm vs 0.5 µm) but the axial PSF is long, so a tube
    /// shows in a few neighbouring slices, widest where it is centred.
    fn section(&self, z: usize) -> Option<(f32, f32)> {
        let reach = 0.3 * self.r + 1.2;
        let dz = (z as f32 - self.z) / reach;
        let dz2 = dz * dz;
        (dz2 < 1.0).then(|| (self.r * (1.0 - dz2).sqrt(), dz2))
    }
}

/// A grown vessel network: its centreline samples and the ground truth of every slice.
pub struct Network {
    /// Every centreline sample of every vessel.
    pub points: Vec<Point>,
    /// One plane per slice, 1 where the pixel centre lies inside a tube, else 0.
    pub mask: Vec<Vec<u8>>,
    h: usize,
    w: usize,
    covered: usize,
}

/// A vessel (root or branch) about to be grown.
#[derive(Clone, Copy)]
struct Segment {
    x: f32,
    y: f32,
    z: f32,
    /// z change per pixel step.
    dz: f32,
    heading: f32,
    r: f32,
    b: f32,
    generation: u8,
    /// Most pixel steps it may take.
    length: usize,
}

/// Grows the network of one stack of `shape` (Z, Y, X) in condition `style`: vessels are added
/// until the fraction of voxels inside tubes reaches a target drawn from `style.coverage`.
pub fn grow(rng: &mut ChaCha8Rng, style: &Style, shape: [usize; 3]) -> Network {
    let [depth, h, w] = shape;
    let target = rng.random_range(style.coverage.0..style.coverage.1) * (depth * h * w) as f32;
    let mut net = Network {
        points: Vec::new(),
        mask: vec![vec![0; h * w]; depth],
        h,
        w,
        covered: 0,
    };
    let mut pending = Vec::new();
    for _ in 0..MAX_SEGMENTS {
        if net.covered as f32 >= target {
            break;
        }
        let segment = pending.pop().unwrap_or_else(|| root(rng, style, shape));
        walk(rng, style, segment, &mut net, &mut pending);
    }
    net
}

/// A new vessel: mostly entering through a side of the field, heading inward; otherwise
/// diving into the volume from above or below anywhere in the field.
fn root(rng: &mut ChaCha8Rng, style: &Style, shape: [usize; 3]) -> Segment {
    let [depth, h, w] = shape;
    let (hf, wf, top) = (h as f32, w as f32, depth as f32 - 0.5);
    let mut s = Segment {
        x: 0.0,
        y: 0.0,
        z: rng.random_range(-0.5..top),
        dz: gauss(rng) * 0.01,
        heading: 0.0,
        r: rng.random_range(style.radius.0..style.radius.1),
        b: rng.random_range(0.75..1.25),
        generation: 0,
        length: 2 * (h + w),
    };
    if rng.random::<f32>() < 0.7 {
        let t = rng.random_range(0.0..1.0f32);
        let inward;
        (s.x, s.y, inward) = match rng.random_range(0..4) {
            0 => (t * wf, 0.0, FRAC_PI_2),
            1 => (t * wf, hf, -FRAC_PI_2),
            2 => (0.0, t * hf, 0.0),
            _ => (wf, t * hf, PI),
        };
        s.heading = inward + rng.random_range(-0.6..0.6);
    } else {
        s.x = rng.random_range(0.0..wf);
        s.y = rng.random_range(0.0..hf);
        s.heading = rng.random_range(0.0..TAU);
        let dive = rng.random_range(0.01..0.03);
        (s.z, s.dz) = if rng.random() {
            (-0.5, dive)
        } else {
            (top, -dive)
        };
    }
    s
}

/// Walks one vessel pixel by pixel, painting it, until it leaves the field or its length is
/// spent. The turn rate and the z slope have momentum, so curves are smooth; side branches
/// (thinner, 20–60 radii long, one generation deeper, branching half as often) are queued on
/// `pending`.
fn walk(
    rng: &mut ChaCha8Rng,
    style: &Style,
    mut s: Segment,
    net: &mut Network,
    pending: &mut Vec<Segment>,
) {
    let (hf, wf) = (net.h as f32, net.w as f32);
    let top = net.mask.len() as f32 - 0.5;
    let mut turn = 0.0f32;
    for _ in 0..s.length {
        net.paint(Point {
            x: s.x,
            y: s.y,
            z: s.z,
            r: s.r,
            b: s.b,
        });
        turn = 0.8 * turn + gauss(rng) * style.tortuosity;
        s.heading += turn;
        s.x += s.heading.cos();
        s.y += s.heading.sin();
        s.dz = (0.95 * s.dz + gauss(rng) * 0.004).clamp(-0.03, 0.03);
        s.z += s.dz;
        if !(-0.5..=top).contains(&s.z) {
            s.dz = -s.dz;
            s.z = s.z.clamp(-0.5, top);
        }
        s.r = (s.r * (1.0 - TAPER)).max(MIN_RADIUS);
        let margin = s.r + 2.0;
        if s.x < -margin || s.y < -margin || s.x > wf + margin || s.y > hf + margin {
            break;
        }
        let branching = style.branching / (1 + s.generation) as f32;
        if s.generation < MAX_GENERATION && rng.random::<f32>() < branching {
            let side = if rng.random() { 1.0 } else { -1.0 };
            let r = (s.r * rng.random_range(0.6..0.85)).max(MIN_RADIUS);
            pending.push(Segment {
                heading: s.heading + side * rng.random_range(0.5..1.2),
                dz: s.dz + gauss(rng) * 0.01,
                r,
                b: s.b * rng.random_range(0.85..1.05),
                generation: s.generation + 1,
                length: (r * rng.random_range(20.0..60.0)) as usize,
                ..s
            });
            s.r = (s.r * rng.random_range(0.9..0.97)).max(MIN_RADIUS);
        }
    }
}

impl Network {
    /// Adds a centreline sample and its tube footprint to the mask.
    fn paint(&mut self, p: Point) {
        self.points.push(p);
        let (h, w) = (self.h, self.w);
        for (z, mask) in self.mask.iter_mut().enumerate() {
            if let Some((r, _)) = p.section(z) {
                for_disc(w, h, p.x, p.y, r, |i, _| {
                    if mask[i] == 0 {
                        mask[i] = 1;
                        self.covered += 1;
                    }
                });
            }
        }
    }

    /// The vessel intensity profile of slice `z`: 0 outside tubes; inside, brightest on the
    /// centreline (the vessel's brightness) falling to 0.3 of it at the tube's 3D surface.
    /// Non-zero exactly where the mask is 1.
    pub fn profile(&self, z: usize) -> Vec<f32> {
        let mut profile = vec![0f32; self.h * self.w];
        for p in &self.points {
            if let Some((r, dz2)) = p.section(z) {
                for_disc(self.w, self.h, p.x, p.y, r, |i, q| {
                    // q is d²/r² within the slice; the 3D normalised radius² is this:
                    let rho2 = q * (1.0 - dz2) + dz2;
                    let v = p.b * (1.0 - 0.7 * rho2);
                    if v > profile[i] {
                        profile[i] = v;
                    }
                });
            }
        }
        profile
    }
}

/// Calls `f(index, d²/r²)` for every pixel of a `w`-wide, `h`-high plane whose centre lies
/// within `r` of (`cx`, `cy`).
pub fn for_disc(w: usize, h: usize, cx: f32, cy: f32, r: f32, mut f: impl FnMut(usize, f32)) {
    let r2 = r * r;
    if r2 <= 0.0 {
        return;
    }
    let y0 = (cy - r).ceil().max(0.0);
    let y1 = (cy + r).floor().min(h as f32 - 1.0);
    if y1 < y0 {
        return;
    }
    for y in y0 as usize..=y1 as usize {
        let dy2 = (y as f32 - cy).powi(2);
        let half = (r2 - dy2).max(0.0).sqrt();
        let x0 = (cx - half).ceil().max(0.0);
        let x1 = (cx + half).floor().min(w as f32 - 1.0);
        if x1 < x0 {
            continue;
        }
        for x in x0 as usize..=x1 as usize {
            let d2 = (x as f32 - cx).powi(2) + dy2;
            if d2 <= r2 {
                f(y * w + x, d2 / r2);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::render::{stream, Stream};
    use crate::synth::style::STYLES;

    fn coverage(net: &Network) -> f64 {
        let n: usize = net.mask.iter().map(|m| m.len()).sum();
        net.covered as f64 / n as f64
    }

    #[test]
    fn coverage_reaches_the_target_at_any_size() {
        for (c, style) in STYLES.iter().enumerate() {
            for shape in [[3, 128, 128], [2, 320, 256], [5, 512, 512]] {
                let net = grow(&mut stream(1, c, Stream::Geometry), style, shape);
                let f = coverage(&net);
                let counted: usize = net
                    .mask
                    .iter()
                    .map(|m| m.iter().map(|&v| v as usize).sum::<usize>())
                    .sum();
                assert_eq!(counted, net.covered);
                assert!(
                    f >= style.coverage.0 as f64 && f < style.coverage.1 as f64 + 0.06,
                    "c{c} {shape:?}: coverage {f}"
                );
            }
        }
    }

    #[test]
    fn calibre_orders_the_conditions_and_vessels_taper() {
        let mean_radius = |c: usize| {
            let net = grow(
                &mut stream(5, c, Stream::Geometry),
                &STYLES[c],
                [3, 256, 256],
            );
            assert!(net.points.iter().all(|p| p.r >= MIN_RADIUS));
            assert!(net.points.iter().all(|p| p.r <= STYLES[c].radius.1));
            net.points.iter().map(|p| p.r as f64).sum::<f64>() / net.points.len() as f64
        };
        let r: Vec<f64> = (0..4).map(mean_radius).collect();
        assert!(r[1] < r[3] && r[3] < r[0] && r[0] < r[2], "{r:?}");
        for (c, style) in STYLES.iter().enumerate() {
            assert!(r[c] < style.radius.1 as f64, "branches are thinner");
        }
    }

    #[test]
    fn profile_is_non_zero_exactly_on_the_mask_and_brightest_inside() {
        let net = grow(&mut stream(2, 1, Stream::Geometry), &STYLES[1], [3, 96, 96]);
        for z in 0..3 {
            let p = net.profile(z);
            for (v, m) in p.iter().zip(&net.mask[z]) {
                assert_eq!(*v > 0.0, *m == 1);
                assert!(*v <= 1.25 * 1.05f32.powi(3));
            }
        }
    }

    #[test]
    fn discs_cover_their_area_and_clip_at_edges() {
        let mut n = 0;
        for_disc(100, 100, 50.0, 50.0, 10.0, |_, q| {
            assert!((0.0..=1.0).contains(&q));
            n += 1;
        });
        let area = std::f32::consts::PI * 100.0;
        assert!((n as f32 - area).abs() < 0.05 * area, "{n}");
        let mut edge = 0;
        for_disc(20, 10, 0.0, 0.0, 5.0, |i, _| {
            assert!(i % 20 <= 5 && i / 20 <= 5);
            edge += 1;
        });
        assert!(edge > 0 && edge < n / 3);
        for_disc(20, 10, -30.0, 5.0, 5.0, |_, _| panic!("outside"));
    }
}
