//! Command implementations: open the image, call the library, print.

use std::io::Write;
use std::path::Path;

use erofs_fuse::inspect::{format_utc, mode_string, EntrySummary, ImageSummary};
use erofs_fuse::reader::{FileKind, WalkEntry, WalkVisitor};
use erofs_fuse::verity::VeritySource;
use erofs_fuse::{Image, Inode, OpenOptions};

use crate::{ImageArgs, OpenArgs};

pub mod dispatch;
mod serve;

pub use serve::{mount, store_add, store_serve, MountArgs};

/// A command's failure, already phrased for the user.
pub type CliResult = Result<(), String>;

/// Sets up `tracing` output on stderr (or appended to `file`): warnings by
/// default, more with -v, or whatever `RUST_LOG` says.
pub fn init_logging(verbose: u8, file: Option<&Path>) -> Result<(), String> {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // fuser's own warnings (e.g. its unmount attempt after an external
    // fusermount -u) are noise unless asked for.
    let default = if verbose < 2 {
        format!("{default},fuser=error")
    } else {
        default.to_string()
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

fn open(args: &ImageArgs) -> Result<Image, String> {
    open_with(&args.image, &args.open)
}

fn open_with(path: &Path, args: &OpenArgs) -> Result<Image, String> {
    let options = OpenOptions {
        devices: args.devices.clone(),
        offset: args.offset,
        cache_size: args.cache_size,
        verity: args
            .verity
            .clone()
            .or_else(|| args.dmverity.clone().map(VeritySource::Sidecar)),
        device_verity: args.device_verity.clone(),
        verity_once: args.verity_once,
    };
    Image::open(path, &options).map_err(|e| match e {
        // These already name the file they concern.
        erofs_fuse::Error::Io { .. } => e.to_string(),
        _ => format!("{}: {e}", path.display()),
    })
}

fn resolve(image: &Image, args: &ImageArgs, path: &str) -> Result<Inode, String> {
    image
        .resolve(path.as_bytes())
        .map_err(|e| format!("{}: {path}: {e}", args.image.display()))
}

fn write_out(bytes: &[u8]) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes) {
        Ok(()) => Ok(()),
        // A closed pipe (e.g. `| head`) is not an error worth reporting.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(format!("writing to standard output: {e}")),
    }
}

/// `inspect`.
pub fn inspect(args: &ImageArgs, json: bool) -> CliResult {
    let image = open(args)?;
    let s = ImageSummary::new(&image);
    if json {
        let text = serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?;
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
    write_out(t.as_bytes())
}

/// `ls`.
pub fn ls(args: &ImageArgs, path: &str, long: bool, recursive: bool) -> CliResult {
    let image = open(args)?;
    let inode = resolve(&image, args, path)?;
    let fail = |e: erofs_fuse::Error| format!("{}: {path}: {e}", args.image.display());
    let mut lines = Lister {
        image: &image,
        long,
        out: Vec::new(),
    };
    if recursive {
        let start = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        image
            .walk(inode, start.as_bytes(), &mut lines)
            .map_err(fail)?;
    } else if inode.is_dir() {
        for item in image.read_dir(&inode, Default::default()).map_err(fail)? {
            let (entry, _) = item.map_err(fail)?;
            if entry.name == b"." || entry.name == b".." {
                continue;
            }
            let child = image.inode(entry.nid).map_err(fail)?;
            lines.line(&entry.name, &child).map_err(fail)?;
        }
    } else {
        lines.line(path.as_bytes(), &inode).map_err(fail)?;
    }
    write_out(&lines.out)
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

/// `cat`.
pub fn cat(args: &ImageArgs, path: &str) -> CliResult {
    let image = open(args)?;
    let inode = resolve(&image, args, path)?;
    let fail = |e: erofs_fuse::Error| format!("{}: {path}: {e}", args.image.display());
    match inode.kind {
        FileKind::Regular => {}
        FileKind::Directory => return Err(fail(erofs_fuse::Error::IsDir)),
        _ => {
            return Err(format!(
                "{}: {path}: not a regular file",
                args.image.display()
            ))
        }
    }
    const CHUNK: u64 = 1 << 20;
    let mut offset = 0;
    while offset < inode.size {
        let bytes = image.read_range(&inode, offset, CHUNK).map_err(fail)?;
        write_out(&bytes)?;
        offset += bytes.len() as u64;
    }
    Ok(())
}

/// `stat`.
pub fn stat(args: &ImageArgs, path: &str, json: bool) -> CliResult {
    let image = open(args)?;
    let inode = resolve(&image, args, path)?;
    let s = EntrySummary::new(&image, path, &inode)
        .map_err(|e| format!("{}: {path}: {e}", args.image.display()))?;
    if json {
        let text = serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?;
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

/// `manifest`.
pub fn manifest(args: &ImageArgs) -> CliResult {
    let image = open(args)?;
    let lines = erofs_fuse::manifest::manifest(&image)
        .map_err(|e| format!("{}: {e}", args.image.display()))?;
    let mut text = lines.join("\n");
    text.push('\n');
    write_out(text.as_bytes())
}

/// `fsck`.
pub fn fsck(args: &ImageArgs) -> CliResult {
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
        return Err(format!(
            "{summary}; {} problems",
            report.problem_count + u64::from(report.limited)
        ));
    }
    write_out(format!("{summary}; no problems\n").as_bytes())
}

/// `extract`.
pub fn extract(args: &ImageArgs, dest: &Path, owners: bool, xattrs: bool) -> CliResult {
    let image = open(args)?;
    let options = erofs_fuse::extract::ExtractOptions { owners, xattrs };
    let stats = erofs_fuse::extract::extract(&image, dest, &options)
        .map_err(|e| format!("{}: {e}", args.image.display()))?;
    tracing::info!(
        files = stats.entries,
        bytes = stats.bytes,
        "extracted {} to {}",
        args.image.display(),
        dest.display()
    );
    Ok(())
}

/// `convert`: a layer tar to EROFS, then its digests.
pub fn convert(
    input: &Path,
    output: &Path,
    mut options: erofs_fuse::convert::ConvertOptions,
) -> CliResult {
    use erofs_fuse::convert::Mode;
    if options.mode == Mode::Full && (options.append_tar || options.tar_out.is_some()) {
        return Err("--append-tar and --tar-out apply to --mode index only".into());
    }
    if options.implied_mtime.is_none() {
        if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
            let seconds = epoch
                .trim()
                .parse()
                .map_err(|_| format!("SOURCE_DATE_EPOCH={epoch}: not a number of seconds"))?;
            options.implied_mtime = Some(seconds);
        }
    }
    let report = erofs_fuse::convert::convert(input, output, &options).map_err(|e| {
        format!(
            "converting {}: {e}",
            if input == Path::new("-") {
                "stdin".into()
            } else {
                input.display().to_string()
            }
        )
    })?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "digest {}", report.input_digest);
    let _ = writeln!(out, "diffid {}", report.tar_digest);
    let _ = writeln!(
        out,
        "image {} ({} bytes, {} inodes)",
        output.display(),
        report.image_size,
        report.inodes
    );
    if let Some(tar) = &report.tar_path {
        let _ = writeln!(
            out,
            "tar {} ({} bytes): mount with --device {}",
            tar.display(),
            report.tar_size,
            tar.display()
        );
    }
    Ok(())
}

/// Random bytes from the kernel.
fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    // SAFETY: getrandom writes at most N bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), N, 0) };
    if n != N as isize {
        return Err(format!("getrandom: {}", std::io::Error::last_os_error()));
    }
    Ok(bytes)
}

/// A tree's parameters as given on the command line.
pub struct TreeArgs<'a> {
    /// `--salt`: hex, `-` for none, absent for random (format) or none.
    pub salt: Option<&'a str>,
    /// `--data-blocks`; default: every whole block of the data.
    pub data_blocks: Option<u64>,
    /// `--data-block-size`.
    pub data_block_size: u32,
    /// `--hash-block-size`.
    pub hash_block_size: u32,
    /// Not `--no-superblock`.
    pub superblock: bool,
}

impl TreeArgs<'_> {
    /// The parameters for `data`, with `default_salt` when none is given.
    fn params(
        &self,
        data: &std::fs::File,
        default_salt: impl FnOnce() -> Result<Vec<u8>, String>,
        uuid: [u8; 16],
    ) -> Result<erofs_fuse::verity::VerityParams, String> {
        let salt = match self.salt {
            None => default_salt()?,
            Some("-") => Vec::new(),
            Some(text) => erofs_fuse::verity::from_hex(text)
                .ok_or_else(|| format!("--salt {text}: not hex"))?,
        };
        let len = data.metadata().map_err(|e| e.to_string())?.len();
        Ok(erofs_fuse::verity::VerityParams {
            data_block_size: self.data_block_size,
            hash_block_size: self.hash_block_size,
            data_blocks: self
                .data_blocks
                .unwrap_or(len / u64::from(self.data_block_size.max(1))),
            salt,
            uuid,
        })
    }
}

/// `verity format`: a tree as veritysetup makes it, and its header.
pub fn verity_format(
    data: &Path,
    hash_file: &Path,
    tree: &TreeArgs,
    uuid: Option<&str>,
) -> CliResult {
    use erofs_fuse::verity::{format_tree, format_uuid, hex};
    let (data_block_size, hash_block_size) = (tree.data_block_size, tree.hash_block_size);
    let uuid = uuid_arg(uuid)?;
    let input = std::fs::File::open(data).map_err(|e| format!("{}: {e}", data.display()))?;
    let params = tree
        .params(&input, || Ok(random_bytes::<32>()?.to_vec()), uuid)
        .map_err(|e| format!("{}: {e}", data.display()))?;
    if let (Ok(a), Ok(b)) = (std::fs::metadata(data), std::fs::metadata(hash_file)) {
        use std::os::unix::fs::MetadataExt;
        if (a.dev(), a.ino()) == (b.dev(), b.ino()) {
            return Err(format!(
                "{}: the hash file is the data (use --append to add a tree to a file)",
                hash_file.display()
            ));
        }
    }
    let output = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(hash_file)
        .map_err(|e| format!("{}: {e}", hash_file.display()))?;
    let root = format_tree(&input, &output, 0, &params, tree.superblock)
        .map_err(|e| format!("{}: {e}", data.display()))?;
    let mut out = std::io::stdout().lock();
    let hash_blocks = params.hash_area_size() / u64::from(hash_block_size) - 1;
    let hash_size = params.hash_area_size()
        - if tree.superblock {
            0
        } else {
            u64::from(hash_block_size)
        };
    let _ = writeln!(out, "VERITY header information for {}", hash_file.display());
    let _ = writeln!(out, "UUID:            \t{}", format_uuid(&params.uuid));
    let _ = writeln!(out, "Hash type:       \t1");
    let _ = writeln!(out, "Data blocks:     \t{}", params.data_blocks);
    let _ = writeln!(out, "Data block size: \t{data_block_size}");
    let _ = writeln!(out, "Hash blocks:     \t{hash_blocks}");
    let _ = writeln!(out, "Hash block size: \t{hash_block_size}");
    let _ = writeln!(out, "Hash algorithm:  \tsha256");
    let salt_text = if params.salt.is_empty() {
        "-".to_string()
    } else {
        hex(&params.salt)
    };
    let _ = writeln!(out, "Salt:            \t{salt_text}");
    let _ = writeln!(out, "Root hash:      \t{}", hex(&root));
    let _ = writeln!(out, "Hash device size: \t{hash_size} [bytes]",);
    Ok(())
}

/// The UUID given, or a random version 4 one as veritysetup makes.
fn uuid_arg(uuid: Option<&str>) -> Result<[u8; 16], String> {
    match uuid {
        None => {
            let mut bytes = random_bytes::<16>()?;
            bytes[6] = (bytes[6] & 0x0f) | 0x40;
            bytes[8] = (bytes[8] & 0x3f) | 0x80;
            Ok(bytes)
        }
        Some(text) => {
            erofs_fuse::verity::parse_uuid(text).ok_or_else(|| format!("--uuid {text}: not a UUID"))
        }
    }
}

/// `verity format --append`: containerd's in-place layout and sidecar.
pub fn verity_append(data: &Path, uuid: Option<&str>) -> CliResult {
    let uuid = uuid_arg(uuid)?;
    let shown = |e: &dyn std::fmt::Display| format!("{}: {e}", data.display());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(data)
        .map_err(|e| shown(&e))?;
    // 512-byte blocks for images with 512-byte blocks (tar-index layers),
    // as containerd does: dm-verity's block size becomes the device's.
    let mut head = [0u8; 1024 + 16];
    let block_size = match std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0) {
        Ok(())
            if head[1024..1028] == erofs_fuse::format::EROFS_MAGIC.to_le_bytes()
                && head[1036] == 9 =>
        {
            512
        }
        _ => 4096,
    };
    let (root, hash_offset) =
        erofs_fuse::verity::append(&file, block_size, uuid).map_err(|e| shown(&e))?;
    let json = erofs_fuse::verity::Sidecar { root, hash_offset }.to_json();
    let mut sidecar = data.as_os_str().to_owned();
    sidecar.push(".dmverity");
    let sidecar = std::path::PathBuf::from(sidecar);
    std::fs::write(&sidecar, json).map_err(|e| format!("{}: {e}", sidecar.display()))?;
    println!("Root hash:      \t{}", erofs_fuse::verity::hex(&root));
    println!("Hash offset:    \t{hash_offset}");
    println!("Sidecar:        \t{}", sidecar.display());
    Ok(())
}

/// `verity verify`: the whole data file against a tree and root hash.
pub fn verity_verify(
    data: &Path,
    hash_file: &Path,
    root_hash: &str,
    hash_offset: u64,
    tree: &TreeArgs,
) -> CliResult {
    use erofs_fuse::verity::{from_hex, verify_tree};
    let root = from_hex(root_hash).ok_or_else(|| format!("root hash {root_hash}: not hex"))?;
    let open = |p: &Path| std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()));
    let input = open(data)?;
    let given = if tree.superblock {
        None
    } else {
        let params = tree
            .params(&input, || Ok(Vec::new()), [0; 16])
            .map_err(|e| format!("{}: {e}", data.display()))?;
        Some(params)
    };
    let params = verify_tree(
        &input,
        &open(hash_file)?,
        hash_offset,
        &root,
        given.as_ref(),
    )
    .map_err(|e| format!("{} against {}: {e}", data.display(), hash_file.display()))?;
    println!(
        "{}: {} blocks of {} bytes verified",
        data.display(),
        params.data_blocks,
        params.data_block_size
    );
    Ok(())
}
