//! Whether a training run converged, judged from its loss curve and its Dice on the patches it
//! was trained on.

use serde::{Deserialize, Serialize};

/// Did a training run converge? The loss made at least 90 % of its descent before the last
/// fifth of the steps (a plateau: the mean loss over the last fifth fell from the fifth before
/// by less than a tenth of its fall since the first fifth), and the model segments its own
/// training patches (Dice ≥ 0.5: it left its starting point — a stuck model has a flat loss too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Convergence {
    pub converged: bool,
    /// Mean training loss over the first, the second-last and the last fifth of the steps.
    pub loss_first: f64,
    pub loss_before: f64,
    pub loss_last: f64,
    pub train_dice: f64,
    pub verdict: String,
}

impl Convergence {
    /// Judges a run from the loss of every step and the Dice on its training patches.
    pub fn judge(losses: &[f32], train_dice: f64) -> Convergence {
        let n = losses.len();
        let fifth = (n / 5).max(1);
        let mean = |s: &[f32]| s.iter().map(|&v| v as f64).sum::<f64>() / s.len().max(1) as f64;
        let first = mean(&losses[..fifth.min(n)]);
        let last = mean(&losses[n.saturating_sub(fifth)..]);
        let before = mean(&losses[n.saturating_sub(2 * fifth)..n.saturating_sub(fifth)]);
        let plateau = n >= 10 && before - last <= 0.1 * (first - last).max(0.0);
        let fits = train_dice >= 0.5;
        let verdict = match (plateau, fits) {
            (true, true) => format!(
                "converged: loss {first:.3} → {before:.3} → {last:.3} (first, second-last, last fifth of the steps), Dice {train_dice:.3} on its training patches"
            ),
            (false, _) if n < 10 => {
                format!("not converged: only {n} steps; train longer with --steps")
            }
            (false, _) => format!(
                "not converged: loss still falling ({first:.3} → {before:.3} → {last:.3} over the first, second-last and last fifth of the steps); train longer with --steps"
            ),
            (true, false) => format!(
                "not converged: the loss stopped falling ({first:.3} → {last:.3}) but the model segments its own training patches at Dice {train_dice:.3}; try a higher --lr or more --steps"
            ),
        };
        Convergence {
            converged: plateau && fits,
            loss_first: first,
            loss_before: before,
            loss_last: last,
            train_dice,
            verdict,
        }
    }

    /// A forest is fitted, not trained by steps: it converged when it fits its patches.
    pub(super) fn fitted(train_dice: f64) -> Convergence {
        let converged = train_dice >= 0.5;
        Convergence {
            converged,
            loss_first: f64::NAN,
            loss_before: f64::NAN,
            loss_last: f64::NAN,
            train_dice,
            verdict: if converged {
                format!("fitted: Dice {train_dice:.3} on its training patches")
            } else {
                format!("the forest does not fit its training patches (Dice {train_dice:.3})")
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Convergence;

    #[test]
    fn convergence_verdicts() {
        // Fell from 1.5 to 0.2 and flattened: converged.
        let flat: Vec<f32> = (0..100)
            .map(|i| 0.2 + 1.3 * (-(i as f32) / 10.0).exp())
            .collect();
        assert!(Convergence::judge(&flat, 0.8).converged);
        // Still falling steadily: not converged.
        let falling: Vec<f32> = (0..100).map(|i| 1.5 - 0.012 * i as f32).collect();
        let c = Convergence::judge(&falling, 0.8);
        assert!(
            !c.converged && c.verdict.contains("still falling"),
            "{}",
            c.verdict
        );
        // Flat from the start, and the model does not fit: stuck, not converged.
        let stuck = vec![1.0f32; 100];
        let c = Convergence::judge(&stuck, 0.01);
        assert!(
            !c.converged && c.verdict.contains("stopped falling"),
            "{}",
            c.verdict
        );
        // Too short to tell.
        assert!(!Convergence::judge(&[1.0, 0.9], 0.9).converged);
    }
}
