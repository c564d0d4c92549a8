//! Checking blocks on first use against a verity tree, as dm-verity does
//! in the kernel: a data block against its leaf digest, each hash block on
//! the way against its parent's digest, the top block against the root
//! hash. Verified blocks are marked in bitmaps, so each is hashed once.
//!
//! Hash blocks are copied out of the tree file before they are hashed,
//! and the verified copies are what later digests are read from (as
//! dm-verity keeps verified hash blocks in its buffer cache): changing the
//! tree file afterwards changes nothing. Data is checked in one of two ways:
//! - [`Verifier::check_copy`] hashes a copy of the blocks a read serves,
//!   taken after they left the map, every time (what the server does for
//!   file data by default: a changed data file is never served as good);
//! - [`Verifier::check_meta`] (metadata, by default) copies a block out of
//!   the file on first use, hashes the copy and keeps it: later reads of the
//!   block read the verified copy;
//! - [`Verifier::check`] (with `--verity-once`) hashes blocks of the map on
//!   first use and marks them in a bitmap, trusting the file not to change
//!   after that.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::fault::ImageMap;

use super::copies::Copies;
use super::{hex, Level, TreeSpec, VerityError, VerityParams, DIGEST_SIZE};

/// A set of block numbers, safe to mark from many threads.
#[derive(Debug)]
struct Bitmap(Vec<AtomicU64>);

impl Bitmap {
    fn new(bits: u64) -> Self {
        Self((0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    fn get(&self, bit: u64) -> bool {
        self.0
            .get((bit / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (bit % 64)) != 0)
    }

    fn set(&self, bit: u64) {
        if let Some(w) = self.0.get((bit / 64) as usize) {
            w.fetch_or(1 << (bit % 64), Ordering::Release);
        }
    }
}

/// Counters of a verifier, for logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerityStats {
    /// Data blocks hashed and found good.
    pub data_verified: u64,
    /// Hash blocks hashed and found good.
    pub hash_verified: u64,
    /// Blocks (data or hash) that did not match.
    pub mismatches: u64,
}

/// A verity tree opened for checking one data file.
#[derive(Debug)]
pub struct Verifier {
    params: VerityParams,
    levels: Vec<Level>,
    root: [u8; DIGEST_SIZE],
    /// The hash file, and the byte offset in it of the tree's first
    /// block (hash block 1: block 0 is the superblock's, present or not).
    hash: ImageMap,
    tree_start: u64,
    /// Verified copies of hash blocks, by block number (empty when not
    /// verified yet).
    hash_copies: Vec<OnceLock<Box<[u8]>>>,
    hash_path: PathBuf,
    data_path: PathBuf,
    /// Data blocks verified: on the map, trusted from then on, or (with
    /// `copies`) copied into `copies` and verified there.
    data_done: Bitmap,
    /// Verified copies of the data blocks metadata is read from, when every
    /// read is checked ([`Verifier::keep_copies`]).
    copies: Option<Copies>,
    data_verified: AtomicU64,
    hash_verified: AtomicU64,
    mismatches: AtomicU64,
}

/// Where the tree `spec` names lies in `hash` (the hash file, mapped), for
/// the `data_len` bytes of `data_path`: its parameters (from its superblock,
/// or as given), where its levels start, how many bytes they take, and the
/// data bytes it covers (checked in that order: the sizes cannot overflow).
fn locate_tree(
    hash: &[u8],
    spec: &TreeSpec,
    data_path: &Path,
    data_len: u64,
    named: &dyn Fn(String) -> VerityError,
) -> Result<(VerityParams, u64, u64, u64), VerityError> {
    let offset = spec.offset;
    let past_end = || {
        named(format!(
            "hash offset {offset} is past the end ({} bytes)",
            hash.len()
        ))
    };
    let (params, tree_start) = match &spec.no_superblock {
        Some(given) => {
            let params = given.params(data_len);
            params.validate().map_err(|e| named(e.to_string()))?;
            (params, offset)
        }
        None => {
            let sb = usize::try_from(offset)
                .ok()
                .and_then(|at| hash.get(at..))
                .ok_or_else(past_end)?;
            let params = VerityParams::from_superblock(sb).map_err(|e| named(e.to_string()))?;
            let start = offset.checked_add(u64::from(params.hash_block_size));
            (params, start.ok_or_else(past_end)?)
        }
    };
    let data_bytes = params
        .data_blocks
        .checked_mul(u64::from(params.data_block_size))
        .filter(|&n| n <= data_len)
        .ok_or_else(|| {
            VerityError::Invalid(format!(
                "{}: the tree covers {} blocks of {} bytes but the file has {data_len} bytes",
                data_path.display(),
                params.data_blocks,
                params.data_block_size,
            ))
        })?;
    // The levels, without the superblock's block.
    let tree_len = params.hash_area_size() - u64::from(params.hash_block_size);
    // Only the bytes the tree has must be there: a one-block file's tree
    // has none (its root is the block's digest), so the file then needs no
    // padding of the superblock to a whole hash block, as whole-tree
    // verification (`verify`) does not either.
    let area = tree_start
        .checked_add(tree_len)
        .filter(|&end| tree_len == 0 || end <= hash.len() as u64);
    if area.is_none() {
        return Err(named(format!(
            "the tree at offset {offset} needs {tree_len} bytes, past the end ({} bytes)",
            hash.len()
        )));
    }
    Ok((params, tree_start, tree_len, data_bytes))
}

impl Verifier {
    /// Opens the tree `spec` names for the data file `data` (the whole
    /// file, mapped), and checks the top of the tree against the root hash
    /// now, so a wrong root hash or a malformed tree fails here rather than
    /// on the first read.
    pub fn open(data_path: &Path, data: &[u8], spec: &TreeSpec) -> Result<Self, VerityError> {
        let hash_path = spec.hash_file.as_path();
        let named = |what: String| VerityError::Invalid(format!("{}: {what}", hash_path.display()));
        let (file, len) = crate::input::open_input(hash_path).map_err(|e| match e {
            crate::Error::Io { source, .. } => named(source.to_string()),
            other => VerityError::Invalid(other.to_string()),
        })?;
        let hash = ImageMap::map(&file, hash_path, len)
            .map_err(|e| VerityError::Invalid(e.to_string()))?;
        let tree = locate_tree(&hash, spec, data_path, data.len() as u64, &named)?;
        let (params, tree_start, tree_len, data_bytes) = tree;
        // Start reading the tree in the background now (it is about 1/128
        // of the data; its first 64 MiB, for 8 GB of data), as dm-verity
        // prefetches hash blocks: else a cold read would stop on a page
        // fault of the tree for each new group of data blocks. Only a hint.
        if let (Ok(start), Ok(len @ 1..)) = (usize::try_from(tree_start), usize::try_from(tree_len))
        {
            crate::mmap::will_need(&hash, start, len.min(64 << 20));
        }
        let levels = params.levels();
        let hash_blocks = params.hash_area_size() / u64::from(params.hash_block_size);
        let verifier = Self {
            data_done: Bitmap::new(data_bytes / u64::from(params.data_block_size)),
            hash_copies: (0..hash_blocks).map(|_| OnceLock::new()).collect(),
            copies: None,
            params,
            levels,
            root: spec.root,
            hash,
            tree_start,
            hash_path: hash_path.to_path_buf(),
            data_path: data_path.to_path_buf(),
            data_verified: AtomicU64::new(0),
            hash_verified: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
        };
        verifier.check_top(data)?;
        Ok(verifier)
    }

    /// Checks the top of the tree (one hash block, or the only data block
    /// of a tiny file) against the root hash, keeping its verified copy.
    fn check_top(&self, data: &[u8]) -> Result<(), VerityError> {
        let (what, top) = match self.levels.last() {
            Some(level) => ("hash", self.hash_block(level.start)),
            None => ("data", self.data_block(data, 0).map(Box::from)),
        };
        let top = top.unwrap_or_default();
        let computed = self.params.digest(&top);
        if computed != self.root {
            return Err(VerityError::Invalid(format!(
                "{}: the root hash does not match the tree (its {what} top gives {})",
                self.hash_path.display(),
                hex(&computed)
            )));
        }
        // The top's verified copy is kept. The only block of a one-block
        // file is not marked: a read hashes it (again) against the root,
        // on the map or on a copy as the mode says.
        if let Some(level) = self.levels.last() {
            let _ = self.hash_copies[level.start as usize].set(top);
        }
        Ok(())
    }

    /// `[offset, offset + len)`'s end, or an error when the range reaches
    /// past the blocks the tree covers (those bytes have no hash).
    fn covered_end(&self, offset: u64, len: u64) -> Result<u64, VerityError> {
        let end = offset.saturating_add(len);
        if end > self.covered() {
            return Err(VerityError::Invalid(format!(
                "{}: bytes {offset}..{end} reach past the {} bytes its verity tree covers",
                self.data_path.display(),
                self.covered()
            )));
        }
        Ok(end)
    }

    /// From now on, [`Verifier::check_meta`] checks blocks on copies it
    /// keeps and reads them from there (fails when the region for them
    /// cannot be reserved).
    pub fn keep_copies(&mut self) -> Result<(), VerityError> {
        self.copies = Some(Copies::new(self.covered())?);
        Ok(())
    }

    /// With [`Verifier::keep_copies`]: `[offset, offset + len)` of the data
    /// file (mapped at `data`), from verified copies of its blocks (blocks
    /// not copied yet are copied out of `data` and hashed now); `None`
    /// otherwise.
    #[allow(unsafe_code)]
    pub fn check_meta(
        &self,
        data: &[u8],
        offset: u64,
        len: u64,
    ) -> Result<Option<&[u8]>, VerityError> {
        let Some(copies) = &self.copies else {
            return Ok(None);
        };
        if len == 0 {
            return Ok(Some(&[]));
        }
        let end = self.covered_end(offset, len)?;
        let bits = self.params.data_block_size.trailing_zeros();
        for block in offset >> bits..=(end - 1) >> bits {
            if self.data_done.get(block) {
                continue;
            }
            let bytes = self.data_block(data, block).ok_or_else(|| {
                VerityError::Invalid(format!(
                    "{}: data block {block} is past the end",
                    self.data_path.display()
                ))
            })?;
            let start = (block << bits) as usize;
            copies.fill(
                block,
                start,
                bytes,
                || self.data_done.get(block),
                |copy| {
                    // Hashed after it was copied: the copy is what is read.
                    if self.params.digest(copy) != self.stored_digest(0, block, true)? {
                        return Err(self.mismatch("data", block, true));
                    }
                    self.data_done.set(block);
                    self.data_verified.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                },
            )?;
        }
        // SAFETY: every block of the range is marked: filled and verified.
        Ok(Some(unsafe { copies.slice(offset as usize, len as usize) }))
    }

    /// The tree's parameters.
    pub fn params(&self) -> &VerityParams {
        &self.params
    }

    /// Bytes of the data file the tree covers (whole data blocks).
    pub fn covered(&self) -> u64 {
        self.params.data_blocks * u64::from(self.params.data_block_size)
    }

    /// Counters so far.
    pub fn stats(&self) -> VerityStats {
        VerityStats {
            data_verified: self.data_verified.load(Ordering::Relaxed),
            hash_verified: self.hash_verified.load(Ordering::Relaxed),
            mismatches: self.mismatches.load(Ordering::Relaxed),
        }
    }

    /// Checks every data block touching `[offset, offset + len)` of `data`
    /// (the whole data file), hashing those not verified before. A range
    /// reaching past the covered blocks fails: those bytes have no hash.
    pub fn check(&self, data: &[u8], offset: u64, len: u64) -> Result<(), VerityError> {
        self.check_missed(data, offset, len).map(|_| ())
    }

    /// [`Verifier::check`], also telling whether any block had to be
    /// hashed now (it was not verified before).
    pub fn check_missed(&self, data: &[u8], offset: u64, len: u64) -> Result<bool, VerityError> {
        if len == 0 {
            return Ok(false);
        }
        let end = self.covered_end(offset, len)?;
        self.check_blocks(data, offset, end, true)
    }

    /// [`Verifier::check`] ahead of a reader, for [`VerifyAhead`]: the part
    /// of the range the tree covers, stopping quietly at a bad block (the
    /// read that needs it reports it).
    pub(super) fn check_ahead(&self, data: &[u8], offset: u64, len: u64) {
        let end = offset.saturating_add(len).min(self.covered());
        if offset < end {
            let _ = self.check_blocks(data, offset, end, false);
        }
    }

    /// Checks the blocks of `[offset, end)`; true when any was hashed now.
    fn check_blocks(
        &self,
        data: &[u8],
        offset: u64,
        end: u64,
        report: bool,
    ) -> Result<bool, VerityError> {
        let bits = self.params.data_block_size.trailing_zeros();
        let mut missed = false;
        for block in offset >> bits..=(end - 1) >> bits {
            if !self.data_done.get(block) {
                self.check_data_block(data, block, report)?;
                missed = true;
            }
        }
        Ok(missed)
    }

    fn check_data_block(&self, data: &[u8], block: u64, report: bool) -> Result<(), VerityError> {
        let expected = self.stored_digest(0, block, report)?;
        let bytes = self.data_block(data, block).ok_or_else(|| {
            VerityError::Invalid(format!(
                "{}: data block {block} is past the end",
                self.data_path.display()
            ))
        })?;
        if self.params.digest(bytes) != expected {
            return Err(self.mismatch("data", block, report));
        }
        self.data_done.set(block);
        self.data_verified.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The digest the tree stores for item `index` of `level` (level 0:
    /// data blocks; level n: hash blocks of level n - 1), after checking
    /// the hash block holding it. Recursion is bounded by the level count.
    fn stored_digest(
        &self,
        level: usize,
        index: u64,
        report: bool,
    ) -> Result<[u8; DIGEST_SIZE], VerityError> {
        let Some(holder) = self.levels.get(level) else {
            // Above the top: the root hash.
            return Ok(self.root);
        };
        let per_block_bits = (self.params.hash_block_size as usize / DIGEST_SIZE).ilog2();
        let block = holder.start + (index >> per_block_bits);
        let copy = self
            .hash_copies
            .get(block as usize)
            .ok_or_else(|| self.mismatch("hash", block, report))?;
        let verified = match copy.get() {
            Some(verified) => verified,
            None => {
                let expected = self.stored_digest(level + 1, index >> per_block_bits, report)?;
                // Hashed after it was copied: the copy is what is kept.
                let bytes = self.hash_block(block).unwrap_or_default();
                if self.params.digest(&bytes) != expected {
                    return Err(self.mismatch("hash", block, report));
                }
                self.hash_verified.fetch_add(1, Ordering::Relaxed);
                // Another thread may have set an equal copy meanwhile.
                let _ = copy.set(bytes);
                copy.get()
                    .ok_or_else(|| self.mismatch("hash", block, report))?
            }
        };
        let at = (index & ((1 << per_block_bits) - 1)) as usize * DIGEST_SIZE;
        let digest = verified
            .get(at..at + DIGEST_SIZE)
            .and_then(|d| <[u8; DIGEST_SIZE]>::try_from(d).ok());
        digest.ok_or_else(|| self.mismatch("hash", block, report))
    }

    /// A copy of hash block `block` (numbered from the superblock's block),
    /// if the file holds it (checked at open for every block of the tree).
    fn hash_block(&self, block: u64) -> Option<Box<[u8]>> {
        let size = u64::from(self.params.hash_block_size);
        let start = block
            .checked_sub(1)?
            .checked_mul(size)?
            .checked_add(self.tree_start)?;
        let start = usize::try_from(start).ok()?;
        self.hash
            .get(start..start.checked_add(size as usize)?)
            .map(Box::from)
    }

    /// Checks `copy`, whole data blocks starting with block `first`, copied
    /// out of the data file by the caller: each block is hashed now, whether
    /// or not it was verified before, so bytes that changed in the file
    /// since are never taken as good.
    pub fn check_copy(&self, copy: &[u8], first: u64) -> Result<(), VerityError> {
        self.check_copy_with(copy, first, true)
    }

    /// [`Verifier::check_copy`]; a mismatch is counted and logged when
    /// `report` (not ahead of readers: the read that needs it reports it).
    pub(super) fn check_copy_with(
        &self,
        copy: &[u8],
        first: u64,
        report: bool,
    ) -> Result<(), VerityError> {
        let size = self.params.data_block_size as usize;
        for (i, block) in copy.chunks(size).enumerate() {
            let index = first + i as u64;
            if block.len() != size || index >= self.params.data_blocks {
                return Err(VerityError::Invalid(format!(
                    "{}: data block {index} is past the end of what its verity tree covers",
                    self.data_path.display()
                )));
            }
            if self.params.digest(block) != self.stored_digest(0, index, report)? {
                return Err(self.mismatch("data", index, report));
            }
            self.data_verified.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn data_block<'a>(&self, data: &'a [u8], block: u64) -> Option<&'a [u8]> {
        let size = u64::from(self.params.data_block_size);
        let start = usize::try_from(block.checked_mul(size)?).ok()?;
        data.get(start..start.checked_add(size as usize)?)
    }

    /// The error for a bad block; counted and logged when `report`.
    fn mismatch(&self, what: &'static str, block: u64, report: bool) -> VerityError {
        let file = if what == "data" {
            &self.data_path
        } else {
            &self.hash_path
        };
        let err = VerityError::BadBlock {
            file: file.clone(),
            what,
            block,
        };
        if report {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
            tracing::error!("verity: {err}");
        }
        err
    }

    /// The data file this tree checks.
    pub fn data_path(&self) -> &Path {
        &self.data_path
    }

    /// Unmaps the tree from this process (its pages stay in the page
    /// cache): what reads have mapped of it would otherwise grow by 1/128
    /// of the data read.
    pub fn release_tree(&self) {
        crate::mmap::unmap(&self.hash, 0, self.hash.len() as u64);
    }
}
