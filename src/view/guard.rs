//! A view whose every call fails with EIO, instead of using zeros, when a
//! file behind it shrank under its map while the call read it (see
//! [`crate::fault`]). The FUSE adapter serves through it.

use std::sync::Arc;

use super::{Attr, DirItem, FsStats, Ino, View};
use crate::device::Access;
use crate::error::Result;
use crate::fault::watch;

/// Wraps a view so that every call that reads mapped files is watched.
pub struct Guarded(pub Arc<dyn View>);

/// `f` watched: its result, or the fault as an error.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    watch(f).unwrap_or_else(|shrunk| Err(shrunk.into()))
}

impl View for Guarded {
    fn attr(&self, ino: Ino) -> Result<Attr> {
        guarded(|| self.0.attr(ino))
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<Attr>> {
        guarded(|| self.0.lookup(parent, name))
    }

    fn read_dir(
        &self,
        ino: Ino,
        pos: u64,
        sink: &mut dyn FnMut(DirItem<'_>) -> bool,
    ) -> Result<()> {
        // The sink copies names out of the map: inside the watch too. What
        // it added before a fault is dropped with the error.
        guarded(|| self.0.read_dir(ino, pos, sink))
    }

    fn read_link(&self, ino: Ino) -> Result<Vec<u8>> {
        guarded(|| self.0.read_link(ino))
    }

    fn read<'a>(
        &'a self,
        ino: Ino,
        offset: u64,
        len: u64,
        access: Access,
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        // Bytes borrowed from a map are copied by the kernel when the reply
        // is written: a page past the end then fails that write (EFAULT),
        // and the kernel fails the read with EIO; no signal is raised.
        guarded(|| self.0.read(ino, offset, len, access, scratch))
    }

    fn prefetch(&self, ino: Ino, offset: u64, len: u64) {
        let _ = watch(|| self.0.prefetch(ino, offset, len));
    }

    fn xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        guarded(|| self.0.xattr(ino, name))
    }

    fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        guarded(|| self.0.xattr_names(ino))
    }

    fn stats(&self) -> FsStats {
        // Totals come from the superblock, read at open.
        self.0.stats()
    }

    fn block_size(&self) -> u32 {
        self.0.block_size()
    }

    fn read_only_mount(&self) -> bool {
        self.0.read_only_mount()
    }

    fn create(&self, parent: Ino, name: &[u8]) -> Result<()> {
        guarded(|| self.0.create(parent, name))
    }

    fn remove_dir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        guarded(|| self.0.remove_dir(parent, name))
    }

    fn release_mapped(&self) {
        self.0.release_mapped()
    }

    fn start_serving(&self) {
        self.0.start_serving()
    }

    fn verity_stats(&self) -> Vec<(std::path::PathBuf, crate::verity::VerityStats)> {
        self.0.verity_stats()
    }
}
