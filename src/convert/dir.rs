//! A directory tree as input (`convert DIR OUTPUT`, as `mkfs.erofs OUT
//! DIR`): regular files, directories, symlinks, devices, fifos, sockets,
//! xattrs, hard links, owners, modes and times, read without following any
//! symlink (every step is `openat`/`fstatat` relative to an open
//! directory, `O_NOFOLLOW`). A file whose size or times change while it is
//! read is an error naming it.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::rc::Rc;

use nix::fcntl::{readlinkat, AtFlags};
use nix::sys::stat::{fstat, fstatat, FileStat};

use crate::format::{encode_rdev, S_IFMT};
use crate::mkfs::{ImageBuilder, Node, NodeData, NodeId, Tree};
use crate::safe_fs::{open_dir_at, proc_path};

use super::ConvertError;

/// Deepest directory nesting accepted; also bounds the directory fds
/// held open at once (one per level).
const MAX_DEPTH: usize = 512;

/// Reads the tree under `root` into a [`Tree`], file data into `builder`.
pub fn read_dir_tree(root: &Path, builder: &mut ImageBuilder) -> Result<Tree, ConvertError> {
    let fail = |path: &Path, e: io::Error| ConvertError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let root_fd: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(root)
        .map_err(|e| fail(root, e))?
        .into();
    let st = fstat(root_fd.as_raw_fd()).map_err(|e| fail(root, e.into()))?;
    let mut tree = Tree::new(0, 0, 0, 0);
    *tree.node_mut(Tree::ROOT) = node_of(
        &st,
        xattrs_of(&proc_path(root_fd.as_fd()).join(".")),
        NodeData::Dir(BTreeMap::new()),
    );
    let mut walk = Walk {
        tree,
        builder,
        links: HashMap::new(),
    };
    // Explicit stack of directories still to read. A pending directory is
    // not open (a wide tree would run out of descriptors): its parent's fd
    // is shared and it is opened on pop, then checked to be the inode
    // listed. At most one fd per level of depth stays open.
    let mut stack = vec![Pending {
        parent: None,
        name: OsString::new(),
        key: (st.st_dev, st.st_ino),
        id: Tree::ROOT,
        path: root.to_path_buf(),
        depth: 0,
    }];
    let mut root_fd = Some(root_fd);
    while let Some(p) = stack.pop() {
        let dir = match &p.parent {
            None => match root_fd.take() {
                Some(fd) => Rc::new(fd),
                None => return Err(fail(&p.path, io::Error::other("root read twice"))),
            },
            Some(parent) => {
                let fd = open_dir_at(parent.as_fd(), &p.name).map_err(|e| fail(&p.path, e))?;
                let st = fstat(fd.as_raw_fd()).map_err(|e| fail(&p.path, e.into()))?;
                if (st.st_dev, st.st_ino) != p.key {
                    return Err(fail(
                        &p.path,
                        io::Error::other("replaced while it was read"),
                    ));
                }
                Rc::new(fd)
            }
        };
        drop(p.parent);
        for name in entries(dir.as_fd()).map_err(|e| fail(&p.path, e))? {
            let child_path = p.path.join(&name);
            let sub = walk
                .add(dir.as_fd(), p.id, &name)
                .map_err(|e| fail(&child_path, e))?;
            if let Some((key, child)) = sub {
                if p.depth + 1 > MAX_DEPTH {
                    return Err(fail(&child_path, io::Error::other("nested too deeply")));
                }
                stack.push(Pending {
                    parent: Some(Rc::clone(&dir)),
                    name,
                    key,
                    id: child,
                    path: child_path,
                    depth: p.depth + 1,
                });
            }
        }
    }
    Ok(walk.tree)
}

/// A directory listed but not yet read.
struct Pending {
    /// Its parent, open (`None` for the root, opened already).
    parent: Option<Rc<OwnedFd>>,
    /// Its name in `parent`.
    name: OsString,
    /// (device, inode) as listed: what is opened must match.
    key: (u64, u64),
    /// Its node.
    id: NodeId,
    /// Its path, for errors.
    path: std::path::PathBuf,
    /// Its nesting depth.
    depth: usize,
}

struct Walk<'a> {
    tree: Tree,
    builder: &'a mut ImageBuilder,
    /// Non-directories with several links, by (device, inode).
    links: HashMap<(u64, u64), NodeId>,
}

impl Walk<'_> {
    /// Adds entry `name` of `dir` (node `parent`); returns its (device,
    /// inode) and node when it is a directory, to descend into.
    fn add(
        &mut self,
        dir: BorrowedFd<'_>,
        parent: NodeId,
        name: &OsStr,
    ) -> io::Result<Option<((u64, u64), NodeId)>> {
        let st = fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let kind = st.st_mode & S_IFMT;
        let key = (st.st_dev, st.st_ino);
        if kind != libc::S_IFDIR && st.st_nlink > 1 {
            if let Some(&id) = self.links.get(&key) {
                self.tree.link(parent, name.as_bytes().to_vec(), id);
                return Ok(None);
            }
        }
        let (data, sub) = match kind {
            libc::S_IFDIR => (NodeData::Dir(BTreeMap::new()), Some(key)),
            libc::S_IFREG => (NodeData::File(self.file(dir, name, &st)?), None),
            libc::S_IFLNK => {
                let target = readlinkat(Some(dir.as_raw_fd()), name)?;
                (NodeData::Symlink(target.as_bytes().to_vec()), None)
            }
            libc::S_IFCHR | libc::S_IFBLK => {
                let rdev = st.st_rdev;
                let (major, minor) = (libc::major(rdev), libc::minor(rdev));
                (NodeData::Device(encode_rdev(major, minor)), None)
            }
            _ => (NodeData::Special, None),
        };
        // Through /proc/self/fd/N (the directory itself), the last
        // component not followed (l*xattr).
        let xattrs = xattrs_of(&proc_path(dir).join(name));
        let id = self.tree.add(node_of(&st, xattrs, data));
        self.tree.link(parent, name.as_bytes().to_vec(), id);
        if kind != libc::S_IFDIR && st.st_nlink > 1 {
            self.links.insert(key, id);
        }
        Ok(sub.map(|key| (key, id)))
    }

    /// Copies a regular file's data in; an error if it changed meanwhile.
    fn file(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &FileStat,
    ) -> io::Result<crate::mkfs::FileData> {
        // /proc/self/fd/N is `dir` itself; O_NOFOLLOW refuses a symlink at `name`.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(proc_path(dir).join(name))?;
        let before = fstat(file.as_raw_fd())?;
        same_inode(st, &before)?;
        let size = before.st_size as u64;
        let data = self.builder.add_data(&mut file, size)?;
        let mut extra = [0u8; 1];
        let grew = file.read(&mut extra)? > 0;
        let after = fstat(file.as_raw_fd())?;
        let changed = grew
            || after.st_size != before.st_size
            || (after.st_mtime, after.st_mtime_nsec) != (before.st_mtime, before.st_mtime_nsec)
            || (after.st_ctime, after.st_ctime_nsec) != (before.st_ctime, before.st_ctime_nsec);
        if changed {
            return Err(io::Error::other("changed while it was read"));
        }
        Ok(data)
    }
}

/// The entry names of `dir`, sorted (`.` and `..` left out).
fn entries(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut names: Vec<OsString> = std::fs::read_dir(proc_path(dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// The inode opened is the one listed (not replaced in between).
fn same_inode(listed: &FileStat, opened: &FileStat) -> io::Result<()> {
    if (listed.st_dev, listed.st_ino) != (opened.st_dev, opened.st_ino) {
        return Err(io::Error::other("replaced while it was read"));
    }
    Ok(())
}

/// The xattrs EROFS can hold (user., trusted., security., the POSIX ACLs)
/// of `path` (not followed if a symlink); unreadable ones are left out.
fn xattrs_of(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(names) = xattr::list(path) else {
        return out;
    };
    for name in names {
        let bytes = name.as_bytes();
        let keep = [&b"user."[..], b"trusted.", b"security."]
            .iter()
            .any(|p| bytes.starts_with(p))
            || bytes == b"system.posix_acl_access"
            || bytes == b"system.posix_acl_default";
        if let (true, Ok(Some(value))) = (keep, xattr::get(path, &name)) {
            out.insert(bytes.to_vec(), value);
        }
    }
    out
}

/// A node with `st`'s attributes.
fn node_of(st: &FileStat, xattrs: BTreeMap<Vec<u8>, Vec<u8>>, data: NodeData) -> Node {
    Node {
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
        xattrs,
        data,
    }
}

/// `convert DIR OUTPUT`: a full image of the tree under `input`, file data
/// compressed if `compress` says so; written to a temporary file in the
/// output's directory and renamed over `output` once complete.
pub fn convert_tree(
    input: &Path,
    output: &Path,
    options: &super::ConvertOptions,
    compress: Option<&super::CompressOptions>,
) -> Result<crate::mkfs::BuildSummary, ConvertError> {
    let io_err = |e| ConvertError::io(output, e);
    if options.mode != super::Mode::Full {
        return Err(super::invalid(
            output,
            "a directory converts with --mode full only",
        ));
    }
    let codec = super::compression_codec(options, compress, output)?;
    let (dir, name) = crate::safe_fs::OutputDir::of(output).map_err(io_err)?;
    let image = dir.temp_file().map_err(io_err)?;
    let out = image.file().try_clone().map_err(io_err)?;
    let mut builder = ImageBuilder::new(out, 12).map_err(io_err)?;
    if let Some(codec) = codec {
        builder.set_compression(codec, super::workers(compress));
    }
    let tree = read_dir_tree(input, &mut builder)?;
    let build = crate::mkfs::BuildOptions {
        source: crate::mkfs::DataSource::Image,
        uuid: [0; 16],
    };
    let summary = builder.finish(&tree, &build)?;
    let mode = 0o666 & !crate::safe_fs::umask();
    image.persist(&name, mode).map_err(io_err)?;
    Ok(summary)
}
