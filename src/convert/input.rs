//! The input stream: a file or stdin, gzip, zstd or plain, hashed as it is
//! read (when digests are asked for), with a progress bar, and a tee that
//! keeps a copy of the tar. Unhashed, a plain tar file is read header by
//! header: the parser seeks past the data it does not need.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Seek, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use super::decode::{finish, Decoded, SharedHash};

use crate::gzran::{zinfo::DEFAULT_SPAN, GzIndexer, ZinfoHandle};

/// A sha256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest whose bytes are `bytes`.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest written `sha256:<64 hex digits>` (`None` otherwise).
    pub fn parse(text: &str) -> Option<Self> {
        // Only as `Display` writes it: 64 lowercase hex digits.
        let hex = text.strip_prefix("sha256:").filter(|h| {
            h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })?;
        let bytes = crate::format::from_hex(hex)?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl std::fmt::Display for Digest {
    /// `sha256:` and the lowercase hex digest, as OCI writes digests.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// A tar stream that can move past bytes its reader does not need.
pub trait TarRead: Read {
    /// Moves up to `n` bytes ahead; returns how many were passed (fewer
    /// only where the input ends). By default, by reading them.
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        io::copy(&mut <&mut Self as Read>::take(self, n), &mut io::sink())
    }
}

impl<R: Read> TarRead for BufReader<R> {}

impl<T: TarRead + ?Sized> TarRead for &mut T {
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        (**self).skip(n)
    }
}

impl<T: TarRead + ?Sized> TarRead for Box<T> {
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        (**self).skip(n)
    }
}

/// Hashes what is read through it (when asked) and moves the progress bar.
struct Hashing<R> {
    inner: R,
    hasher: Option<SharedHash>,
    bar: Option<indicatif::ProgressBar>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(hasher) = &self.hasher {
            hasher
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .update(&buf[..n]);
        }
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
        Ok(n)
    }
}

/// A plain tar file read header by header: skipping seeks, so file data
/// the parser does not need is never read.
struct Seeking {
    inner: BufReader<File>,
    pos: u64,
    len: u64,
    bar: Option<indicatif::ProgressBar>,
}

impl Read for Seeking {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
        Ok(n)
    }
}

impl TarRead for Seeking {
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        let n = n.min(self.len.saturating_sub(self.pos));
        let step = i64::try_from(n).map_err(|_| io::Error::other("skip too long"))?;
        self.inner.seek_relative(step)?;
        self.pos += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
        Ok(n)
    }
}

/// Size of the buffer for header-by-header reading: most headers of small
/// files come in the same read, and a skip past a large file costs one.
const HEADER_READ_BUFFER: usize = 64 << 10;

/// How a layer blob is compressed, as its magic bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// A plain tar.
    #[default]
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// Zstandard (`28 b5 2f fd`), zstd:chunked included: its skippable
    /// frames are skipped by the decoder.
    Zstd,
}

impl Compression {
    /// What `head` (the first bytes of a blob) starts with.
    pub fn detect(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "tar",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }

    /// containers/storage's code for it (pkg/archive: Uncompressed 0,
    /// Bzip2 1, Gzip 2, Xz 3, Zstd 4), as a layer's `info` records it.
    pub fn storage_code(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Gzip => 2,
            Self::Zstd => 4,
        }
    }
}

/// Which digests to compute as the input is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digests {
    /// None: a plain tar file is read header by header.
    None,
    /// The tar's only; the input's is this one, already checked.
    TarOnly(Digest),
    /// The input's and the tar's.
    Both,
}

/// The opened input: the uncompressed tar stream and its digests.
pub struct Source {
    /// The tar bytes.
    pub reader: Box<dyn TarRead>,
    /// How the input was compressed.
    pub compression: Compression,
    /// The zinfo being built, when asked for and the input is gzip.
    pub gzindex: Option<ZinfoHandle>,
    input: Option<SharedHash>,
    /// The input's digest, known before reading it.
    known: Option<Digest>,
    tar: Option<SharedHash>,
    bar: Option<indicatif::ProgressBar>,
}

impl Source {
    /// The input's and the tar's sha256, once everything has been read;
    /// `None` when the input was opened without digests.
    pub fn digests(&self) -> Option<(Digest, Digest)> {
        let input = match (self.known, &self.input) {
            (Some(known), _) => known,
            (None, input) => Digest(finish(input.as_ref()?)),
        };
        let tar = match &self.tar {
            Some(tar) => Digest(finish(tar)),
            None => input,
        };
        Some((input, tar))
    }

    /// Clears the progress bar.
    pub fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Says which stream a decoding error is in: "damaged zstd stream: ...";
/// only the decoder's own errors (no OS error code: InvalidData, an early
/// end, zstd's messages), not the input file's (EIO is no damage).
struct Damaged<R> {
    inner: R,
    what: &'static str,
}

impl<R: Read> Read for Damaged<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.raw_os_error().is_some() {
                return e;
            }
            let kind = e.kind();
            io::Error::new(kind, format!("damaged {} stream: {e}", self.what))
        })
    }
}

/// Opens `path` (`-`: stdin), detecting gzip and zstd by their magic bytes;
/// with `index`, a gzip input is decompressed by [`GzIndexer`], building
/// its zinfo on the way; `digests` says which of the input and the tar are
/// hashed as they are read (a plain tar file hashed by nobody is read
/// header by header).
pub fn open_input(
    path: &Path,
    progress: bool,
    index: bool,
    digests: Digests,
) -> io::Result<Source> {
    let known = match digests {
        Digests::TarOnly(known) => Some(known),
        _ => None,
    };
    let (raw, len): (Box<dyn Read + Send>, Option<u64>) = if path == Path::new("-") {
        (Box::new(io::stdin()), None)
    } else {
        let file = File::open(path)?;
        let metadata = file.metadata()?;
        let len = metadata.len();
        // A plain tar needs reading whole only to hash it; its digest
        // is the input's, so a known one spares that too.
        if digests != Digests::Both && metadata.is_file() {
            if let Some(mut source) = header_by_header(&file, len, progress)? {
                source.known = known;
                return Ok(source);
            }
        }
        (Box::new(file), Some(len))
    };
    let bar = (progress && io::stderr().is_terminal()).then(|| progress_bar(len));
    let input = (digests == Digests::Both).then(new_hash);
    let mut buffered = BufReader::with_capacity(
        1 << 20,
        Hashing {
            inner: raw,
            hasher: input.clone(),
            bar: bar.clone(),
        },
    );
    let compression = Compression::detect(buffered.fill_buf()?);
    let tar = (digests != Digests::None).then(new_hash);
    if compression != Compression::None && !index {
        // Decoded on another thread, as the tar is hashed and parsed here.
        let reader = decode_on_a_thread(buffered, compression, tar.clone())?;
        return Ok(Source {
            reader: Box::new(reader),
            compression,
            gzindex: None,
            input,
            known,
            tar,
            bar,
        });
    }
    let mut gzindex = None;
    let decoder: Box<dyn Read> = match compression {
        Compression::None => {
            return Ok(Source {
                reader: Box::new(buffered),
                compression,
                gzindex: None,
                input,
                known,
                tar: None,
                bar,
            })
        }
        Compression::Gzip if index => {
            let (indexer, handle) = GzIndexer::new(buffered, DEFAULT_SPAN)?;
            gzindex = Some(handle);
            Box::new(indexer)
        }
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
    };
    let decoder = Box::new(Damaged {
        inner: decoder,
        what: compression.name(),
    });
    let reader = Hashing {
        inner: decoder,
        hasher: tar.clone(),
        bar: None,
    };
    let reader = Box::new(BufReader::with_capacity(1 << 20, reader));
    Ok(Source {
        reader,
        compression,
        gzindex,
        input,
        known,
        tar,
        bar,
    })
}

/// The tar in `buffered` (gzip or zstd), decoded on its own thread; the
/// decoded bytes are hashed into `tar`, if any.
fn decode_on_a_thread(
    buffered: BufReader<Hashing<Box<dyn Read + Send>>>,
    compression: Compression,
    tar: Option<SharedHash>,
) -> io::Result<Decoded> {
    let what = compression.name();
    Decoded::start(
        move || {
            let decoder: Box<dyn Read> = match compression {
                Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
                _ => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
            };
            Ok(Box::new(Damaged {
                inner: decoder,
                what,
            }))
        },
        tar,
    )
}

fn new_hash() -> SharedHash {
    Arc::new(Mutex::new(Sha256::new()))
}

/// `file` as a plain tar read header by header, or `None` when it is
/// compressed (a stream to decode whole).
fn header_by_header(file: &File, len: u64, progress: bool) -> io::Result<Option<Source>> {
    let mut inner = BufReader::with_capacity(HEADER_READ_BUFFER, file.try_clone()?);
    if Compression::detect(inner.fill_buf()?) != Compression::None {
        // The clone shares the file's offset: back to the start for the
        // stream reader.
        inner.into_inner().rewind()?;
        return Ok(None);
    }
    let bar = (progress && io::stderr().is_terminal()).then(|| progress_bar(Some(len)));
    let reader = Seeking {
        inner,
        pos: 0,
        len,
        bar: bar.clone(),
    };
    Ok(Some(Source {
        reader: Box::new(reader),
        compression: Compression::None,
        gzindex: None,
        input: None,
        known: None,
        tar: None,
        bar,
    }))
}

fn progress_bar(len: Option<u64>) -> indicatif::ProgressBar {
    let bar = match len {
        Some(len) => indicatif::ProgressBar::new(len),
        None => indicatif::ProgressBar::no_length(),
    };
    let template = if len.is_some() {
        "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{spinner} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    bar
}

/// Counts the bytes read through it and copies them to a file, if any.
pub struct Tee<'a, R> {
    inner: &'a mut R,
    copy: Option<BufWriter<File>>,
    count: u64,
}

impl<'a, R: Read> Tee<'a, R> {
    /// Reads `inner`, copying to `copy`.
    pub fn new(inner: &'a mut R, copy: Option<File>) -> Self {
        Self {
            inner,
            copy: copy.map(|f| BufWriter::with_capacity(1 << 20, f)),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn written(&self) -> u64 {
        self.count
    }

    /// Flushes the copy, and with `durable` syncs it to disk (a copy kept
    /// as a file; a temporary one, read back and dropped, needs no sync).
    pub fn finish(self, durable: bool) -> io::Result<()> {
        if let Some(copy) = self.copy {
            let file = copy.into_inner().map_err(|e| e.into_error())?;
            if durable {
                file.sync_all()?;
            }
        }
        Ok(())
    }
}

impl<R: TarRead> TarRead for Tee<'_, R> {
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        if self.copy.is_some() {
            // The copy needs the bytes.
            return io::copy(&mut <&mut Self as Read>::take(self, n), &mut io::sink());
        }
        let skipped = self.inner.skip(n)?;
        self.count += skipped;
        Ok(skipped)
    }
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(copy) = &mut self.copy {
            copy.write_all(&buf[..n])?;
        }
        self.count += n as u64;
        Ok(n)
    }
}
