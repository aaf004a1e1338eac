//! How each condition looks: vessel geometry and imaging parameters of `c0` … `c3`.

/// The look of one condition. Conditions differ in vessel density, calibre, tortuosity, signal,
/// background, noise and illumination inhomogeneity; each stack also draws its own brightness
/// and background within ±15 % of these (a batch effect), so intensity ranges overlap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Style {
    /// Range of the fraction of voxels inside vessels; each stack draws its target from it, so
    /// density does not depend on the stack's size.
    pub coverage: (f32, f32),
    /// Radius range (pixels) of vessels entering the volume; they taper and branch thinner.
    pub radius: (f32, f32),
    /// Standard deviation of the change of turn rate per pixel step (radians).
    pub tortuosity: f32,
    /// Probability of a side branch per pixel step.
    pub branching: f32,
    /// Vessel brightness above background at the centreline (grey levels).
    pub signal: f32,
    /// Background level (grey levels).
    pub background: f32,
    /// Gaussian read noise (grey levels); Poisson-like shot noise is added on top.
    pub read_noise: f32,
    /// Relative amplitude of the smooth illumination field.
    pub inhomogeneity: f32,
}

/// The four conditions, indexed by condition number:
/// - `c0`: sparse, thick, straight vessels; bright, dark background, clean (high SNR);
/// - `c1`: a dense bed of thin, wavy capillaries; dimmer, noisier;
/// - `c2`: thick, tortuous, crowded vessels over a high background; lowest SNR;
/// - `c3`: medium vessels, very tortuous, under strongly uneven illumination.
pub const STYLES: [Style; 4] = [
    Style {
        coverage: (0.06, 0.11),
        radius: (2.8, 4.2),
        tortuosity: 0.010,
        branching: 0.006,
        signal: 3000.0,
        background: 300.0,
        read_noise: 40.0,
        inhomogeneity: 0.10,
    },
    Style {
        coverage: (0.10, 0.16),
        radius: (1.4, 2.2),
        tortuosity: 0.025,
        branching: 0.020,
        signal: 1800.0,
        background: 500.0,
        read_noise: 90.0,
        inhomogeneity: 0.20,
    },
    Style {
        coverage: (0.16, 0.24),
        radius: (3.8, 5.6),
        tortuosity: 0.035,
        branching: 0.012,
        signal: 1500.0,
        background: 800.0,
        read_noise: 180.0,
        inhomogeneity: 0.20,
    },
    Style {
        coverage: (0.11, 0.18),
        radius: (2.2, 3.2),
        tortuosity: 0.045,
        branching: 0.015,
        signal: 2200.0,
        background: 400.0,
        read_noise: 140.0,
        inhomogeneity: 0.45,
    },
];
