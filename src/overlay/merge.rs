//! Merging one directory of a layer stack: which names show, what each
//! names, and which lower directories a merged subdirectory draws from.
//!
//! The rules are overlayfs's (Documentation/filesystems/overlayfs.rst),
//! with OCI's whiteout files understood too:
//! - an upper entry hides every lower entry of the same name, except that
//!   a directory over a directory merges with it;
//! - a whiteout (a 0:0 character device, or an OCI `.wh.NAME` file) hides
//!   NAME in the layers below its own and never shows itself;
//! - an opaque directory (`trusted.overlay.opaque=y`, `user.overlay.opaque=y`
//!   or an OCI `.wh..wh..opq` inside it) hides everything below it; the
//!   marker never shows.

use std::collections::BTreeMap;

use super::{Origin, Stack};
use crate::error::{Error, Result};
use crate::format::FileType;
use crate::format::{OPAQUE_MARKER, OVERLAY_OPAQUE, USER_OVERLAY_OPAQUE, WHITEOUT_PREFIX};
use crate::reader::{DirPos, FileKind};

/// The overlayfs xattrs that make a directory opaque (with value `y`).
const OPAQUE_XATTRS: [&[u8]; 2] = [OVERLAY_OPAQUE, USER_OVERLAY_OPAQUE];

/// Most directory entries read, over all layers, to merge one directory:
/// far beyond any real directory, and a bound on the work and memory a
/// hostile stack can ask for.
pub const MAX_MERGE_ENTRIES: usize = 1 << 20;

/// A name in a merged directory and where it comes from.
#[derive(Debug, Clone)]
pub(crate) struct Merged {
    /// The entry's name.
    pub name: Vec<u8>,
    /// The type of its topmost entry.
    pub kind: FileType,
    /// Its topmost entry.
    pub top: Origin,
    /// Directories only: the lower directories merged under `top`, top
    /// first. Empty for anything that is not a merged directory.
    pub lower: Vec<Origin>,
}

/// The state of one name while the layers are walked top down.
enum Slot {
    /// Whited out by an upper layer: lower entries do not show.
    Hidden,
    /// Shows; `open` while lower directories of the name still merge in.
    Shown { entry: Merged, open: bool },
}

/// What one stored directory entry means to the merge.
enum Meaning {
    /// `.`, `..` or an opaque marker: nothing to show.
    Skip,
    /// Hides this name in lower layers.
    Whiteout(Vec<u8>),
    /// An entry that shows.
    Entry,
}

/// Classifies a stored entry by its name and whether its inode is a 0:0
/// character device.
fn meaning(name: &[u8], whiteout_device: bool) -> Meaning {
    if name == b"." || name == b".." || name == OPAQUE_MARKER {
        Meaning::Skip
    } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
        Meaning::Whiteout(hidden.to_vec())
    } else if whiteout_device {
        Meaning::Whiteout(name.to_vec())
    } else {
        Meaning::Entry
    }
}

impl Stack {
    /// The merged entries of the directory drawn from `contributors` (top
    /// first), sorted by name; `.` and `..` are not among them.
    pub(crate) fn merge_dir(&self, contributors: &[Origin]) -> Result<Vec<Merged>> {
        let mut slots: BTreeMap<Vec<u8>, Slot> = BTreeMap::new();
        let mut read = 0usize;
        for &dir in contributors {
            let image = self.layer(dir.layer);
            let inode = image.inode(dir.nid)?;
            let mut whiteouts = Vec::new();
            for item in image.read_dir(&inode, DirPos::START)? {
                let (entry, _) = item?;
                read += 1;
                if read > MAX_MERGE_ENTRIES {
                    return Err(Error::Unsupported(format!(
                        "a merged directory of more than {MAX_MERGE_ENTRIES} entries"
                    )));
                }
                let origin = Origin {
                    layer: dir.layer,
                    nid: entry.nid,
                };
                // The inode's type decides, not the entry's claim (as in
                // overlayfs). A broken inode keeps its entry's type; it
                // fails when it is looked at.
                let (kind, whiteout_device) = match image.inode(entry.nid) {
                    Ok(inode) => (
                        inode.kind.file_type(),
                        inode.kind == FileKind::CharDevice(0, 0),
                    ),
                    Err(_) => (entry.file_type, false),
                };
                match meaning(&entry.name, whiteout_device) {
                    Meaning::Skip => {}
                    Meaning::Whiteout(name) => whiteouts.push(name),
                    Meaning::Entry => self.add(&mut slots, entry.name, kind, origin)?,
                }
            }
            // A whiteout hides the name below its own layer only: an entry
            // of the same name in this layer (OCI allows both) still shows.
            for name in whiteouts {
                match slots.get_mut(&name) {
                    None => {
                        slots.insert(name, Slot::Hidden);
                    }
                    Some(Slot::Shown { open, .. }) => *open = false,
                    Some(Slot::Hidden) => {}
                }
            }
        }
        Ok(slots
            .into_values()
            .filter_map(|slot| match slot {
                Slot::Shown { entry, .. } => Some(entry),
                Slot::Hidden => None,
            })
            .collect())
    }

    /// Merges one shown entry of a lower-or-equal layer into `slots`.
    fn add(
        &self,
        slots: &mut BTreeMap<Vec<u8>, Slot>,
        name: Vec<u8>,
        kind: FileType,
        origin: Origin,
    ) -> Result<()> {
        let Some(slot) = slots.get_mut(&name) else {
            let entry = Merged {
                name: name.clone(),
                kind,
                top: origin,
                lower: Vec::new(),
            };
            let open = kind == FileType::Directory;
            slots.insert(name, Slot::Shown { entry, open });
            return Ok(());
        };
        let Slot::Shown { entry, open } = slot else {
            return Ok(());
        };
        if !*open {
            return Ok(());
        }
        if kind != FileType::Directory {
            // Anything but a directory ends the merge: it and all below it
            // are hidden by the directory above.
            *open = false;
            return Ok(());
        }
        let bottom = *entry.lower.last().unwrap_or(&entry.top);
        if self.is_opaque(bottom)? {
            *open = false;
        } else {
            entry.lower.push(origin);
        }
        Ok(())
    }

    /// Whether directory `dir` hides the directories below it.
    pub(crate) fn is_opaque(&self, dir: Origin) -> Result<bool> {
        let image = self.layer(dir.layer);
        let inode = image.inode(dir.nid)?;
        for name in OPAQUE_XATTRS {
            if image.xattr(&inode, name)?.as_deref() == Some(b"y") {
                return Ok(true);
            }
        }
        Ok(image.lookup(&inode, OPAQUE_MARKER)?.is_some())
    }
}
