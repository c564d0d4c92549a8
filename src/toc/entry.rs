//! The TOC JSON: typed entries (the fields zstd:chunked's `FileMetadata` and
//! eStargz's `TOCEntry` share, plus each one's own offsets), and the checks
//! every entry passes before anything uses it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{bad, is_sha256, Format};
use crate::error::Result;

/// Most entries a TOC may hold (counted while parsing: an entry costs a
/// few hundred bytes parsed, 30 as JSON).
pub const MAX_ENTRIES: usize = 1 << 21;

/// Largest eStargz `innerOffset` (where a chunk starts in its member's
/// output; members are at most a chunk or a few small files).
pub const MAX_INNER_OFFSET: u64 = 1 << 30;

/// An entry's type, as both formats spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    /// A directory.
    Dir,
    /// A regular file (its first chunk when chunked).
    Reg,
    /// A symbolic link.
    Symlink,
    /// A hard link to `linkName`.
    Hardlink,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A named pipe.
    Fifo,
    /// A further chunk of the regular file before it.
    Chunk,
}

/// One TOC entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TocEntry {
    /// The type.
    #[serde(rename = "type")]
    pub kind: EntryType,
    /// The tar path, as in the tar.
    pub name: String,
    /// Symlink target or hard-link source.
    #[serde(default)]
    pub link_name: String,
    /// Permission bits (and setuid, setgid, sticky).
    #[serde(default)]
    pub mode: u64,
    /// File size (of the whole file for `reg`).
    #[serde(default)]
    pub size: u64,
    /// Owner.
    #[serde(default)]
    pub uid: u64,
    /// Group.
    #[serde(default)]
    pub gid: u64,
    /// Device major.
    #[serde(default)]
    pub dev_major: u64,
    /// Device minor.
    #[serde(default)]
    pub dev_minor: u64,
    /// Extended attributes, values base64.
    #[serde(default)]
    pub xattrs: BTreeMap<String, String>,
    /// `sha256:<hex>` of a regular file's whole contents (empty files: none).
    #[serde(default)]
    pub digest: String,
    /// Where the entry's compressed data starts in the blob.
    #[serde(default)]
    pub offset: u64,
    /// zstd:chunked: where the file's frames end.
    #[serde(default)]
    pub end_offset: u64,
    /// eStargz: where the chunk starts in its gzip member's output.
    #[serde(default)]
    pub inner_offset: u64,
    /// Offset of this chunk in the file.
    #[serde(default)]
    pub chunk_offset: u64,
    /// Size of this chunk (0: to the end of the file).
    #[serde(default)]
    pub chunk_size: u64,
    /// `sha256:<hex>` of this chunk.
    #[serde(default)]
    pub chunk_digest: String,
    /// zstd:chunked: "" (data) or "zeros".
    #[serde(default)]
    pub chunk_type: String,
    /// Modification time, RFC 3339 (see [`TocEntry::mtime`]).
    #[serde(default)]
    pub modtime: String,
}

#[derive(Deserialize)]
struct TocJson {
    version: u32,
    #[serde(deserialize_with = "bounded_entries")]
    entries: Vec<TocEntry>,
}

/// The `entries` array, refused once it holds more than [`MAX_ENTRIES`].
fn bounded_entries<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<TocEntry>, D::Error> {
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = Vec<TocEntry>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an array of at most {MAX_ENTRIES} entries")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut entries = Vec::new();
            while let Some(entry) = seq.next_element()? {
                if entries.len() == MAX_ENTRIES {
                    return Err(serde::de::Error::custom(format!(
                        "more than {MAX_ENTRIES} entries"
                    )));
                }
                entries.push(entry);
            }
            Ok(entries)
        }
    }
    d.deserialize_seq(Entries)
}

impl TocEntry {
    /// The path, normalized: components joined by `/`, without `.`,
    /// empty ones, a leading `/` or a trailing one; `None` when a component
    /// is `..`. The root is "".
    pub fn path(&self) -> Option<String> {
        normalize(&self.name)
    }

    /// The modification time as seconds and nanoseconds since the epoch;
    /// `None` when absent or not RFC 3339.
    pub fn mtime(&self) -> Option<(i64, u32)> {
        parse_rfc3339(&self.modtime)
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)` (what Go's
/// `time.Time` marshals to) into seconds and nanoseconds since the epoch.
pub fn parse_rfc3339(text: &str) -> Option<(i64, u32)> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = b.get(r)?;
        s.iter()
            .all(u8::is_ascii_digit)
            .then(|| std::str::from_utf8(s).ok()?.parse().ok())?
    };
    let seps = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if seps.iter().any(|&(i, c)| b.get(i) != Some(&c)) || !matches!(b.get(10), Some(b'T' | b't')) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut at = 19;
    let mut nsec = 0u32;
    if b.get(at) == Some(&b'.') {
        let digits = b[at + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let frac = num(at + 1..at + 1 + digits)? as u32;
        nsec = frac * 10u32.pow(9 - digits as u32);
        at += 1 + digits;
    }
    let offset = match b.get(at..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (num(at + 1..at + 3)?, num(at + 4..at + 6)?);
            let secs = h * 3600 + m * 60;
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    // Days from the civil date (proleptic Gregorian), March-based years.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((
        days * 86_400 + hour * 3600 + minute * 60 + second - offset,
        nsec,
    ))
}

/// `name` normalized as [`TocEntry::path`] says.
pub fn normalize(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            _ => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

/// Parses the TOC JSON and checks every entry: a known type, a path
/// without `..`, digests well formed, chunk and data ranges inside the file
/// and inside `[0, data_end)` of the blob.
pub(crate) fn parse(
    blob: &Path,
    json: &[u8],
    format: Format,
    data_end: u64,
) -> Result<Vec<TocEntry>> {
    let toc: TocJson =
        serde_json::from_slice(json).map_err(|e| bad(blob, format!("TOC JSON: {e}")))?;
    if toc.version != 1 {
        return Err(bad(blob, format!("TOC version {} is not 1", toc.version)));
    }
    if toc.entries.len() > MAX_ENTRIES {
        return Err(bad(
            blob,
            format!("TOC has more than {MAX_ENTRIES} entries"),
        ));
    }
    let mut file: Option<&TocEntry> = None;
    for e in &toc.entries {
        let at = |what: String| bad(blob, format!("TOC entry {:?}: {what}", e.name));
        let path = e.path().ok_or_else(|| at("a path with ..".into()))?;
        if path.is_empty() && e.kind != EntryType::Dir {
            return Err(at("the root is not a directory".into()));
        }
        for digest in [&e.digest, &e.chunk_digest] {
            if !digest.is_empty() && !is_sha256(digest) {
                return Err(at(format!("digest {digest:?} is not sha256:<hex>")));
            }
        }
        if e.kind == EntryType::Chunk {
            let reg = file
                .filter(|f| f.name == e.name)
                .ok_or_else(|| at("a chunk of no file".into()))?;
            check_chunk(e, reg.size, format, data_end).map_err(at)?;
            continue;
        }
        file = (e.kind == EntryType::Reg).then_some(e);
        if e.kind == EntryType::Reg && e.size > 0 {
            if e.digest.is_empty() {
                return Err(at("a file with data but no digest".into()));
            }
            check_chunk(e, e.size, format, data_end).map_err(at)?;
            if format == Format::ZstdChunked
                && !(e.offset < e.end_offset && e.end_offset <= data_end)
            {
                return Err(at(format!(
                    "frames [{}, {}) outside the blob's data ({data_end} bytes)",
                    e.offset, e.end_offset
                )));
            }
        }
    }
    Ok(toc.entries)
}

/// Checks a chunk's place in its file and its data's place in the blob.
fn check_chunk(
    e: &TocEntry,
    file_size: u64,
    format: Format,
    data_end: u64,
) -> std::result::Result<(), String> {
    let end = e.chunk_offset.checked_add(e.chunk_size);
    if end.is_none_or(|end| end > file_size) || e.chunk_offset >= file_size.max(1) {
        return Err(format!(
            "chunk [{}, +{}) outside the file's {file_size} bytes",
            e.chunk_offset, e.chunk_size
        ));
    }
    if e.offset >= data_end {
        return Err(format!(
            "data at {} outside the blob's data ({data_end} bytes)",
            e.offset
        ));
    }
    if format == Format::Estargz && e.inner_offset > MAX_INNER_OFFSET {
        return Err(format!("inner offset {} too large", e.inner_offset));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(
            parse_rfc3339("2024-02-29T12:34:56.5Z"),
            Some((1_709_210_096, 500_000_000))
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T13:34:56+01:00"),
            Some((1_709_210_096, 0))
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some((-1, 0)));
        for bad in [
            "",
            "2024-02-29",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn paths_are_normalized_and_dotdot_refused() {
        assert_eq!(normalize("./etc/hosts").as_deref(), Some("etc/hosts"));
        assert_eq!(normalize("/etc//x/").as_deref(), Some("etc/x"));
        assert_eq!(normalize("./").as_deref(), Some(""));
        assert_eq!(normalize("etc/../../x"), None);
    }

    #[test]
    fn entries_parse_with_either_formats_fields() {
        let json = br#"{"version":1,"entries":[
            {"type":"reg","name":"a","size":3,"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000",
             "offset":0,"endOffset":10,"accesstime":"x","userName":"root"},
            {"type":"socket","name":"b"}]}"#;
        let err = parse(Path::new("b"), json, Format::ZstdChunked, 100).unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `socket`"),
            "{err}"
        );
        let json = br#"{"version":1,"entries":[{"type":"reg","name":"a","size":-1}]}"#;
        assert!(parse(Path::new("b"), json, Format::Estargz, 100).is_err());
        let json = br#"{"version":2,"entries":[]}"#;
        let err = parse(Path::new("b"), json, Format::Estargz, 100).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
    }
}
