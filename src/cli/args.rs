//! The command line: clap's types for every subcommand and its arguments.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

mod pull;
mod read;
mod store;
mod verity;

pub use pull::{
    AttachArgs, ConfigArgs, ImageSourceArgs, ImagesArgs, PullArgs, RegistryArgs, RmiArgs,
};
pub use read::{CatArgs, ExtractArgs, FsckArgs, InspectArgs, LsArgs, ManifestArgs, StatArgs};
pub use store::{StoreAddArgs, StoreCommand, StoreGcArgs, StoreServeArgs, StoreXattrsArg};
pub use verity::{VerityCommand, VerityFormatArgs, VerityVerifyArgs};

/// Read EROFS images (and tar-indexed OCI layers) in userspace.
///
/// Every command opens the image read-only through mmap and checks every
/// offset it reads, so pointing it at an untrusted image is safe: a broken
/// image gives an error naming the problem, never wrong data.
#[derive(Parser)]
#[command(name = "erofs-fuse", version, max_term_width = 100)]
pub struct Cli {
    /// Log more (repeat for even more); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command that opens an image.
#[derive(Args, Clone)]
pub struct ImageArgs {
    /// The EROFS image file.
    pub image: PathBuf,
    /// How to open the image.
    #[command(flatten)]
    pub open: OpenArgs,
}

/// How to open an image: its devices, cache and verity.
#[derive(Args, Clone)]
pub struct OpenArgs {
    /// File backing the next extra device, in device-table order (repeat
    /// for several). Without it, extra devices are read from the image file
    /// itself at the offsets its device table gives, as containerd's
    /// single-file tar-index layers (index followed by the tar) need.
    #[arg(long = "device", value_name = "PATH")]
    pub devices: Vec<PathBuf>,
    /// Byte offset of the image inside IMAGE (for an image embedded in a
    /// larger file).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub offset: u64,
    /// Memory for decoded compressed data, shared by all readers (e.g. 64M,
    /// 1G; 0 disables it). Each compressed extent is decoded once while it
    /// stays in this cache; uncompressed data never uses it.
    #[arg(long, value_name = "SIZE", default_value = "64M",
          value_parser = erofs_fuse::fuse::options::parse_size)]
    pub cache_size: u64,
    /// Check every block read from IMAGE (metadata and data) against a
    /// dm-verity tree, as veritysetup makes it: a block that does not match
    /// is an I/O error, never wrong data. HASH_FILE holds the tree with its
    /// superblock at byte OFFSET (default 0; it may be IMAGE itself). The
    /// root hash is checked before anything is read. File data is hashed
    /// on a copy taken at every read, and metadata is read from verified
    /// copies of its blocks: a file changed while in use is never served as
    /// good (see --verity-once).
    #[arg(long, value_name = "ROOT_HASH:HASH_FILE[:OFFSET]",
          value_parser = erofs_fuse::verity::VeritySource::parse)]
    pub verity: Option<erofs_fuse::verity::VeritySource>,
    /// Like --verity, for containerd's layout: the tree is appended to
    /// IMAGE and SIDECAR (IMAGE.dmverity) holds its root hash and offset.
    #[arg(long, value_name = "SIDECAR", conflicts_with = "verity")]
    pub dmverity: Option<PathBuf>,
    /// A verity tree for the next --device, in the same order (repeat for
    /// several); "-" serves that device unverified. When IMAGE is verified
    /// every --device needs one, so file data is never served unchecked.
    #[arg(long, value_name = "ROOT_HASH:HASH_FILE[:OFFSET]|-",
          value_parser = erofs_fuse::verity::VeritySource::parse_optional)]
    pub device_verity: Vec<Option<erofs_fuse::verity::VeritySource>>,
    /// With --verity/--dmverity/--device-verity: hash each block once, on
    /// the file's map, and trust it from then on, instead of hashing a
    /// copy of the file data every read serves (and keeping verified copies
    /// of metadata). It trusts the files not to change while in use: bytes
    /// changed after their block was first read (or verified ahead) are
    /// served unchecked.
    #[arg(long)]
    pub verity_once: bool,
    /// The zinfo (gzip checkpoint index: `convert --gzinfo`, `mkfs.erofs
    /// --tar=i --gzinfo`) of the next --device, in the same order (repeat
    /// for several): that --device is then the layer's .tar.gz, read as the
    /// tar it compresses, each 1 MiB inflated from the checkpoint before it
    /// when first read and kept in an unnamed sparse file under $TMPDIR
    /// (/var/tmp by default), so the tar never has to exist whole on disk.
    #[arg(long = "zinfo", value_name = "PATH")]
    pub zinfos: Vec<PathBuf>,
    /// For a Nydus RAFS v6 bootstrap: the directory holding its data blobs,
    /// each named by its blob id (files only, no symlinks followed). Blobs
    /// may instead be given one by one with --device, in blob-table order.
    #[arg(long, value_name = "DIR")]
    pub blob_dir: Option<PathBuf>,
    /// IMAGE is a Nydus data blob built with --blob-inline-meta: its
    /// bootstrap is read from its end, and it serves its own chunks (other
    /// blobs the bootstrap names come from --blob-dir).
    #[arg(long)]
    pub blob_inline_meta: bool,
    /// For a Nydus tarfs bootstrap: check each tar whole against its blob
    /// id (its sha256) before serving it. Tarfs data has no chunk digests,
    /// so without this a changed tar is served as it is; with it, every
    /// open reads every tar once.
    #[arg(long)]
    pub verify_tars: bool,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Mount an image with FUSE (read-only). Without -f the command returns
    /// once the mount is live and the server keeps running in the
    /// background; `fusermount3 -u MOUNTPOINT` (or umount as root) ends it.
    ///
    /// Also usable as a mount helper: `erofs-fuse IMAGE MOUNTPOINT -o OPTS`
    /// (no subcommand) is `mount`, so `mount -t fuse.erofs-fuse IMAGE DIR`
    /// and /etc/fstab entries work through mount.fuse3.
    ///
    /// Security: every mount is nosuid,nodev (setuid bits and device nodes
    /// in the image have no effect); root may opt in with -o suid or -o dev,
    /// other users cannot. With allow_other or allow_root the kernel
    /// enforces the image's permission bits (default_permissions) unless
    /// -o no_default_permissions is given.
    ///
    /// -o options: ro, allow_other, allow_root, default_permissions,
    /// no_default_permissions, suid, nosuid, dev, nodev, exec, noexec,
    /// fsname=NAME, subtype=NAME, device=PATH (like --device), threads=N,
    /// cache_size=SIZE (like --cache-size), readahead=SIZE (like
    /// --readahead), verity=ROOT_HASH:HASH_FILE[:OFFSET]
    /// (like --verity), dmverity=SIDECAR, device_verity=SPEC (like
    /// --device-verity), verity_once (like --verity-once),
    /// auto_unmount, debug; fstab words like defaults, user, nofail, _netdev
    /// and x-* are accepted and ignored.
    ///
    /// With --layer (repeated, bottom layer first) it mounts the merged tree
    /// of a stack of layers as overlayfs would show it.
    ///
    /// With an image reference (REF: `oci:DIR[:TAG]` or a registry's, given
    /// with --image, or in place of IMAGE when no such file exists) it
    /// mounts the image's layers merged, pulling first what the store
    /// lacks (see `pull`).
    #[command(
        override_usage = "erofs-fuse mount [OPTIONS] IMAGE MOUNTPOINT\n       \
                                erofs-fuse mount [OPTIONS] --layer IMAGE[:DEVICE...]... MOUNTPOINT\n       \
                                erofs-fuse mount [OPTIONS] [--image] REF MOUNTPOINT"
    )]
    Mount(MountArgs),
    /// Pull an image into the content store: resolve REF's manifest (for a
    /// multi-platform index, the --platform one), fetch every layer
    /// (verified against its digest as it streams) and convert it to a
    /// tar-index EROFS layer, several at once, with a progress bar per
    /// layer on a terminal. Prints the image manifest's digest.
    ///
    /// REF is a registry reference (`debian:13`, `localhost:5000/app`,
    /// `quay.io/org/app@sha256:...`) or an OCI image layout on disk,
    /// `oci:DIR[:TAG]` (as `skopeo copy ... oci:DIR:TAG` writes it).
    /// Layer media types: tar, tar+gzip, tar+zstd (OCI and Docker names)
    /// and EROFS layers (a media type ending in .erofs, used as is).
    Pull(PullArgs),
    /// Attach layer indexes to an image in a registry: for each layer,
    /// compute the tar index (tar and tar+gzip layers, as `pull` makes
    /// it), the gzip zinfo (tar+gzip layers) and a dm-verity tree over what
    /// a reader reads (the uncompressed tar, or the EROFS-native blob), and
    /// push them as one OCI artifact (artifactType
    /// application/vnd.erofs-fuse.layer-index.v1) referring to the image
    /// manifest: through the registry's referrers API, or the referrers
    /// tag schema (`sha256-<hex>`) where it has none. Layer blobs the store
    /// has are reused; others are fetched. Prints one line per layer:
    /// `layer DIGEST referrer DIGEST root HEX` (the root is what
    /// `--verity-root` takes). Layers that have an artifact already are
    /// left alone (unless --force); tar+zstd layers are skipped (no random
    /// access into zstd). See docs/images.md, "Layer index referrers".
    Attach(AttachArgs),
    /// List the images in the content store: reference, manifest digest,
    /// layers, size of the layer blobs.
    Images(ImagesArgs),
    /// Print an image's config (entrypoint, cmd, env, user, working
    /// directory...) as JSON, for `crun` or `podman run --rootfs`.
    Config(ConfigArgs),
    /// Remove images' records from the content store; `store gc` then
    /// removes the layers and blobs no image needs.
    Rmi(RmiArgs),
    /// An additional layer store for containers/storage (podman, buildah):
    /// `add` converts layer blobs into a store directory, `serve` mounts
    /// the layout containers/storage looks for, so that a pull finds the
    /// layers there instead of downloading and unpacking them.
    Store {
        /// The subcommand.
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Show the superblock: block size, features, inode count, devices, uuid,
    /// build time, size.
    Inspect(InspectArgs),
    /// List a directory of the image (like ls).
    Ls(LsArgs),
    /// Write a file of the image to standard output.
    Cat(CatArgs),
    /// Show an entry's attributes, layout and extended attributes.
    Stat(StatArgs),
    /// Print one JSON line per path of the tree (type, mode, owner, mtime,
    /// links, size and sha256 of files, symlink target, device numbers,
    /// xattrs), sorted by path: the same format as `scripts/manifest.py`
    /// prints for a mounted or extracted tree, to compare the two.
    Manifest(ManifestArgs),
    /// Check the whole image, as fsck.erofs does: list every directory and
    /// look each name up again, parse every inode, read every xattr,
    /// symlink and byte of file data. Prints each problem with its path and
    /// exits 1 if there was any; a clean image prints a summary and exits 0.
    Fsck(FsckArgs),
    /// Copy the whole tree out to a directory: contents, modes, owners (when
    /// run as root), times with nanoseconds, hard links, symlinks, device
    /// nodes, fifos and xattrs, like `fsck.erofs --extract`.
    Extract(ExtractArgs),
    /// dm-verity hash trees compatible with veritysetup.
    Verity {
        /// The subcommand.
        #[command(subcommand)]
        command: VerityCommand,
    },
    /// Convert an OCI layer (tar, tar.gz or tar.zst, compression detected by its magic) to
    /// EROFS, as containerd's EROFS differ does with mkfs.erofs --tar.
    ///
    /// Index mode (default) writes a metadata-only image whose files point
    /// into the uncompressed tar: mount it with `--device LAYER.tar` (kernel:
    /// `-o device=`). For a compressed layer or stdin the tar is written beside the
    /// output (OUTPUT with extension .tar, which must not exist yet) or to
    /// --tar-out (replaced once complete). With
    /// --append-tar the output is the index followed by the tar in one file,
    /// containerd's layer.erofs, mountable with no device option.
    ///
    /// Prints the layer's digests: `digest` is the sha256 of the input as
    /// read (the layer digest of a tar.gz) and `diffid` the sha256 of the
    /// uncompressed tar (the OCI diffID).
    ///
    /// Tar rules (as extracting the archive): later entries replace earlier
    /// ones; parents not listed are created (mode 0755, owner and mtime of
    /// their parent); hard links must name earlier entries; a leading '/' is
    /// dropped (with a warning); '..' components, GNU sparse files and
    /// unknown entry types are errors; xattrs outside user., trusted.,
    /// security. and the POSIX ACLs are left out with a warning. The root,
    /// unless the tar lists "./", is mode 0777 owned by 0:0, as mkfs.erofs
    /// makes it. Output is deterministic: the same input and options give
    /// the same bytes.
    ///
    /// Bounds (a tar is untrusted input): PAX extended headers and GNU long
    /// names/links over 1 MiB, paths deeper than 2048 levels and, with
    /// --aufs, the whiteouts .wh., .wh.. and .wh... are errors naming the
    /// entry.
    Convert(ConvertArgs),
    /// Write the changes an overlayfs upper directory makes over a stack
    /// of EROFS layers as an OCI layer (containerd's differ Compare),
    /// reading the layers directly (no mount, no root).
    ///
    /// A 0:0 character device becomes .wh.NAME (kept even if no lower
    /// layer has NAME, as overlayfs keeps it); an opaque directory
    /// (trusted.overlay.opaque=y or user.overlay.opaque=y, both read)
    /// becomes the directory and .wh..wh..opq; other entries are written
    /// in full, a directory also in the layers only if its own metadata
    /// changed; hard links within the upper directory stay hard links;
    /// xattrs as PAX SCHILY.xattr.* (overlayfs's own left out). Upper
    /// entries with overlayfs redirect or metacopy xattrs are refused.
    /// Symlinks in the upper directory are never followed; a file that
    /// changes while read is an error. SOURCE_DATE_EPOCH clamps later
    /// mtimes to it. The output is the same bytes for the same input.
    ///
    /// Prints `digest` (sha256 of the layer as written) and `diffid`
    /// (sha256 of the tar), on stderr when the layer goes to stdout.
    Diff(DiffArgs),
}

/// `diff --compression`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DiffCompression {
    /// A plain tar.
    None,
    /// tar+gzip (containerd's default media type).
    Gzip,
    /// tar+zstd.
    Zstd,
}

/// `diff` arguments.
#[derive(Args)]
pub struct DiffArgs {
    /// The lower layers, bottom first, each IMAGE[:DEVICE...] as for
    /// `mount --layer`.
    #[arg(long = "layer", value_name = "IMAGE[:DEVICE...]", required = true)]
    pub layers: Vec<String>,
    /// How to open the layers.
    #[command(flatten)]
    pub open: OpenArgs,
    /// The layer's compression.
    #[arg(long, value_enum, default_value = "gzip")]
    pub compression: DiffCompression,
    /// Namespace of overlayfs's markers (opaque, redirect, metacopy) in
    /// UPPER: trusted (rootful overlayfs; needs root), user (rootless,
    /// -o userxattr), auto: trusted for root in the initial user
    /// namespace, user otherwise. Only that namespace is read.
    #[arg(long, value_enum, default_value = "auto", value_name = "NAMESPACE")]
    pub overlay_xattrs: StoreXattrsArg,
    /// The overlayfs upper directory.
    pub upper: PathBuf,
    /// The layer to write (replaced once complete), or - for stdout.
    pub output: PathBuf,
}

/// Options of every command that serves a mount.
#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Serve in the foreground (logs on stderr); SIGINT or SIGTERM
    /// unmounts cleanly.
    #[arg(short, long)]
    pub foreground: bool,
    /// Threads serving requests, 1 to 1024 (default: the number of CPUs).
    /// Each holds a /dev/fuse descriptor: the open-file limit must allow
    /// them, or the mount fails before it starts.
    #[arg(long, value_name = "N",
          value_parser = erofs_fuse::fuse::options::parse_threads)]
    pub threads: Option<usize>,
    /// The kernel's readahead window for the mount (default 1M; 0 keeps
    /// the kernel's 128K). Larger windows mean fewer, larger read requests
    /// for sequential readers. Only root may set it; other users' mounts
    /// keep the kernel's default.
    #[arg(long, value_name = "SIZE",
          value_parser = erofs_fuse::fuse::options::parse_size)]
    pub readahead: Option<u64>,
    /// Do not fill the kernel's page cache ahead of readers of small
    /// files. By default, when a file is read from its start, the small
    /// files listed after it in its directory are read in the background
    /// and handed to the kernel, so a reader of a whole tree (tar, cp -a)
    /// finds them cached. Off for --lazy mounts (it would fetch them).
    #[arg(long)]
    pub no_store_ahead: bool,
    /// Mount options, comma-separated (repeatable); see `mount --help`.
    /// Every mount is nosuid,nodev unless root adds -o suid or -o dev.
    #[arg(short = 'o', value_name = "OPT[,OPT...]")]
    pub options: Vec<String>,
    /// Log every request (same as -o debug, or -vv).
    #[arg(long)]
    pub debug: bool,
    /// Append logs to this file. In the background the server has no
    /// terminal, so without it only errors before the mount is live are
    /// shown.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
}

/// `mount --overlay-xattrs`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum OverlayXattrsArg {
    /// As stored.
    Trusted,
    /// trusted.overlay.* shown as user.overlay.*.
    User,
}

/// Kind of image `convert` makes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ConvertMode {
    /// Metadata only, 512-byte blocks; file data stays in the tar, which
    /// the image names as extra device 1 (`mkfs.erofs --tar=i`).
    Index,
    /// Self-contained, 4 KiB blocks, file data copied in (`--tar=f`).
    Full,
}

/// `mount` arguments.
#[derive(Args)]
pub struct MountArgs {
    /// IMAGE MOUNTPOINT: the image and the existing directory to mount
    /// it on; with --layer, only MOUNTPOINT.
    #[arg(value_names = ["IMAGE", "MOUNTPOINT"], num_args = 1..=2, required = true)]
    pub paths: Vec<PathBuf>,
    /// How to open the image.
    #[command(flatten)]
    pub open: OpenArgs,
    /// Mount the merged tree of a stack of layers instead of one image,
    /// as overlayfs would show it: give each layer in order, the bottom
    /// one first and the top one last, each with the files backing its
    /// extra devices (a tar-index layer's tar) after colons. Upper
    /// entries hide lower ones; whiteouts (0:0 character devices or OCI
    /// .wh.NAME files) delete; opaque directories (trusted.overlay.opaque=y
    /// or .wh..wh..opq) hide what is below; the markers never show.
    /// Layers are merged lazily, a directory at a time.
    #[arg(long = "layer", value_name = "IMAGE[:DEVICE...]")]
    pub layers: Vec<String>,
    /// Namespace to present the image's overlayfs xattrs in: "user"
    /// shows trusted.overlay.* as user.overlay.*, which rootless kernel
    /// overlayfs (-o userxattr) reads, so a mounted layer keeps its
    /// opaque directories when stacked by an unprivileged user.
    #[arg(long, value_enum, default_value = "trusted", value_name = "NAMESPACE")]
    pub overlay_xattrs: OverlayXattrsArg,
    /// How to serve the mount.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Mount the image REF (see `pull`): only MOUNTPOINT follows.
    #[arg(long, value_name = "REF", conflicts_with = "layers")]
    pub image: Option<String>,
    /// With an image reference: read the layers the store lacks from the
    /// registry on demand (range requests, cached in the store's lazy/
    /// directory for later mounts) instead of pulling them first: EROFS-
    /// native layers, and tar and tar.gz layers that have a layer index
    /// (pushed by `erofs-fuse attach`). Other layers (zstd, or no index)
    /// are pulled whole. A layer with an index is verified chunk by chunk
    /// against its dm-verity tree; an EROFS-native one without is NOT
    /// verified (the mount says so).
    #[arg(long, conflicts_with = "layers")]
    pub lazy: bool,
    /// With --lazy: pin LAYER's layer index, as `attach` printed it:
    /// sha256:LAYER=sha256:REFERRER (the index artifact by digest: tar
    /// index, zinfo and tree; any layer), or sha256:LAYER=ROOT_HEX (the
    /// root hash alone; EROFS-native layers only, as it does not cover a
    /// tar index). Repeat per layer. Without it, the index is the one the
    /// registry lists, which catches data altered on the way or in a
    /// mirror, but not a registry that forges both the data and the index.
    #[arg(
        long = "verity-root",
        value_name = "LAYER=ROOT|REFERRER",
        requires = "lazy"
    )]
    pub verity_roots: Vec<String>,
    /// With --lazy: what to fetch in the background once the mount is
    /// live, one request at a time per layer, standing aside while reads
    /// fetch: "all" (until each layer is complete), "none", or N (the
    /// first N MiB of each layer).
    #[arg(
        long,
        value_name = "all|none|N",
        default_value = "none",
        requires = "lazy"
    )]
    pub prefetch: erofs_fuse::lazy::Prefetch,
    /// Where images by reference come from, and the store (boxed: the
    /// other subcommands' arguments are smaller).
    #[command(flatten)]
    pub source: Box<ImageSourceArgs>,
}

/// `convert` arguments.
#[derive(Args)]
pub struct ConvertArgs {
    /// The layer: a tar, a tar.gz, a tar.zst, or - for stdin.
    pub input: PathBuf,
    /// The EROFS image to write (replaced only once complete, by a
    /// rename: a symlink there is replaced, never written through).
    /// Must not be the input or the tar written beside it.
    pub output: PathBuf,
    /// Kind of image: index for a tar (default), full for a directory
    /// (the only kind a directory converts to).
    #[arg(long, value_enum)]
    pub mode: Option<ConvertMode>,
    /// Turn OCI whiteouts into overlayfs ones: .wh.NAME becomes a 0:0
    /// character device NAME, .wh..wh..opq sets trusted.overlay.opaque=y
    /// on its directory (mkfs.erofs --aufs).
    #[arg(long)]
    pub aufs: bool,
    /// Index mode: append the tar to the index in OUTPUT (containerd's
    /// single-file layer.erofs).
    #[arg(long)]
    pub append_tar: bool,
    /// Index mode: where to write the uncompressed tar when the input is
    /// compressed or stdin.
    #[arg(long, value_name = "PATH")]
    pub tar_out: Option<PathBuf>,
    /// gzip input: also write its SOCI-compatible zinfo (gzip checkpoints
    /// every 4 MiB, as mkfs.erofs --gzinfo writes) to PATH, replaced once
    /// complete; it lets the tar be read from the .tar.gz itself.
    #[arg(long, value_name = "PATH")]
    pub gzinfo: Option<PathBuf>,
    /// Modification time (seconds since 1970) of the root and of
    /// directories the tar implies without listing them. Default:
    /// SOURCE_DATE_EPOCH if set, else the newest mtime in the tar.
    #[arg(long, value_name = "SECONDS")]
    pub implied_mtime: Option<i64>,
    /// --mode full: compress file data with ALGO (lz4, lz4hc, lzma,
    /// deflate, zstd), optionally at level N; defaults as mkfs.erofs 1.9.
    #[arg(long, value_name = "ALGO[,level=N]")]
    pub compress: Option<String>,
    /// Largest compressed cluster in bytes, a multiple of the 4096-byte
    /// block (default 4096; larger ones compress better, read slower).
    #[arg(short = 'C', long, value_name = "BYTES")]
    pub pcluster_size: Option<u64>,
    /// Compression threads (default: the number of CPUs); the output is
    /// the same whatever the number.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Hash the input as it is read and print `digest` (sha256 of the
    /// input, the compressed layer digest of a tar.gz) and `diffid`
    /// (sha256 of the tar, the OCI diffID). Without it nothing is hashed,
    /// and a tar file converts to an index reading only its headers.
    #[arg(long)]
    pub digests: bool,
    /// --compress: extended options, as mkfs.erofs -E, comma-separated:
    /// ztailpacking (a file's last pcluster inline after its inode when it
    /// encodes to less than a block), dedupe (identical pclusters stored
    /// once; up to 7,000,000 pclusters, ~27 GiB of 4 KiB ones, are
    /// remembered, in about 200 MiB of memory, 320 MiB at the peak while
    /// the table grows: later ones are not reused).
    #[arg(short = 'E', long, value_name = "OPT[,OPT...]")]
    pub extended: Vec<String>,
    /// No progress bar (it is shown only on a terminal anyway).
    #[arg(short, long)]
    pub quiet: bool,
}

/// The arguments as clap should see them: `erofs-fuse IMAGE MOUNTPOINT
/// [-o OPTS]` (as mount.fuse3 runs it, no subcommand) is `mount`. A first
/// argument that is neither an option nor a subcommand's name or alias
/// (taken from clap, `help` included) starts the helper form.
pub fn helper_form(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let mut command = Cli::command();
    command.build();
    if let Some(first) = args.get(1).and_then(|a| a.to_str()) {
        let known = command
            .get_subcommands()
            .any(|c| c.get_name() == first || c.get_all_aliases().any(|a| a == first));
        if !first.starts_with('-') && !known {
            args.insert(1, "mount".into());
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(args: &[&str]) -> Vec<OsString> {
        helper_form(args.iter().map(OsString::from))
    }

    #[test]
    fn clap_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn helper_form_is_mount_and_subcommands_stay() {
        let names = [
            "mount", "inspect", "ls", "cat", "stat", "manifest", "fsck", "extract", "convert",
            "verity", "store", "pull", "images", "config", "rmi", "help",
        ];
        for name in names {
            assert_eq!(form(&["erofs-fuse", name, "x"])[1], *name, "{name}");
        }
        assert_eq!(
            form(&["erofs-fuse", "a.img", "/mnt", "-o", "ro"]),
            form(&["erofs-fuse", "mount", "a.img", "/mnt", "-o", "ro"])
        );
        assert_eq!(form(&["erofs-fuse", "--help"])[1], "--help");
        assert_eq!(form(&["erofs-fuse"]).len(), 1);
    }
}
