//! biodc: git for the BioData-Centric loop of bioimage segmentation.
//!
//! See `docs/FORMAT.md` for the on-disk format and `docs/STAGES.md` for the verbs.

pub mod io;
pub mod synth;
