//! biodc: git for the BioData-Centric loop of bioimage segmentation.
//!
//! See `docs/FORMAT.md` for the on-disk format and `docs/STAGES.md` for the verbs.

pub mod allocator;
pub mod cache;
pub mod cli;
pub mod demo;
pub mod failpoint;
pub mod history;
pub mod inspect;
pub mod io;
pub mod lock;
pub mod name;
pub mod nn;
pub mod output;
pub mod pixel;
pub mod progress;
pub mod refs;
pub mod remote;
pub mod repo;
pub mod report;
pub mod segmentation;
pub mod select;
pub mod slurm;
pub mod stages;
pub mod stats;
pub mod store;
pub mod synth;
pub mod transfer;
pub mod version;
