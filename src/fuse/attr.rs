//! Conversions between the reader's types and FUSE's: times, device
//! numbers, file types, and the xattr size-probe protocol.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, ReplyXattr};

use crate::format::FileType;

/// True when /proc/self/uid_map maps every uid to itself (the initial user
/// namespace).
pub(super) fn in_initial_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(false)
}

/// The kernel's `new_encode_dev`, the encoding FUSE attributes use.
pub(super) fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Seconds and nanoseconds since the epoch (possibly before it) as a time.
pub(super) fn to_system_time(secs: i64, nsec: u32) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(nsec));
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

/// FUSE's file type for a directory-entry type.
pub(super) fn fuse_type(t: FileType) -> fuser::FileType {
    match t {
        FileType::Directory => fuser::FileType::Directory,
        FileType::Symlink => fuser::FileType::Symlink,
        FileType::CharDevice => fuser::FileType::CharDevice,
        FileType::BlockDevice => fuser::FileType::BlockDevice,
        FileType::Fifo => fuser::FileType::NamedPipe,
        FileType::Socket => fuser::FileType::Socket,
        FileType::Regular | FileType::Unknown => fuser::FileType::RegularFile,
    }
}

/// Answers the size-probe protocol of getxattr/listxattr.
pub(super) fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if (size as usize) < data.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::decode_rdev;

    #[test]
    fn device_numbers_round_trip() {
        for (major, minor) in [(0, 0), (1, 3), (8, 1), (4095, 1_048_575), (259, 300)] {
            assert_eq!(decode_rdev(encode_dev(major, minor)), (major, minor));
        }
    }

    #[test]
    fn times_before_and_after_the_epoch() {
        assert_eq!(to_system_time(1, 5), UNIX_EPOCH + Duration::new(1, 5));
        assert_eq!(
            to_system_time(-2, 500_000_000),
            UNIX_EPOCH - Duration::new(1, 500_000_000)
        );
    }
}
