//! The zinfo file: AWS SOCI's gzip index (version 2, as mkfs.erofs 1.9
//! `--gzinfo` writes it, lib/gzran.c), little-endian and packed:
//! a 12-byte header (le32 `have`, le64 `span`), then `have` checkpoints of
//! le64 `in` (byte offset in the .gz file), le64 `out` (offset in the
//! uncompressed stream), u8 `bits` (the block starts `bits` bits before
//! byte `in`) and the 32 KiB of output preceding `out`. A file one
//! checkpoint shorter is version 1, whose first checkpoint (in=10, out=0,
//! bits=0, empty window) is implied.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub use super::windows::{LazyWindows, WindowSource};
use super::GzError;

/// Bytes of history kept with each checkpoint (deflate's window).
pub const WINDOW: usize = 32768;
/// mkfs.erofs's span (fixed in its lib/tar.c), which `convert` uses too.
pub const DEFAULT_SPAN: u64 = 4 << 20;
/// The largest span accepted: a bigger one is not an index.
pub const MAX_SPAN: u64 = 1 << 30;
/// The largest zinfo file read (1 GiB: 32k checkpoints, a 128 GiB layer at
/// mkfs's span).
pub const MAX_FILE: u64 = 1 << 30;

/// The header as stored.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawHeader {
    have: U32,
    span: U64,
}

/// A checkpoint's fixed part as stored; its window follows.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawCheckpoint {
    input: U64,
    out: U64,
    bits: u8,
}

const HEADER: usize = std::mem::size_of::<RawHeader>();
/// Bytes of a checkpoint's fixed part (le64 in, le64 out, u8 bits).
pub const FIXED: usize = std::mem::size_of::<RawCheckpoint>();
const ENTRY: usize = FIXED + WINDOW;

/// A place to resume inflating.
#[derive(Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Byte offset in the gzip file of the first whole byte of the block.
    pub input: u64,
    /// Offset in the uncompressed stream.
    pub out: u64,
    /// Bits of the block in the byte before `input` (its top bits), 0..=7.
    pub bits: u8,
    /// The [`WINDOW`] bytes of output before `out` (the dictionary).
    pub window: Box<[u8]>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Checkpoint(in={} out={} bits={})",
            self.input, self.out, self.bits
        )
    }
}

impl Checkpoint {
    /// The checkpoint stored at the start of `bytes`, with the window that
    /// follows it when `with_window` (else an empty one, fetched later).
    fn read(bytes: &[u8], with_window: bool) -> Result<Self, String> {
        let (raw, window) = RawCheckpoint::read_from_prefix(bytes)
            .map_err(|_| "checkpoint cut short".to_string())?;
        Ok(Self {
            input: raw.input.get(),
            out: raw.out.get(),
            bits: raw.bits,
            window: match with_window {
                true => window.into(),
                false => Box::default(),
            },
        })
    }
}

/// A parsed, validated zinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zinfo {
    /// The span the index was built with (informational for readers).
    pub span: u64,
    /// Checkpoints: the first at output 0, `input` strictly and `out`
    /// weakly increasing.
    pub checkpoints: Vec<Checkpoint>,
    /// Where the windows come from when they are read on demand (the
    /// checkpoints' own windows are then empty): see [`Zinfo::from_table`].
    pub lazy: Option<LazyWindows>,
}

impl Zinfo {
    /// Reads and parses the zinfo file at `path`.
    pub fn open(path: &Path) -> Result<Self, GzError> {
        let err = |m: String| GzError::new(path.display(), m);
        let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| err(e.to_string()))?;
        if bytes.len() as u64 > MAX_FILE {
            return Err(err(format!("larger than {MAX_FILE} bytes: not a zinfo")));
        }
        Self::parse(&bytes).map_err(err)
    }

    /// Parses and validates a zinfo held in memory.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let (header, rest) = RawHeader::read_from_prefix(bytes).map_err(|_| {
            format!(
                "{} bytes: shorter than the {HEADER}-byte header",
                bytes.len()
            )
        })?;
        let have = u64::from(header.have.get());
        let span = header.span.get();
        if span == 0 || span > MAX_SPAN {
            return Err(format!("span {span}: not in 1..={MAX_SPAN}"));
        }
        let stored = rest.len() / ENTRY;
        if rest.len() % ENTRY != 0 {
            return Err(format!(
                "{} bytes: not a header and whole {ENTRY}-byte checkpoints",
                bytes.len()
            ));
        }
        let implied = if stored as u64 == have {
            false
        } else if have >= 1 && stored as u64 == have - 1 {
            true // version 1
        } else {
            return Err(format!(
                "header says {have} checkpoints, the file holds {stored}"
            ));
        };
        let mut checkpoints = Vec::with_capacity(stored + usize::from(implied));
        if implied {
            checkpoints.push(Checkpoint {
                input: 10,
                out: 0,
                bits: 0,
                window: vec![0; WINDOW].into_boxed_slice(),
            });
        }
        for entry in rest.chunks_exact(ENTRY) {
            checkpoints.push(Checkpoint::read(entry, true)?);
        }
        let zinfo = Self {
            span,
            checkpoints,
            lazy: None,
        };
        zinfo.validate()?;
        Ok(zinfo)
    }

    /// A zinfo whose checkpoints are `table` (their fixed parts, as a
    /// version 2 file stores them, one after another) and whose windows
    /// `source` gives when a reader first needs them: for a remote zinfo,
    /// so that only the windows of the spans read are fetched.
    pub fn from_table(
        span: u64,
        table: &[u8],
        source: Arc<dyn WindowSource>,
    ) -> Result<Self, String> {
        if !table.len().is_multiple_of(FIXED) || table.is_empty() {
            return Err(format!("a checkpoint table of {} bytes", table.len()));
        }
        let mut checkpoints = Vec::with_capacity(table.len() / FIXED);
        for fixed in table.chunks_exact(FIXED) {
            checkpoints.push(Checkpoint::read(fixed, false)?);
        }
        let lazy = Some(LazyWindows::new(source, checkpoints.len()));
        let zinfo = Self {
            span,
            checkpoints,
            lazy,
        };
        zinfo.validate()?;
        Ok(zinfo)
    }

    /// The fixed parts of the checkpoints, as [`Zinfo::from_table`] takes
    /// them.
    pub fn table(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.checkpoints.len() * FIXED);
        for cp in &self.checkpoints {
            let raw = RawCheckpoint {
                input: U64::new(cp.input),
                out: U64::new(cp.out),
                bits: cp.bits,
            };
            out.extend_from_slice(raw.as_bytes());
        }
        out
    }

    /// Byte offset of checkpoint `index`'s entry in a version 2 file.
    pub fn entry_offset(index: usize) -> u64 {
        (HEADER + index * ENTRY) as u64
    }

    /// The length of a version 2 file of `checkpoints` checkpoints.
    pub fn file_len(checkpoints: usize) -> u64 {
        Self::entry_offset(checkpoints)
    }

    /// Checkpoint `index`'s window: its own, or fetched now from the lazy
    /// source (once).
    pub fn window(&self, index: usize) -> Result<&[u8], String> {
        let cp = &self.checkpoints[index];
        if !cp.window.is_empty() {
            return Ok(&cp.window);
        }
        match &self.lazy {
            Some(lazy) => lazy.get(index),
            None => Err(format!("checkpoint {index} has no window")),
        }
    }

    /// Checkpoint `index`'s window if it is at hand (not to be fetched).
    pub fn window_if_loaded(&self, index: usize) -> Option<&[u8]> {
        let cp = &self.checkpoints[index];
        if !cp.window.is_empty() {
            return Some(&cp.window);
        }
        self.lazy.as_ref()?.loaded(index)
    }

    /// Checks the checkpoints: at least one, the first at output 0, `bits`
    /// 0..=7 (and a byte before `input` when non-zero), `input` strictly
    /// and `out` weakly increasing.
    pub fn validate(&self) -> Result<(), String> {
        let first = self.checkpoints.first().ok_or("no checkpoints")?;
        if first.out != 0 {
            return Err(format!("checkpoint 0 is at output {}, not 0", first.out));
        }
        for (i, cp) in self.checkpoints.iter().enumerate() {
            if cp.bits > 7 {
                return Err(format!("checkpoint {i}: bits {} (0..=7)", cp.bits));
            }
            if cp.bits > 0 && cp.input == 0 {
                return Err(format!("checkpoint {i}: bits {} before byte 0", cp.bits));
            }
            let lazy = self.lazy.is_some() && cp.window.is_empty();
            if cp.window.len() != WINDOW && !lazy {
                return Err(format!(
                    "checkpoint {i}: window of {} bytes",
                    cp.window.len()
                ));
            }
            if i > 0 {
                let prev = &self.checkpoints[i - 1];
                if cp.input <= prev.input || cp.out < prev.out {
                    return Err(format!(
                        "checkpoint {i} (in {} out {}) does not follow checkpoint {} (in {} out {})",
                        cp.input,
                        cp.out,
                        i - 1,
                        prev.input,
                        prev.out
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks that every checkpoint lies inside a gzip file of `len` bytes.
    pub fn check_fits(&self, len: u64) -> Result<(), String> {
        match self.checkpoints.last() {
            Some(last) if last.input >= len => Err(format!(
                "checkpoint at byte {} of a {len}-byte gzip file",
                last.input
            )),
            _ => Ok(()),
        }
    }

    /// The index of the last checkpoint at or before output `offset`.
    pub fn checkpoint_for(&self, offset: u64) -> usize {
        self.checkpoints
            .partition_point(|cp| cp.out <= offset)
            .saturating_sub(1)
    }

    /// The file as mkfs.erofs writes it (version 2).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.checkpoints.len() * ENTRY);
        let header = RawHeader {
            have: U32::new(self.checkpoints.len() as u32),
            span: U64::new(self.span),
        };
        out.extend_from_slice(header.as_bytes());
        for cp in &self.checkpoints {
            let raw = RawCheckpoint {
                input: U64::new(cp.input),
                out: U64::new(cp.out),
                bits: cp.bits,
            };
            out.extend_from_slice(raw.as_bytes());
            out.extend_from_slice(&cp.window);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 zinfo of `checkpoints` (in, out, bits), windows filled with `i`.
    fn file(span: u64, checkpoints: &[(u64, u64, u8)]) -> Vec<u8> {
        Zinfo {
            span,
            checkpoints: checkpoints
                .iter()
                .enumerate()
                .map(|(i, &(input, out, bits))| Checkpoint {
                    input,
                    out,
                    bits,
                    window: vec![i as u8; WINDOW].into(),
                })
                .collect(),
            lazy: None,
        }
        .to_bytes()
    }

    fn error(bytes: &[u8]) -> String {
        Zinfo::parse(bytes).unwrap_err()
    }

    #[test]
    fn v2_round_trips() {
        let bytes = file(DEFAULT_SPAN, &[(10, 0, 0), (5000, 4_200_000, 3)]);
        assert_eq!(bytes.len(), 12 + 2 * 32785);
        let zinfo = Zinfo::parse(&bytes).unwrap();
        assert_eq!(zinfo.span, DEFAULT_SPAN);
        assert_eq!(zinfo.checkpoints[1].input, 5000);
        assert_eq!(zinfo.checkpoints[1].bits, 3);
        assert!(zinfo.checkpoints[1].window.iter().all(|&b| b == 1));
        assert_eq!(zinfo.to_bytes(), bytes);
        assert_eq!(zinfo.checkpoint_for(0), 0);
        assert_eq!(zinfo.checkpoint_for(4_199_999), 0);
        assert_eq!(zinfo.checkpoint_for(4_200_000), 1);
        assert_eq!(zinfo.checkpoint_for(u64::MAX), 1);
    }

    #[test]
    fn v1_has_an_implied_first_checkpoint() {
        let mut bytes = file(DEFAULT_SPAN, &[(5000, 4_200_000, 3)]);
        bytes[0] = 2; // have = 2, one stored
        let zinfo = Zinfo::parse(&bytes).unwrap();
        assert_eq!(zinfo.checkpoints.len(), 2);
        let first = &zinfo.checkpoints[0];
        assert_eq!((first.input, first.out, first.bits), (10, 0, 0));
        assert_eq!(zinfo.checkpoints[1].out, 4_200_000);
    }

    #[test]
    fn malformed_files_are_refused() {
        let good = file(DEFAULT_SPAN, &[(10, 0, 0), (5000, 4_200_000, 3)]);
        assert!(error(&good[..11]).contains("shorter than the 12-byte header"));
        assert!(error(&good[..good.len() - 1]).contains("whole 32785-byte checkpoints"));
        assert!(error(&good[..12]).contains("header says 2 checkpoints, the file holds 0"));
        let mut counts = good.clone();
        counts[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(error(&counts).contains("header says 4294967295"));
        let mut zero = good.clone();
        zero[..4].copy_from_slice(&0u32.to_le_bytes());
        assert!(error(&zero[..12]).contains("no checkpoints"));
        for span in [0, MAX_SPAN + 1, u64::MAX] {
            assert!(error(&file(span, &[(10, 0, 0)])).contains("span"));
        }
        let bits8 = file(DEFAULT_SPAN, &[(10, 0, 0), (5000, 4_200_000, 8)]);
        assert!(error(&bits8).contains("bits 8 (0..=7)"));
        let bits_at_0 = file(DEFAULT_SPAN, &[(0, 0, 1)]);
        assert!(error(&bits_at_0).contains("before byte 0"));
        let not_at_0 = file(DEFAULT_SPAN, &[(10, 5, 0)]);
        assert!(error(&not_at_0).contains("not 0"));
        for (a, b) in [
            ((5000, 100), (5000, 200)),
            ((5000, 200), (6000, 100)),
            ((5000, 1), (4000, 2)),
        ] {
            let bytes = file(DEFAULT_SPAN, &[(10, 0, 0), (a.0, a.1, 0), (b.0, b.1, 0)]);
            assert!(error(&bytes).contains("does not follow"), "{a:?} {b:?}");
        }
        let huge = file(DEFAULT_SPAN, &[(10, 0, 0), (u64::MAX, u64::MAX, 7)]);
        let zinfo = Zinfo::parse(&huge).unwrap();
        assert!(zinfo
            .check_fits(1 << 40)
            .unwrap_err()
            .contains("checkpoint at byte"));
    }

    #[test]
    fn open_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.zinfo");
        std::fs::write(&path, b"short").unwrap();
        let err = Zinfo::open(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: ", path.display())), "{err}");
        assert!(!err.contains('\n'));
    }
}
