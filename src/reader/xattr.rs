//! Extended attributes (the kernel's xattr.c): inline entries after the
//! inode, shared entries in the shared xattr area, and name prefixes (the
//! built-in short ones and the image's long prefix table).

use std::borrow::Cow;
use std::ops::ControlFlow;

use crate::error::{ensure, Error, Result};
use zerocopy::little_endian::{U16, U32};
use zerocopy::FromBytes;

use crate::format::{
    read_struct, xattr_entry_size, xattr_short_prefix, XattrEntry, XattrIbodyHeader,
    COMPAT_PLAIN_XATTR_PFX, COMPAT_SHARED_EA_IN_METABOX, NAME_LEN_MAX, XATTR_ENTRY_SIZE,
    XATTR_IBODY_HEADER_SIZE, XATTR_LONG_PREFIX, XATTR_LONG_PREFIX_LEN_SIZE, XATTR_LONG_PREFIX_MASK,
    XATTR_UNIT,
};

use super::{FileKind, Image, Inode, MetaPos, MetaSpace};

/// The short-prefix index the kernel has no handler for (`lustre.`): it
/// never lists or returns such attributes.
const LUSTRE_INDEX: u8 = 5;

/// One extended attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    /// Full name, e.g. `user.comment`.
    pub name: Vec<u8>,
    /// Value bytes.
    pub value: Vec<u8>,
}

/// One entry of the long prefix table: a short prefix plus an infix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongPrefix {
    /// The short prefix index it extends.
    pub base_index: u8,
    /// The full prefix (short prefix + infix); just the infix when the
    /// base index has no short prefix (0, as for mkfs.erofs's
    /// `--xattr-inode-digest` name `erofs.fingerprint.v1`).
    pub prefix: Vec<u8>,
}

impl LongPrefix {
    /// Whether the kernel exposes attributes with this prefix: only when
    /// its base index has an xattr handler (user, the two ACLs, trusted,
    /// security). Others (0, lustre, unknown) are never listed nor
    /// returned, as the kernel's erofs_xattr_prefix() gives no prefix.
    pub fn visible(&self) -> bool {
        kernel_handles(self.base_index)
    }
}

/// Whether the kernel has an xattr handler for a short prefix index.
fn kernel_handles(index: u8) -> bool {
    index != LUSTRE_INDEX && xattr_short_prefix(index).is_some()
}

/// The loaded long prefix table.
#[derive(Debug, Default)]
pub(crate) struct Prefixes {
    list: Vec<LongPrefix>,
}

impl Prefixes {
    pub fn list(&self) -> &[LongPrefix] {
        &self.list
    }

    /// Reads the table: `count` records of `le16 len` + `{base_index, infix}`,
    /// each 4-byte aligned, in the metabox, the packed inode, or (with
    /// PLAIN_XATTR_PFX) the primary device.
    pub fn load(image: &Image) -> Result<Self> {
        let sb = image.superblock();
        let count = usize::from(sb.xattr_prefix_count);
        if count == 0 {
            return Ok(Self::default());
        }
        let source = if sb.has_compat(COMPAT_PLAIN_XATTR_PFX) {
            None
        } else {
            let inode = image.metabox.as_ref().or(image.packed.as_ref());
            Some(inode.ok_or_else(|| Error::corrupt("long xattr prefixes but no packed inode"))?)
        };
        let read = |offset: u64, len: u64| -> Result<Cow<'_, [u8]>> {
            match source {
                Some(inode) => {
                    ensure!(
                        offset.checked_add(len).is_some_and(|end| end <= inode.size),
                        "long xattr prefix table runs past its inode"
                    );
                    image.read_range(inode, offset, len)
                }
                None => image.meta(
                    MetaPos {
                        space: MetaSpace::Primary,
                        offset,
                    },
                    len,
                ),
            }
        };
        let mut pos = u64::from(sb.xattr_prefix_start) * XATTR_UNIT;
        let mut list = Vec::with_capacity(count);
        for i in 0..count {
            pos = pos.next_multiple_of(XATTR_UNIT);
            let raw = read(pos, XATTR_LONG_PREFIX_LEN_SIZE)?;
            let len = read_struct::<U16>(&raw).map_or(0, |l| u64::from(l.get()));
            ensure!(
                (1..=NAME_LEN_MAX as u64 + 1).contains(&len),
                "long xattr prefix {i} has length {len}"
            );
            let body = read(pos + XATTR_LONG_PREFIX_LEN_SIZE, len)?;
            // Any base index is accepted, as the kernel accepts it: one
            // without a handler (0 for mkfs.erofs's inode digests) only
            // hides the attributes that use the prefix.
            let base_index = body[0];
            let short = xattr_short_prefix(base_index).unwrap_or_default();
            let mut prefix = short.as_bytes().to_vec();
            prefix.extend_from_slice(&body[1..]);
            list.push(LongPrefix { base_index, prefix });
            pos += XATTR_LONG_PREFIX_LEN_SIZE + len;
        }
        Ok(Self { list })
    }
}

impl Image {
    /// Calls `f(name_prefix, name_suffix, value)` for each xattr of `inode`,
    /// inline ones first, then shared ones (the kernel's listing order).
    fn for_each_xattr<T>(
        &self,
        inode: &Inode,
        mut f: impl FnMut(&[u8], &[u8], &[u8]) -> ControlFlow<T>,
    ) -> Result<Option<T>> {
        let size = inode.xattr_size();
        if size == 0 {
            return Ok(None);
        }
        let corrupt = |what: &str| Error::corrupt(format!("inode {}: {what}", inode.nid));
        let start = inode.pos.add(inode.inode_size())?;
        let area = self.meta(start, size)?;
        let header: &XattrIbodyHeader =
            read_struct(&area).ok_or_else(|| corrupt("short xattr header"))?;
        let shared = u64::from(header.h_shared_count);
        let mut offset = XATTR_IBODY_HEADER_SIZE + XATTR_UNIT * shared;
        if offset > size {
            return Err(corrupt("shared xattr ids overrun the xattr area"));
        }
        while offset < size {
            let (entry_size, flow) = self.visit_entry(&area[offset as usize..], &mut f)?;
            if let ControlFlow::Break(t) = flow {
                return Ok(Some(t));
            }
            offset += entry_size;
        }
        let shared_space = if self.sb.has_compat(COMPAT_SHARED_EA_IN_METABOX) {
            MetaSpace::Metabox
        } else {
            MetaSpace::Primary
        };
        let shared_base = self
            .sb
            .xattr_blkaddr
            .checked_shl(u32::from(self.sb.block_bits))
            .ok_or_else(|| corrupt("shared xattr area overflows"))?;
        let ids = &area[XATTR_IBODY_HEADER_SIZE as usize..];
        for id in <[U32]>::ref_from_prefix_with_elems(ids, shared as usize)
            .map_err(|_| corrupt("shared xattr ids overrun the xattr area"))?
            .0
        {
            let pos = MetaPos {
                space: shared_space,
                offset: shared_base + u64::from(id.get()) * XATTR_UNIT,
            };
            let head = self.meta(pos, XATTR_ENTRY_SIZE)?;
            let entry: &XattrEntry =
                read_struct(&head).ok_or_else(|| corrupt("short xattr entry"))?;
            let len = xattr_entry_size(entry.e_name_len, entry.e_value_size.get());
            let bytes = self.meta(pos, len)?;
            if let (_, ControlFlow::Break(t)) = self.visit_entry(&bytes, &mut f)? {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    /// Decodes the entry at the start of `bytes` and passes it to `f`;
    /// returns the entry's padded size. Entries the kernel never shows are
    /// skipped: a short prefix it has no handler for, a long prefix whose
    /// base index it has no handler for or that is not in the table.
    fn visit_entry<T>(
        &self,
        bytes: &[u8],
        f: &mut impl FnMut(&[u8], &[u8], &[u8]) -> ControlFlow<T>,
    ) -> Result<(u64, ControlFlow<T>)> {
        let entry: &XattrEntry =
            read_struct(bytes).ok_or_else(|| Error::corrupt("xattr entry overruns its area"))?;
        let name_len = usize::from(entry.e_name_len);
        let value_len = usize::from(entry.e_value_size.get());
        let size = xattr_entry_size(entry.e_name_len, entry.e_value_size.get());
        let body_end = XATTR_ENTRY_SIZE as usize + name_len + value_len;
        ensure!(body_end <= bytes.len(), "xattr entry overruns its area");
        let suffix = &bytes[XATTR_ENTRY_SIZE as usize..XATTR_ENTRY_SIZE as usize + name_len];
        let value = &bytes[XATTR_ENTRY_SIZE as usize + name_len..body_end];
        let index = entry.e_name_index;
        let prefix: &[u8] = if index & XATTR_LONG_PREFIX != 0 {
            let n = usize::from(index & XATTR_LONG_PREFIX_MASK);
            match self.prefixes.list().get(n) {
                Some(long) if long.visible() => &long.prefix,
                _ => return Ok((size, ControlFlow::Continue(()))),
            }
        } else {
            match xattr_short_prefix(index) {
                Some(p) if kernel_handles(index) => p.as_bytes(),
                _ => return Ok((size, ControlFlow::Continue(()))),
            }
        };
        Ok((size, f(prefix, suffix, value)))
    }

    /// Every xattr of `inode`, names complete, in the kernel's listing order.
    pub fn xattrs(&self, inode: &Inode) -> Result<Vec<Xattr>> {
        let mut list = Vec::new();
        self.for_each_xattr(inode, |prefix, suffix, value| {
            let mut name = Vec::with_capacity(prefix.len() + suffix.len());
            name.extend_from_slice(prefix);
            name.extend_from_slice(suffix);
            list.push(Xattr {
                name,
                value: value.to_vec(),
            });
            ControlFlow::<()>::Continue(())
        })?;
        Ok(list)
    }

    /// The xattrs of `inode` that a mount lets anyone read: [`Image::xattrs`]
    /// without `user.*` ones on anything but regular files and directories.
    /// The kernel lists those (erofs does not filter its listing) but the
    /// VFS refuses to read them (ENODATA) and to set them on such files
    /// (EPERM), so no tree on Linux, mounted or extracted, can show them.
    pub fn readable_xattrs(&self, inode: &Inode) -> Result<Vec<Xattr>> {
        let mut list = self.xattrs(inode)?;
        if !matches!(inode.kind, FileKind::Regular | FileKind::Directory) {
            list.retain(|x| !x.name.starts_with(b"user."));
        }
        Ok(list)
    }

    /// The value of the xattr `name` of `inode`, if present.
    pub fn xattr(&self, inode: &Inode, name: &[u8]) -> Result<Option<Vec<u8>>> {
        self.for_each_xattr(inode, |prefix, suffix, value| {
            if name.len() == prefix.len() + suffix.len()
                && name.starts_with(prefix)
                && name.ends_with(suffix)
            {
                ControlFlow::Break(value.to_vec())
            } else {
                ControlFlow::Continue(())
            }
        })
    }
}
