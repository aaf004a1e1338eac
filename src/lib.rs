//! biodc: git for the BioData-Centric loop of bioimage segmentation.
//!
//! See `docs/FORMAT.md` for the on-disk format and `docs/STAGES.md` for the verbs.

pub mod io;
pub mod synth;
pub mod failpoint;
pub mod history;
pub mod lock;
pub mod nn;
pub mod store;
pub mod version;
pub mod cache;
pub mod repo;
pub mod progress;
pub mod stages;
pub mod cli;
pub mod select;
