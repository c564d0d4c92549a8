//! Structured mutation: every fixture, with one targeted corruption at a
//! time (superblock fields, inode fields, xattr headers and entries, the
//! chunk, block-map and lcluster indexes after an inode, dirent nids and
//! name offsets, directory cycles, device slots, block addresses past the
//! end), opened and checked whole with fsck (readdir and lookup of every
//! name, every inode, xattr, symlink and byte of data).
//!
//! Each case must end within a time bound, with errors or cleanly, never
//! with a panic, and its peak heap stays bounded. The number of cases per
//! fixture is `EROFS_FUSE_MUTATIONS` (default 160: about 4,000 in all; 16
//! without the `privileged` feature, the fast tier).

use crate::common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::mem::offset_of;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use erofs_fuse::device::Device;
use erofs_fuse::format::{
    DataLayout, DeviceSlot, Dirent, InodeCompact, InodeExtended, SuperBlock, XattrIbodyHeader,
    DEVICE_SLOT_SIZE, DIRENT_SIZE, SUPERBLOCK_OFFSET,
};
use erofs_fuse::fsck::{fsck, FsckLimits};
use erofs_fuse::reader::{WalkEntry, WalkVisitor};
use erofs_fuse::{Image, Inode};

/// Counts each thread's live heap bytes and their peak, so a case's memory
/// is measured on the thread that runs it.
struct CountingAlloc;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn count_alloc(size: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(size);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn count_free(size: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(size)));
}

#[allow(unsafe_code)]
// SAFETY: every call is passed on to the system allocator unchanged; the
// bookkeeping touches only const-initialized thread-locals, which never
// allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_alloc(layout.size());
        // SAFETY: the caller's contract, passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_alloc(layout.size());
        // SAFETY: the caller's contract, passed on unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count_free(layout.size());
        // SAFETY: the caller's contract, passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_free(layout.size());
        count_alloc(new_size);
        // SAFETY: the caller's contract, passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Longest a case may take (a debug build; real cases take milliseconds).
const CASE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most heap one case may use: the images are at most a few MB and the
/// extent cache's budget is below this.
const CASE_HEAP: usize = 96 << 20;
/// Compressed extents decode up to 12 MiB each; reading each file's first
/// part covers its map and indexes without decoding all of every file.
const LIMITS: FsckLimits = FsckLimits {
    max_entries: 1 << 20,
    max_file_bytes: 256 << 10,
    max_total_bytes: 64 << 20,
    max_problems: 16,
};

/// One corruption: bytes written at an offset of the image.
#[derive(Clone)]
struct Mutation {
    what: String,
    at: usize,
    bytes: Vec<u8>,
    /// Recompute the superblock checksum afterwards, so the corruption is
    /// seen by what it targets rather than by the checksum.
    fix_checksum: bool,
}

/// Values to try in a field of `width` bytes holding `old`.
fn values(old: u64, width: usize, rng: &mut impl FnMut() -> u64) -> Vec<(String, u64)> {
    let max = if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * width)) - 1
    };
    vec![
        ("0".into(), 0),
        ("max".into(), max),
        ("+1".into(), old.wrapping_add(1) & max),
        ("-1".into(), old.wrapping_sub(1) & max),
        ("top bit".into(), old ^ (1 << (8 * width - 1))),
        ("random".into(), rng() & max),
    ]
}

fn read_le(b: &[u8], at: usize, width: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(src) = b.get(at..at + width) {
        v[..width].copy_from_slice(src);
    }
    u64::from_le_bytes(v)
}

/// Every value of every field listed, at `base + offset`.
fn field_mutations(
    out: &mut Vec<Mutation>,
    image: &[u8],
    base: usize,
    label: &str,
    fields: &[(&str, usize, usize)],
    rng: &mut impl FnMut() -> u64,
) {
    for &(name, offset, width) in fields {
        let at = base + offset;
        let old = read_le(image, at, width);
        for (how, value) in values(old, width, rng) {
            out.push(Mutation {
                what: format!("{label} {name} = {how} ({value:#x})"),
                at,
                bytes: value.to_le_bytes()[..width].to_vec(),
                fix_checksum: true,
            });
        }
    }
}

/// What a walk of the good image tells about where things are.
#[derive(Default)]
struct Layout_ {
    /// (path, inode, its byte offset) of sampled inodes of each kind.
    inodes: Vec<(String, Inode, usize)>,
    /// (path, byte offset of its first dirent block, nid of its parent).
    dirs: Vec<(String, usize, u64)>,
    seen_kinds: std::collections::HashMap<(u8, bool, bool), usize>,
}

struct Surveyor<'a> {
    image: &'a Image,
    layout: Layout_,
    parents: Vec<u64>,
}

impl WalkVisitor for Surveyor<'_> {
    fn visit(&mut self, entry: &WalkEntry) -> erofs_fuse::Result<()> {
        let inode = &entry.inode;
        self.parents.truncate(entry.depth);
        let parent = self.parents.last().copied().unwrap_or(inode.nid.0);
        if inode.is_dir() {
            self.parents.push(inode.nid.0);
        }
        let Some(at) = inode.meta_offset() else {
            return Ok(());
        };
        let at = at as usize;
        let path = String::from_utf8_lossy(&entry.path).into_owned();
        // A few inodes of each (layout, kind, has-xattrs) sort.
        let key = (inode.layout as u8, inode.is_dir(), inode.xattr_size() > 0);
        let seen = self.layout.seen_kinds.entry(key).or_default();
        *seen += 1;
        if *seen <= 3 {
            self.layout.inodes.push((path.clone(), inode.clone(), at));
        }
        if inode.is_dir() && self.layout.dirs.len() < 12 {
            let block = self.image.block_size() as usize;
            let first = match inode.layout {
                DataLayout::FlatInline if inode.size < block as u64 => {
                    Some(at + (inode.inode_size() + inode.xattr_size()) as usize)
                }
                DataLayout::FlatPlain | DataLayout::FlatInline => {
                    let i_u = offset_of!(InodeCompact, i_u);
                    Some(read_le_u32_at(self.image, at + i_u) as usize * block)
                }
                _ => None,
            };
            if let Some(first) = first {
                self.layout.dirs.push((path, first, parent));
            }
        }
        Ok(())
    }
}

/// The raw u32 at `at` of the primary device, through the reader's own
/// bounds-checked access.
fn read_le_u32_at(image: &Image, at: usize) -> u32 {
    image
        .devices()
        .resolve(0, at as u64)
        .and_then(|(dev, pa)| dev.slice(pa, 4))
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// The targeted corruptions of one image.
fn mutations(image: &Image, bytes: &[u8], seed: u64) -> Vec<Mutation> {
    let mut rng = xorshift(seed);
    let mut out = Vec::new();
    let sb = SUPERBLOCK_OFFSET as usize;
    macro_rules! fields {
        ($ty:ty: $($f:ident),* $(,)?) => {
            [$((stringify!($f), offset_of!($ty, $f), std::mem::size_of_val(&<$ty as zerocopy::FromZeros>::new_zeroed().$f))),*]
        };
    }
    let sb_fields = fields!(SuperBlock: magic, feature_compat, blkszbits, sb_extslots, rootnid_2b,
        inos, blocks_lo, meta_blkaddr, xattr_blkaddr, feature_incompat,
        compr_algs_or_lz4_distance, extra_devices, devt_slotoff, dirblkbits,
        xattr_prefix_count, xattr_prefix_start, packed_nid, rootnid_8b);
    field_mutations(&mut out, bytes, sb, "superblock", &sb_fields, &mut rng);
    // The checksum itself, left wrong.
    out.push(Mutation {
        what: "superblock checksum flipped".into(),
        at: sb + offset_of!(SuperBlock, checksum),
        bytes: vec![!bytes[sb + 4]],
        fix_checksum: false,
    });

    let mut survey = Surveyor {
        image,
        layout: Layout_::default(),
        parents: Vec::new(),
    };
    let root = image.root().expect("the good image's root");
    image
        .walk(root, b"/", &mut survey)
        .expect("the good image walks");
    let layout = survey.layout;

    let compact = fields!(InodeCompact: i_format, i_xattr_icount, i_mode, i_nb, i_size, i_u);
    let extended = fields!(InodeExtended: i_format, i_xattr_icount, i_mode, i_nb, i_size, i_u);
    for (path, inode, at) in &layout.inodes {
        let label = format!("inode {} ({path})", inode.nid);
        let fields: &[(&str, usize, usize)] = if inode.extended { &extended } else { &compact };
        field_mutations(&mut out, bytes, *at, &label, fields, &mut rng);
        // What follows the core: xattrs, then the chunk/block map,
        // compression map and indexes, or inline data.
        let core = *at + inode.inode_size() as usize;
        if inode.xattr_size() > 12 {
            let shared = core + offset_of!(XattrIbodyHeader, h_shared_count);
            for value in [0xffu8, 0x7f, 1] {
                out.push(Mutation {
                    what: format!("{label} xattr shared count = {value}"),
                    at: shared,
                    bytes: vec![value],
                    fix_checksum: true,
                });
            }
            for i in 0..4 {
                let offset =
                    12 + rng() as usize % (inode.xattr_size() as usize).saturating_sub(12).max(1);
                out.push(Mutation {
                    what: format!("{label} xattr body byte {offset} #{i}"),
                    at: core + offset,
                    bytes: vec![rng() as u8],
                    fix_checksum: true,
                });
            }
        }
        let after = core + inode.xattr_size() as usize;
        for i in 0..6 {
            let offset = rng() as usize % 256;
            let value = match i % 3 {
                0 => 0xff,
                1 => 0,
                _ => rng() as u8,
            };
            out.push(Mutation {
                what: format!("{label} map/index/inline byte {offset} = {value:#x}"),
                at: after + offset,
                bytes: vec![value],
                fix_checksum: true,
            });
        }
    }

    for (path, first, parent) in &layout.dirs {
        let count = read_le(bytes, first + offset_of!(Dirent, nameoff), 2) as usize / DIRENT_SIZE;
        for i in 0..count.clamp(1, 8) {
            let entry = first + i * DIRENT_SIZE;
            let label = format!("dir {path} dirent {i}");
            let dirent = fields!(Dirent: nid, nameoff, file_type);
            field_mutations(&mut out, bytes, entry, &label, &dirent, &mut rng);
            // Point a named entry (not `.` or `..`, which walks skip by
            // name) at the root and at its parent: cycles.
            let nameoff = read_le(bytes, entry + offset_of!(Dirent, nameoff), 2) as usize;
            if bytes.get(first + nameoff) == Some(&b'.') {
                continue;
            }
            let root_nid = image.superblock().root_nid.0;
            for (whom, nid) in [("root", root_nid), ("parent", *parent)] {
                out.push(Mutation {
                    what: format!("{label} nid = {whom} ({nid})"),
                    at: entry + offset_of!(Dirent, nid),
                    bytes: nid.to_le_bytes().to_vec(),
                    fix_checksum: true,
                });
            }
        }
    }

    let sbv = image.superblock();
    for slot in 0..usize::from(sbv.extra_devices) {
        let at = usize::from(sbv.devt_slotoff) * DEVICE_SLOT_SIZE as usize
            + slot * DEVICE_SLOT_SIZE as usize;
        let slot_fields = fields!(DeviceSlot: blocks_lo, uniaddr_lo, blocks_hi, uniaddr_hi);
        field_mutations(
            &mut out,
            bytes,
            at,
            &format!("device slot {slot}"),
            &slot_fields,
            &mut rng,
        );
    }

    // Random bytes of the metadata area, with and without the checksum.
    let meta = (sbv.meta_blkaddr as usize) << sbv.block_bits;
    for i in 0..16 {
        let span = bytes.len().saturating_sub(meta).clamp(1, 1 << 16);
        out.push(Mutation {
            what: format!("metadata byte flip #{i}"),
            at: meta + rng() as usize % span,
            bytes: vec![rng() as u8 | 1],
            fix_checksum: i % 4 != 0,
        });
    }
    out.retain(|m| m.at + m.bytes.len() <= bytes.len());
    out
}

/// Recomputes the superblock checksum (as mkfs does) when the block size
/// field is still sane.
fn fix_checksum_if_possible(b: &mut [u8]) {
    let bits = b[SUPERBLOCK_OFFSET as usize + offset_of!(SuperBlock, blkszbits)];
    if (9..=16).contains(&bits) && b.len() >= (1usize << bits).max(2048) {
        fix_checksum(b);
    }
}

/// What one case did.
struct Outcome {
    opened: bool,
    problems: u64,
    heap: usize,
    took: Duration,
}

/// Runs `f` and measures the most heap it held on this thread (the nydus
/// sweep in nydus.rs uses it too).
pub(crate) fn heap_peak<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get).saturating_sub(base))
}

/// Opens `bytes` (with `devices`) and fscks it, measuring the heap.
fn run_case(name: &str, bytes: &[u8], devices: &[Vec<u8>]) -> Outcome {
    let start = Instant::now();
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let primary = Device::from_bytes(Path::new(name), bytes).expect("an anonymous map");
    let extra = devices
        .iter()
        .map(|d| Device::from_bytes(Path::new("device"), d).expect("an anonymous map"))
        .collect();
    let (opened, problems) = match Image::from_devices(primary, extra) {
        Ok(image) => (true, fsck(&image, &LIMITS).problem_count),
        Err(_) => (false, 1),
    };
    Outcome {
        opened,
        problems,
        heap: PEAK.with(Cell::get).saturating_sub(base),
        took: start.elapsed(),
    }
}

#[test]
fn targeted_corruptions_of_every_fixture_end_in_errors_not_panics() {
    let per_fixture: usize = std::env::var("EROFS_FUSE_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        // The default tier runs a tenth of the sweep; the full one (160 a
        // fixture) runs with the privileged tier.
        .unwrap_or(if cfg!(feature = "privileged") {
            160
        } else {
            16
        });
    // Each fixture's cases, chosen up front on this thread.
    let mut jobs = Vec::new();
    for (index, f) in FIXTURES.iter().enumerate() {
        let bytes = std::fs::read(fixture(f.image)).unwrap();
        let devices: Vec<Vec<u8>> = f
            .devices
            .iter()
            .map(|d| std::fs::read(fixture(d)).unwrap())
            .collect();
        let image = open_fixture(f);
        let mut all = mutations(&image, &bytes, 0x9e37_79b9 + index as u64);
        let total = all.len();
        // An even spread over the kinds of corruption.
        let step = (total / per_fixture.max(1)).max(1);
        all = all.into_iter().step_by(step).take(per_fixture).collect();
        jobs.push((f.image, bytes, devices, all, total));
    }

    let (tx, rx) = mpsc::channel::<(String, Result<Outcome, String>)>();
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4);
    let queue = std::sync::Mutex::new(
        jobs.iter()
            .flat_map(|(name, bytes, devices, cases, _)| {
                cases
                    .iter()
                    .map(move |m| (*name, bytes, devices, m.clone()))
            })
            .collect::<Vec<_>>(),
    );
    let cases = queue.lock().unwrap().len();
    // What each worker is on, to name a case that hangs.
    let running = std::sync::Mutex::new(vec![String::new(); workers]);
    let mut failures = Vec::new();
    let mut opened = 0;
    let mut clean = 0;
    let mut slowest = (Duration::ZERO, String::new());
    let mut heaviest = (0usize, String::new());
    std::thread::scope(|s| {
        for worker in 0..workers {
            let tx = tx.clone();
            let (queue, running) = (&queue, &running);
            s.spawn(move || loop {
                let Some((name, bytes, devices, m)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let label = format!("{name}: {}", m.what);
                running.lock().unwrap()[worker] = label.clone();
                let mut image = bytes.clone();
                image[m.at..m.at + m.bytes.len()].copy_from_slice(&m.bytes);
                if m.fix_checksum {
                    fix_checksum_if_possible(&mut image);
                }
                let result =
                    std::panic::catch_unwind(|| run_case(name, &image, devices)).map_err(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default()
                    });
                if tx.send((label, result)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for _ in 0..cases {
            // A case that never reports is a hang (or a deadlock).
            let Ok((label, result)) = rx.recv_timeout(CASE_TIMEOUT) else {
                // The scope would wait for the stuck worker forever: end
                // the whole test process instead.
                let stuck = running.lock().map(|r| r.join("; ")).unwrap_or_default();
                eprintln!(
                    "mutation: no case finished within {CASE_TIMEOUT:?}: a hang in one of: {stuck}"
                );
                std::process::exit(101);
            };
            match result {
                Err(message) => failures.push(format!("{label}: PANIC {message}")),
                Ok(o) => {
                    if o.took > CASE_TIMEOUT {
                        failures.push(format!("{label}: took {:?}", o.took));
                    }
                    if o.heap > CASE_HEAP {
                        failures.push(format!("{label}: {} MiB of heap", o.heap >> 20));
                    }
                    opened += usize::from(o.opened);
                    clean += usize::from(o.problems == 0);
                    if o.took > slowest.0 {
                        slowest = (o.took, label.clone());
                    }
                    if o.heap > heaviest.0 {
                        heaviest = (o.heap, label);
                    }
                }
            }
        }
    });
    let available: usize = jobs.iter().map(|j| j.4).sum();
    eprintln!(
        "mutation: {cases} cases (of {available} built) over {} fixtures: {opened} opened, {} with errors, {clean} read clean; slowest {:?} ({}), most heap {} KiB ({})",
        jobs.len(),
        cases - clean,
        slowest.0,
        slowest.1,
        heaviest.0 >> 10,
        heaviest.1
    );
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The corruptions must reach the parser: most cases find a problem.
    assert!(
        cases >= FIXTURES.len() * per_fixture.min(100),
        "only {cases} cases built"
    );
    assert!(
        cases - clean > cases / 2,
        "only {} of {cases} corruptions were noticed",
        cases - clean
    );
}

#[test]
fn unmodified_fixtures_check_clean() {
    // The check itself: a good image has no problems to report.
    for f in FIXTURES {
        let image = open_fixture(f);
        let report = fsck(&image, &FsckLimits::default());
        assert!(
            report.is_clean(),
            "{}: {:?}",
            f.image,
            report.problems.first()
        );
        assert!(
            report.entries > 100,
            "{}: only {} entries",
            f.image,
            report.entries
        );
    }
}
