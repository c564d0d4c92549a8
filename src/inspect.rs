//! Human- and script-readable summaries of an image and of its entries, for
//! the `inspect` and `stat` commands.

use serde::Serialize;

use crate::error::Result;
use crate::format::{
    COMPAT_NAMES, COMPRESSION_NAMES, INCOMPAT_COMPR_CFGS, INCOMPAT_NAMES, INCOMPAT_ZERO_PADDING,
};
use crate::reader::{FileKind, Image, Inode};

/// What `inspect` shows about an image.
#[derive(Debug, Serialize)]
pub struct ImageSummary {
    /// Block size in bytes.
    pub block_size: u64,
    /// Primary device size in blocks.
    pub blocks: u64,
    /// Primary device size in bytes (blocks × block size).
    pub size: u64,
    /// Inode count recorded in the superblock.
    pub inodes: u64,
    /// Root directory nid.
    pub root_nid: u64,
    /// Volume UUID (8-4-4-4-12 hex).
    pub uuid: String,
    /// Volume name.
    pub volume_name: String,
    /// Build time, seconds since the Unix epoch.
    pub build_time: i64,
    /// Build time as UTC text.
    pub build_time_utc: String,
    /// Feature names, compat then incompat; unknown compat bits as hex.
    pub features: Vec<String>,
    /// Compression algorithms the image declares.
    pub compression: Vec<String>,
    /// Superblock checksum (verified), when the image has one.
    pub checksum: Option<String>,
    /// Inode area start block.
    pub meta_blkaddr: u64,
    /// Shared xattr area start block.
    pub xattr_blkaddr: u64,
    /// Packed inode nid.
    pub packed_nid: Option<u64>,
    /// Metabox inode nid.
    pub metabox_nid: Option<u64>,
    /// Long xattr name prefixes.
    pub long_xattr_prefixes: Vec<String>,
    /// Extra devices.
    pub devices: Vec<DeviceSummary>,
}

/// One extra device in an [`ImageSummary`].
#[derive(Debug, Serialize)]
pub struct DeviceSummary {
    /// Device id (1-based).
    pub id: usize,
    /// Tag from the device table.
    pub tag: String,
    /// Size in blocks.
    pub blocks: u64,
    /// Start in the unified address space, in blocks.
    pub uniaddr: u64,
    /// File serving it.
    pub path: String,
    /// True when served from inside the image file (no --device given).
    pub inside_image: bool,
}

impl ImageSummary {
    /// Summarizes `image`.
    pub fn new(image: &Image) -> Self {
        let sb = image.superblock();
        let mut features: Vec<String> = Vec::new();
        for (bits, names) in [
            (sb.feature_compat, COMPAT_NAMES),
            (sb.feature_incompat, INCOMPAT_NAMES),
        ] {
            let mut known = 0;
            for (bit, name) in names {
                known |= bit;
                if bits & bit != 0 {
                    features.push((*name).to_string());
                }
            }
            if bits & !known != 0 {
                features.push(format!("{:#x}", bits & !known));
            }
        }
        let compression = if sb.has_incompat(INCOMPAT_COMPR_CFGS) {
            COMPRESSION_NAMES
                .iter()
                .filter(|(n, _)| sb.available_compr_algs & (1 << n) != 0)
                .map(|(_, name)| (*name).to_string())
                .collect()
        } else if sb.has_incompat(INCOMPAT_ZERO_PADDING) {
            vec!["lz4".to_string()]
        } else {
            Vec::new()
        };
        let build_time = sb.epoch.wrapping_add(i64::from(sb.build_time));
        let devices = image.devices();
        ImageSummary {
            block_size: sb.block_size(),
            blocks: sb.blocks,
            size: sb.blocks.saturating_mul(sb.block_size()),
            inodes: sb.inos,
            root_nid: sb.root_nid.0,
            uuid: format_uuid(&sb.uuid),
            volume_name: String::from_utf8_lossy(&sb.volume_name).into_owned(),
            build_time,
            build_time_utc: format_utc(build_time, 0),
            features,
            compression,
            checksum: sb.checksum.map(|c| format!("{c:#010x}")),
            meta_blkaddr: sb.meta_blkaddr,
            xattr_blkaddr: sb.xattr_blkaddr,
            packed_nid: sb.packed_nid.map(|n| n.0),
            metabox_nid: sb.metabox_nid.map(|n| n.0),
            long_xattr_prefixes: image
                .long_prefixes()
                .iter()
                .map(|p| {
                    let name = String::from_utf8_lossy(&p.prefix);
                    // A prefix the kernel never shows (base index 0: inode
                    // digests) is listed, marked as such.
                    if p.visible() {
                        name.into_owned()
                    } else {
                        format!("{name}(hidden,base={})", p.base_index)
                    }
                })
                .collect(),
            devices: devices
                .extra
                .iter()
                .enumerate()
                .map(|(i, d)| DeviceSummary {
                    id: i + 1,
                    tag: String::from_utf8_lossy(&d.tag).into_owned(),
                    blocks: d.blocks,
                    uniaddr: d.uniaddr,
                    path: d.backing.path().display().to_string(),
                    inside_image: devices.flat,
                })
                .collect(),
        }
    }
}

/// What `stat` shows about one entry.
#[derive(Debug, Serialize)]
pub struct EntrySummary {
    /// Path inside the image.
    pub path: String,
    /// `file`, `dir`, `symlink`, `char`, `block`, `fifo` or `socket`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Permission bits in octal (e.g. `0755`).
    pub mode: String,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Size in bytes.
    pub size: u64,
    /// `st_blocks` as the kernel reports it (512-byte units).
    pub blocks: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Modification time as UTC text.
    pub mtime_utc: String,
    /// Node id.
    pub nid: u64,
    /// `compact` or `extended`.
    pub inode_format: &'static str,
    /// Data layout name.
    pub layout: &'static str,
    /// How a compressed file is stored.
    pub compression: Option<CompressionSummary>,
    /// `[major, minor]` for devices.
    pub rdev: Option<[u32; 2]>,
    /// Symlink target.
    pub target: Option<String>,
    /// Extended attributes.
    pub xattrs: Vec<XattrSummary>,
}

/// How a compressed file is stored, in an [`EntrySummary`].
#[derive(Debug, Serialize)]
pub struct CompressionSummary {
    /// Algorithms its extents use.
    pub algorithms: Vec<&'static str>,
    /// Encoded bytes on disk.
    pub compressed_size: u64,
    /// Extents in all.
    pub extents: u64,
    /// Extents stored uncompressed.
    pub plain_extents: u64,
    /// Extents referring to part of a shared pcluster (dedupe).
    pub partial_extents: u64,
    /// Bytes kept as a fragment in the packed inode.
    pub fragment_bytes: u64,
    /// Bytes in the inline tail pcluster.
    pub inline_bytes: u64,
    /// Logical cluster size.
    pub lcluster_size: u64,
}

/// One xattr in an [`EntrySummary`].
#[derive(Debug, Serialize)]
pub struct XattrSummary {
    /// Full name.
    pub name: String,
    /// Value as hex.
    pub value_hex: String,
    /// Value as text, when it is printable UTF-8.
    pub value_text: Option<String>,
}

impl EntrySummary {
    /// Summarizes the entry at `path`.
    pub fn new(image: &Image, path: &str, inode: &Inode) -> Result<Self> {
        let target = match inode.kind {
            FileKind::Symlink => {
                Some(String::from_utf8_lossy(&image.read_link(inode)?).into_owned())
            }
            _ => None,
        };
        let rdev = match inode.kind {
            FileKind::CharDevice(..) | FileKind::BlockDevice(..) => {
                let (major, minor) = inode.kind.rdev();
                Some([major, minor])
            }
            _ => None,
        };
        let xattrs = image
            .xattrs(inode)?
            .into_iter()
            .map(|x| XattrSummary {
                name: String::from_utf8_lossy(&x.name).into_owned(),
                value_hex: hex(&x.value),
                value_text: std::str::from_utf8(&x.value)
                    .ok()
                    .filter(|s| s.chars().all(|c| !c.is_control()))
                    .map(str::to_string),
            })
            .collect();
        let compression = if inode.layout.is_compressed() {
            let c = image.compression_info(inode)?;
            Some(CompressionSummary {
                algorithms: c.algorithms,
                compressed_size: c.compressed_size,
                extents: c.extents,
                plain_extents: c.plain_extents,
                partial_extents: c.partial_extents,
                fragment_bytes: c.fragment_bytes,
                inline_bytes: c.inline_bytes,
                lcluster_size: c.lcluster_size,
            })
        } else {
            None
        };
        Ok(Self {
            path: path.to_string(),
            kind: kind_name(inode.kind),
            mode: format!("{:04o}", inode.permissions()),
            uid: inode.uid,
            gid: inode.gid,
            nlink: inode.nlink,
            size: inode.size,
            blocks: inode.blocks,
            mtime: inode.mtime,
            mtime_nsec: inode.mtime_nsec,
            mtime_utc: format_utc(inode.mtime, inode.mtime_nsec),
            nid: inode.nid.0,
            inode_format: if inode.extended {
                "extended"
            } else {
                "compact"
            },
            layout: inode.layout.name(),
            compression,
            rdev,
            target,
            xattrs,
        })
    }
}

/// The short type name used by `stat` and manifests.
pub fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Regular => "file",
        FileKind::Directory => "dir",
        FileKind::Symlink => "symlink",
        FileKind::CharDevice(..) => "char",
        FileKind::BlockDevice(..) => "block",
        FileKind::Fifo => "fifo",
        FileKind::Socket => "socket",
    }
}

/// `ls -l` style mode string, e.g. `drwxr-xr-x`.
pub fn mode_string(kind: FileKind, mode: u32) -> String {
    let kind_char = match kind {
        FileKind::Regular => '-',
        FileKind::Directory => 'd',
        FileKind::Symlink => 'l',
        FileKind::CharDevice(..) => 'c',
        FileKind::BlockDevice(..) => 'b',
        FileKind::Fifo => 'p',
        FileKind::Socket => 's',
    };
    let mut s = String::with_capacity(10);
    s.push(kind_char);
    for (shift, special, lower, upper) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

use crate::format::format_uuid;
pub use crate::format::hex;

/// UTC date and time, `YYYY-MM-DD HH:MM:SS[.nnnnnnnnn]`.
pub fn format_utc(secs: i64, nsec: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil conversion.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let time = format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    if nsec == 0 {
        time
    } else {
        format!("{time}.{nsec:09}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0, 0), "1970-01-01 00:00:00");
        assert_eq!(
            format_utc(1_700_000_000, 5),
            "2023-11-14 22:13:20.000000005"
        );
        assert_eq!(format_utc(-1, 0), "1969-12-31 23:59:59");
        assert_eq!(format_utc(951_782_400, 0), "2000-02-29 00:00:00");
    }

    #[test]
    fn mode_strings() {
        assert_eq!(mode_string(FileKind::Directory, 0o40755), "drwxr-xr-x");
        assert_eq!(mode_string(FileKind::Regular, 0o104755), "-rwsr-xr-x");
        assert_eq!(mode_string(FileKind::Directory, 0o41777), "drwxrwxrwt");
        assert_eq!(mode_string(FileKind::Regular, 0o102644), "-rw-r-Sr--");
    }
}
