//! The commands that read an image: `inspect`, `ls`, `cat`, `stat`,
//! `manifest`, `fsck` and `extract`.

use erofs_fuse::inspect::{format_utc, mode_string, EntrySummary, ImageSummary};
use erofs_fuse::reader::{FileKind, WalkEntry, WalkVisitor};
use erofs_fuse::{Image, Inode};

use super::args::{
    CatArgs, ExtractArgs, FsckArgs, ImageArgs, InspectArgs, LsArgs, ManifestArgs, StatArgs,
};
use super::error::{CliError, Context, Result};
use super::{open, resolve, write_out};

impl InspectArgs {
    /// `inspect`.
    pub fn run(self) -> Result {
        inspect(&self.image, self.json)
    }
}

fn inspect(args: &ImageArgs, json: bool) -> Result {
    // A Nydus image is opened once, its tables kept for the blob table.
    let host = erofs_fuse::registry::manifest::Platform::host();
    let (image, rafs) = match super::nydus::open_nydus(&args.image, &args.open, &host)? {
        Some((image, rafs)) => (image, Some(rafs)),
        None => (open(args)?, None),
    };
    let s = ImageSummary::new(&image);
    if json {
        let mut value = serde_json::to_value(&s)?;
        if let (Some(rafs), Some(map)) = (&rafs, value.as_object_mut()) {
            map.insert("nydus".into(), super::nydus::blob_json(rafs));
        }
        let text = serde_json::to_string_pretty(&value)?;
        return write_out(format!("{text}\n").as_bytes());
    }
    let mut t = String::new();
    let mut line = |k: &str, v: String| t.push_str(&format!("{k:<22}{v}\n"));
    line("image:", args.image.display().to_string());
    line("block size:", s.block_size.to_string());
    line("size:", format!("{} blocks ({} bytes)", s.blocks, s.size));
    line("inodes:", s.inodes.to_string());
    line("root nid:", s.root_nid.to_string());
    line("uuid:", s.uuid.clone());
    line("volume name:", s.volume_name.clone());
    line(
        "build time:",
        format!("{} ({} UTC)", s.build_time, s.build_time_utc),
    );
    line("features:", s.features.join(" "));
    line(
        "compression:",
        if s.compression.is_empty() {
            "none".into()
        } else {
            s.compression.join(" ")
        },
    );
    line(
        "checksum:",
        s.checksum
            .clone()
            .map_or("none".into(), |c| format!("{c} (verified)")),
    );
    line("meta blkaddr:", s.meta_blkaddr.to_string());
    line("xattr blkaddr:", s.xattr_blkaddr.to_string());
    if let Some(n) = s.packed_nid {
        line("packed nid:", n.to_string());
    }
    if let Some(n) = s.metabox_nid {
        line("metabox nid:", n.to_string());
    }
    if !s.long_xattr_prefixes.is_empty() {
        line("long xattr prefixes:", s.long_xattr_prefixes.join(" "));
    }
    line("extra devices:", s.devices.len().to_string());
    for d in &s.devices {
        let source = if d.inside_image {
            format!("inside the image at block {}", d.uniaddr)
        } else {
            d.path.clone()
        };
        line(
            &format!("  device {}:", d.id),
            format!(
                "{} blocks, unified address {}, tag {:?}, from {source}",
                d.blocks, d.uniaddr, d.tag
            ),
        );
    }
    for (k, v) in rafs.iter().flat_map(super::nydus::blob_lines) {
        line(&k, v);
    }
    write_out(t.as_bytes())
}

impl LsArgs {
    /// `ls`.
    pub fn run(self) -> Result {
        let image = open(&self.image)?;
        let inode = resolve(&image, &self.image, &self.path)?;
        let lines = list(&image, inode, &self.path, self.long, self.recursive)
            .with_context(|| format!("{}: {}", self.image.image.display(), self.path))?;
        write_out(&lines)
    }
}

/// The `ls` lines for `inode`, found at `path`.
fn list(
    image: &Image,
    inode: Inode,
    path: &str,
    long: bool,
    recursive: bool,
) -> erofs_fuse::Result<Vec<u8>> {
    let mut lines = Lister {
        image,
        long,
        out: Vec::new(),
    };
    if recursive {
        let start = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        image.walk(inode, start.as_bytes(), &mut lines)?;
    } else if inode.is_dir() {
        for item in image.read_dir(&inode, Default::default())? {
            let (entry, _) = item?;
            if entry.name == b"." || entry.name == b".." {
                continue;
            }
            let child = image.inode(entry.nid)?;
            lines.line(&entry.name, &child)?;
        }
    } else {
        lines.line(path.as_bytes(), &inode)?;
    }
    Ok(lines.out)
}

/// Formats `ls` lines.
struct Lister<'a> {
    image: &'a Image,
    long: bool,
    out: Vec<u8>,
}

impl Lister<'_> {
    fn line(&mut self, name: &[u8], inode: &Inode) -> erofs_fuse::Result<()> {
        if self.long {
            let size = match inode.kind {
                FileKind::CharDevice(ma, mi) | FileKind::BlockDevice(ma, mi) => {
                    format!("{ma}, {mi}")
                }
                _ => inode.size.to_string(),
            };
            let head = format!(
                "{} {:>3} {:>5} {:>5} {:>10} {} ",
                mode_string(inode.kind, inode.mode),
                inode.nlink,
                inode.uid,
                inode.gid,
                size,
                format_utc(inode.mtime, 0),
            );
            self.out.extend_from_slice(head.as_bytes());
        }
        self.out.extend_from_slice(name);
        if self.long && inode.kind == FileKind::Symlink {
            self.out.extend_from_slice(b" -> ");
            self.out.extend_from_slice(&self.image.read_link(inode)?);
        }
        self.out.push(b'\n');
        Ok(())
    }
}

impl WalkVisitor for Lister<'_> {
    fn visit(&mut self, entry: &WalkEntry) -> erofs_fuse::Result<()> {
        self.line(&entry.path, &entry.inode)
    }
}

impl CatArgs {
    /// `cat`.
    pub fn run(self) -> Result {
        cat(&self.image, &self.path)
    }
}

fn cat(args: &ImageArgs, path: &str) -> Result {
    let image = open(args)?;
    let inode = resolve(&image, args, path)?;
    let what = || format!("{}: {path}", args.image.display());
    match inode.kind {
        FileKind::Regular => {}
        FileKind::Directory => return Err(erofs_fuse::Error::IsDir).with_context(what),
        _ => return Err(CliError::msg("not a regular file")).with_context(what),
    }
    const CHUNK: u64 = 1 << 20;
    let mut offset = 0;
    while offset < inode.size {
        let bytes = image.read_range(&inode, offset, CHUNK).with_context(what)?;
        write_out(&bytes)?;
        offset += bytes.len() as u64;
    }
    Ok(())
}

impl StatArgs {
    /// `stat`.
    pub fn run(self) -> Result {
        stat(&self.image, &self.path, self.json)
    }
}

fn stat(args: &ImageArgs, path: &str, json: bool) -> Result {
    let image = open(args)?;
    let inode = resolve(&image, args, path)?;
    let s = EntrySummary::new(&image, path, &inode)
        .with_context(|| format!("{}: {path}", args.image.display()))?;
    if json {
        let text = serde_json::to_string_pretty(&s)?;
        return write_out(format!("{text}\n").as_bytes());
    }
    let mut t = format!(
        "  File: {}{}\n  Type: {}  Mode: {} ({})  Links: {}\n  Size: {}  Blocks: {}  Nid: {}  Inode: {}, {}\n   Uid: {}  Gid: {}\nModify: {} UTC ({}.{:09})\n",
        s.path,
        s.target.as_ref().map(|t| format!(" -> {t}")).unwrap_or_default(),
        s.kind,
        s.mode,
        mode_string(inode.kind, inode.mode),
        s.nlink,
        s.size,
        s.blocks,
        s.nid,
        s.inode_format,
        s.layout,
        s.uid,
        s.gid,
        s.mtime_utc,
        s.mtime,
        s.mtime_nsec,
    );
    if let Some(c) = &s.compression {
        let algorithms = if c.algorithms.is_empty() {
            "none".to_string()
        } else {
            c.algorithms.join(", ")
        };
        t.push_str(&format!(
            "Compressed: {} bytes on disk ({algorithms}), {} extents ({} stored plain, {} partial), lcluster {}\n",
            c.compressed_size, c.extents, c.plain_extents, c.partial_extents, c.lcluster_size
        ));
        if c.fragment_bytes > 0 || c.inline_bytes > 0 {
            t.push_str(&format!(
                "  Tail: {} bytes in the packed inode, {} bytes inline\n",
                c.fragment_bytes, c.inline_bytes
            ));
        }
    }
    if let Some([major, minor]) = s.rdev {
        t.push_str(&format!("Device: {major}, {minor}\n"));
    }
    if !s.xattrs.is_empty() {
        t.push_str("Xattrs:\n");
        for x in &s.xattrs {
            match &x.value_text {
                Some(text) => t.push_str(&format!("  {} = {text:?}\n", x.name)),
                None => t.push_str(&format!("  {} = 0x{}\n", x.name, x.value_hex)),
            }
        }
    }
    write_out(t.as_bytes())
}

impl ManifestArgs {
    /// `manifest`.
    pub fn run(self) -> Result {
        let image = open(&self.image)?;
        let lines = erofs_fuse::manifest::manifest(&image).context(self.image.image.display())?;
        let mut text = lines.join("\n");
        text.push('\n');
        write_out(text.as_bytes())
    }
}

impl FsckArgs {
    /// `fsck`.
    pub fn run(self) -> Result {
        fsck(&self.image)
    }
}

fn fsck(args: &ImageArgs) -> Result {
    let image = open(args)?;
    let limits = erofs_fuse::fsck::FsckLimits::for_image(&image);
    let report = erofs_fuse::fsck::fsck(&image, &limits);
    let name = args.image.display();
    for problem in &report.problems {
        eprintln!("{name}: {problem}");
    }
    let unlisted = report.problem_count - report.problems.len() as u64;
    if unlisted > 0 {
        eprintln!("{name}: ... and {unlisted} more problems");
    }
    let summary = format!(
        "{name}: {} entries, {} inodes, {} bytes of data read",
        report.entries, report.inodes, report.bytes_read
    );
    if report.limited {
        eprintln!(
            "{name}: stopped after {} entries: directories share their blocks (more entries than the image could hold)",
            report.entries
        );
    }
    if report.problem_count > 0 || report.limited {
        return Err(CliError::msg(format!(
            "{summary}; {} problems",
            report.problem_count + u64::from(report.limited)
        )));
    }
    write_out(format!("{summary}; no problems\n").as_bytes())
}

impl ExtractArgs {
    /// `extract`.
    pub fn run(self) -> Result {
        // A deep tree holds one descriptor per directory level (up to 2048).
        super::daemon::raise_open_file_limit();
        let image = open(&self.image)?;
        let options = erofs_fuse::extract::ExtractOptions {
            owners: !self.no_owner,
            xattrs: !self.no_xattrs,
        };
        let stats = erofs_fuse::extract::extract(&image, &self.dest, &options)
            .context(self.image.image.display())?;
        tracing::info!(
            files = stats.entries,
            bytes = stats.bytes,
            "extracted {} to {}",
            self.image.image.display(),
            self.dest.display()
        );
        Ok(())
    }
}
