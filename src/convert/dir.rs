//! A directory tree as input (`convert DIR OUTPUT`, as `mkfs.erofs OUT
//! DIR`): regular files, directories, symlinks, devices, fifos, sockets,
//! xattrs, hard links, owners, modes and times, read without following any
//! symlink, through [`crate::safe_fs::tree`] (every step relative to an
//! open directory, `O_NOFOLLOW`; files pinned `O_PATH` and type-checked
//! before being opened; entries and xattrs capped). Mount points are not
//! crossed; the output may not lie inside the tree. A file whose size or
//! times change while it is read is an error naming it.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use nix::sys::stat::{fstat, FileStat};

use crate::format::{encode_rdev, S_IFMT};
use crate::mkfs::{ImageBuilder, Node, NodeData, NodeId, Tree};
use crate::safe_fs::tree::{same_file, ReadError, TreeDir};

use super::ConvertError;

/// Deepest directory nesting accepted; also bounds the directory fds
/// held open at once (one per level).
const MAX_DEPTH: usize = 512;

/// Reads the tree under `root` into a [`Tree`], file data into `builder`.
/// Mount points below `root` are not crossed (an error naming them).
pub fn read_dir_tree(root: &Path, builder: &mut ImageBuilder) -> Result<Tree, ConvertError> {
    let fail = |path: &Path, e: io::Error| ConvertError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let root_dir = TreeDir::open(root).map_err(|e| fail(root, e))?;
    let st = root_dir.stat_self().map_err(|e| fail(root, e))?;
    let mut tree = Tree::new(0, 0, 0, 0);
    let xattrs = kept_xattrs(&root_dir, OsStr::new(".")).map_err(|e| fail(root, e))?;
    *tree.node_mut(Tree::ROOT) = node_of(&st, xattrs, NodeData::Dir(BTreeMap::new()));
    let mut walk = Walk {
        tree,
        builder,
        links: HashMap::new(),
        dev: st.st_dev,
    };
    // Explicit stack of directories still to read. A pending directory is
    // not open (a wide tree would run out of descriptors): its parent is
    // shared and it is opened on pop, then checked to be the inode
    // listed. At most one directory per level of depth stays open.
    let mut stack = vec![Pending {
        parent: None,
        name: OsString::new(),
        key: (st.st_dev, st.st_ino),
        id: Tree::ROOT,
        path: root.to_path_buf(),
        depth: 0,
    }];
    let mut root_dir = Some(root_dir);
    while let Some(p) = stack.pop() {
        let dir = match &p.parent {
            None => match root_dir.take() {
                Some(dir) => Rc::new(dir),
                None => return Err(fail(&p.path, io::Error::other("root read twice"))),
            },
            Some(parent) => {
                Rc::new(open_listed(parent, &p.name, p.key).map_err(|e| fail(&p.path, e))?)
            }
        };
        drop(p.parent);
        for name in dir.names().map_err(|e| fail(&p.path, e))? {
            let child_path = p.path.join(&name);
            let sub = walk
                .add(&dir, p.id, &name)
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

/// Opens subdirectory `name` of `parent`, which must be the inode listed.
fn open_listed(parent: &TreeDir, name: &OsStr, key: (u64, u64)) -> io::Result<TreeDir> {
    let dir = parent.open_dir(name)?;
    let st = dir.stat_self()?;
    if (st.st_dev, st.st_ino) != key {
        return Err(io::Error::other("replaced while it was read"));
    }
    Ok(dir)
}

/// A directory listed but not yet read.
struct Pending {
    /// Its parent, open (`None` for the root, opened already).
    parent: Option<Rc<TreeDir>>,
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
    /// The root's device: an entry on another is a mount point.
    dev: u64,
}

impl Walk<'_> {
    /// Adds entry `name` of `dir` (node `parent`); returns its (device,
    /// inode) and node when it is a directory, to descend into.
    fn add(
        &mut self,
        dir: &TreeDir,
        parent: NodeId,
        name: &OsStr,
    ) -> io::Result<Option<((u64, u64), NodeId)>> {
        let st = dir.stat(name)?;
        if st.st_dev != self.dev {
            return Err(io::Error::other("a mount point (not crossed)"));
        }
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
            libc::S_IFLNK => (NodeData::Symlink(dir.read_link(name)?), None),
            libc::S_IFCHR | libc::S_IFBLK => {
                let rdev = st.st_rdev;
                let (major, minor) = (libc::major(rdev), libc::minor(rdev));
                (NodeData::Device(encode_rdev(major, minor)), None)
            }
            _ => (NodeData::Special, None),
        };
        let xattrs = kept_xattrs(dir, name)?;
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
        dir: &TreeDir,
        name: &OsStr,
        st: &FileStat,
    ) -> io::Result<crate::mkfs::FileData> {
        // Pinned, checked to be the regular file listed, then reopened.
        let mut file = dir.open_file(name, st).map_err(|e| match e {
            ReadError::Io(e) | ReadError::Write(e) => e,
            ReadError::Changed => io::Error::other("changed while it was read"),
        })?;
        let size = st.st_size as u64;
        let data = self.builder.add_data(&mut file, size)?;
        let mut extra = [0u8; 1];
        let grew = file.read(&mut extra)? > 0;
        let after = fstat(file.as_raw_fd())?;
        if grew || !same_file(st, &after) {
            return Err(io::Error::other("changed while it was read"));
        }
        Ok(data)
    }
}

/// The xattrs EROFS can hold (user., trusted., security., the POSIX ACLs)
/// of entry `name` of `dir` (read through an O_PATH descriptor, capped in
/// size); none on a file system without xattrs.
fn kept_xattrs(dir: &TreeDir, name: &OsStr) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let all = match dir.xattrs(name) {
        Ok(all) => all,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(all
        .into_iter()
        .filter(|(key, _)| {
            [&b"user."[..], b"trusted.", b"security."]
                .iter()
                .any(|p| key.starts_with(p))
                || key == b"system.posix_acl_access"
                || key == b"system.posix_acl_default"
        })
        .collect())
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
    refuse_output_inside(input, output)?;
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
        end_align: 0,
    };
    let summary = builder.finish(&tree, &build)?;
    let mode = 0o666 & !crate::safe_fs::umask();
    image.persist(&name, mode).map_err(io_err)?;
    Ok(summary)
}

/// The image must not be written inside the tree it is read from (it
/// would read itself, or a half-written temporary file).
fn refuse_output_inside(input: &Path, output: &Path) -> Result<(), ConvertError> {
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (Ok(input), Ok(parent)) = (input.canonicalize(), parent.canonicalize()) else {
        // Errors are reported when the paths are opened.
        return Ok(());
    };
    if parent.starts_with(&input) {
        return Err(super::invalid(
            output,
            &format!("inside the input directory {}", input.display()),
        ));
    }
    Ok(())
}
