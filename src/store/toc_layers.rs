//! `store add` of TOC layers (zstd:chunked, eStargz) and the store's index
//! of them by TOC digest, which podman 5 looks layers up by.
//!
//! A TOC layer is added the simple way: the TOC is read and checked against
//! the TOC digest, the whole blob is converted (in the staging directory)
//! as any tar.zst or tar.gz (both formats are valid streams of the tar),
//! every file's frames or members are decoded and checked against the TOC
//! (at most twice the tar's size decoded in all), and the resulting tree
//! is checked against the TOC entry by entry, both ways. Only then is the
//! layer published, with `toc-digest` in its `info`, and
//! `STORE/toc/<TOC digest>` written: a file holding the layer's
//! compressed digest.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::layout::{self, LayerInfo, Staging};
use crate::error::{Error, Result};
use crate::format::{FileType, OPAQUE_MARKER, OVERLAY_OPAQUE, TRUSTED_OVERLAY, WHITEOUT_PREFIX};
use crate::reader::{FileKind, Image, Inode, OpenOptions, WalkEntry, WalkVisitor};
use crate::safe_fs::{self, OutputDir};
use crate::toc::{self, EntryType, Toc, TocEntry};

/// The store's directory of TOC digests: `toc/<TOC digest>` holds the
/// compressed digest of the layer.
pub const TOC_DIR: &str = "toc";

/// How much file data the tree check hashes between unmapping what it read.
const RELEASE_EVERY: u64 = 16 << 20;

/// Largest pointer file read.
const MAX_POINTER_SIZE: u64 = 256;

/// Adds the TOC layer `blob`, whose TOC digest must be `toc_digest` (see
/// the module doc). Nothing is stored unless every check passes.
pub fn add(store: &Path, blob: &Path, toc_digest: &str, progress: bool) -> Result<LayerInfo> {
    let format = toc::detect(blob)?.ok_or_else(|| {
        Error::Invalid(format!(
            "{}: neither zstd:chunked nor eStargz (no footer), so a TOC digest does not apply",
            blob.display()
        ))
    })?;
    let toc = toc::read(blob, format, toc_digest)?;
    std::fs::create_dir_all(store).map_err(|e| Error::io(store, e))?;
    let store_dir = OutputDir::open(store).map_err(|e| Error::io(store, e))?;
    let staging = Staging::create(&store_dir, layout::ADD_PREFIX)?;
    let report = layout::convert_layer(&staging, blob, None, progress)
        .map_err(|e| Error::Invalid(format!("converting {}: {e}", blob.display())))?;
    // An honest TOC's files add up to less than the tar (chunks sharing
    // an eStargz member are decoded once); twice that bounds the work.
    toc::check_frames(blob, &toc, report.tar_size.saturating_mul(2))?;
    let image_path = staging.dir.path().join(layout::IMAGE_FILE);
    let image = Image::open(&image_path, &OpenOptions::default())?;
    check_tree(&image, &toc).map_err(|e| {
        Error::Invalid(format!(
            "{}: the tar disagrees with its TOC: {e}",
            blob.display()
        ))
    })?;
    drop(image);
    let (compressed_digest, diff_digest) = layout::digests_of(&report, blob)?;
    let info = LayerInfo {
        compressed_digest,
        compressed_size: layout::keep_blob(&staging, blob)?,
        diff_digest,
        diff_size: report.tar_size,
        compression: report.compression.storage_code(),
        toc_digest: Some(toc_digest.to_string()),
    };
    layout::write_info(&staging, &info)?;
    if !staging.publish(&info.compressed_digest)? {
        // The same blob, added before: the same tar, so the same TOC.
        let dir = layout::layer_dir(store, &info.compressed_digest);
        match layout::read_info(&dir)?.toc_digest {
            Some(d) if d == toc_digest => {}
            Some(d) => {
                return Err(Error::Invalid(format!(
                    "{}: its info in the store says TOC digest {d}, not {toc_digest}",
                    dir.display()
                )))
            }
            None => rewrite_info(&store_dir, &info)?,
        }
        tracing::info!(
            "{} is already in {}",
            info.compressed_digest,
            store.display()
        );
    }
    write_pointer(&store_dir, toc_digest, &info.compressed_digest)?;
    Ok(info)
}

/// Replaces the `info` of the layer added before without a TOC digest
/// (the blob's TOC was just checked against its tree).
fn rewrite_info(store: &OutputDir, info: &LayerInfo) -> Result<()> {
    let path = store.path().join(&info.compressed_digest);
    let fd = safe_fs::open_dir_at(store.fd(), info.compressed_digest.as_ref())
        .map_err(|e| Error::io(&path, e))?;
    let dir = OutputDir::from_fd(fd, path.clone());
    let json = serde_json::to_vec(info).map_err(|e| Error::Invalid(e.to_string()))?;
    let temp = dir.temp_file().map_err(|e| Error::io(&path, e))?;
    temp.file()
        .write_all(&json)
        .map_err(|e| Error::io(&path, e))?;
    temp.persist(layout::INFO_FILE.as_ref(), 0o666 & !safe_fs::umask())
        .map_err(|e| Error::io(path.join(layout::INFO_FILE), e))
}

/// Records that TOC digest `toc_digest` names layer `digest`.
pub(crate) fn write_pointer(store: &OutputDir, toc_digest: &str, digest: &str) -> Result<()> {
    let dir = super::images::subdir(store, TOC_DIR)?;
    let path = dir.path().to_path_buf();
    let temp = dir.temp_file().map_err(|e| Error::io(&path, e))?;
    let mut file = temp.file();
    file.write_all(digest.as_bytes())
        .map_err(|e| Error::io(&path, e))?;
    temp.persist(toc_digest.as_ref(), 0o666 & !safe_fs::umask())
        .map_err(|e| Error::io(path.join(toc_digest), e))
}

/// The compressed digest of the layer whose TOC digest is `toc_digest`, if
/// the store records one (a malformed record is logged and ignored).
pub(crate) fn resolve(store: &Path, toc_digest: &str) -> Option<String> {
    use std::io::Read;
    let path = store.join(TOC_DIR).join(toc_digest);
    let file = std::fs::File::open(&path).ok()?;
    let mut text = String::new();
    if let Err(e) = file.take(MAX_POINTER_SIZE).read_to_string(&mut text) {
        tracing::error!("{}: {e}", path.display());
        return None;
    }
    if layout::is_layer_name(text.as_bytes()) {
        Some(text)
    } else {
        tracing::error!("{}: not a layer digest", path.display());
        None
    }
}

/// What the TOC says of each path: the last entry naming it (as in a tar,
/// a later entry replaces an earlier one).
fn by_path(toc: &Toc) -> Result<BTreeMap<String, &TocEntry>> {
    let mut map = BTreeMap::new();
    for e in toc.entries.iter().filter(|e| e.kind != EntryType::Chunk) {
        let path = e
            .path()
            .ok_or_else(|| Error::Invalid(format!("{:?}: a path with ..", e.name)))?;
        map.insert(path, e);
    }
    Ok(map)
}

/// Checks the converted tree against the TOC: every TOC entry is in the
/// tree as it says (type, mode, owner, size, target, device, file digest),
/// and every entry of the tree is in the TOC (or is a directory the TOC's
/// paths imply, or, in eStargz, the TOC itself).
fn check_tree(image: &Image, toc: &Toc) -> Result<()> {
    let map = by_path(toc)?;
    let mut hashed = 0u64;
    for (path, e) in &map {
        check_entry(image, path, e)?;
        // The pages hashed stay in the page cache, not in this process.
        hashed = hashed.saturating_add(e.size);
        if hashed > RELEASE_EVERY {
            image.release_mapped();
            hashed = 0;
        }
    }
    let mut implied = BTreeSet::new();
    for path in map.keys() {
        let mut rest = path.as_str();
        while let Some((parent, _)) = rest.rsplit_once('/') {
            implied.insert(parent.to_string());
            rest = parent;
        }
    }
    let mut visitor = Listed {
        map: &map,
        implied: &implied,
        estargz: toc.format == toc::Format::Estargz,
    };
    image.walk(image.root()?, b"", &mut visitor)
}

/// The tree's side of [`check_tree`].
struct Listed<'a> {
    map: &'a BTreeMap<String, &'a TocEntry>,
    implied: &'a BTreeSet<String>,
    estargz: bool,
}

impl WalkVisitor for Listed<'_> {
    fn visit(&mut self, entry: &WalkEntry) -> Result<()> {
        let path = String::from_utf8_lossy(entry.path.strip_prefix(b"/").unwrap_or(&entry.path))
            .into_owned();
        if path.is_empty() || self.map.contains_key(&path) {
            return Ok(());
        }
        let whiteout = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        let is_whiteout =
            entry.inode.kind == FileKind::CharDevice(0, 0) && self.map.contains_key(&whiteout);
        let is_implied = entry.inode.is_dir() && self.implied.contains(&path);
        let is_toc = self.estargz && path == toc::estargz::TOC_NAME;
        if is_whiteout || is_implied || is_toc {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "{path:?} is in the tar but not in the TOC"
        )))
    }
}

/// Checks one TOC entry against the tree.
fn check_entry(image: &Image, path: &str, e: &TocEntry) -> Result<()> {
    let bad = |what: String| Error::Invalid(format!("{path:?}: {what}"));
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    if name.as_bytes() == OPAQUE_MARKER {
        let parent = image
            .resolve(dir.as_bytes())
            .map_err(|_| bad("no directory".into()))?;
        if image.xattr(&parent, OVERLAY_OPAQUE)?.is_none() {
            return Err(bad("its directory is not opaque".into()));
        }
        return Ok(());
    }
    if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX) {
        let target = format!("{dir}/{}", String::from_utf8_lossy(hidden));
        let inode = image
            .resolve(target.as_bytes())
            .map_err(|_| bad("no whiteout".into()))?;
        if inode.kind != FileKind::CharDevice(0, 0) {
            return Err(bad("not a whiteout in the tree".into()));
        }
        return Ok(());
    }
    let inode = image
        .resolve(path.as_bytes())
        .map_err(|_| bad("not in the tar".into()))?;
    if e.kind == EntryType::Hardlink {
        let target = toc::entry::normalize(&e.link_name)
            .ok_or_else(|| bad("link to a path with ..".into()))?;
        let source = image
            .resolve(target.as_bytes())
            .map_err(|_| bad(format!("link to {target:?}, not in the tar")))?;
        if source.nid != inode.nid {
            return Err(bad(format!("not a hard link to {target:?} in the tar")));
        }
        return Ok(());
    }
    let kind = match e.kind {
        EntryType::Dir => FileType::Directory,
        EntryType::Reg => FileType::Regular,
        EntryType::Symlink => FileType::Symlink,
        EntryType::Char => FileType::CharDevice,
        EntryType::Block => FileType::BlockDevice,
        EntryType::Fifo => FileType::Fifo,
        EntryType::Hardlink | EntryType::Chunk => return Ok(()),
    };
    if inode.kind.file_type() != kind {
        return Err(bad(format!(
            "{:?} in the TOC, {:?} in the tar",
            e.kind,
            inode.kind.file_type()
        )));
    }
    let (uid, gid) = (u64::from(inode.uid), u64::from(inode.gid));
    if inode.mode & 0o7777 != (e.mode & 0o7777) as u32 || (uid, gid) != (e.uid, e.gid) {
        return Err(bad(format!(
            "mode {:o} owner {}:{} in the TOC, {:o} {uid}:{gid} in the tar",
            e.mode & 0o7777,
            e.uid,
            e.gid,
            inode.mode & 0o7777
        )));
    }
    check_xattrs(image, &inode, e).map_err(bad)?;
    match e.kind {
        EntryType::Reg => check_data(image, &inode, e).map_err(bad),
        EntryType::Symlink if image.read_link(&inode)? != e.link_name.as_bytes() => Err(bad(
            format!("link target differs from the TOC's {:?}", e.link_name),
        )),
        EntryType::Char | EntryType::Block => {
            let (major, minor) = inode.kind.rdev();
            if (u64::from(major), u64::from(minor)) != (e.dev_major, e.dev_minor) {
                return Err(bad("device numbers differ from the TOC's".into()));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The entry's xattrs in the tree are the TOC's (values base64 there);
/// overlayfs's own (`trusted.overlay.*`, which conversion adds for
/// whiteouts and opaque directories) are left out on both sides.
fn check_xattrs(image: &Image, inode: &Inode, e: &TocEntry) -> std::result::Result<(), String> {
    use base64::Engine as _;
    let ours = |name: &[u8]| name.starts_with(TRUSTED_OVERLAY);
    let mut toc = BTreeMap::new();
    for (name, value) in &e.xattrs {
        let value = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|err| format!("xattr {name:?} in the TOC is not base64: {err}"))?;
        if !ours(name.as_bytes()) {
            toc.insert(name.as_bytes().to_vec(), value);
        }
    }
    let tree: BTreeMap<Vec<u8>, Vec<u8>> = image
        .xattrs(inode)
        .map_err(|err| err.to_string())?
        .into_iter()
        .filter(|x| !ours(&x.name))
        .map(|x| (x.name, x.value))
        .collect();
    if toc != tree {
        let names = |m: &BTreeMap<Vec<u8>, Vec<u8>>| {
            m.keys()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect::<Vec<_>>()
        };
        return Err(format!(
            "xattrs {:?} in the TOC, {:?} in the tar (or their values differ)",
            names(&toc),
            names(&tree)
        ));
    }
    Ok(())
}

/// A regular file's size and digest in the tree agree with the TOC.
fn check_data(image: &Image, inode: &Inode, e: &TocEntry) -> std::result::Result<(), String> {
    if inode.size != e.size {
        return Err(format!(
            "{} bytes in the TOC, {} in the tar",
            e.size, inode.size
        ));
    }
    if e.size == 0 {
        return Ok(());
    }
    let mut hash = Sha256::new();
    let mut offset = 0u64;
    while offset < inode.size {
        let piece = image
            .read_range(inode, offset, 1 << 20)
            .map_err(|err| err.to_string())?;
        if piece.is_empty() {
            break;
        }
        hash.update(&piece);
        offset += piece.len() as u64;
    }
    let actual = toc::hex_digest(&hash.finalize());
    if actual != e.digest {
        return Err(format!(
            "data of digest {actual} in the tar, {} in the TOC",
            e.digest
        ));
    }
    Ok(())
}
