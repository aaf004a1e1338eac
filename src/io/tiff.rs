//! TIFF reading and writing. (Being written: see the helper's task.)
use super::{Plane, Stack, StackInfo};
use std::path::Path;

/// Streams a TIFF z-stack one plane at a time.
pub struct TiffStackReader {
    _info: StackInfo,
}

impl TiffStackReader {
    pub fn open(_path: &Path) -> anyhow::Result<Self> {
        todo!()
    }
    pub fn info(&self) -> &StackInfo {
        &self._info
    }
    pub fn read_plane(&mut self, _z: usize) -> anyhow::Result<Plane> {
        todo!()
    }
}

pub fn read_stack(_path: &Path) -> anyhow::Result<Stack> {
    todo!()
}

pub fn write_stack(_path: &Path, _stack: &Stack) -> anyhow::Result<()> {
    todo!()
}
