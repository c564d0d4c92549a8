//! Merge arbitrary layers: the input is a little-endian u32 length, then
//! that many bytes of the lower image, then the upper image. The merged
//! tree is walked through the [`View`] the FUSE server serves, breadth
//! first and bounded: every directory is listed whole and in small resumed
//! chunks (which must agree), every listed name must look up to the same
//! inode, and files, symlinks and xattrs are read.
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use erofs_fuse::device::{Access, Device};
use erofs_fuse::format::FileType;
use erofs_fuse::overlay::Stack;
use erofs_fuse::view::{Ino, View, ROOT};
use erofs_fuse::Image;

/// Inodes visited per input.
const MAX_NODES: usize = 2000;
/// Entries listed per directory.
const MAX_LISTED: usize = 5000;

fn image(name: &str, bytes: &[u8]) -> Option<Arc<Image>> {
    let device = Device::from_bytes(Path::new(name), bytes).ok()?;
    Image::from_devices(device, Vec::new()).ok().map(Arc::new)
}

/// (name, ino) of every entry of `dir`, listed in chunks of `chunk` entries
/// resumed from the last position; `None` if listing failed.
fn list(view: &Stack, dir: Ino, chunk: usize) -> Option<Vec<(Vec<u8>, Ino)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let mut got = 0;
        let mut next = pos;
        view.read_dir(dir, pos, &mut |item| {
            out.push((item.name.to_vec(), item.ino));
            next = item.next;
            got += 1;
            got >= chunk
        })
        .ok()?;
        if got < chunk || out.len() >= MAX_LISTED {
            return Some(out);
        }
        assert!(next > pos, "readdir positions must advance");
        pos = next;
    }
}

/// Runs one input; panics on a finding.
pub fn run(data: &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let (lower, upper) = rest.split_at(len);
    let (Some(lower), Some(upper)) = (image("lower.erofs", lower), image("upper.erofs", upper))
    else {
        return;
    };
    let Ok(stack) = Stack::new(vec![lower, upper]) else {
        return;
    };
    let mut queue = VecDeque::from([ROOT]);
    let mut seen = std::collections::HashSet::from([ROOT]);
    let mut scratch = Vec::new();
    while let Some(ino) = queue.pop_front() {
        let Ok(attr) = stack.attr(ino) else {
            continue;
        };
        let _ = stack.xattr_names(ino).map(|names| {
            for name in names {
                let _ = stack.xattr(ino, &name);
            }
        });
        match attr.kind {
            FileType::Directory => {
                let (Some(whole), Some(chunked)) =
                    (list(&stack, ino, usize::MAX), list(&stack, ino, 3))
                else {
                    continue;
                };
                if whole.len() < MAX_LISTED {
                    assert_eq!(whole, chunked, "listing in chunks differs");
                }
                for (name, child) in whole {
                    if name == b"." || name == b".." {
                        continue;
                    }
                    if let Ok(found) = stack.lookup(ino, &name) {
                        let found = found.expect("a listed name looks up");
                        assert_eq!(found.ino, child, "lookup and readdir disagree");
                    }
                    if seen.len() < MAX_NODES && seen.insert(child) {
                        queue.push_back(child);
                    }
                }
            }
            FileType::Symlink => {
                let _ = stack.read_link(ino);
            }
            _ => {
                let _ = stack.read(ino, 0, 64 << 10, Access::Sequential, &mut scratch);
                stack.prefetch(ino, 0, 1 << 20);
                let _ = stack.read(ino, attr.size / 2, 4096, Access::Random, &mut scratch);
            }
        }
    }
    let _ = stack.stats();
}
