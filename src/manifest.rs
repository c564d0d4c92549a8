//! A manifest of an image's tree: one JSON object per path, with type,
//! mode, owner, mtime in nanoseconds, link count, size and sha256 of files,
//! symlink targets, device numbers and xattrs (hex values).
//!
//! The format is the one the test fixtures use (what a walk of a kernel
//! mount prints with Python's `json.dumps(sort_keys=True, ensure_ascii=False)`),
//! so a manifest of the image can be compared byte for byte with a manifest
//! of a mounted or extracted tree.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::inspect::{hex, kind_name};
use crate::reader::{FileKind, Image, Inode, WalkEntry, WalkVisitor};

/// Bytes hashed per read.
const HASH_CHUNK: u64 = 1 << 20;

/// Every manifest line of `image`'s tree, sorted by path.
pub fn manifest(image: &Image) -> Result<Vec<String>> {
    let mut collector = Collector {
        image,
        lines: Vec::new(),
    };
    image.walk(image.root()?, b"/", &mut collector)?;
    collector.lines.sort();
    Ok(collector.lines.into_iter().map(|(_, line)| line).collect())
}

struct Collector<'a> {
    image: &'a Image,
    /// (sort key, line).
    lines: Vec<(Vec<u32>, String)>,
}

impl WalkVisitor for Collector<'_> {
    fn visit(&mut self, entry: &WalkEntry) -> Result<()> {
        let line = manifest_line(self.image, &decode_name(&entry.path), &entry.inode)?;
        self.lines.push((code_points(&entry.path), line));
        Ok(())
    }
}

/// The code points Python sorts a decoded name by: UTF-8 characters, and
/// U+DC80..U+DCFF for each undecodable byte.
fn code_points(bytes: &[u8]) -> Vec<u32> {
    let mut out = Vec::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.extend(chunk.valid().chars().map(u32::from));
        out.extend(chunk.invalid().iter().map(|&b| 0xdc00 + u32::from(b)));
    }
    out
}

/// The manifest line of one entry.
pub fn manifest_line(image: &Image, path: &str, inode: &Inode) -> Result<String> {
    // Keys in sorted order, as json.dumps(sort_keys=True) writes them.
    let mut out = String::from("{");
    let _ = write!(
        out,
        "\"gid\": {}, \"mode\": \"{:04o}\", ",
        inode.gid,
        inode.permissions()
    );
    let mtime_ns = i128::from(inode.mtime) * 1_000_000_000 + i128::from(inode.mtime_nsec);
    let _ = write!(
        out,
        "\"mtime\": {mtime_ns}, \"nlink\": {}, \"path\": {}",
        inode.nlink,
        json_str(path)
    );
    if let FileKind::CharDevice(major, minor) | FileKind::BlockDevice(major, minor) = inode.kind {
        let _ = write!(out, ", \"rdev\": [{major}, {minor}]");
    }
    match inode.kind {
        FileKind::Regular => {
            let _ = write!(
                out,
                ", \"sha256\": \"{}\", \"size\": {}",
                file_sha256(image, inode)?,
                inode.size
            );
        }
        FileKind::Directory => out.push_str(", \"size\": null"),
        FileKind::Symlink => {
            let target = decode_name(&image.read_link(inode)?);
            let _ = write!(out, ", \"target\": {}", json_str(&target));
        }
        _ => {}
    }
    let _ = write!(
        out,
        ", \"type\": \"{}\", \"uid\": {}",
        kind_name(inode.kind),
        inode.uid
    );
    // What a mount shows: user.* on a symlink or special file is listed by
    // the kernel but cannot be read.
    let mut xattrs: Vec<(String, String)> = image
        .readable_xattrs(inode)?
        .into_iter()
        .map(|x| (decode_name(&x.name), hex(&x.value)))
        .collect();
    if !xattrs.is_empty() {
        xattrs.sort();
        let body: Vec<String> = xattrs
            .iter()
            .map(|(name, value)| format!("{}: \"{value}\"", json_str(name)))
            .collect();
        let _ = write!(out, ", \"xattrs\": {{{}}}", body.join(", "));
    }
    out.push('}');
    Ok(out)
}

/// The sha256 of a file's contents, hex.
fn file_sha256(image: &Image, inode: &Inode) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut offset = 0;
    while offset < inode.size {
        let bytes = image.read_range(inode, offset, HASH_CHUNK)?;
        if bytes.is_empty() {
            break;
        }
        hasher.update(&bytes);
        offset += bytes.len() as u64;
    }
    Ok(hex(&hasher.finalize()))
}

/// Decodes name bytes as Python's `os.fsdecode` does: UTF-8, with each
/// invalid byte mapped to a lone surrogate U+DC80..U+DCFF (surrogateescape).
/// Rust strings cannot hold lone surrogates, so they are kept as the
/// literal escape text `\udcXX`, which [`json_str`] passes through.
fn decode_name(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\u{0}udc{b:02x}");
        }
    }
    out
}

/// A JSON string literal as Python's json.dumps(ensure_ascii=False) writes
/// it. NUL never occurs in names, so it marks a pre-escaped surrogate.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\0' => out.push('\\'),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_match_python() {
        assert_eq!(json_str("a\"b\\c\n\u{1}é"), "\"a\\\"b\\\\c\\n\\u0001é\"");
        assert_eq!(json_str(&decode_name(b"x\xffy")), "\"x\\udcffy\"");
    }
}
