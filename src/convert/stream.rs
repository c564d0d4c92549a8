//! The tar stream as a sequence of members, read with bounded memory.
//!
//! The `tar` crate reads GNU long names/links and PAX extended headers whole
//! into memory, whatever size their header declares (a 2 GiB PAX header cost
//! 4.4 GB). This reader handles those headers itself and refuses any larger
//! than [`MAX_EXTENSION_SIZE`] before reading a byte of them, as GNU tar and
//! containerd's archive code bound them. Fields of the 512-byte headers are
//! still decoded by `tar::Header`.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use super::input::TarRead;
use super::ConvertError;

/// Where a ustar header keeps its checksum (`chksum[8]`).
const CHECKSUM_FIELD: std::ops::Range<usize> = 148..156;

/// Largest PAX extended header (`x` or `g`) or GNU long name/link accepted.
pub const MAX_EXTENSION_SIZE: u64 = 1 << 20;

/// Longest untrusted name an error or warning shows, in bytes.
const SHOWN_MAX: usize = 256;

/// PAX records, key and value, in the order read.
pub type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

/// One member of the tar, with the extension headers before it applied.
pub struct Member {
    /// Its 512-byte header.
    pub header: Header,
    /// Byte offset of that header in the tar.
    pub at: u64,
    /// Path: GNU long name, else PAX `path`, else the header's.
    pub path: Vec<u8>,
    /// Link target: GNU long link, else PAX `linkpath`, else the header's.
    pub link: Option<Vec<u8>>,
    /// Its PAX records (for a `g` member: the global records it sets).
    pub pax: PaxRecords,
    /// Size of its data (PAX `size` overrides the header's).
    pub size: u64,
    /// Byte offset of its data in the tar.
    pub data_at: u64,
}

/// Extension headers read for the member that follows them.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }
}

/// Counts the bytes read from the inner reader, and sums them (crc32c).
struct Counted<R> {
    inner: R,
    pos: u64,
    crc: u32,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
}

impl<R: TarRead> Counted<R> {
    /// Moves `n` bytes ahead (without reading them where the input can).
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        let skipped = self.inner.skip(n)?;
        self.pos += skipped;
        Ok(skipped)
    }
}

/// Reads the members of a tar stream one after the other.
pub struct TarStream<R> {
    inner: Counted<R>,
    /// Where the next header starts.
    next: u64,
    done: bool,
    /// The last member returned (offset, name shown), which errors while
    /// skipping its data name.
    last: Option<(u64, String)>,
    /// sha256 of the header blocks and extension records read: what the
    /// tree is made of, without the file data.
    headers: Sha256,
}

impl<R: TarRead> TarStream<R> {
    /// A reader of the tar in `inner`, which starts at its first header.
    pub fn new(inner: R) -> Self {
        Self {
            inner: Counted {
                inner,
                pos: 0,
                crc: 0,
            },
            next: 0,
            done: false,
            last: None,
            headers: Sha256::new(),
        }
    }

    /// What identifies the tar as read so far: the sha256 of its header
    /// blocks and extension records, and a crc32c of every byte the parser
    /// read (file data too, when it was read: a full image), so images of
    /// tars that differ only in data differ.
    pub fn headers_digest(&self) -> [u8; 32] {
        let mut hash = self.headers.clone();
        hash.update(self.inner.crc.to_le_bytes());
        hash.finalize().into()
    }

    /// The data of `member` (call before the next [`Self::next_member`];
    /// what is not read is skipped).
    pub fn data(&mut self, member: &Member) -> io::Take<&mut impl Read> {
        let left = (member.data_at + member.size).saturating_sub(self.inner.pos);
        (&mut self.inner).take(left)
    }

    /// The next member, `None` at the end of the archive (an all-zero block
    /// or the end of the stream). The stream is left where the archive ends.
    pub fn next_member(&mut self) -> Result<Option<Member>, ConvertError> {
        let mut pending = Pending::default();
        while !self.done {
            let at = self.next;
            let Some(header) = self.read_header(at)? else {
                self.done = true;
                break;
            };
            let fail =
                |message: String| ConvertError::tar(at, Some(shown(&header.path_bytes())), message);
            let size = header
                .entry_size()
                .map_err(|e| fail(format!("bad size field: {e}")))?;
            let kind = header.entry_type();
            let slot = match kind {
                EntryType::GNULongName => Some((&mut pending.long_name, "GNU long name")),
                EntryType::GNULongLink => Some((&mut pending.long_link, "GNU long link")),
                EntryType::XHeader => Some((&mut pending.pax, "PAX extended header")),
                _ => None,
            };
            if let Some((slot, what)) = slot {
                if slot.is_some() {
                    return Err(fail(format!("two {what}s for the same entry")));
                }
                *slot = Some(self.read_extension(size, what).map_err(fail)?);
                continue;
            }
            if kind == EntryType::XGlobalHeader {
                let bytes = self
                    .read_extension(size, "PAX global header")
                    .map_err(fail)?;
                let pax = pax_records(&bytes).map_err(fail)?;
                return Ok(Some(self.member(header, at, pending, pax, 0)?));
            }
            let pax = match &pending.pax {
                Some(bytes) => pax_records(bytes).map_err(fail)?,
                None => Vec::new(),
            };
            let size = match pax.iter().find(|(key, _)| key == b"size") {
                Some((_, value)) => std::str::from_utf8(value)
                    .ok()
                    .and_then(|text| text.parse().ok())
                    .ok_or_else(|| fail(format!("bad PAX size '{}'", shown(value))))?,
                None => size,
            };
            return Ok(Some(self.member(header, at, pending, pax, size)?));
        }
        if !pending.is_empty() {
            return Err(ConvertError::tar(
                self.next,
                None,
                "extension headers at the end of the archive, with no entry after them".into(),
            ));
        }
        Ok(None)
    }

    /// The member whose header at `at` was just read, its data next.
    fn member(
        &mut self,
        header: Header,
        at: u64,
        pending: Pending,
        pax: PaxRecords,
        size: u64,
    ) -> Result<Member, ConvertError> {
        let record = |key: &[u8]| {
            pax.iter()
                .find(|(k, _)| k == key)
                .map(|(_, value)| value.clone())
        };
        let path = pending
            .long_name
            .or_else(|| record(b"path"))
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let link = pending
            .long_link
            .or_else(|| record(b"linkpath"))
            .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
        let data_at = self.next;
        self.last = Some((at, shown(&path)));
        self.next = size
            .checked_next_multiple_of(512)
            .and_then(|padded| data_at.checked_add(padded))
            .ok_or_else(|| ConvertError::tar(at, Some(shown(&path)), "size overflow".into()))?;
        Ok(Member {
            header,
            at,
            path,
            link,
            pax,
            size,
            data_at,
        })
    }

    /// The header at `at` (skipping what is left of the previous member),
    /// `None` at the end of the archive.
    fn read_header(&mut self, at: u64) -> Result<Option<Header>, ConvertError> {
        let skip = at.saturating_sub(self.inner.pos);
        let skipped = self.inner.skip(skip);
        if skipped.as_ref().map_or(true, |&n| n < skip) {
            let why = skipped.map_or_else(|e| e.to_string(), |_| "the tar ends".into());
            let (at, name) = self.last.clone().unwrap_or((at, String::new()));
            return Err(ConvertError::tar(
                at,
                Some(name),
                format!("{why} inside this entry's data"),
            ));
        }
        let fail = |e: io::Error| ConvertError::tar(at, None, e.to_string());
        let mut header = Header::new_old();
        let block = header.as_mut_bytes();
        let got = read_full(&mut self.inner, block).map_err(fail)?;
        if got == 0 || block.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        if got < block.len() {
            return Err(fail(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the tar ends inside a header",
            )));
        }
        // The checksum field counts as spaces in its own sum.
        let sum: u32 = block[..CHECKSUM_FIELD.start]
            .iter()
            .chain(&block[CHECKSUM_FIELD.end..])
            .map(|&b| u32::from(b))
            .sum::<u32>()
            + CHECKSUM_FIELD.len() as u32 * u32::from(b' ');
        if header.cksum().ok() != Some(sum) {
            return Err(ConvertError::tar(
                at,
                Some(shown(&header.path_bytes())),
                "header checksum mismatch".into(),
            ));
        }
        self.headers.update(header.as_bytes());
        self.next = at + 512;
        Ok(Some(header))
    }

    /// An extension header's `size` bytes of content, refused before any is
    /// read when larger than [`MAX_EXTENSION_SIZE`].
    fn read_extension(&mut self, size: u64, what: &str) -> Result<Vec<u8>, String> {
        if size > MAX_EXTENSION_SIZE {
            return Err(format!(
                "{what} of {size} bytes (at most {MAX_EXTENSION_SIZE})"
            ));
        }
        let mut bytes = vec![0; size as usize];
        self.inner
            .read_exact(&mut bytes)
            .map_err(|e| format!("reading its {what}: {e}"))?;
        self.headers.update(&bytes);
        self.next = self.inner.pos.next_multiple_of(512);
        Ok(bytes)
    }
}

/// Reads as much of `buf` as the stream holds; the count read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The records of a PAX extended header.
fn pax_records(bytes: &[u8]) -> Result<PaxRecords, String> {
    super::pax_records::parse(bytes)
}

/// An untrusted name for a message: lossy UTF-8, at most [`SHOWN_MAX`]
/// bytes of it, with the full length when cut.
pub fn shown(bytes: &[u8]) -> String {
    if bytes.len() <= SHOWN_MAX {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    format!(
        "{}... ({} bytes)",
        String::from_utf8_lossy(&bytes[..SHOWN_MAX]),
        bytes.len()
    )
}
