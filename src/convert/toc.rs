//! A TOC layer's tree from its TOC alone (no tar read): each entry handed
//! to the same [`TreeBuilder`] the tar front end uses (so whiteouts, opaque
//! directories, hard links, implied parents and replaced entries come out
//! as a conversion of the layer's tar makes them), regular files pointing
//! at their slot of the layer's virtual device ([`crate::lazy::TocMap`]).

use std::collections::BTreeMap;
use std::fs::File;

use base64::Engine as _;

use super::pax::Attrs;
use super::tree::{Content, TreeBuilder};
use crate::error::{Error, Result};
use crate::format::encode_rdev;
use crate::lazy::TocMap;
use crate::mkfs::{BuildOptions, DataSource, FileData, ImageBuilder, Tree};
use crate::toc::{EntryType, Toc, TocEntry};

/// Block size of the metadata image (files start on slot boundaries of
/// the device, a multiple of it).
const BLOCK_BITS: u8 = 12;

/// The tree of `toc`, its files in `map`'s device, OCI whiteouts made
/// overlayfs ones.
pub fn toc_tree(toc: &Toc, map: &TocMap) -> Result<Tree> {
    let mut builder = TreeBuilder::new(true, None);
    for (index, e) in toc.entries.iter().enumerate() {
        if e.kind == EntryType::Chunk {
            continue;
        }
        let fail = |what: String| Error::Invalid(format!("TOC entry {:?}: {what}", e.name));
        let content = content(e, index, map).map_err(fail)?;
        let attrs = attrs(e).map_err(fail)?;
        builder
            .add(e.name.as_bytes(), content, attrs)
            .map_err(fail)?;
    }
    Ok(builder.finish())
}

/// Writes the metadata image of `toc` into `out` (device 1: `map`'s
/// device); `uuid` is the volume's.
pub fn write_image(toc: &Toc, map: &TocMap, out: File, uuid: [u8; 16]) -> Result<()> {
    let tree = toc_tree(toc, map)?;
    let builder = ImageBuilder::new(out, BLOCK_BITS).map_err(|e| Error::Invalid(e.to_string()))?;
    let options = BuildOptions {
        source: DataSource::Tar { size: map.size },
        uuid,
        end_align: 0,
    };
    builder
        .finish(&tree, &options)
        .map_err(|e| Error::Invalid(format!("the TOC's tree: {e}")))?;
    Ok(())
}

/// What entry `index` holds.
fn content(e: &TocEntry, index: usize, map: &TocMap) -> std::result::Result<Content, String> {
    let device = || -> std::result::Result<u32, String> {
        let major = u32::try_from(e.dev_major).map_err(|_| "device major past 32 bits")?;
        let minor = u32::try_from(e.dev_minor).map_err(|_| "device minor past 32 bits")?;
        Ok(encode_rdev(major, minor))
    };
    Ok(match e.kind {
        EntryType::Reg if e.size == 0 => Content::File(FileData { size: 0, offset: 0 }),
        EntryType::Reg => Content::File(FileData {
            size: e.size,
            offset: map
                .file_offset(index)
                .ok_or("a file with no place on the device")?,
        }),
        EntryType::Dir => Content::Dir,
        EntryType::Symlink => Content::Symlink(e.link_name.as_bytes().to_vec()),
        EntryType::Hardlink => Content::HardLink(e.link_name.as_bytes().to_vec()),
        EntryType::Char => Content::Char(device()?),
        EntryType::Block => Content::Block(device()?),
        EntryType::Fifo => Content::Fifo,
        EntryType::Chunk => return Err("a chunk where a file was expected".into()),
    })
}

/// The entry's attributes: mode, owner, mtime, xattrs (base64 in the TOC).
fn attrs(e: &TocEntry) -> std::result::Result<Attrs, String> {
    let (mtime, mtime_nsec) = match e.modtime.as_str() {
        "" => (0, 0),
        text => e
            .mtime()
            .ok_or_else(|| format!("modtime {text:?} is not RFC 3339"))?,
    };
    let mut xattrs = BTreeMap::new();
    for (name, value) in &e.xattrs {
        let value = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|err| format!("xattr {name:?} is not base64: {err}"))?;
        xattrs.insert(name.as_bytes().to_vec(), value);
    }
    Ok(Attrs {
        mode: (e.mode & 0o7777) as u32,
        uid: u32::try_from(e.uid).map_err(|_| "uid past 32 bits")?,
        gid: u32::try_from(e.gid).map_err(|_| "gid past 32 bits")?,
        mtime,
        mtime_nsec,
        xattrs,
    })
}
