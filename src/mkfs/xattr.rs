//! Inline xattr areas: the header and one entry per attribute.

use std::collections::BTreeMap;

use zerocopy::little_endian::{U16, U32};
use zerocopy::IntoBytes;

use crate::format::{
    xattr_short_prefix, XattrEntry, XattrIbodyHeader, NAME_LEN_MAX, XATTR_IBODY_HEADER_SIZE,
};

/// Why an attribute cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XattrError {
    /// The name starts with none of the prefixes EROFS can index.
    UnknownPrefix,
    /// The name after its prefix is longer than 255 bytes.
    NameTooLong,
    /// The value is longer than 65535 bytes.
    ValueTooLong,
}

impl std::fmt::Display for XattrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::UnknownPrefix => "its namespace is not one EROFS stores (user., trusted., security., system.posix_acl_*)",
            Self::NameTooLong => "its name is longer than 255 bytes after the namespace prefix",
            Self::ValueTooLong => "its value is longer than 65535 bytes",
        })
    }
}

/// The short prefix index and the name suffix for a full attribute name.
pub fn split_name(name: &[u8]) -> Result<(u8, &[u8]), XattrError> {
    // The two ACL names are whole prefixes: try them before "system.".
    let mut best: Option<(u8, usize)> = None;
    for index in 1..=6u8 {
        let Some(prefix) = xattr_short_prefix(index) else {
            continue;
        };
        if name.starts_with(prefix.as_bytes()) && best.is_none_or(|(_, len)| prefix.len() > len) {
            best = Some((index, prefix.len()));
        }
    }
    let (index, len) = best.ok_or(XattrError::UnknownPrefix)?;
    let suffix = &name[len..];
    if suffix.len() > NAME_LEN_MAX {
        return Err(XattrError::NameTooLong);
    }
    Ok((index, suffix))
}

/// Checks that an attribute can be stored, as [`encode`] would.
pub fn check(name: &[u8], value: &[u8]) -> Result<(), XattrError> {
    split_name(name)?;
    if value.len() > usize::from(u16::MAX) {
        return Err(XattrError::ValueTooLong);
    }
    Ok(())
}

/// The inline xattr area for `xattrs` (empty when there are none) and its
/// `i_xattr_icount`. Attributes must have passed [`check`].
pub fn encode(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>) -> (Vec<u8>, u16) {
    if xattrs.is_empty() {
        return (Vec::new(), 0);
    }
    let header = XattrIbodyHeader {
        h_name_filter: U32::new(0),
        h_shared_count: 0,
        h_reserved2: [0; 7],
    };
    let mut body = header.as_bytes().to_vec();
    for (name, value) in xattrs {
        let Ok((index, suffix)) = split_name(name) else {
            continue;
        };
        let entry = XattrEntry {
            e_name_len: suffix.len() as u8,
            e_name_index: index,
            e_value_size: U16::new(value.len() as u16),
        };
        body.extend_from_slice(entry.as_bytes());
        body.extend_from_slice(suffix);
        body.extend_from_slice(value);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    let icount = (body.len() as u64 - XATTR_IBODY_HEADER_SIZE) / 4 + 1;
    (body, icount as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_the_longest_prefix() {
        assert_eq!(split_name(b"user.comment"), Ok((1, &b"comment"[..])));
        assert_eq!(split_name(b"system.posix_acl_access"), Ok((2, &b""[..])));
        assert_eq!(
            split_name(b"trusted.overlay.opaque"),
            Ok((4, &b"overlay.opaque"[..]))
        );
        assert_eq!(
            split_name(b"security.capability"),
            Ok((6, &b"capability"[..]))
        );
        assert_eq!(
            split_name(b"system.nfs4_acl"),
            Err(XattrError::UnknownPrefix)
        );
        assert_eq!(
            split_name(&[b"user.".as_slice(), &[b'x'; 256]].concat()),
            Err(XattrError::NameTooLong)
        );
    }

    #[test]
    fn the_area_is_header_then_padded_entries() {
        let mut xattrs = BTreeMap::new();
        xattrs.insert(b"user.a".to_vec(), b"xyz".to_vec());
        let (body, icount) = encode(&xattrs);
        // 12-byte header, 4-byte entry header, 1 + 3 bytes of name and value.
        assert_eq!(body.len(), 20);
        assert_eq!(crate::format::xattr_ibody_size(icount), 20);
        let header = crate::format::XATTR_IBODY_HEADER_SIZE as usize;
        assert_eq!(&body[header..], &[1, 1, 3, 0, b'a', b'x', b'y', b'z']);
    }
}
