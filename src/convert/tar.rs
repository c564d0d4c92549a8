//! Tar entries to a [`Tree`]: the tar's members read (headers, PAX
//! records, data indexed or copied) and handed to [`TreeBuilder`], which
//! gives them the semantics of extracting the archive.

use std::collections::BTreeMap;

use tar::EntryType;

use super::input::TarRead;
use super::pax::{apply_pax, Attrs, Globals};
use super::stream::{shown, Member, TarStream};
use super::tree::{Content, TreeBuilder};
use super::ConvertError;
use crate::format::encode_rdev;
use crate::mkfs::{FileData, ImageBuilder, Tree};

/// Where regular files' data goes while the tar is read.
pub enum DataSink<'a> {
    /// Left in the tar: files point at their offset in it.
    Index,
    /// Copied into the image being built.
    Full(&'a mut ImageBuilder),
}

/// Options of the tar front end.
#[derive(Debug, Clone, Copy, Default)]
pub struct TarOptions {
    /// Turn OCI whiteouts into overlayfs ones (`.wh.NAME` → char device
    /// 0:0, `.wh..wh..opq` → `trusted.overlay.opaque=y`).
    pub aufs: bool,
    /// Modification time of the root and of directories the tar implies
    /// without listing; `None`: the newest mtime in the tar.
    pub implied_mtime: Option<i64>,
}

/// Reads every entry of the tar stream `reader` into a tree; also returns
/// the sha256 of the tar's headers (the image's UUID comes from it).
pub fn read_tar(
    reader: impl TarRead,
    options: TarOptions,
    sink: DataSink<'_>,
) -> Result<(Tree, [u8; 32]), ConvertError> {
    let mut stream = TarStream::new(reader);
    let mut state = State {
        builder: TreeBuilder::new(options.aufs, options.implied_mtime),
        globals: Globals::default(),
        warned_absolute: false,
        sink,
    };
    while let Some(member) = stream.next_member()? {
        let shown_path = shown(&member.path);
        let fail =
            |message: String| ConvertError::tar(member.at, Some(shown_path.clone()), message);
        state.add(&mut stream, &member).map_err(fail)?;
    }
    Ok((state.builder.finish(), stream.headers_digest()))
}

/// The tree being built and what reading the tar so far has set.
struct State<'a> {
    builder: TreeBuilder,
    globals: Globals,
    warned_absolute: bool,
    sink: DataSink<'a>,
}

impl State<'_> {
    /// Adds one member of the tar; the error says what is wrong with it.
    fn add<R: TarRead>(
        &mut self,
        stream: &mut TarStream<R>,
        member: &Member,
    ) -> Result<(), String> {
        let kind = member.header.entry_type();
        if kind.is_pax_global_extensions() {
            return self.globals.merge(member.pax.clone());
        }
        if kind == EntryType::new(b'V') {
            tracing::info!("tar: skipping the volume label at byte {}", member.at);
            return Ok(());
        }
        if kind.is_gnu_sparse() {
            return Err(
                "GNU sparse files are not supported (re-create the tar without --sparse)".into(),
            );
        }
        let attrs = attributes(member, &self.globals)?;
        let raw_path = c_string(member.path.clone());
        if raw_path.first() == Some(&b'/') && !self.warned_absolute {
            tracing::warn!(
                "tar: '{}': leading '/' removed from absolute paths",
                shown(&raw_path)
            );
            self.warned_absolute = true;
        }
        let content = self.content(stream, member, &raw_path)?;
        self.builder.add(&raw_path, content, attrs)
    }

    /// What `member` holds (a regular file's data read or indexed).
    fn content<R: TarRead>(
        &mut self,
        stream: &mut TarStream<R>,
        member: &Member,
        path: &[u8],
    ) -> Result<Content, String> {
        let link = || c_string(member.link.clone().unwrap_or_default());
        let device = || {
            let header = &member.header;
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            encode_rdev(major, minor)
        };
        Ok(match member.header.entry_type() {
            EntryType::Regular | EntryType::Continuous => Content::File(match &mut self.sink {
                DataSink::Full(builder) if !self.builder.is_whiteout(path) => builder
                    .add_data(&mut stream.data(member), member.size)
                    .map_err(|e| format!("reading its data: {e}"))?,
                _ => FileData {
                    size: member.size,
                    offset: member.data_at,
                },
            }),
            EntryType::Link => Content::HardLink(link()),
            EntryType::Symlink => Content::Symlink(link()),
            EntryType::Char => Content::Char(device()),
            EntryType::Block => Content::Block(device()),
            EntryType::Directory => Content::Dir,
            EntryType::Fifo => Content::Fifo,
            other => {
                return Err(format!(
                    "entry type '{}' is not supported",
                    other.as_byte().escape_ascii()
                ))
            }
        })
    }
}

/// An entry's attributes: its header, then global PAX records, then its own.
fn attributes(member: &Member, globals: &Globals) -> Result<Attrs, String> {
    let header = &member.header;
    let number = |value: std::io::Result<u64>, field: &str| {
        value.map_err(|e| format!("bad {field} field: {e}"))
    };
    let mut attrs = Attrs {
        mode: number(header.mode().map(u64::from), "mode")? as u32 & 0o7777,
        uid: u32::try_from(number(header.uid(), "uid")?)
            .map_err(|_| "uid past 32 bits".to_string())?,
        gid: u32::try_from(number(header.gid(), "gid")?)
            .map_err(|_| "gid past 32 bits".to_string())?,
        mtime: i64::try_from(number(header.mtime(), "mtime")?)
            .map_err(|_| "mtime out of range".to_string())?,
        mtime_nsec: 0,
        xattrs: BTreeMap::new(),
    };
    globals.apply(&mut attrs)?;
    for (key, value) in &member.pax {
        apply_pax(&mut attrs, key, value)?;
    }
    Ok(attrs)
}

/// Names and link targets are C strings, as GNU tar and libarchive read
/// them: a GNU long name's data (or any name) ends at its first NUL.
fn c_string(mut bytes: Vec<u8>) -> Vec<u8> {
    if let Some(end) = bytes.iter().position(|&b| b == 0) {
        bytes.truncate(end);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::super::tree::components;

    #[test]
    fn paths_are_relative_and_stay_inside() {
        assert_eq!(components(b"./a//b/").unwrap(), vec![&b"a"[..], b"b"]);
        assert_eq!(
            components(b"/etc/passwd").unwrap(),
            vec![&b"etc"[..], b"passwd"]
        );
        assert!(components(b"a/../../b").is_err());
        assert!(components(b"./").unwrap().is_empty());
    }
}
