//! Verified lazy reads: a [`ChunkSource`] whose every byte is checked
//! against a dm-verity tree before the cache sees it, so a chunk the source
//! serves wrong is never written to the cache and never served.
//!
//! The tree (veritysetup's layout, superblock first) is small, about 1/128
//! of the data: it is checked whole against the root hash when opened,
//! after which its leaves (one digest per data block) are trusted and a
//! chunk costs one hash per block. The data is taken as zero-padded to a
//! whole block, as a tree over a file of any length is made.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{ChunkCache, ChunkSource};
use crate::error::{Error, Result, VerityError};
use crate::verity::{VerityParams, DIGEST_SIZE};

/// The largest tree accepted (for 32 GiB of data in 4 KiB blocks).
pub const MAX_TREE: u64 = 256 << 20;

/// Where a tree's leaf level is.
#[derive(Debug)]
enum Leaves {
    /// There is none: one data block, whose digest is the root.
    None,
    /// In memory, checked.
    Memory(Vec<u8>),
    /// In a chunk cache of the tree from byte `start`, fetched on demand;
    /// each leaf block is checked against its parent when read.
    Cached { cache: Arc<ChunkCache>, start: u64 },
}

/// The leaf digests of a tree checked against its root hash.
#[derive(Debug)]
pub struct TrustedLeaves {
    name: String,
    params: VerityParams,
    leaves: Leaves,
    /// The level above the leaves, checked (empty when the leaves are the
    /// top level, or in memory).
    parent: Vec<u8>,
    root: [u8; DIGEST_SIZE],
    data_len: u64,
}

/// Digest `i` of a level whose hash blocks hold `per_block` digests.
fn entry(level: &[u8], i: u64, per_block: u64, hash_block: u64) -> Option<&[u8]> {
    let at = (i / per_block) * hash_block + (i % per_block) * DIGEST_SIZE as u64;
    let at = usize::try_from(at).ok()?;
    level.get(at..at.checked_add(DIGEST_SIZE)?)
}

/// An error about the tree `name`.
fn bad(name: &str, what: String) -> Error {
    Error::Verity(VerityError::Invalid(format!("{name}: {what}")))
}

/// The parameters in the superblock at the start of `head`, checked
/// against the data's length and the tree's (`tree_len` bytes).
fn parse(name: &str, head: &[u8], data_len: u64, tree_len: u64) -> Result<VerityParams> {
    if tree_len > MAX_TREE {
        return Err(bad(
            name,
            format!("a tree of {tree_len} bytes is too large"),
        ));
    }
    let params = VerityParams::from_superblock(head).map_err(|e| bad(name, e.to_string()))?;
    let block = u64::from(params.data_block_size);
    if params.data_blocks != data_len.div_ceil(block) || data_len == 0 {
        return Err(bad(
            name,
            format!(
                "the tree covers {} blocks of {block} bytes, not the {data_len} bytes of the data",
                params.data_blocks
            ),
        ));
    }
    if params.hash_area_size() > tree_len {
        return Err(bad(
            name,
            format!(
                "the tree needs {} bytes, it has {tree_len}",
                params.hash_area_size()
            ),
        ));
    }
    Ok(params)
}

/// Checks the levels from `lowest` up of the tree whose first bytes are
/// `head` (holding those levels) against `root`, top first: each level's
/// blocks must be the digests its parent level (or the root) holds.
fn check_levels(
    name: &str,
    params: &VerityParams,
    head: &[u8],
    lowest: usize,
    root: &[u8; DIGEST_SIZE],
) -> Result<()> {
    let hash_block = u64::from(params.hash_block_size);
    let per_block = hash_block / DIGEST_SIZE as u64;
    let levels = params.levels();
    let level_bytes = |i: usize| {
        let l: crate::verity::Level = levels[i];
        let start = (l.start * hash_block) as usize;
        head.get(start..start + (l.blocks * hash_block) as usize)
            .ok_or_else(|| bad(name, "the tree is shorter than its levels".into()))
    };
    for i in (lowest..levels.len()).rev() {
        for (j, child) in level_bytes(i)?.chunks(hash_block as usize).enumerate() {
            let expected: &[u8] = match i + 1 == levels.len() {
                true if j == 0 => root,
                true => return Err(bad(name, "the top level has more than one block".into())),
                false => entry(level_bytes(i + 1)?, j as u64, per_block, hash_block)
                    .ok_or_else(|| bad(name, "a level is longer than its parent holds".into()))?,
            };
            if params.digest(child) != expected {
                return Err(Error::Verity(VerityError::BadBlock {
                    file: name.into(),
                    what: "hash",
                    block: levels[i].start + j as u64,
                }));
            }
        }
    }
    Ok(())
}

/// `len` bytes at `offset` of a cache, fetched first where missing.
fn cached_bytes(cache: &ChunkCache, offset: u64, len: u64) -> Result<Vec<u8>> {
    cache.ensure(offset, len)?;
    let mut bytes = vec![0; len as usize];
    cache
        .file()
        .read_exact_at(&mut bytes, offset)
        .map_err(|e| Error::io(cache.path(), e))?;
    Ok(bytes)
}

impl TrustedLeaves {
    /// Checks `tree` (superblock at offset 0, then the levels, top first)
    /// for `data_len` bytes of data against `root`: every hash block, from
    /// the top down. `name` names the tree in errors.
    pub fn new(name: &str, tree: &[u8], root: &[u8; DIGEST_SIZE], data_len: u64) -> Result<Self> {
        let params = parse(name, tree, data_len, tree.len() as u64)?;
        check_levels(name, &params, tree, 0, root)?;
        let levels = params.levels();
        let leaves = match levels.first() {
            None => Leaves::None,
            Some(l) => {
                let hash_block = u64::from(params.hash_block_size);
                let start = (l.start * hash_block) as usize;
                Leaves::Memory(tree[start..start + (l.blocks * hash_block) as usize].to_vec())
            }
        };
        Ok(Self {
            name: name.to_string(),
            params,
            leaves,
            parent: Vec::new(),
            root: *root,
            data_len,
        })
    }

    /// The tree in `cache` (a remote tree blob, say), for `data_len` bytes
    /// of data, checked against `root` down to the level above the leaves
    /// now; leaf blocks are fetched when a read needs them and checked
    /// then. A tree of one or two levels is fetched whole.
    pub fn cached(
        name: &str,
        cache: Arc<ChunkCache>,
        root: &[u8; DIGEST_SIZE],
        data_len: u64,
    ) -> Result<Self> {
        let head = cached_bytes(&cache, 0, cache.len().min(4096))?;
        let params = parse(name, &head, data_len, cache.len())?;
        let levels = params.levels();
        let hash_block = u64::from(params.hash_block_size);
        if levels.len() <= 1 {
            let tree = cached_bytes(&cache, 0, params.hash_area_size())?;
            return Self::new(name, &tree, root, data_len);
        }
        let start = levels[0].start * hash_block;
        let head = cached_bytes(&cache, 0, start)?;
        check_levels(name, &params, &head, 1, root)?;
        let parent_start = (levels[1].start * hash_block) as usize;
        let parent =
            head[parent_start..parent_start + (levels[1].blocks * hash_block) as usize].to_vec();
        Ok(Self {
            name: name.to_string(),
            params,
            leaves: Leaves::Cached { cache, start },
            parent,
            root: *root,
            data_len,
        })
    }

    /// Leaf block `j` of a cached tree, checked against its parent; a
    /// block that does not match is fetched once more, then refused.
    fn leaf_block(&self, cache: &ChunkCache, start: u64, j: u64) -> Result<Vec<u8>> {
        let hash_block = u64::from(self.params.hash_block_size);
        let per_block = hash_block / DIGEST_SIZE as u64;
        let expected = entry(&self.parent, j, per_block, hash_block)
            .ok_or_else(|| bad(&self.name, format!("no leaf block {j}")))?;
        let offset = start + j * hash_block;
        for attempt in 0..2 {
            let block = cached_bytes(cache, offset, hash_block)?;
            if self.params.digest(&block) == expected {
                return Ok(block);
            }
            tracing::warn!(
                "verity: {}: leaf block {j} does not match its parent (read {} of 2)",
                self.name,
                attempt + 1
            );
            cache.discard(offset, hash_block)?;
        }
        Err(Error::Verity(VerityError::BadBlock {
            file: self.name.clone().into(),
            what: "hash",
            block: offset / hash_block,
        }))
    }

    /// The data block size.
    pub fn block_size(&self) -> u64 {
        u64::from(self.params.data_block_size)
    }

    /// The bytes of data the tree covers (before padding).
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// The first block of `buf` (data from `offset`, block-aligned, ending
    /// on a block boundary or at the data's end) that does not match; an
    /// error when the leaves it needs cannot be had.
    pub fn first_bad(&self, offset: u64, buf: &[u8]) -> Result<Option<u64>> {
        let size = self.block_size();
        let hash_block = u64::from(self.params.hash_block_size);
        let per_block = hash_block / DIGEST_SIZE as u64;
        let first = offset / size;
        if !offset.is_multiple_of(size) {
            return Ok(Some(first));
        }
        let mut padded = Vec::new();
        // The cached leaf block last read, and its number.
        let mut held: Option<(u64, Vec<u8>)> = None;
        for (i, piece) in buf.chunks(size as usize).enumerate() {
            let index = first + i as u64;
            let block = match piece.len() as u64 == size {
                true => piece,
                // Only the data's last block may be short.
                false if offset + buf.len() as u64 == self.data_len => {
                    padded.clear();
                    padded.extend_from_slice(piece);
                    padded.resize(size as usize, 0);
                    &padded[..]
                }
                false => return Ok(Some(index)),
            };
            let digest = self.params.digest(block);
            let expected = match &self.leaves {
                Leaves::None if index == 0 => Some(&self.root[..]),
                Leaves::None => None,
                Leaves::Memory(leaves) => entry(leaves, index, per_block, hash_block),
                Leaves::Cached { cache, start } => {
                    let j = index / per_block;
                    if held.as_ref().is_none_or(|(at, _)| *at != j) {
                        held = Some((j, self.leaf_block(cache, *start, j)?));
                    }
                    let leaf = held.as_ref().map(|(_, b)| &b[..]).unwrap_or_default();
                    entry(leaf, index % per_block, per_block, hash_block)
                }
            };
            if expected != Some(&digest[..]) {
                return Ok(Some(index));
            }
        }
        Ok(None)
    }
}

/// A source whose reads are checked against a tree; a read that does not
/// match is fetched once more, then fails (EIO).
pub struct VerifiedSource {
    inner: Arc<dyn ChunkSource>,
    leaves: TrustedLeaves,
    mismatches: AtomicU64,
}

impl VerifiedSource {
    /// `inner` checked against `leaves`, which must cover exactly its bytes.
    pub fn new(inner: Arc<dyn ChunkSource>, leaves: TrustedLeaves) -> Result<Self> {
        if inner.len() != leaves.data_len() {
            return Err(Error::Verity(VerityError::Invalid(format!(
                "{}: {} bytes, but its verity tree covers {}",
                inner.name(),
                inner.len(),
                leaves.data_len()
            ))));
        }
        Ok(Self {
            inner,
            leaves,
            mismatches: AtomicU64::new(0),
        })
    }

    /// Reads that did not match their tree (each fetched once more).
    pub fn mismatches(&self) -> u64 {
        self.mismatches.load(Ordering::Relaxed)
    }

    /// The first bad block of a read (`attempt` of 2), counted and logged.
    fn checked(&self, offset: u64, buf: &[u8], attempt: u32) -> Result<Option<u64>> {
        let Some(block) = self.leaves.first_bad(offset, buf)? else {
            return Ok(None);
        };
        self.mismatches.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "verity: {}: block {block} does not match its tree (read {attempt} of 2)",
            self.inner.name()
        );
        Ok(Some(block))
    }
}

impl ChunkSource for VerifiedSource {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.read_at(offset, buf)?;
        if self.checked(offset, buf, 1)?.is_none() {
            return Ok(());
        }
        self.inner.forget();
        self.inner.read_at(offset, buf)?;
        match self.checked(offset, buf, 2)? {
            None => Ok(()),
            Some(block) => {
                buf.fill(0);
                Err(Error::Verity(VerityError::BadBlock {
                    file: self.inner.name().into(),
                    what: "data",
                    block,
                }))
            }
        }
    }

    fn name(&self) -> String {
        self.inner.name()
    }

    fn forget(&self) {
        self.inner.forget();
    }
}

/// The tree (superblock first, 4 KiB blocks, a zero salt) and root hash
/// of `bytes` zero-padded to a whole block, as `veritysetup format` makes
/// it: for tests.
#[cfg(test)]
pub(crate) fn tree_for_tests(bytes: &[u8]) -> (Vec<u8>, [u8; DIGEST_SIZE]) {
    use std::io::Write;
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(bytes).unwrap();
    let padded = (bytes.len() as u64).next_multiple_of(4096);
    file.set_len(padded).unwrap();
    let params = VerityParams {
        data_block_size: 4096,
        hash_block_size: 4096,
        data_blocks: padded / 4096,
        salt: vec![0; 32],
        uuid: [7; 16],
    };
    let hash = tempfile::tempfile().unwrap();
    let root = crate::verity::format(&file, &hash, 0, &params).unwrap();
    let mut tree = vec![0; params.hash_area_size() as usize];
    std::os::unix::fs::FileExt::read_exact_at(&hash, &mut tree, 0).unwrap();
    (tree, root)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::sync::Mutex;

    use super::*;
    use crate::lazy::{CacheOptions, ChunkCache};

    /// Bytes in memory, served with the byte at `flip` inverted on the
    /// first `bad_reads` reads.
    struct Served {
        bytes: Vec<u8>,
        flip: Option<usize>,
        bad_reads: Mutex<u32>,
        reads: AtomicU64,
    }

    impl ChunkSource for Served {
        fn len(&self) -> u64 {
            self.bytes.len() as u64
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let at = offset as usize;
            buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
            let mut bad = self.bad_reads.lock().unwrap();
            if let Some(flip) = self.flip.filter(|&f| f >= at && f < at + buf.len()) {
                if *bad > 0 {
                    *bad -= 1;
                    buf[flip - at] ^= 0xff;
                }
            }
            Ok(())
        }
        fn name(&self) -> String {
            "served".into()
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 4096) as u8).collect()
    }

    fn tree_of(bytes: &[u8]) -> (Vec<u8>, [u8; DIGEST_SIZE]) {
        super::tree_for_tests(bytes)
    }

    fn served(bytes: &[u8], flip: Option<usize>, bad_reads: u32) -> Arc<Served> {
        Arc::new(Served {
            bytes: bytes.to_vec(),
            flip,
            bad_reads: Mutex::new(bad_reads),
            reads: AtomicU64::new(0),
        })
    }

    #[test]
    fn trees_are_checked_whole_and_blocks_against_them() {
        // Several levels (600 blocks > 128 digests per hash block) and a
        // short last block; one block alone.
        for len in [600 * 4096 + 1000, 4096, 100] {
            let bytes = data(len);
            let (tree, root) = tree_of(&bytes);
            let leaves = TrustedLeaves::new("t", &tree, &root, len as u64).unwrap();
            assert_eq!(leaves.first_bad(0, &bytes).unwrap(), None, "{len}");
            let mut bad = bytes.clone();
            bad[len - 1] ^= 1;
            let last = (len as u64 - 1) / 4096;
            assert_eq!(leaves.first_bad(0, &bad).unwrap(), Some(last), "{len}");
            // Wrong root, wrong length: refused.
            let mut wrong = root;
            wrong[0] ^= 1;
            match TrustedLeaves::new("t", &tree, &wrong, len as u64) {
                // One block: its digest is the root, checked on reading.
                Ok(one) => assert_eq!(
                    (len <= 4096, one.first_bad(0, &bytes).unwrap()),
                    (true, Some(0))
                ),
                Err(_) => assert!(len > 4096),
            }
            assert!(TrustedLeaves::new("t", &tree, &root, len as u64 + 4096).is_err());
        }
        let bytes = data(600 * 4096);
        let (mut tree, root) = tree_of(&bytes);
        // A leaf changed (the last hash block is a leaf block): refused.
        let at = tree.len() - 4096;
        tree[at] ^= 1;
        let err = TrustedLeaves::new("t", &tree, &root, bytes.len() as u64).unwrap_err();
        assert!(err.to_string().contains("hash block"), "{err}");
        // Truncated, or garbage: refused, no panic.
        assert!(TrustedLeaves::new("t", &tree[..4096 * 2], &root, 600 * 4096).is_err());
        assert!(TrustedLeaves::new("t", &[0xff; 8192], &root, 600 * 4096).is_err());
        assert!(TrustedLeaves::new("t", &[], &root, 600 * 4096).is_err());
    }

    /// A chunk served wrong once is fetched again and kept right; served
    /// wrong twice it is an error, and the cache does not keep it.
    #[test]
    fn wrong_chunks_are_refetched_once_then_refused() {
        let len = 40 * 4096 + 512;
        let bytes = data(len);
        let (tree, root) = tree_of(&bytes);
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(tmp.path()).unwrap();
        let options = CacheOptions {
            chunk_size: 16384,
            ..CacheOptions::default()
        };
        for (bad_reads, ok) in [(1, true), (2, false)] {
            let source = served(&bytes, Some(20000), bad_reads);
            let leaves = TrustedLeaves::new("t", &tree, &root, len as u64).unwrap();
            let verified = Arc::new(VerifiedSource::new(source.clone(), leaves).unwrap());
            let name = format!("c{bad_reads}");
            let cache = ChunkCache::open(
                dir.as_fd(),
                tmp.path(),
                &name,
                &name,
                verified.clone(),
                &options,
            )
            .unwrap();
            // The good chunk before, then the one with the bad byte.
            cache.ensure(0, 4096).unwrap();
            let got = cache.ensure(16384, 4096);
            assert_eq!(got.is_ok(), ok, "{got:?}");
            assert_eq!(verified.mismatches(), u64::from(bad_reads));
            assert_eq!(cache.is_present(1), ok);
            if !ok {
                assert!(matches!(got, Err(Error::Verity(_))));
                // The bytes never reached the cache file.
                let mut kept = vec![0; 16384];
                std::os::unix::fs::FileExt::read_exact_at(cache.file(), &mut kept, 16384).unwrap();
                assert!(kept.iter().all(|&b| b == 0));
            }
            // The short last chunk verifies (zero-padded).
            cache.ensure(len as u64 - 10, 10).unwrap();
        }
        // A source of another length than the tree covers is refused.
        let leaves = TrustedLeaves::new("t", &tree, &root, len as u64).unwrap();
        assert!(VerifiedSource::new(served(&bytes[..4096], None, 0), leaves).is_err());
    }

    /// A tree read on demand: only its upper levels at open, then the leaf
    /// blocks reads need; a leaf block served wrong is refetched once, then
    /// refused (an error, never a pass).
    #[test]
    fn cached_trees_fetch_leaf_blocks_as_needed() {
        let len = 2000 * 4096 + 100;
        let bytes = data(len);
        let (tree, root) = tree_of(&bytes);
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(tmp.path()).unwrap();
        let options = CacheOptions {
            chunk_size: 4096,
            ..CacheOptions::default()
        };
        // The last hash block is the last leaf block.
        let leaf_at = tree.len() - 4096;
        for (bad_reads, ok) in [(0, true), (1, true), (2, false)] {
            let source = served(&tree, Some(leaf_at + 10), bad_reads);
            let name = format!("t{bad_reads}");
            let cache = ChunkCache::open(
                dir.as_fd(),
                tmp.path(),
                &name,
                &name,
                source.clone(),
                &options,
            );
            let cache = Arc::new(cache.unwrap());
            let leaves = TrustedLeaves::cached("t", cache.clone(), &root, len as u64).unwrap();
            // Superblock and the upper levels only: not the 16 leaf blocks.
            let at_open = cache.stats().present;
            assert!(at_open <= 3, "{at_open} blocks fetched at open");
            assert_eq!(leaves.first_bad(0, &bytes[..8192]).unwrap(), None);
            assert_eq!(cache.stats().present, at_open + 1);
            let tail = (len - 100 - 4096) as u64;
            let got = leaves.first_bad(tail, &bytes[tail as usize..]);
            match ok {
                true => assert_eq!(got.unwrap(), None, "{bad_reads}"),
                false => assert!(matches!(
                    got,
                    Err(Error::Verity(VerityError::BadBlock { .. }))
                )),
            }
            let mut wrong = bytes[tail as usize..].to_vec();
            wrong[4100] ^= 1;
            if ok {
                assert_eq!(
                    leaves.first_bad(tail, &wrong).unwrap(),
                    Some(tail / 4096 + 1)
                );
            }
        }
        // A wrong root: refused at open.
        let source = served(&tree, None, 0);
        let cache = ChunkCache::open(dir.as_fd(), tmp.path(), "w", "w", source, &options);
        let mut wrong = root;
        wrong[0] ^= 1;
        assert!(TrustedLeaves::cached("t", Arc::new(cache.unwrap()), &wrong, len as u64).is_err());
    }
}
