//! `verity format` and `verity verify`: dm-verity trees as veritysetup
//! makes them, and containerd's appended layout.

use std::io::Write;
use std::path::Path;

use super::args::{VerityFormatArgs, VerityVerifyArgs};
use super::error::{CliError, Context, Result};

/// Random bytes from the kernel.
#[allow(unsafe_code)]
fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    // SAFETY: getrandom writes at most N bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), N, 0) };
    if n != N as isize {
        return Err(std::io::Error::last_os_error()).context("getrandom");
    }
    Ok(bytes)
}

/// A tree's parameters as given on the command line.
struct TreeArgs<'a> {
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
        default_salt: impl FnOnce() -> Result<Vec<u8>>,
        uuid: [u8; 16],
    ) -> Result<erofs_fuse::verity::VerityParams> {
        let salt = match self.salt {
            None => default_salt()?,
            Some("-") => Vec::new(),
            Some(text) => erofs_fuse::verity::from_hex(text)
                .ok_or_else(|| CliError::msg(format!("--salt {text}: not hex")))?,
        };
        let len = data.metadata()?.len();
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

impl VerityFormatArgs {
    /// `verity format`, or with --append containerd's layout.
    pub fn run(self) -> Result {
        if self.append {
            return verity_append(&self.data, self.uuid.as_deref());
        }
        let tree = TreeArgs {
            salt: self.salt.as_deref(),
            data_blocks: None,
            data_block_size: self.data_block_size,
            hash_block_size: self.hash_block_size,
            superblock: !self.no_superblock,
        };
        let hash_file = self.hash_file.clone().unwrap_or_default();
        verity_format(&self.data, &hash_file, &tree, self.uuid.as_deref())
    }
}

impl VerityVerifyArgs {
    /// `verity verify`.
    pub fn run(self) -> Result {
        let tree = TreeArgs {
            salt: self.salt.as_deref(),
            data_blocks: self.data_blocks,
            data_block_size: self.data_block_size,
            hash_block_size: self.hash_block_size,
            superblock: !self.no_superblock,
        };
        verity_verify(
            &self.data,
            &self.hash_file,
            &self.root_hash,
            self.hash_offset,
            &tree,
        )
    }
}

/// `verity format`: a tree as veritysetup makes it, and its header.
fn verity_format(data: &Path, hash_file: &Path, tree: &TreeArgs, uuid: Option<&str>) -> Result {
    use erofs_fuse::verity::{format_tree, format_uuid, hex};
    let (data_block_size, hash_block_size) = (tree.data_block_size, tree.hash_block_size);
    let uuid = uuid_arg(uuid)?;
    let input = std::fs::File::open(data).context(data.display())?;
    let params = tree
        .params(&input, || Ok(random_bytes::<32>()?.to_vec()), uuid)
        .context(data.display())?;
    if let (Ok(a), Ok(b)) = (std::fs::metadata(data), std::fs::metadata(hash_file)) {
        use std::os::unix::fs::MetadataExt;
        if (a.dev(), a.ino()) == (b.dev(), b.ino()) {
            return Err(CliError::msg(format!(
                "{}: the hash file is the data (use --append to add a tree to a file)",
                hash_file.display()
            )));
        }
    }
    let output = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(hash_file)
        .context(hash_file.display())?;
    let root = format_tree(&input, &output, 0, &params, tree.superblock).context(data.display())?;
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
fn uuid_arg(uuid: Option<&str>) -> Result<[u8; 16]> {
    match uuid {
        None => {
            let mut bytes = random_bytes::<16>()?;
            bytes[6] = (bytes[6] & 0x0f) | 0x40;
            bytes[8] = (bytes[8] & 0x3f) | 0x80;
            Ok(bytes)
        }
        Some(text) => erofs_fuse::verity::parse_uuid(text)
            .ok_or_else(|| CliError::msg(format!("--uuid {text}: not a UUID"))),
    }
}

/// `verity format --append`: containerd's in-place layout and sidecar.
fn verity_append(data: &Path, uuid: Option<&str>) -> Result {
    let uuid = uuid_arg(uuid)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(data)
        .context(data.display())?;
    let block_size = verity_block_size(&file);
    let (root, hash_offset) =
        erofs_fuse::verity::append(&file, block_size, uuid).context(data.display())?;
    let json = erofs_fuse::verity::Sidecar { root, hash_offset }.to_json();
    let mut sidecar = data.as_os_str().to_owned();
    sidecar.push(".dmverity");
    let sidecar = std::path::PathBuf::from(sidecar);
    std::fs::write(&sidecar, json).context(sidecar.display())?;
    println!("Root hash:      \t{}", erofs_fuse::verity::hex(&root));
    println!("Hash offset:    \t{hash_offset}");
    println!("Sidecar:        \t{}", sidecar.display());
    Ok(())
}

/// dm-verity's block size for `file`: 512 bytes for an EROFS image with
/// 512-byte blocks (tar-index layers), as containerd does (dm-verity's block
/// size becomes the device's), else 4096.
fn verity_block_size(file: &std::fs::File) -> u32 {
    use erofs_fuse::format::{read_struct, SuperBlock, EROFS_MAGIC, SUPERBLOCK_OFFSET};
    let mut sb = [0u8; size_of::<SuperBlock>()];
    let read = std::os::unix::fs::FileExt::read_exact_at(file, &mut sb, SUPERBLOCK_OFFSET);
    match read_struct::<SuperBlock>(&sb) {
        Some(sb) if read.is_ok() && sb.magic.get() == EROFS_MAGIC && sb.blkszbits == 9 => 512,
        _ => 4096,
    }
}

/// `verity verify`: the whole data file against a tree and root hash.
fn verity_verify(
    data: &Path,
    hash_file: &Path,
    root_hash: &str,
    hash_offset: u64,
    tree: &TreeArgs,
) -> Result {
    use erofs_fuse::verity::{from_hex, verify_tree};
    let root = from_hex(root_hash)
        .ok_or_else(|| CliError::msg(format!("root hash {root_hash}: not hex")))?;
    let open = |p: &Path| std::fs::File::open(p).context(p.display());
    let input = open(data)?;
    let given = if tree.superblock {
        None
    } else {
        let params = tree
            .params(&input, || Ok(Vec::new()), [0; 16])
            .context(data.display())?;
        Some(params)
    };
    let params = verify_tree(
        &input,
        &open(hash_file)?,
        hash_offset,
        &root,
        given.as_ref(),
    )
    .with_context(|| format!("{} against {}", data.display(), hash_file.display()))?;
    println!(
        "{}: {} blocks of {} bytes verified",
        data.display(),
        params.data_blocks,
        params.data_block_size
    );
    Ok(())
}
