//! PAX records: an entry's attributes from its header, the global records
//! (`g` headers) and its own (`x` header), and the xattrs they carry.

use std::collections::BTreeMap;

use base64::Engine;

use super::stream::{shown, PaxRecords};
use crate::format::{xattr_entry_size, xattr_ibody_size, XATTR_IBODY_HEADER_SIZE};
use crate::mkfs::xattr;

/// Base64 as libarchive writes it (padding optional).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Most bytes of xattrs one inode holds: its inline area, whose size is
/// counted in a 16-bit field.
pub fn max_inline_xattrs() -> u64 {
    xattr_ibody_size(u16::MAX)
}

/// Attributes of one entry after its PAX records are applied.
#[derive(Default)]
pub struct Attrs {
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Extended attributes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Attrs {
    /// Size of the inline xattr area these xattrs need.
    pub fn xattr_size(&self) -> u64 {
        inline_size(&self.xattrs)
    }
}

/// The global PAX records (`g` headers) in force, merged as they come: one
/// value per key, and only keys that change an entry, so applying them to
/// each entry costs what that entry stores, not the number of records read.
#[derive(Default)]
pub struct Globals {
    records: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The xattrs they set, to bound what every later inode must hold.
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Globals {
    /// Merges the records of one `g` header (checked here, once).
    pub fn merge(&mut self, records: PaxRecords) -> Result<(), String> {
        for (key, value) in records {
            let mut scratch = Attrs::default();
            apply_pax(&mut scratch, &key, &value)?;
            let is_xattr =
                key.starts_with(b"SCHILY.xattr.") || key.starts_with(b"LIBARCHIVE.xattr.");
            let kept = match key.as_slice() {
                b"uid" | b"gid" | b"mtime" => true,
                // Left out (with a warning) when EROFS cannot store it.
                _ => is_xattr && !scratch.xattrs.is_empty(),
            };
            if kept {
                self.xattrs.append(&mut scratch.xattrs);
                self.records.insert(key, value);
            }
        }
        let size = inline_size(&self.xattrs);
        if size > max_inline_xattrs() {
            return Err(format!(
                "global PAX records set {size} bytes of xattrs on every later entry (an inode holds at most {})",
                max_inline_xattrs()
            ));
        }
        Ok(())
    }

    /// Applies the records to `attrs`.
    pub fn apply(&self, attrs: &mut Attrs) -> Result<(), String> {
        for (key, value) in &self.records {
            apply_pax(attrs, key, value)?;
        }
        Ok(())
    }
}

/// Size of the inline xattr area holding `xattrs` (each checked already).
fn inline_size(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>) -> u64 {
    if xattrs.is_empty() {
        return 0;
    }
    let entries: u64 = xattrs
        .iter()
        .filter_map(|(name, value)| {
            let (_, suffix) = xattr::split_name(name).ok()?;
            Some(xattr_entry_size(
                suffix.len() as u8,
                u16::try_from(value.len()).ok()?,
            ))
        })
        .sum();
    XATTR_IBODY_HEADER_SIZE + entries
}

/// Applies one PAX record to `attrs` (path, linkpath and size are the tar
/// reader's business).
pub fn apply_pax(attrs: &mut Attrs, key: &[u8], value: &[u8]) -> Result<(), String> {
    let text = || String::from_utf8_lossy(value).into_owned();
    let id = |field: &str| -> Result<u32, String> {
        text()
            .trim()
            .parse()
            .map_err(|_| format!("bad PAX {field} '{}'", shown(value)))
    };
    match key {
        b"uid" => attrs.uid = id("uid")?,
        b"gid" => attrs.gid = id("gid")?,
        b"mtime" => {
            (attrs.mtime, attrs.mtime_nsec) = parse_pax_time(&text())
                .ok_or_else(|| format!("bad PAX mtime '{}'", shown(value)))?;
        }
        _ => {
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                add_xattr(attrs, name.to_vec(), value.to_vec());
            } else if let Some(name) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
                // libarchive: the name %-escaped, the value base64.
                let name = percent_decode(name);
                let value = BASE64
                    .decode(value.trim_ascii())
                    .map_err(|_| format!("bad base64 value of PAX record {}", shown(key)))?;
                add_xattr(attrs, name, value);
            }
        }
    }
    Ok(())
}

/// Linux keeps user.* attributes on regular files and directories only (a
/// read elsewhere gives ENODATA, extraction cannot set them): they are left
/// out, with a warning, rather than stored where no one can read them.
pub fn drop_user_xattrs(xattrs: &mut BTreeMap<Vec<u8>, Vec<u8>>, path: &str) {
    xattrs.retain(|name, _| {
        let keep = !name.starts_with(b"user.");
        if !keep {
            tracing::warn!(
                "'{path}': xattr '{}' left out: user.* attributes exist only on files and directories",
                shown(name)
            );
        }
        keep
    });
}

/// Records an xattr, or logs why it is left out.
fn add_xattr(attrs: &mut Attrs, name: Vec<u8>, value: Vec<u8>) {
    match xattr::check(&name, &value) {
        Ok(()) => {
            attrs.xattrs.insert(name, value);
        }
        Err(why) => tracing::warn!("xattr '{}' left out: {why}", shown(&name)),
    }
}

/// `%XX` escapes decoded.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&String::from_utf8_lossy(&bytes[i + 1..i + 3]), 16)
            {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// A PAX time, `[-]SECONDS[.FRACTION]`, as seconds and nanoseconds
/// (nanoseconds always count forward from the seconds).
fn parse_pax_time(text: &str) -> Option<(i64, u32)> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, digit) in fraction.bytes().take(9).enumerate() {
        nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
    }
    Some(if !negative {
        (secs, nanos)
    } else if nanos == 0 {
        (-secs, 0)
    } else {
        (-secs - 1, 1_000_000_000 - nanos)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_parse_with_fractions_and_signs() {
        assert_eq!(parse_pax_time("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            parse_pax_time("1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time("1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time("abc"), None);
        assert_eq!(parse_pax_time("1.2e3"), None);
    }

    #[test]
    fn percent_escapes_decode() {
        assert_eq!(percent_decode(b"user.a%20b%3d"), b"user.a b=".to_vec());
        assert_eq!(percent_decode(b"100%"), b"100%".to_vec());
    }

    #[test]
    fn globals_keep_one_value_per_key_and_only_what_applies() {
        let mut globals = Globals::default();
        for i in 0..1000u32 {
            let records = vec![
                (b"uid".to_vec(), i.to_string().into_bytes()),
                (format!("comment{i}").into_bytes(), b"junk".to_vec()),
            ];
            globals.merge(records).unwrap();
        }
        assert_eq!(globals.records.len(), 1);
        let mut attrs = Attrs::default();
        globals.apply(&mut attrs).unwrap();
        assert_eq!(attrs.uid, 999);
        assert!(globals
            .merge(vec![(b"gid".to_vec(), b"x".to_vec())])
            .unwrap_err()
            .contains("bad PAX gid"));
    }
}
