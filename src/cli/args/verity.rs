//! `verity` arguments: building and checking dm-verity trees.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `verity` subcommands.
#[derive(Debug, Subcommand)]
pub enum VerityCommand {
    /// Build a dm-verity hash tree for DATA into HASH_FILE, byte for byte
    /// what `veritysetup format` writes with the same parameters (format 1,
    /// sha256), and print its header and root hash as veritysetup does.
    /// Salt and UUID are random unless given.
    ///
    /// With --append FILE, containerd's layout for an EROFS layer instead:
    /// FILE zero-padded to whole blocks (512 bytes for an image with 512-byte
    /// blocks, i.e. tar-index layers, else 4096), superblock and tree
    /// appended to it (salt: 32 zero bytes), and FILE.dmverity written with
    /// {"roothash", "hashoffset"}.
    Format(VerityFormatArgs),
    /// Check DATA against the tree in HASH_FILE and ROOT_HASH: exit 0, or
    /// name the first bad block.
    Verify(VerityVerifyArgs),
}

/// `verity format` arguments.
#[derive(Args, Debug)]
pub struct VerityFormatArgs {
    /// The data: an image, a layer tar, any file. Only whole data blocks
    /// are covered, as veritysetup does.
    pub data: PathBuf,
    /// Where to write the superblock and the tree (created or
    /// overwritten); not with --append.
    #[arg(required_unless_present = "append", conflicts_with = "append")]
    pub hash_file: Option<PathBuf>,
    /// Append the tree to DATA and write DATA.dmverity (containerd).
    #[arg(long, conflicts_with_all = ["salt", "data_block_size", "hash_block_size", "no_superblock"])]
    pub append: bool,
    /// Write the tree alone, without the superblock (veritysetup
    /// --no-superblock): salt and sizes must then be given to use it.
    #[arg(long)]
    pub no_superblock: bool,
    /// Salt in hex (veritysetup: 32 random bytes; "-" for none).
    #[arg(long)]
    pub salt: Option<String>,
    /// UUID of the hash device.
    #[arg(long)]
    pub uuid: Option<String>,
    /// Data block size in bytes.
    #[arg(long, default_value_t = 4096)]
    pub data_block_size: u32,
    /// Hash block size in bytes.
    #[arg(long, default_value_t = 4096)]
    pub hash_block_size: u32,
}

/// `verity verify` arguments.
#[derive(Args, Debug)]
pub struct VerityVerifyArgs {
    /// The data.
    pub data: PathBuf,
    /// The hash file (superblock at offset 0, or at --hash-offset).
    pub hash_file: PathBuf,
    /// The root hash, in hex.
    pub root_hash: String,
    /// Byte offset of the superblock (or tree) in HASH_FILE.
    #[arg(long, default_value_t = 0)]
    pub hash_offset: u64,
    /// The tree has no superblock (veritysetup --no-superblock): its
    /// parameters come from --salt, --data-blocks and the block sizes.
    #[arg(long)]
    pub no_superblock: bool,
    /// Salt in hex ("-" for none), with --no-superblock.
    #[arg(long, requires = "no_superblock")]
    pub salt: Option<String>,
    /// Data blocks covered, with --no-superblock (default: every whole
    /// block of DATA).
    #[arg(long, requires = "no_superblock")]
    pub data_blocks: Option<u64>,
    /// Data block size, with --no-superblock.
    #[arg(long, default_value_t = 4096, requires = "no_superblock")]
    pub data_block_size: u32,
    /// Hash block size, with --no-superblock.
    #[arg(long, default_value_t = 4096, requires = "no_superblock")]
    pub hash_block_size: u32,
}
