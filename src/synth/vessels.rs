//! Vessel geometry: branching 3D centrelines grown as random walks with momentum.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// How one condition looks. Conditions differ in density, calibre, tortuosity, brightness,
/// background, noise and illumination inhomogeneity, with overlapping ranges.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Root vessels per 256×256 slice area.
    pub roots: f32,
    /// Root radius range (pixels).
    pub radius: (f32, f32),
    /// Standard deviation of the heading change per pixel step (radians).
    pub tortuosity: f32,
    /// Probability of a branch per pixel step.
    pub branching: f32,
    /// Vessel brightness above background at the centreline.
    pub signal: f32,
    pub background: f32,
    /// Gaussian read noise (grey levels); shot noise is added on top.
    pub read_noise: f32,
    /// Relative amplitude of the smooth illumination field.
    pub inhomogeneity: f32,
}

/// The four conditions c0…c3.
pub const STYLES: [Style; 4] = [
    Style {
        roots: 4.0,
        radius: (2.6, 4.0),
        tortuosity: 0.015,
        branching: 0.010,
        signal: 3000.0,
        background: 300.0,
        read_noise: 40.0,
        inhomogeneity: 0.10,
    },
    Style {
        roots: 4.0,
        radius: (1.5, 2.3),
        tortuosity: 0.04,
        branching: 0.020,
        signal: 1800.0,
        background: 500.0,
        read_noise: 90.0,
        inhomogeneity: 0.20,
    },
    Style {
        roots: 3.5,
        radius: (3.6, 5.5),
        tortuosity: 0.07,
        branching: 0.015,
        signal: 1500.0,
        background: 900.0,
        read_noise: 180.0,
        inhomogeneity: 0.15,
    },
    Style {
        roots: 3.2,
        radius: (2.0, 3.2),
        tortuosity: 0.055,
        branching: 0.015,
        signal: 2200.0,
        background: 400.0,
        read_noise: 140.0,
        inhomogeneity: 0.45,
    },
];

/// One sample of a centreline: position (pixels; z in slices) and radius (pixels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f32,
    pub y: f32,
    pub z: f32,
    pub r: f32,
}

struct Segment {
    x: f32,
    y: f32,
    z: f32,
    heading: f32,
    r: f32,
}

/// Grows the vessel network of condition `cond` in a volume of `shape` (Z, Y, X).
pub fn grow(rng: &mut ChaCha8Rng, cond: usize, shape: [usize; 3]) -> Vec<Point> {
    let style = STYLES[cond];
    let [depth, h, w] = shape;
    let (hf, wf) = (h as f32, w as f32);
    let roots = ((style.roots * hf * wf / 65536.0).round() as usize).max(1);
    // Roots enter from a random border and head inward, so vessels cross the field.
    let mut pending: Vec<Segment> = (0..roots)
        .map(|_| {
            let t = rng.random_range(0.0..1.0f32);
            let (x, y, inward) = match rng.random_range(0..4) {
                0 => (t * wf, 0.0, std::f32::consts::FRAC_PI_2),
                1 => (t * wf, hf, -std::f32::consts::FRAC_PI_2),
                2 => (0.0, t * hf, 0.0),
                _ => (wf, t * hf, std::f32::consts::PI),
            };
            Segment {
                x,
                y,
                z: rng.random_range(0.0..depth as f32) - 0.5,
                heading: inward + rng.random_range(-0.6..0.6),
                r: rng.random_range(style.radius.0..style.radius.1),
            }
        })
        .collect();
    let max_segments = roots * 24;
    let max_steps = (hf + wf) as usize;
    let mut points = Vec::new();
    let mut segments = 0;
    while let Some(mut s) = pending.pop() {
        segments += 1;
        let mut dz = 0.0f32;
        let mut turn = 0.0f32;
        for _ in 0..max_steps {
            points.push(Point {
                x: s.x,
                y: s.y,
                z: s.z,
                r: s.r,
            });
            // Momentum: the turn rate itself drifts, so curves are smooth.
            turn = 0.8 * turn + normal(rng) * style.tortuosity;
            s.heading += turn;
            s.x += s.heading.cos();
            s.y += s.heading.sin();
            dz = (dz + normal(rng) * 0.01).clamp(-0.04, 0.04);
            s.z = (s.z + dz).clamp(-0.5, depth as f32 - 0.5);
            s.r = (s.r * 0.9995).max(1.0);
            let margin = s.r + 2.0;
            if s.x < -margin || s.y < -margin || s.x > wf + margin || s.y > hf + margin {
                break;
            }
            if segments < max_segments && rng.random::<f32>() < style.branching {
                let side = if rng.random::<bool>() { 1.0 } else { -1.0 };
                pending.push(Segment {
                    heading: s.heading + side * rng.random_range(0.5..1.1),
                    r: (s.r * rng.random_range(0.6..0.85)).max(1.0),
                    ..s
                });
                segments += 1;
            }
        }
    }
    points
}

/// A standard normal sample (Box–Muller).
pub fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}
