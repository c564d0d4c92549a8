//! Writing tar members as GNU tar's `--format=posix` does: a ustar header
//! per member, preceded by a PAX extended header (`x`, named
//! `DIR/PaxHeaders/NAME`) when a field does not fit ustar (long paths and
//! link targets, big ids and sizes, sub-second mtimes) or xattrs are
//! carried (`SCHILY.xattr.NAME`). Nothing here depends on the clock, the
//! user database or the environment: the same members give the same bytes.

use std::io::{self, Write};

/// Tar block size.
pub const BLOCK: usize = 512;

/// The type of a member (ustar typeflag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `0`: a regular file, its data follows.
    File,
    /// `1`: a hard link to an earlier member.
    Link,
    /// `2`: a symlink.
    Symlink,
    /// `3`: a character device.
    Char,
    /// `4`: a block device.
    Block,
    /// `5`: a directory.
    Dir,
    /// `6`: a FIFO.
    Fifo,
}

impl Kind {
    fn flag(self) -> u8 {
        match self {
            Kind::File => b'0',
            Kind::Link => b'1',
            Kind::Symlink => b'2',
            Kind::Char => b'3',
            Kind::Block => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
        }
    }
}

/// One member's header fields.
#[derive(Debug, Clone)]
pub struct Member {
    /// Path in the layer, without a leading `/` or `./`; directories get
    /// their trailing `/` here.
    pub path: Vec<u8>,
    /// Its type.
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Data size (regular files only).
    pub size: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Symlink target or hard link's first path.
    pub link: Vec<u8>,
    /// Device numbers.
    pub rdev: (u32, u32),
    /// Xattrs, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Writes an octal field of `field.len() - 1` digits and a NUL; false if
/// `value` does not fit.
fn octal(field: &mut [u8], value: u64) -> bool {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    if text.len() > digits {
        return false;
    }
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
    true
}

/// One PAX record, `LEN KEY=VALUE\n`, LEN counting the whole record.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// `path` split into ustar's prefix (≤ 155) and name (≤ 100), if it fits.
fn split_ustar(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= 100 {
        return Some((&[], path));
    }
    // The split is at a '/' that is not the trailing one of a directory.
    let body = path.strip_suffix(b"/").unwrap_or(path);
    (0..body.len())
        .rev()
        .filter(|&i| body[i] == b'/')
        .map(|i| (&path[..i], &path[i + 1..]))
        .find(|(prefix, name)| prefix.len() <= 155 && name.len() <= 100 && !name.is_empty())
}

/// GNU tar's name for a member's extended header: `DIR/PaxHeaders/NAME`.
fn pax_name(path: &[u8]) -> Vec<u8> {
    let body = path.strip_suffix(b"/").unwrap_or(path);
    let (dir, name) = match body.iter().rposition(|&b| b == b'/') {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (&b"."[..], body),
    };
    let mut out = dir.to_vec();
    out.extend_from_slice(b"/PaxHeaders/");
    out.extend_from_slice(name);
    out.truncate(100);
    out
}

/// A ustar header block; `name` and `prefix` are already split.
fn ustar_block(m: &Member, prefix: &[u8], name: &[u8], link: &[u8]) -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    block[..name.len()].copy_from_slice(name);
    octal(&mut block[100..108], u64::from(m.mode & 0o7777));
    // Fields that do not fit are 0 here and carried by the PAX header.
    for (range, value) in [
        (108..116, u64::from(m.uid)),
        (116..124, u64::from(m.gid)),
        (124..136, m.size),
        (136..148, u64::try_from(m.mtime).unwrap_or(0)),
        (329..337, u64::from(m.rdev.0)),
        (337..345, u64::from(m.rdev.1)),
    ] {
        if !octal(&mut block[range.clone()], value) {
            octal(&mut block[range], 0);
        }
    }
    block[156] = m.kind.flag();
    block[157..157 + link.len()].copy_from_slice(link);
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    block[345..345 + prefix.len()].copy_from_slice(prefix);
    checksum(&mut block);
    block
}

/// Fills in the header checksum: the byte sum with the field as spaces.
fn checksum(block: &mut [u8; BLOCK]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(text.as_bytes());
}

/// The size of the PAX records [`TarWriter::header`] writes for `m`.
pub fn pax_size(m: &Member) -> usize {
    pax_records(m, split_ustar(&m.path).is_some()).len()
}

/// The PAX records `m` needs (empty: none), in GNU tar's order.
fn pax_records(m: &Member, path_fits: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if m.uid > 0o7777777 {
        pax_record(&mut out, b"uid", m.uid.to_string().as_bytes());
    }
    if m.gid > 0o7777777 {
        pax_record(&mut out, b"gid", m.gid.to_string().as_bytes());
    }
    if m.size > 0o77777777777 {
        pax_record(&mut out, b"size", m.size.to_string().as_bytes());
    }
    if m.mtime_nsec != 0 || !(0..=0o77777777777).contains(&m.mtime) {
        pax_record(
            &mut out,
            b"mtime",
            pax_time(m.mtime, m.mtime_nsec).as_bytes(),
        );
    }
    if !path_fits {
        pax_record(&mut out, b"path", &m.path);
    }
    if m.link.len() > 100 {
        pax_record(&mut out, b"linkpath", &m.link);
    }
    for (name, value) in &m.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name);
        pax_record(&mut out, &key, value);
    }
    out
}

/// A PAX time: seconds, and nanoseconds as a fraction without trailing
/// zeros (GNU tar writes all nine digits; both read back the same).
fn pax_time(secs: i64, nsec: u32) -> String {
    if nsec == 0 {
        return secs.to_string();
    }
    // A time before 1970 is -(|whole|.fraction): secs + nsec/1e9 with
    // secs negative is the second after it less the rest.
    let text = if secs < 0 {
        format!("-{}.{:09}", -(secs + 1), 1_000_000_000 - nsec)
    } else {
        format!("{secs}.{nsec:09}")
    };
    text.trim_end_matches('0').to_string()
}

/// Writes tar members to `out`, counting the bytes.
pub struct TarWriter<W> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    /// A tar stream on `out`.
    pub fn new(out: W) -> Self {
        Self { out }
    }

    /// Writes `m`'s header(s); a regular file's data follows through
    /// [`TarWriter::data`], then [`TarWriter::pad`].
    pub fn header(&mut self, m: &Member) -> io::Result<()> {
        let split = split_ustar(&m.path);
        let records = pax_records(m, split.is_some());
        if !records.is_empty() {
            let pax = Member {
                path: pax_name(&m.path),
                kind: Kind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: records.len() as u64,
                mtime: m.mtime.max(0),
                mtime_nsec: 0,
                link: Vec::new(),
                rdev: (0, 0),
                xattrs: Vec::new(),
            };
            let mut block = ustar_block(&pax, &[], &pax.path, &[]);
            block[156] = b'x';
            checksum(&mut block);
            self.out.write_all(&block)?;
            self.out.write_all(&records)?;
            self.pad(records.len() as u64)?;
        }
        let (prefix, name) = split.unwrap_or((&[], &m.path[..m.path.len().min(100)]));
        let link = &m.link[..m.link.len().min(100)];
        self.out.write_all(&ustar_block(m, prefix, name, link))
    }

    /// Writes data bytes of the current member.
    pub fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)
    }

    /// Zero-pads a member of `size` data bytes to a whole block.
    pub fn pad(&mut self, size: u64) -> io::Result<()> {
        let rest = (size % BLOCK as u64) as usize;
        if rest != 0 {
            self.out.write_all(&[0u8; BLOCK][rest..])?;
        }
        Ok(())
    }

    /// Writes the two end-of-archive blocks and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(path: &[u8]) -> Member {
        Member {
            path: path.to_vec(),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 3,
            mtime: 1_700_000_000,
            mtime_nsec: 0,
            link: Vec::new(),
            rdev: (0, 0),
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        let mut out = Vec::new();
        pax_record(&mut out, b"path", &[b'a'; 90]);
        assert_eq!(out.len(), 99);
        assert!(out.starts_with(b"99 path="));
        // One more byte crosses to three digits, which adds one more.
        let mut out = Vec::new();
        pax_record(&mut out, b"path", &[b'a'; 91]);
        assert_eq!(out.len(), 101);
        assert!(out.starts_with(b"101 path="));
        let mut out = Vec::new();
        pax_record(&mut out, b"mtime", b"1.5");
        assert_eq!(out, b"13 mtime=1.5\n");
    }

    #[test]
    fn members_read_back_with_the_tar_crate() {
        let mut tar = TarWriter::new(Vec::new());
        let long = [b"d/".repeat(80), b"file".to_vec()].concat();
        let mut m = member(&long);
        m.mtime_nsec = 500_000_000;
        m.uid = 1 << 22;
        m.xattrs = vec![(b"user.k".to_vec(), b"v=\0".to_vec())];
        tar.header(&m).unwrap();
        tar.data(b"abc").unwrap();
        tar.pad(3).unwrap();
        let bytes = tar.finish().unwrap();
        // The member's own ustar header (after the PAX header and its
        // one block of records) has uid 0: the real one is in PAX.
        assert_eq!(&bytes[2 * BLOCK + 108..2 * BLOCK + 116], b"0000000\0");
        assert_eq!(bytes[BLOCK - 512 + 156], b'x');
        let mut archive = ::tar::Archive::new(&bytes[..]);
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(&*entry.path_bytes(), &long[..]);
        let pax: Vec<_> = entry
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|r| r.unwrap())
            .map(|r| (r.key_bytes().to_vec(), r.value_bytes().to_vec()))
            .collect();
        assert!(pax.contains(&(b"uid".to_vec(), b"4194304".to_vec())));
        assert!(pax.contains(&(b"mtime".to_vec(), b"1700000000.5".to_vec())));
        assert!(pax.contains(&(b"SCHILY.xattr.user.k".to_vec(), b"v=\0".to_vec())));
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        assert_eq!(data, b"abc");
        assert!(entries.next().is_none());
    }
}
