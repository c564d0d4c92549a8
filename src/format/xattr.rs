//! Extended attribute headers, entries and name prefixes.

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Header of an inode's inline xattr area (`struct erofs_xattr_ibody_header`),
/// followed by `h_shared_count` 4-byte shared xattr ids, then entries.
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct XattrIbodyHeader {
    /// Bloom filter of absent names (bit set = absent).
    pub h_name_filter: U32,
    /// Number of shared xattr ids after the header.
    pub h_shared_count: u8,
    /// Reserved.
    pub h_reserved2: [u8; 7],
}

/// Size of [`XattrIbodyHeader`].
pub const XATTR_IBODY_HEADER_SIZE: u64 = size_of::<XattrIbodyHeader>() as u64;

/// Header of one xattr entry (`struct erofs_xattr_entry`), followed by the
/// name suffix and the value, padded to 4 bytes.
#[derive(Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct XattrEntry {
    /// Length of the name suffix.
    pub e_name_len: u8,
    /// Short prefix index, or [`XATTR_LONG_PREFIX`] | long prefix number.
    pub e_name_index: u8,
    /// Length of the value.
    pub e_value_size: U16,
}

/// The unit xattr space is counted in (`sizeof(__le32)`): a shared xattr
/// id, `i_xattr_icount`, shared xattr and long prefix table positions, and
/// the alignment of entries and long prefixes.
pub const XATTR_UNIT: u64 = size_of::<U32>() as u64;
/// Size of the length before each long prefix record (`__le16`).
pub const XATTR_LONG_PREFIX_LEN_SIZE: u64 = size_of::<U16>() as u64;

/// Size of [`XattrEntry`].
pub const XATTR_ENTRY_SIZE: u64 = size_of::<XattrEntry>() as u64;
/// `e_name_index` bit selecting the long prefix table.
pub const XATTR_LONG_PREFIX: u8 = 0x80;
/// Mask of the long prefix number.
pub const XATTR_LONG_PREFIX_MASK: u8 = 0x7f;

/// Size in bytes of the inline xattr area for an `i_xattr_icount`.
pub fn xattr_ibody_size(icount: u16) -> u64 {
    if icount == 0 {
        0
    } else {
        XATTR_IBODY_HEADER_SIZE + XATTR_UNIT * (u64::from(icount) - 1)
    }
}

/// Size of an entry with its name and value, padded to 4 bytes.
pub fn xattr_entry_size(name_len: u8, value_size: u16) -> u64 {
    (XATTR_ENTRY_SIZE + u64::from(name_len) + u64::from(value_size)).next_multiple_of(XATTR_UNIT)
}

/// Whether the kernel's erofs has an xattr handler for `name` (user.*,
/// trusted.*, security.* and the two POSIX ACL names). For any other name
/// the VFS answers getxattr with EOPNOTSUPP without asking erofs.
pub fn xattr_name_handled(name: &[u8]) -> bool {
    [&b"user."[..], b"trusted.", b"security."]
        .iter()
        .any(|p| name.starts_with(p))
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

/// The built-in short prefix for an index (1..=6), `None` for others.
pub fn xattr_short_prefix(index: u8) -> Option<&'static str> {
    Some(match index {
        1 => "user.",
        2 => "system.posix_acl_access",
        3 => "system.posix_acl_default",
        4 => "trusted.",
        5 => "lustre.",
        6 => "security.",
        _ => return None,
    })
}
