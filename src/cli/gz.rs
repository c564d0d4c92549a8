//! `--zinfo`: extra devices that are `.tar.gz` files read as the tar they
//! compress, through their zinfo. Each is a lazy device over an unnamed
//! sparse file of the tar's size, filled a chunk at a time as it is read.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use erofs_fuse::device::Device;
use erofs_fuse::lazy::{CacheOptions, ChunkCache, GzSource};
use erofs_fuse::safe_fs::{self, OutputDir};
use erofs_fuse::Image;
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::args::OpenArgs;
use super::error::{CliError, Context, Result};

/// The name of the cache file in its private directory.
const CACHE_NAME: &str = "tar";

/// Opens the image at `path` with the devices `args` give, those with a
/// `--zinfo` read through it.
pub(super) fn open_with_zinfo(path: &Path, args: &OpenArgs) -> Result<Image> {
    if args.zinfos.len() > args.devices.len() {
        return Err(CliError::msg(format!(
            "{} --zinfo given for {} --device: each --zinfo is for the --device in the same place",
            args.zinfos.len(),
            args.devices.len()
        )));
    }
    if args.verity.is_some() || args.dmverity.is_some() || !args.device_verity.is_empty() {
        return Err(CliError::msg(
            "--zinfo does not combine with verity options (a lazy device is read unverified)",
        ));
    }
    let primary = Device::open(path, args.offset).context(path.display())?;
    let mut extra = Vec::with_capacity(args.devices.len());
    for (i, device) in args.devices.iter().enumerate() {
        extra.push(match args.zinfos.get(i) {
            Some(zinfo) => gz_device(device, zinfo)?,
            None => Device::open(device, 0).context(device.display())?,
        });
    }
    let mut image = Image::from_devices(primary, extra).context(path.display())?;
    image.set_cache_size(args.cache_size);
    Ok(image)
}

/// A lazy device serving the tar inside `gz` through `zinfo`.
fn gz_device(gz: &Path, zinfo: &Path) -> Result<Device> {
    // Its errors name the gzip file or the zinfo already.
    let source = Arc::new(GzSource::open(gz, zinfo)?);
    let base = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let parent = OutputDir::open(&base).context(base.display())?;
    let (name, dir) = private_dir(&parent)?;
    let dir_path = base.join(&name);
    let key = format!("gz:{}", gz.display());
    let cache = ChunkCache::open(
        dir.as_fd(),
        &dir_path,
        CACHE_NAME,
        &key,
        source,
        &CacheOptions::default(),
    );
    // The files stay open; their names and the directory, all ours, go now.
    let at = Some(dir.as_raw_fd());
    for file in [CACHE_NAME.to_string(), format!("{CACHE_NAME}.chunks")] {
        let _ = unlinkat(at, file.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    let _ = unlinkat(
        Some(parent.fd().as_raw_fd()),
        name.as_os_str(),
        UnlinkatFlags::RemoveDir,
    );
    let cache = cache.context(gz.display())?;
    Device::lazy(Arc::new(cache)).context(gz.display())
}

/// Makes a new directory (mode 0700, random name) in `parent` and opens it.
fn private_dir(parent: &OutputDir) -> Result<(std::ffi::OsString, std::os::fd::OwnedFd)> {
    let at = Some(parent.fd().as_raw_fd());
    for _ in 0..16 {
        let name = safe_fs::random_name(OsStr::new("erofs-fuse-gz"));
        match nix::sys::stat::mkdirat(at, name.as_os_str(), Mode::S_IRWXU) {
            Ok(()) => {
                let path = parent.path().join(&name);
                let fd = safe_fs::open_dir_at(parent.fd(), &name).context(path.display())?;
                // Still the directory made above (a writable, non-sticky
                // TMPDIR lets others swap names): ours, private.
                let st = nix::sys::stat::fstat(fd.as_raw_fd())
                    .map_err(std::io::Error::from)
                    .context(path.display())?;
                if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
                    return Err(CliError::msg(format!(
                        "{}: replaced while being made; not using it",
                        path.display()
                    )));
                }
                return Ok((name, fd));
            }
            Err(nix::errno::Errno::EEXIST) => continue,
            Err(e) => {
                return Err(std::io::Error::from(e)).context(parent.path().display());
            }
        }
    }
    Err(CliError::msg(format!(
        "{}: cannot find a free name for a cache directory",
        parent.path().display()
    )))
}
