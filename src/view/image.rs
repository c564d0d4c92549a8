//! [`ImageView`]: one image as a [`View`], inode numbers derived from nids.

use std::sync::Arc;

use super::{Attr, DirItem, FsStats, Ino, View, ROOT};
use crate::device::Access;
use crate::error::Result;
use crate::format::{Nid, TRUSTED_OVERLAY, USER_OVERLAY};
use crate::reader::{DirPos, Image, Inode};

/// The overlayfs xattrs [`OverlayXattrs::User`] presents.
const USER_PRESENTED: [&[u8]; 2] = [b"opaque", b"origin"];

/// Which namespace an image's overlayfs xattrs are presented in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OverlayXattrs {
    /// As stored (`trusted.overlay.*`).
    #[default]
    Trusted,
    /// `trusted.overlay.opaque` and `trusted.overlay.origin` presented as
    /// `user.overlay.*`, for rootless overlayfs (`userxattr`), which reads
    /// only those: opaque directories, and whiteouts hidden in directories
    /// that merge nothing. Other overlayfs xattrs (redirects, metacopy),
    /// which only overlayfs's own upper layers hold, and the image's own
    /// `user.overlay.*` are hidden, so nothing else steers the overlayfs
    /// stacked on the mount.
    User,
}

impl OverlayXattrs {
    /// The stored name to look up for the presented `name`, or `None` when
    /// the name is hidden.
    fn stored_name(self, name: &[u8]) -> Option<Vec<u8>> {
        match self {
            Self::Trusted => Some(name.to_vec()),
            Self::User if name.starts_with(TRUSTED_OVERLAY) => None,
            Self::User => match name.strip_prefix(USER_OVERLAY) {
                Some(rest) if USER_PRESENTED.contains(&rest) => {
                    Some([TRUSTED_OVERLAY, rest].concat())
                }
                Some(_) => None,
                None => Some(name.to_vec()),
            },
        }
    }

    /// The value of the presented xattr `name` of `inode`.
    pub(crate) fn get(self, image: &Image, inode: &Inode, name: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.stored_name(name) {
            Some(stored) => image.xattr(inode, &stored),
            None => Ok(None),
        }
    }

    /// The presented names of the xattrs of `inode`.
    pub(crate) fn names(self, image: &Image, inode: &Inode) -> Result<Vec<Vec<u8>>> {
        let list = image.xattrs(inode)?;
        Ok(list
            .into_iter()
            .filter_map(|x| self.presented_name(x.name))
            .collect())
    }

    /// The presented name of a stored one, or `None` when it is hidden.
    fn presented_name(self, stored: Vec<u8>) -> Option<Vec<u8>> {
        match self {
            Self::Trusted => Some(stored),
            Self::User if stored.starts_with(USER_OVERLAY) => None,
            Self::User => match stored.strip_prefix(TRUSTED_OVERLAY) {
                Some(rest) if USER_PRESENTED.contains(&rest) => Some([USER_OVERLAY, rest].concat()),
                Some(_) => None,
                None => Some(stored),
            },
        }
    }
}

/// Up to `len` bytes of file `nid` of `image` from `offset` (see
/// [`View::read`]).
pub(crate) fn read_file<'a>(
    image: &'a Image,
    nid: Nid,
    offset: u64,
    len: u64,
    access: Access,
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8]> {
    image.read_range_with(&image.inode(nid)?, offset, len, access, scratch)
}

/// Hints that `len` bytes of file `nid` of `image` from `offset` are read
/// next (see [`View::prefetch`]).
pub(crate) fn prefetch_file(image: &Image, nid: Nid, offset: u64, len: u64) {
    if let Ok(inode) = image.inode(nid) {
        image.prefetch(&inode, offset, len);
    }
}

/// One image served as it is. The root is inode 1 and every other nid n
/// is n + 2, so hard links share an inode number and numbers are stable.
pub struct ImageView {
    image: Arc<Image>,
    root: Nid,
    overlay_xattrs: OverlayXattrs,
}

impl ImageView {
    /// A view of `image` with its xattrs presented as `overlay_xattrs` says.
    pub fn new(image: Arc<Image>, overlay_xattrs: OverlayXattrs) -> Self {
        let root = image.superblock().root_nid;
        Self {
            image,
            root,
            overlay_xattrs,
        }
    }

    /// The image served.
    pub fn image(&self) -> &Arc<Image> {
        &self.image
    }

    fn ino(&self, nid: Nid) -> Ino {
        if nid == self.root {
            ROOT
        } else {
            nid.0.wrapping_add(2)
        }
    }

    fn nid(&self, ino: Ino) -> Nid {
        if ino == ROOT {
            self.root
        } else {
            Nid(ino.wrapping_sub(2))
        }
    }

    fn inode(&self, ino: Ino) -> Result<Inode> {
        self.image.inode(self.nid(ino))
    }

    fn attr_of(&self, inode: &Inode) -> Attr {
        Attr::of_inode(inode, self.ino(inode.nid))
    }
}

impl View for ImageView {
    fn attr(&self, ino: Ino) -> Result<Attr> {
        Ok(self.attr_of(&self.inode(ino)?))
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Option<Attr>> {
        let dir = self.inode(parent)?;
        match self.image.lookup(&dir, name)? {
            Some(entry) => Ok(Some(self.attr_of(&self.image.inode(entry.nid)?))),
            None => Ok(None),
        }
    }

    fn read_dir(
        &self,
        ino: Ino,
        pos: u64,
        sink: &mut dyn FnMut(DirItem<'_>) -> bool,
    ) -> Result<()> {
        let dir = self.inode(ino)?;
        for item in self.image.read_dir(&dir, DirPos(pos))? {
            let (entry, next) = item?;
            let item = DirItem {
                ino: self.ino(entry.nid),
                name: &entry.name,
                kind: entry.file_type,
                next: next.0,
            };
            if sink(item) {
                break;
            }
        }
        Ok(())
    }

    fn read_link(&self, ino: Ino) -> Result<Vec<u8>> {
        self.image.read_link(&self.inode(ino)?)
    }

    fn read<'a>(
        &'a self,
        ino: Ino,
        offset: u64,
        len: u64,
        access: Access,
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        read_file(&self.image, self.nid(ino), offset, len, access, scratch)
    }

    fn prefetch(&self, ino: Ino, offset: u64, len: u64) {
        prefetch_file(&self.image, self.nid(ino), offset, len);
    }

    fn xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        self.overlay_xattrs
            .get(&self.image, &self.inode(ino)?, name)
    }

    fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.overlay_xattrs.names(&self.image, &self.inode(ino)?)
    }

    fn stats(&self) -> FsStats {
        image_stats(&self.image)
    }

    fn release_mapped(&self) {
        self.image.release_mapped();
    }

    fn start_serving(&self) {
        self.image.start_verify_ahead();
    }

    fn verity_stats(&self) -> Vec<(std::path::PathBuf, crate::verity::VerityStats)> {
        self.image.verity_stats()
    }
}

/// Blocks of an image and its extra devices, and its inode count.
pub(crate) fn image_stats(image: &Image) -> FsStats {
    let sb = image.superblock();
    let extra = image.devices().extra.iter().map(|d| d.blocks);
    FsStats {
        blocks: extra.fold(sb.blocks, u64::saturating_add),
        inodes: sb.inos,
        block_size: image.block_size() as u32,
    }
}

/// The totals of several images, in `block_size` blocks (the numbers are
/// the images' claims, so the sums saturate).
pub(crate) fn total_stats<'a>(images: impl Iterator<Item = &'a Image>, block_size: u32) -> FsStats {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    for image in images {
        let s = image_stats(image);
        bytes = bytes.saturating_add(s.blocks.saturating_mul(u64::from(s.block_size)));
        inodes = inodes.saturating_add(s.inodes);
    }
    FsStats {
        blocks: bytes / u64::from(block_size.max(1)),
        inodes,
        block_size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_overlay_xattrs_rename_and_hide() {
        let name = |n: &str| Some(n.as_bytes().to_vec());
        let m = OverlayXattrs::User;
        // Stored name, and how it is presented (None: hidden).
        for (stored, presented) in [
            ("trusted.overlay.opaque", name("user.overlay.opaque")),
            ("user.overlay.opaque", None),
            ("user.comment", name("user.comment")),
            // Redirects and metacopy never reach the overlayfs above.
            ("trusted.overlay.redirect", None),
            ("trusted.overlay.origin", name("user.overlay.origin")),
        ] {
            assert_eq!(
                m.presented_name(stored.as_bytes().to_vec()),
                presented,
                "{stored}"
            );
        }
        // Presented name, and the stored one it reads (None: none).
        for (presented, stored) in [
            ("user.overlay.opaque", name("trusted.overlay.opaque")),
            ("trusted.overlay.opaque", None),
            ("user.overlay.redirect", None),
            ("security.capability", name("security.capability")),
        ] {
            assert_eq!(m.stored_name(presented.as_bytes()), stored, "{presented}");
        }
        let t = OverlayXattrs::Trusted;
        assert_eq!(
            t.stored_name(b"trusted.overlay.opaque"),
            name("trusted.overlay.opaque")
        );
    }
}
