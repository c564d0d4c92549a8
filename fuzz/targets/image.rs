//! Open arbitrary bytes as an image and exercise everything a mount does:
//! readdir and lookup of every name, every inode, xattr and symlink, every
//! file's data (as fsck reads it, and as the FUSE server reads it).
use std::path::Path;

use erofs_fuse::device::{Access, Device};
use erofs_fuse::fsck::{fsck, FsckLimits};
use erofs_fuse::reader::{WalkEntry, WalkVisitor};
use erofs_fuse::Image;

/// Bounds per input, so a slow input is a finding rather than the norm.
const LIMITS: FsckLimits = FsckLimits {
    max_entries: 100_000,
    max_file_bytes: 4 << 20,
    max_total_bytes: 32 << 20,
    max_problems: 100,
};

/// Reads as the server does: slices at a few offsets, plus prefetch hints.
struct ServerReads<'a> {
    image: &'a Image,
    scratch: Vec<u8>,
    files: usize,
    visited: u64,
}

impl WalkVisitor for ServerReads<'_> {
    fn visit(&mut self, entry: &WalkEntry) -> erofs_fuse::Result<()> {
        // Directories sharing their blocks would make the walk quadratic:
        // stop it, as fsck's entry limit does.
        self.visited += 1;
        if self.visited > LIMITS.max_entries {
            return Err(erofs_fuse::Error::corrupt("walk limit"));
        }
        let inode = &entry.inode;
        if inode.is_dir() || self.files >= 64 {
            return Ok(());
        }
        self.files += 1;
        for (offset, access) in [
            (0, Access::Sequential),
            (inode.size / 2, Access::Random),
            (inode.size.saturating_sub(1), Access::Sequential),
        ] {
            let _ = self
                .image
                .read_range_with(inode, offset, 128 << 10, access, &mut self.scratch);
            self.image.prefetch(inode, offset, 128 << 10);
        }
        let _ = self.image.hole_len(inode, 0);
        let _ = self.image.compression_info(inode);
        let _ = erofs_fuse::inspect::EntrySummary::new(self.image, "/f", inode);
        Ok(())
    }
}

/// Runs one input; panics on a finding.
pub fn run(data: &[u8]) {
    let Ok(device) = Device::from_bytes(Path::new("fuzz.erofs"), data) else {
        return;
    };
    let Ok(image) = Image::from_devices(device, Vec::new()) else {
        return;
    };
    exercise(&image);
}

/// Everything a mount and the tools do with an opened image (the nydus
/// target shares it).
pub fn exercise(image: &Image) {
    let _ = fsck(image, &LIMITS);
    if let Ok(root) = image.root() {
        let mut reads = ServerReads {
            image,
            scratch: Vec::new(),
            files: 0,
            visited: 0,
        };
        let _ = image.walk(root, b"/", &mut reads);
    }
    let _ = erofs_fuse::inspect::ImageSummary::new(image);
}
