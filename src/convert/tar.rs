//! Tar entries to a [`Tree`], with the semantics of extracting the archive
//! (and of `mkfs.erofs --tar`): later entries replace earlier ones, parents
//! that are not listed are created, hard links name earlier entries.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use tar::EntryType;

use super::pax::{apply_pax, drop_user_xattrs, max_inline_xattrs, Attrs, Globals};
use super::stream::{shown, Member, TarStream};
use super::ConvertError;
use crate::format::{
    encode_rdev, MAX_PATH_DEPTH, NAME_LEN_MAX, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT,
    S_IFREG,
};
use crate::mkfs::{FileData, ImageBuilder, Node, NodeData, NodeId, Tree};

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
use crate::format::{OPAQUE_MARKER, OVERLAY_OPAQUE, OVERLAY_ORIGIN, WHITEOUT_PREFIX};

/// Reads every entry of the tar stream `reader` into a tree.
pub fn read_tar(
    reader: impl Read,
    options: TarOptions,
    sink: DataSink<'_>,
) -> Result<Tree, ConvertError> {
    let mut stream = TarStream::new(reader);
    let mut state = State {
        tree: Tree::new(0o777, 0, 0, 0),
        implied: HashSet::from([Tree::ROOT]),
        newest: i64::MIN,
        globals: Globals::default(),
        warned_absolute: false,
        options,
        sink,
    };
    while let Some(member) = stream.next_member()? {
        let shown_path = shown(&member.path);
        let fail =
            |message: String| ConvertError::tar(member.at, Some(shown_path.clone()), message);
        state.add(&mut stream, &member).map_err(fail)?;
    }
    let implied_mtime = state
        .options
        .implied_mtime
        .unwrap_or(if state.newest == i64::MIN {
            0
        } else {
            state.newest
        });
    for id in state.implied {
        state.tree.node_mut(id).mtime = implied_mtime;
    }
    Ok(state.tree)
}

/// The tree being built and what reading the tar so far has set.
struct State<'a> {
    tree: Tree,
    /// Directories no entry has described (yet): they get `implied_mtime`.
    implied: HashSet<NodeId>,
    newest: i64,
    globals: Globals,
    warned_absolute: bool,
    options: TarOptions,
    sink: DataSink<'a>,
}

impl State<'_> {
    /// Adds one member of the tar; the error says what is wrong with it.
    fn add<R: Read>(&mut self, stream: &mut TarStream<R>, member: &Member) -> Result<(), String> {
        let kind = member.header.entry_type();
        if kind.is_pax_global_extensions() {
            return self.globals.merge(member.pax.clone());
        }
        if kind == EntryType::new(b'V') {
            tracing::info!("tar: skipping the volume label at byte {}", member.at);
            return Ok(());
        }
        if kind.is_gnu_sparse() {
            return Err(
                "GNU sparse files are not supported (re-create the tar without --sparse)".into(),
            );
        }
        let attrs = attributes(member, &self.globals)?;
        self.newest = self.newest.max(attrs.mtime);
        let raw_path = c_string(member.path.clone());
        if raw_path.first() == Some(&b'/') && !self.warned_absolute {
            tracing::warn!(
                "tar: '{}': leading '/' removed from absolute paths",
                shown(&raw_path)
            );
            self.warned_absolute = true;
        }
        let parts = components(&raw_path)?;
        let Some((name, parents)) = parts.split_last() else {
            // The root itself ("./").
            if kind != EntryType::Directory {
                return Err("the root of the tar is not a directory".into());
            }
            set_attrs(self.tree.node_mut(Tree::ROOT), attrs);
            self.implied.remove(&Tree::ROOT);
            return Ok(());
        };
        let parent = make_parents(&mut self.tree, parents, &mut self.implied)?;
        if self.options.aufs && self.whiteout(parent, name, &attrs)? {
            return Ok(());
        }
        let Some(data) = self.node_data(stream, member, parent, name)? else {
            return Ok(());
        };
        self.place(member, parent, name.to_vec(), data, attrs)
    }

    /// Handles `name` as an OCI whiteout or opaque marker; whether it was one.
    fn whiteout(&mut self, parent: NodeId, name: &[u8], attrs: &Attrs) -> Result<bool, String> {
        if name == OPAQUE_MARKER {
            self.tree
                .node_mut(parent)
                .xattrs
                .insert(OVERLAY_OPAQUE.to_vec(), b"y".to_vec());
            return Ok(true);
        }
        let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) else {
            return Ok(false);
        };
        // As containerd: `.wh.`, `.wh..` and `.wh...` would hide nothing, the
        // directory itself or its parent; refused ("invalid whiteout name").
        if matches!(hidden, b"" | b"." | b"..") {
            return Err(format!(
                "invalid whiteout name '{}' (it names no entry of its directory)",
                shown(name)
            ));
        }
        // As mkfs.erofs: a 0:0 character device with no permissions,
        // and the directory marked so overlayfs does not show it as is.
        let whiteout = self.tree.add(Node {
            mode: S_IFCHR,
            uid: attrs.uid,
            gid: attrs.gid,
            mtime: attrs.mtime,
            mtime_nsec: attrs.mtime_nsec,
            xattrs: BTreeMap::new(),
            data: NodeData::Device(0),
        });
        self.tree.link(parent, hidden.to_vec(), whiteout);
        self.tree
            .node_mut(parent)
            .xattrs
            .entry(OVERLAY_ORIGIN.to_vec())
            .or_default();
        Ok(true)
    }

    /// What the node of `member` holds (its data read or indexed); `None`
    /// for a hard link, which is linked here.
    fn node_data<R: Read>(
        &mut self,
        stream: &mut TarStream<R>,
        member: &Member,
        parent: NodeId,
        name: &[u8],
    ) -> Result<Option<NodeData>, String> {
        let link = || -> Result<Vec<u8>, String> {
            let target = c_string(member.link.clone().unwrap_or_default());
            match target.is_empty() {
                true => Err("link without a target".into()),
                false => Ok(target),
            }
        };
        Ok(Some(match member.header.entry_type() {
            EntryType::Regular | EntryType::Continuous => NodeData::File(match &mut self.sink {
                DataSink::Index => FileData {
                    size: member.size,
                    offset: member.data_at,
                },
                DataSink::Full(builder) => builder
                    .add_data(&mut stream.data(member), member.size)
                    .map_err(|e| format!("reading its data: {e}"))?,
            }),
            EntryType::Link => {
                hard_link(&mut self.tree, parent, name.to_vec(), &link()?)?;
                return Ok(None);
            }
            EntryType::Symlink => {
                let target = link()?;
                if target.len() >= 4096 {
                    return Err(format!("symbolic link target of {} bytes", target.len()));
                }
                NodeData::Symlink(target)
            }
            EntryType::Char | EntryType::Block => {
                let header = &member.header;
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                NodeData::Device(encode_rdev(major, minor))
            }
            EntryType::Directory => NodeData::Dir(BTreeMap::new()),
            EntryType::Fifo => NodeData::Special,
            other => {
                return Err(format!(
                    "entry type '{}' is not supported",
                    other.as_byte().escape_ascii()
                ))
            }
        }))
    }

    /// Puts a node for `member` at `name` in `parent`.
    fn place(
        &mut self,
        member: &Member,
        parent: NodeId,
        name: Vec<u8>,
        data: NodeData,
        attrs: Attrs,
    ) -> Result<(), String> {
        let file_type = match member.header.entry_type() {
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
            drop_user_xattrs(&mut attrs.xattrs, &shown(&member.path));
        }
        if attrs.xattr_size() > max_inline_xattrs() {
            return Err(format!(
                "{} bytes of xattrs (an inode holds at most {})",
                attrs.xattr_size(),
                max_inline_xattrs()
            ));
        }
        match self.tree.child(parent, &name) {
            // A directory listed again (or after its content): new
            // attributes, same entries.
            Some(existing)
                if self.tree.node(existing).is_dir() && matches!(data, NodeData::Dir(_)) =>
            {
                set_attrs(self.tree.node_mut(existing), attrs);
                self.implied.remove(&existing);
            }
            _ => {
                let node = self.tree.add(Node {
                    mode: attrs.mode,
                    uid: attrs.uid,
                    gid: attrs.gid,
                    mtime: attrs.mtime,
                    mtime_nsec: attrs.mtime_nsec,
                    xattrs: attrs.xattrs,
                    data,
                });
                self.tree.link(parent, name, node);
            }
        }
        Ok(())
    }
}

/// A path's components: empty and `.` ones dropped, a leading `/` ignored;
/// `..` is refused (it could point outside the tree), and so are paths
/// deeper than [`MAX_PATH_DEPTH`], which no reader of the image would follow.
fn components(path: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut parts = Vec::new();
    for part in path.split(|&b| b == b'/') {
        if parts.len() == MAX_PATH_DEPTH && !matches!(part, b"" | b".") {
            return Err(format!(
                "a path more than {MAX_PATH_DEPTH} levels deep (readers refuse deeper trees)"
            ));
        }
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
            Some(_) => return Err(format!("'{}' in its path is not a directory", shown(part))),
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
    let shown = shown(target);
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

/// An entry's attributes: its header, then global PAX records, then its own.
fn attributes(member: &Member, globals: &Globals) -> Result<Attrs, String> {
    let header = &member.header;
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
    globals.apply(&mut attrs)?;
    for (key, value) in &member.pax {
        apply_pax(&mut attrs, key, value)?;
    }
    Ok(attrs)
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
    fn paths_are_relative_and_stay_inside() {
        assert_eq!(components(b"./a//b/").unwrap(), vec![&b"a"[..], b"b"]);
        assert_eq!(
            components(b"/etc/passwd").unwrap(),
            vec![&b"etc"[..], b"passwd"]
        );
        assert!(components(b"a/../../b").is_err());
        assert!(components(b"./").unwrap().is_empty());
    }
}
