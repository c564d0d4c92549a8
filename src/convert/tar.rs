//! Tar entries to a [`Tree`], with the semantics of extracting the archive
//! (and of `mkfs.erofs --tar`): later entries replace earlier ones, parents
//! that are not listed are created, hard links name earlier entries.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use base64::Engine;
use tar::EntryType;

use super::ConvertError;
use crate::build::{xattr, FileData, ImageBuilder, Node, NodeData, NodeId, Tree};
use crate::format::{
    encode_rdev, NAME_LEN_MAX, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG,
};

/// Where regular files' data goes while the tar is read.
pub enum DataSink<'a> {
    /// Left in the tar: files point at their offset in it.
    Index,
    /// Copied into the image being built.
    Full(&'a mut ImageBuilder),
}

/// Options of the tar front end.
#[derive(Debug, Clone, Copy, Default)]
pub struct TarOptions {
    /// Turn OCI whiteouts into overlayfs ones (`.wh.NAME` → char device
    /// 0:0, `.wh..wh..opq` → `trusted.overlay.opaque=y`).
    pub aufs: bool,
    /// Modification time of the root and of directories the tar implies
    /// without listing; `None`: the newest mtime in the tar.
    pub implied_mtime: Option<i64>,
}

/// The overlayfs attributes `--aufs` sets.
const OVERLAY_OPAQUE: &[u8] = b"trusted.overlay.opaque";
const OVERLAY_ORIGIN: &[u8] = b"trusted.overlay.origin";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Base64 as libarchive writes it (padding optional).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Attributes of one entry after its PAX records are applied.
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// PAX records that apply to every later entry (`g` headers).
#[derive(Default)]
struct Globals {
    records: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Reads every entry of the tar stream `reader` into a tree.
pub fn read_tar(
    reader: impl Read,
    options: TarOptions,
    mut sink: DataSink<'_>,
) -> Result<Tree, ConvertError> {
    let mut archive = tar::Archive::new(reader);
    let mut tree = Tree::new(0o777, 0, 0, 0);
    // Directories no entry has described (yet): they get `implied_mtime`.
    let mut implied = HashSet::from([Tree::ROOT]);
    let mut newest = i64::MIN;
    let mut globals = Globals::default();
    let mut previous: Option<(String, u64)> = None;
    let mut warned_absolute = false;
    let entries = archive
        .entries()
        .map_err(|e| ConvertError::tar(0, None, e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| match &previous {
            Some((path, at)) => ConvertError::tar(
                *at,
                Some(path.clone()),
                format!("{e} (in or after this entry)"),
            ),
            None => ConvertError::tar(0, None, e.to_string()),
        })?;
        let at = entry.raw_header_position();
        let raw_path = c_string(entry.path_bytes().into_owned());
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        previous = Some((shown.clone(), at));
        let fail = |message: String| ConvertError::tar(at, Some(shown.clone()), message);
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            globals
                .records
                .extend(pax_records(&mut entry).map_err(|e| fail(e.to_string()))?);
            continue;
        }
        if kind == EntryType::new(b'V') {
            tracing::info!("tar: skipping the volume label at byte {at}");
            continue;
        }
        if kind.is_gnu_sparse() {
            return Err(fail(
                "GNU sparse files are not supported (re-create the tar without --sparse)".into(),
            ));
        }
        let attrs = attributes(&mut entry, &globals).map_err(fail)?;
        newest = newest.max(attrs.mtime);
        if raw_path.first() == Some(&b'/') && !warned_absolute {
            tracing::warn!("tar: '{shown}': leading '/' removed from absolute paths");
            warned_absolute = true;
        }
        let parts = components(&raw_path).map_err(fail)?;
        let Some((name, parents)) = parts.split_last() else {
            // The root itself ("./").
            if kind != EntryType::Directory {
                return Err(fail("the root of the tar is not a directory".into()));
            }
            set_attrs(tree.node_mut(Tree::ROOT), attrs);
            implied.remove(&Tree::ROOT);
            continue;
        };
        let parent = make_parents(&mut tree, parents, &mut implied).map_err(fail)?;
        let name = name.to_vec();

        if options.aufs && name == OPAQUE_MARKER {
            tree.node_mut(parent)
                .xattrs
                .insert(OVERLAY_OPAQUE.to_vec(), b"y".to_vec());
            continue;
        }
        if options.aufs && name.starts_with(WHITEOUT_PREFIX) {
            let hidden = name[WHITEOUT_PREFIX.len()..].to_vec();
            if hidden.is_empty() {
                return Err(fail("whiteout without a name".into()));
            }
            // As mkfs.erofs: a 0:0 character device with no permissions,
            // and the directory marked so overlayfs does not show it as is.
            let whiteout = tree.add(Node {
                mode: S_IFCHR,
                uid: attrs.uid,
                gid: attrs.gid,
                mtime: attrs.mtime,
                mtime_nsec: attrs.mtime_nsec,
                xattrs: BTreeMap::new(),
                data: NodeData::Device(0),
            });
            tree.link(parent, hidden, whiteout);
            tree.node_mut(parent)
                .xattrs
                .entry(OVERLAY_ORIGIN.to_vec())
                .or_default();
            continue;
        }

        let data = match kind {
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.size();
                let data = match &mut sink {
                    DataSink::Index => FileData {
                        size,
                        offset: entry.raw_file_position(),
                    },
                    DataSink::Full(builder) => builder
                        .add_data(&mut entry, size)
                        .map_err(|e| fail(format!("reading its data: {e}")))?,
                };
                NodeData::File(data)
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| fail("hard link without a target".into()))?
                    .into_owned();
                let target = c_string(target);
                hard_link(&mut tree, parent, name, &target).map_err(fail)?;
                continue;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| fail("symbolic link without a target".into()))?
                    .into_owned();
                let target = c_string(target);
                if target.is_empty() || target.len() >= 4096 {
                    return Err(fail(format!(
                        "symbolic link target of {} bytes",
                        target.len()
                    )));
                }
                NodeData::Symlink(target)
            }
            EntryType::Char | EntryType::Block => {
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                NodeData::Device(encode_rdev(major, minor))
            }
            EntryType::Directory => NodeData::Dir(BTreeMap::new()),
            EntryType::Fifo => NodeData::Special,
            other => {
                return Err(fail(format!(
                    "entry type '{}' is not supported",
                    other.as_byte().escape_ascii()
                )))
            }
        };
        let file_type = match kind {
            EntryType::Symlink => S_IFLNK,
            EntryType::Char => S_IFCHR,
            EntryType::Block => S_IFBLK,
            EntryType::Directory => S_IFDIR,
            EntryType::Fifo => S_IFIFO,
            _ => S_IFREG,
        };
        let mut attrs = Attrs {
            mode: file_type | (attrs.mode & !S_IFMT),
            ..attrs
        };
        if !matches!(data, NodeData::File(_) | NodeData::Dir(_)) {
            drop_user_xattrs(&mut attrs.xattrs, &shown);
        }
        match tree.child(parent, &name) {
            // A directory listed again (or after its content): new
            // attributes, same entries.
            Some(existing) if tree.node(existing).is_dir() && matches!(data, NodeData::Dir(_)) => {
                set_attrs(tree.node_mut(existing), attrs);
                implied.remove(&existing);
            }
            _ => {
                let node = tree.add(Node {
                    mode: attrs.mode,
                    uid: attrs.uid,
                    gid: attrs.gid,
                    mtime: attrs.mtime,
                    mtime_nsec: attrs.mtime_nsec,
                    xattrs: attrs.xattrs,
                    data,
                });
                tree.link(parent, name, node);
            }
        }
    }
    let implied_mtime =
        options
            .implied_mtime
            .unwrap_or(if newest == i64::MIN { 0 } else { newest });
    for id in implied {
        tree.node_mut(id).mtime = implied_mtime;
    }
    Ok(tree)
}

/// A path's components: empty and `.` ones dropped, a leading `/` ignored;
/// `..` is refused (it could point outside the tree).
fn components(path: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut parts = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(
                    "a '..' component in the path (entries must stay inside the layer)".into(),
                )
            }
            _ if part.len() > NAME_LEN_MAX => {
                return Err(format!(
                    "a path component of {} bytes (at most {NAME_LEN_MAX})",
                    part.len()
                ))
            }
            _ => parts.push(part),
        }
    }
    Ok(parts)
}

/// The directory `parents` names, created (as `mkfs.erofs` does: mode 0755
/// plus the parent's group/other write bits, the parent's owner) where the
/// tar does not list it.
fn make_parents(
    tree: &mut Tree,
    parents: &[&[u8]],
    implied: &mut HashSet<NodeId>,
) -> Result<NodeId, String> {
    let mut dir = Tree::ROOT;
    for &part in parents {
        dir = match tree.child(dir, part) {
            Some(child) if tree.node(child).is_dir() => child,
            Some(_) => {
                return Err(format!(
                    "'{}' in its path is not a directory",
                    String::from_utf8_lossy(part)
                ))
            }
            None => {
                let parent = tree.node(dir);
                let node = Node {
                    mode: S_IFDIR | 0o755 | (parent.mode & 0o022),
                    uid: parent.uid,
                    gid: parent.gid,
                    mtime: parent.mtime,
                    mtime_nsec: parent.mtime_nsec,
                    xattrs: BTreeMap::new(),
                    data: NodeData::Dir(BTreeMap::new()),
                };
                let id = tree.add(node);
                tree.link(dir, part.to_vec(), id);
                implied.insert(id);
                id
            }
        };
    }
    Ok(dir)
}

/// Links `name` in `parent` to the node an earlier entry made at `target`.
fn hard_link(tree: &mut Tree, parent: NodeId, name: Vec<u8>, target: &[u8]) -> Result<(), String> {
    let shown = String::from_utf8_lossy(target);
    let mut node = Tree::ROOT;
    for part in components(target)? {
        node = tree
            .child(node, part)
            .ok_or_else(|| format!("hard link to '{shown}', which is not an earlier entry"))?;
    }
    if tree.node(node).is_dir() {
        return Err(format!("hard link to '{shown}', a directory"));
    }
    tree.link(parent, name, node);
    Ok(())
}

fn set_attrs(node: &mut Node, attrs: Attrs) {
    node.mode = (node.mode & S_IFMT) | (attrs.mode & !S_IFMT);
    node.uid = attrs.uid;
    node.gid = attrs.gid;
    node.mtime = attrs.mtime;
    node.mtime_nsec = attrs.mtime_nsec;
    // Attributes set by whiteouts and opaque markers stay.
    for (name, value) in attrs.xattrs {
        node.xattrs.insert(name, value);
    }
}

/// The PAX records of an entry (its own `x` headers, or a `g` header's).
fn pax_records<R: Read>(entry: &mut tar::Entry<'_, R>) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut records = Vec::new();
    if let Some(extensions) = entry.pax_extensions()? {
        for record in extensions {
            let record = record?;
            records.push((record.key_bytes().to_vec(), record.value_bytes().to_vec()));
        }
    }
    Ok(records)
}

/// An entry's attributes: its header, then global PAX records, then its own.
fn attributes<R: Read>(entry: &mut tar::Entry<'_, R>, globals: &Globals) -> Result<Attrs, String> {
    let header = entry.header();
    let number = |value: std::io::Result<u64>, field: &str| {
        value.map_err(|e| format!("bad {field} field: {e}"))
    };
    let mut attrs = Attrs {
        mode: number(header.mode().map(u64::from), "mode")? as u32 & 0o7777,
        uid: u32::try_from(number(header.uid(), "uid")?)
            .map_err(|_| "uid past 32 bits".to_string())?,
        gid: u32::try_from(number(header.gid(), "gid")?)
            .map_err(|_| "gid past 32 bits".to_string())?,
        mtime: i64::try_from(number(header.mtime(), "mtime")?)
            .map_err(|_| "mtime out of range".to_string())?,
        mtime_nsec: 0,
        xattrs: BTreeMap::new(),
    };
    let own = pax_records(entry).map_err(|e| format!("bad PAX header: {e}"))?;
    for (key, value) in globals.records.iter().chain(own.iter()) {
        apply_pax(&mut attrs, key, value)?;
    }
    Ok(attrs)
}

/// Applies one PAX record to `attrs` (path, linkpath and size are the tar
/// reader's business).
fn apply_pax(attrs: &mut Attrs, key: &[u8], value: &[u8]) -> Result<(), String> {
    let text = || String::from_utf8_lossy(value).into_owned();
    let id = |field: &str| -> Result<u32, String> {
        text()
            .trim()
            .parse()
            .map_err(|_| format!("bad PAX {field} '{}'", text()))
    };
    match key {
        b"uid" => attrs.uid = id("uid")?,
        b"gid" => attrs.gid = id("gid")?,
        b"mtime" => {
            (attrs.mtime, attrs.mtime_nsec) =
                parse_pax_time(&text()).ok_or_else(|| format!("bad PAX mtime '{}'", text()))?;
        }
        _ => {
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                add_xattr(attrs, name.to_vec(), value.to_vec());
            } else if let Some(name) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
                // libarchive: the name %-escaped, the value base64.
                let name = percent_decode(name);
                let value = BASE64.decode(value.trim_ascii()).map_err(|_| {
                    format!(
                        "bad base64 value of PAX record {}",
                        String::from_utf8_lossy(key)
                    )
                })?;
                add_xattr(attrs, name, value);
            }
        }
    }
    Ok(())
}

/// Linux keeps user.* attributes on regular files and directories only (a
/// read elsewhere gives ENODATA, extraction cannot set them): they are left
/// out, with a warning, rather than stored where no one can read them.
fn drop_user_xattrs(xattrs: &mut BTreeMap<Vec<u8>, Vec<u8>>, path: &str) {
    xattrs.retain(|name, _| {
        let keep = !name.starts_with(b"user.");
        if !keep {
            tracing::warn!(
                "'{path}': xattr '{}' left out: user.* attributes exist only on files and directories",
                String::from_utf8_lossy(name)
            );
        }
        keep
    });
}

/// Records an xattr, or logs why it is left out.
fn add_xattr(attrs: &mut Attrs, name: Vec<u8>, value: Vec<u8>) {
    match xattr::check(&name, &value) {
        Ok(()) => {
            attrs.xattrs.insert(name, value);
        }
        Err(why) => tracing::warn!("xattr '{}' left out: {why}", String::from_utf8_lossy(&name)),
    }
}

/// `%XX` escapes decoded.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&String::from_utf8_lossy(&bytes[i + 1..i + 3]), 16)
            {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// A PAX time, `[-]SECONDS[.FRACTION]`, as seconds and nanoseconds
/// (nanoseconds always count forward from the seconds).
fn parse_pax_time(text: &str) -> Option<(i64, u32)> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, digit) in fraction.bytes().take(9).enumerate() {
        nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
    }
    Some(if !negative {
        (secs, nanos)
    } else if nanos == 0 {
        (-secs, 0)
    } else {
        (-secs - 1, 1_000_000_000 - nanos)
    })
}

/// Names and link targets are C strings, as GNU tar and libarchive read
/// them: a GNU long name's data (or any name) ends at its first NUL.
fn c_string(mut bytes: Vec<u8>) -> Vec<u8> {
    if let Some(end) = bytes.iter().position(|&b| b == 0) {
        bytes.truncate(end);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_parse_with_fractions_and_signs() {
        assert_eq!(parse_pax_time("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            parse_pax_time("1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time("1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time("abc"), None);
        assert_eq!(parse_pax_time("1.2e3"), None);
    }

    #[test]
    fn paths_are_relative_and_stay_inside() {
        assert_eq!(components(b"./a//b/").unwrap(), vec![&b"a"[..], b"b"]);
        assert_eq!(
            components(b"/etc/passwd").unwrap(),
            vec![&b"etc"[..], b"passwd"]
        );
        assert!(components(b"a/../../b").is_err());
        assert!(components(b"./").unwrap().is_empty());
    }

    #[test]
    fn percent_escapes_decode() {
        assert_eq!(percent_decode(b"user.a%20b%3d"), b"user.a b=".to_vec());
        assert_eq!(percent_decode(b"100%"), b"100%".to_vec());
    }
}
