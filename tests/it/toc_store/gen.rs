//! A test-only writer of zstd:chunked and eStargz blobs, following the
//! formats as containers/storage (pkg/chunked/compressor,
//! internal/minimal) and stargz-snapshotter (estargz) write them:
//!
//! - zstd:chunked: the tar as zstd frames, each regular file's data (or
//!   each chunk of it) in frames of its own, headers and padding in the
//!   frames between; then three skippable frames: the zstd-compressed TOC,
//!   the compressed tar-split (empty here) and the 64-byte footer
//!   (little-endian TOC offset, compressed and uncompressed length, type 1,
//!   the same three for the tar-split, `GNUlInUx`). TOC digest: sha256 of
//!   the compressed TOC.
//! - eStargz: the tar as gzip members, each file's data (each chunk)
//!   starting a member; the last member holds the tar entry
//!   `stargz.index.json` (the TOC) and the end-of-archive blocks; then the
//!   51-byte footer (an empty gzip member whose extra field `SG` holds
//!   `%016x` of the TOC member's offset and `STARGZ`). TOC digest: sha256
//!   of the JSON.
//!
//! Either decompresses, as a whole, to the same tar `tar_bytes` gives.

use std::io::Write;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// What an item is.
#[derive(Clone)]
pub enum Kind {
    Dir,
    Reg(Vec<u8>),
    Symlink(&'static str),
    Hardlink(&'static str),
    Char(u32, u32),
}

/// One tar entry.
#[derive(Clone)]
pub struct Item {
    pub path: &'static str,
    pub kind: Kind,
    pub mode: u32,
    /// Extended attributes, written as PAX `SCHILY.xattr.` records.
    pub xattrs: &'static [(&'static str, &'static [u8])],
}

/// A PAX record `LEN KEY=VALUE\n`.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = [b" ", key.as_bytes(), b"=", value, b"\n"].concat();
    let mut len = body.len() + 1;
    while (len.to_string().len() + body.len()) != len {
        len += 1;
    }
    [len.to_string().as_bytes(), &body].concat()
}

/// The PAX extended header of `item` (empty without xattrs).
fn pax_header(item: &Item) -> Vec<u8> {
    if item.xattrs.is_empty() {
        return Vec::new();
    }
    let records: Vec<u8> = item
        .xattrs
        .iter()
        .flat_map(|(k, v)| pax_record(&format!("SCHILY.xattr.{k}"), v))
        .collect();
    let mut h = tar::Header::new_ustar();
    h.set_path("PaxHeaders/x").unwrap();
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(records.len() as u64);
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_cksum();
    let pad = vec![0u8; (512 - records.len() % 512) % 512];
    [h.as_bytes().as_slice(), &records, &pad].concat()
}

/// A built blob.
pub struct Built {
    pub blob: Vec<u8>,
    pub toc_digest: String,
}

pub fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

const MTIME: u64 = 1_700_000_000;

/// The header, data and padding of `item`.
fn member(item: &Item) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut h = tar::Header::new_ustar();
    h.set_path(item.path).unwrap();
    h.set_mode(item.mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(0);
    let mut data = Vec::new();
    match &item.kind {
        Kind::Dir => h.set_entry_type(tar::EntryType::Directory),
        Kind::Reg(d) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(d.len() as u64);
            data = d.clone();
        }
        Kind::Symlink(t) => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_link_name(t).unwrap();
        }
        Kind::Hardlink(t) => {
            h.set_entry_type(tar::EntryType::Link);
            h.set_link_name(t).unwrap();
        }
        Kind::Char(ma, mi) => {
            h.set_entry_type(tar::EntryType::Char);
            h.set_device_major(*ma).unwrap();
            h.set_device_minor(*mi).unwrap();
        }
    }
    h.set_cksum();
    let pad = vec![0u8; (512 - data.len() % 512) % 512];
    (
        [pax_header(item), h.as_bytes().to_vec()].concat(),
        data,
        pad,
    )
}

/// The plain tar of `items`.
pub fn tar_bytes(items: &[Item]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        let (h, d, p) = member(item);
        out.extend(h);
        out.extend(d);
        out.extend(p);
    }
    out.extend([0u8; 1024]);
    out
}

/// The TOC entry of `item`, without data fields.
fn toc_entry(item: &Item) -> Value {
    let (kind, size, link) = match &item.kind {
        Kind::Dir => ("dir", 0, ""),
        Kind::Reg(d) => ("reg", d.len(), ""),
        Kind::Symlink(t) => ("symlink", 0, *t),
        Kind::Hardlink(t) => ("hardlink", 0, *t),
        Kind::Char(..) => ("char", 0, ""),
    };
    let mut e = json!({"type": kind, "name": item.path, "mode": item.mode,
                       "modtime": "2023-11-14T22:13:20Z"});
    if size > 0 {
        e["size"] = json!(size);
    }
    if !link.is_empty() {
        e["linkName"] = json!(link);
    }
    if !item.xattrs.is_empty() {
        use base64::Engine as _;
        let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
        let map: serde_json::Map<String, Value> = item
            .xattrs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(b64(v))))
            .collect();
        e["xattrs"] = Value::Object(map);
    }
    if let Kind::Char(ma, mi) = item.kind {
        e["devMajor"] = json!(ma);
        e["devMinor"] = json!(mi);
    }
    e
}

fn zstd_frame(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn skippable(out: &mut Vec<u8>, data: &[u8]) {
    out.extend(0x184D_2A50u32.to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out.extend(data);
}

/// A zstd:chunked blob of `items`, files split in chunks of `chunk` bytes;
/// `mutate` edits the TOC before it is compressed and digested.
pub fn zstd_chunked(items: &[Item], chunk: usize, mutate: impl FnOnce(&mut Value)) -> Built {
    let mut out = Vec::new();
    let mut pending = Vec::new();
    let mut entries = Vec::new();
    for item in items {
        let (h, data, pad) = member(item);
        pending.extend(h);
        let mut e = toc_entry(item);
        let mut chunks = Vec::new();
        if !data.is_empty() {
            out.extend(zstd_frame(&std::mem::take(&mut pending)));
            let start = out.len();
            for (i, piece) in data.chunks(chunk).enumerate() {
                let offset = out.len();
                out.extend(zstd_frame(piece));
                chunks.push(json!({"type": "chunk", "name": item.path, "offset": offset,
                    "chunkOffset": i * chunk, "chunkSize": piece.len(),
                    "chunkDigest": sha256(piece)}));
            }
            e["offset"] = json!(start);
            e["endOffset"] = json!(out.len());
            e["digest"] = json!(sha256(&data));
            pending.extend(pad);
        }
        if chunks.len() > 1 {
            for key in ["chunkSize", "chunkDigest"] {
                e[key] = chunks[0][key].clone();
            }
            entries.push(e);
            entries.extend(chunks.into_iter().skip(1));
        } else {
            entries.push(e);
        }
    }
    pending.extend([0u8; 1024]);
    out.extend(zstd_frame(&pending));
    let mut toc = json!({"version": 1, "entries": entries});
    mutate(&mut toc);
    let json = serde_json::to_vec(&toc).unwrap();
    let compressed = zstd_frame(&json);
    let toc_offset = out.len() as u64 + 8;
    skippable(&mut out, &compressed);
    let tar_split = zstd_frame(b"");
    let ts_offset = out.len() as u64 + 8;
    skippable(&mut out, &tar_split);
    let mut footer = Vec::new();
    for v in [
        toc_offset,
        compressed.len() as u64,
        json.len() as u64,
        1,
        ts_offset,
        tar_split.len() as u64,
        0,
    ] {
        footer.extend(v.to_le_bytes());
    }
    footer.extend(b"GNUlInUx");
    skippable(&mut out, &footer);
    Built {
        blob: out,
        toc_digest: sha256(&compressed),
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// An eStargz blob of `items`, files split in chunks of `chunk` bytes;
/// `mutate` edits the TOC before it is written and digested.
pub fn estargz(items: &[Item], chunk: usize, mutate: impl FnOnce(&mut Value)) -> Built {
    estargz_sharing(items, chunk, 0, mutate)
}

/// As [`estargz`], files smaller than `share_below` put in the member of
/// the data before them (at an `innerOffset`), as estargz's MinChunkSize
/// does.
pub fn estargz_sharing(
    items: &[Item],
    chunk: usize,
    share_below: usize,
    mutate: impl FnOnce(&mut Value),
) -> Built {
    let mut out = Vec::new();
    let mut pending = Vec::new();
    let mut pending_start = 0;
    let mut in_data_member = false;
    let mut entries = Vec::new();
    for item in items {
        let (h, data, pad) = member(item);
        pending.extend(h);
        let mut e = toc_entry(item);
        if data.is_empty() {
            entries.push(e);
            continue;
        }
        e["digest"] = json!(sha256(&data));
        let pieces: Vec<&[u8]> = data.chunks(chunk).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let shared = in_data_member && pieces.len() == 1 && piece.len() < share_below;
            let (offset, inner) = if shared {
                (pending_start, pending.len())
            } else {
                out.extend(gzip(&std::mem::take(&mut pending)));
                pending_start = out.len();
                (out.len(), 0)
            };
            in_data_member = true;
            let last = i + 1 == pieces.len();
            let mut c = if i == 0 {
                e.clone()
            } else {
                json!({"type": "chunk", "name": item.path})
            };
            c["offset"] = json!(offset);
            if inner > 0 {
                c["innerOffset"] = json!(inner);
            }
            c["chunkOffset"] = json!(i * chunk);
            if !last {
                c["chunkSize"] = json!(piece.len());
            }
            c["chunkDigest"] = json!(sha256(piece));
            pending.extend(*piece);
            entries.push(c);
        }
        pending.extend(pad);
    }
    out.extend(gzip(&std::mem::take(&mut pending)));
    let mut toc = json!({"version": 1, "entries": entries});
    mutate(&mut toc);
    let json = serde_json::to_vec_pretty(&toc).unwrap();
    let toc_offset = out.len() as u64;
    let mut h = tar::Header::new_ustar();
    h.set_path("stargz.index.json").unwrap();
    h.set_size(json.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut toc_tar = h.as_bytes().to_vec();
    toc_tar.extend(&json);
    toc_tar.extend(vec![0u8; (512 - json.len() % 512) % 512]);
    toc_tar.extend([0u8; 1024]);
    out.extend(gzip(&toc_tar));
    out.extend([
        0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
    ]);
    out.extend(format!("{toc_offset:016x}STARGZ").as_bytes());
    out.extend([1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    Built {
        blob: out,
        toc_digest: sha256(&json),
    }
}

/// A zstd:chunked blob of 1000 files of 100 KB (about 2:1 compressible) in
/// 20 directories, `chunk`-byte chunks, and its items: the measurement
/// helpers' layer.
pub fn thousand_files_zstd_chunked(chunk: usize) -> (Vec<Item>, Built) {
    let mut rng = crate::common::xorshift(100);
    let names: Vec<&'static str> = (0..1000)
        .map(|i| &*Box::leak(format!("data/d{}/f{i}", i / 50).into_boxed_str()))
        .collect();
    let items: Vec<Item> = names
        .iter()
        .map(|&path| Item {
            path,
            kind: Kind::Reg((0..100_000).map(|_| (rng() % 16) as u8 + b'a').collect()),
            mode: 0o644,
            xattrs: &[],
        })
        .collect();
    let built = zstd_chunked(&items, chunk, |_| {});
    (items, built)
}
