//! Where a conversion's outputs go: the tar copy index mode keeps (or
//! only writes for the run), the zinfo, and a tar appended to the image.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{invalid, ConvertError, ConvertOptions, Mode};
use crate::safe_fs::{same_target, OutputDir, TempFile};

/// The copy of the uncompressed tar that index mode needs when the input
/// is not a tar file (gzip or stdin): written while reading, kept at
/// `--tar-out` or beside the output, or (appended) only for the run.
pub(super) struct TarCopy {
    /// Where the tar is kept, if it is.
    pub(super) keep: Option<TarDest>,
    /// The tar as it is written (nameless until kept).
    pub(super) temp: Option<TempFile>,
}

impl TarCopy {
    /// What `options` ask for, refusing a kept tar that would be the input
    /// or the output.
    pub(super) fn plan(
        input: &Path,
        compressed: bool,
        dir: &OutputDir,
        name: &OsStr,
        options: &ConvertOptions,
    ) -> Result<Self, ConvertError> {
        let from_stdin = input == Path::new("-");
        let output = dir.path().join(name);
        let needs_copy = options.mode == Mode::Index && (compressed || from_stdin);
        let keep = match (&options.tar_out, options.append_tar) {
            _ if !needs_copy => None,
            (Some(path), _) => Some(TarDest::open(path)?),
            (None, false) => Some(TarDest::beside(dir, name)?),
            (None, true) => None,
        };
        if let Some(tar) = &keep {
            if (!from_stdin && same_target(&tar.path, input)) || same_target(&tar.path, &output) {
                return Err(invalid(
                    &tar.path,
                    "the tar would overwrite the input or the output (use --tar-out)",
                ));
            }
        }
        let temp = match (&keep, needs_copy) {
            (Some(tar), _) => Some(
                tar.dir
                    .temp_file()
                    .map_err(|e| ConvertError::io(&tar.path, e))?,
            ),
            (None, true) => Some(dir.temp_file().map_err(|e| ConvertError::io(&output, e))?),
            (None, false) => None,
        };
        Ok(Self { keep, temp })
    }

    /// Renames a kept tar into place with `mode`.
    pub(super) fn persist(self, mode: u32) -> Result<(), ConvertError> {
        if let (Some(tar), Some(temp)) = (self.keep, self.temp) {
            temp.persist(&tar.name, mode)
                .map_err(|e| ConvertError::io(&tar.path, e))?;
        }
        Ok(())
    }
}

/// Where the uncompressed tar is kept: its directory, name and path.
pub(super) struct TarDest {
    dir: OutputDir,
    name: OsString,
    /// Its path, for messages.
    pub(super) path: PathBuf,
}

impl TarDest {
    /// At `path` (`--tar-out`).
    fn open(path: &Path) -> Result<Self, ConvertError> {
        let (dir, name) = OutputDir::of(path).map_err(|e| ConvertError::io(path, e))?;
        Ok(Self {
            dir,
            name,
            path: path.to_path_buf(),
        })
    }

    /// Beside the output `name` in `dir`, its extension replaced by `.tar`.
    fn beside(dir: &OutputDir, name: &OsStr) -> Result<Self, ConvertError> {
        let name = Path::new(name).with_extension("tar").into_os_string();
        let path = dir.path().join(&name);
        // The user did not name this file: something already there (a tar
        // of theirs, a planted link) is theirs, and is never replaced.
        let existing = nix::sys::stat::fstatat(
            Some(dir.fd().as_raw_fd()),
            name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        if existing.is_ok() {
            return Err(invalid(
                &path,
                "already exists: convert keeps the layer's tar there and replaces no file it did not create (remove it, or name the tar with --tar-out)",
            ));
        }
        let dir = dir.try_clone().map_err(|e| ConvertError::io(&path, e))?;
        Ok(Self { dir, name, path })
    }
}

/// Where `--gzinfo` goes: written with no name in its directory, named
/// once the conversion is complete.
pub(super) struct ZinfoDest {
    temp: TempFile,
    name: OsString,
    /// Its path, for messages.
    pub(super) path: PathBuf,
}

impl ZinfoDest {
    /// At `path`, which must be neither the input nor the output.
    pub(super) fn plan(path: &Path, input: &Path, output: &Path) -> Result<Self, ConvertError> {
        if (input != Path::new("-") && same_target(path, input)) || same_target(path, output) {
            return Err(invalid(
                path,
                "the zinfo would overwrite the input or the output",
            ));
        }
        let (dir, name) = OutputDir::of(path).map_err(|e| ConvertError::io(path, e))?;
        let temp = dir.temp_file().map_err(|e| ConvertError::io(path, e))?;
        Ok(Self {
            temp,
            name,
            path: path.to_path_buf(),
        })
    }

    /// Writes the zinfo's bytes (still nameless).
    pub(super) fn write(&self, bytes: &[u8]) -> Result<(), ConvertError> {
        let mut file = self.temp.file();
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| ConvertError::io(&self.path, e))
    }

    /// Names it, with `mode`.
    pub(super) fn persist(self, mode: u32) -> Result<(), ConvertError> {
        self.temp
            .persist(&self.name, mode)
            .map_err(|e| ConvertError::io(&self.path, e))
    }
}

/// What an image with a tar appended is aligned to, so that the tar starts
/// on a filesystem block (4 KiB on ext4 and xfs): only then can
/// [`insert_image_before`] move it without copying.
pub(super) const APPEND_ALIGN: u64 = 4096;

/// Makes the file `tar` (the tar, `tar_size` bytes, written for the run)
/// the whole output: room for the image's `image_size` bytes (a multiple
/// of [`APPEND_ALIGN`]) is inserted before the tar without moving its
/// data (`FALLOC_FL_INSERT_RANGE` shifts the file's extents), the image is
/// copied there, and the tar is padded to whole 512-byte blocks. False,
/// with `tar` unchanged, where the filesystem cannot insert (the tar is
/// then copied after the image instead).
fn insert_image_before(
    tar: &File,
    image: &File,
    image_size: u64,
    tar_size: u64,
) -> io::Result<bool> {
    use nix::fcntl::{fallocate, FallocateFlags};
    // Inserting needs a tar to insert into (not at or past its end).
    if tar_size == 0 || tar.metadata()?.len() != tar_size {
        return Ok(false);
    }
    let Ok(len) = i64::try_from(image_size) else {
        return Ok(false);
    };
    match fallocate(
        tar.as_raw_fd(),
        FallocateFlags::FALLOC_FL_INSERT_RANGE,
        0,
        len,
    ) {
        Ok(()) => {}
        // Not this filesystem's (tmpfs, btrfs), not on its block size, or
        // refused before anything moved (no such call, a seccomp filter).
        Err(
            nix::errno::Errno::EOPNOTSUPP
            | nix::errno::Errno::EINVAL
            | nix::errno::Errno::ENOSYS
            | nix::errno::Errno::EPERM,
        ) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let mut from = image.try_clone()?;
    from.seek(SeekFrom::Start(0))?;
    let mut to = tar.try_clone()?;
    to.seek(SeekFrom::Start(0))?;
    // Between files, io::copy is copy_file_range: no pass through userspace.
    let copied = io::copy(&mut io::Read::take(from, image_size), &mut to)?;
    if copied != image_size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the image ended after {copied} of {image_size} bytes"),
        ));
    }
    // Whole 512-byte blocks, so the device's size is exact.
    tar.set_len(image_size + tar_size.next_multiple_of(512))?;
    tar.sync_all()?;
    Ok(true)
}

/// Appends the tar read from `tar` to the image `image` (which ends at
/// `image_size`, a block boundary), as containerd's single-file layer.
fn append(mut image: &File, image_size: u64, tar: &mut File, tar_size: u64) -> io::Result<()> {
    debug_assert_eq!(image.metadata().map(|m| m.len()).ok(), Some(image_size));
    tar.seek(SeekFrom::Start(0))?;
    image.seek(SeekFrom::Start(image_size))?;
    // io::copy between files uses copy_file_range: no pass through userspace.
    // The tar as it was read: the device slot says `tar_size` bytes.
    let copied = io::copy(&mut io::Read::take(tar, tar_size), &mut image)?;
    if copied != tar_size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the tar shrank to {copied} of the {tar_size} bytes read"),
        ));
    }
    // Whole 512-byte blocks, so the device's size is exact.
    let pad = copied.next_multiple_of(512) - copied;
    image.write_all(&vec![0; pad as usize])?;
    image.sync_all()
}

/// The image `image` (`image_size` bytes) with the tar (`tar_size` bytes)
/// appended (`--append-tar`): the tar written for the run, with the image
/// inserted before it, where the filesystem can; else `image`, with the
/// tar (that copy, or the input itself) copied after it. `paths` are the
/// input, the tar and the output, for errors.
pub(super) fn with_tar_appended(
    copy: &mut TarCopy,
    image: TempFile,
    (image_size, tar_size): (u64, u64),
    (input, tar_name, output): (&Path, &Path, &Path),
) -> Result<TempFile, ConvertError> {
    if copy.keep.is_none() {
        if let Some(tar) = &copy.temp {
            let moved = insert_image_before(tar.file(), image.file(), image_size, tar_size)
                .map_err(|e| ConvertError::io(output, e))?;
            if moved {
                if let Some(tar) = copy.temp.take() {
                    return Ok(tar);
                }
            }
        }
    }
    let mut tar = match &copy.temp {
        Some(temp) => temp.file().try_clone(),
        None => File::open(input),
    }
    .map_err(|e| ConvertError::io(tar_name, e))?;
    append(image.file(), image_size, &mut tar, tar_size)
        .map_err(|e| ConvertError::io(output, e))?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `image` (4 KiB) and `tar` (not a whole number of blocks) as files
    /// in a fresh directory of the filesystem tests run on.
    fn files(image_size: usize) -> (tempfile::TempDir, File, File, Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let image: Vec<u8> = (0..image_size).map(|i| (i % 251) as u8).collect();
        let tar: Vec<u8> = (0..70_001).map(|i| (i % 241) as u8 ^ 0x5a).collect();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            File::options().read(true).write(true).open(path).unwrap()
        };
        let (i, t) = (write("image", &image), write("tar", &tar));
        (dir, i, t, image, tar)
    }

    /// What appending makes: the image, the tar, zeros to a 512-byte block.
    fn appended(image: &[u8], tar: &[u8]) -> Vec<u8> {
        let mut all = [image, tar].concat();
        all.resize(image.len() + tar.len().next_multiple_of(512), 0);
        all
    }

    #[test]
    fn the_image_is_put_before_the_tar_as_appending_would() {
        let (dir, image_file, tar_file, image, tar) = files(2 * APPEND_ALIGN as usize);
        let moved =
            insert_image_before(&tar_file, &image_file, image.len() as u64, tar.len() as u64)
                .unwrap();
        if !moved {
            let msg = format!("{} cannot insert ranges (tmpfs?)", dir.path().display());
            // CI's filesystem can: there this is a failure, not a skip.
            if std::env::var("EROFS_FUSE_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
                panic!("{msg} (EROFS_FUSE_REQUIRE_PRIVILEGED=1 forbids skipping)");
            }
            eprintln!("\n*** SKIPPED the_image_is_put_before_the_tar: {msg} ***\n");
            return;
        }
        let got = std::fs::read(dir.path().join("tar")).unwrap();
        assert!(
            got == appended(&image, &tar),
            "the output is not image + tar + padding"
        );
        // The copy path gives the same bytes.
        let (dir, image_file, tar_file, image, tar) = files(2 * APPEND_ALIGN as usize);
        append(
            &image_file,
            image.len() as u64,
            &mut tar_file.try_clone().unwrap(),
            tar.len() as u64,
        )
        .unwrap();
        assert!(std::fs::read(dir.path().join("image")).unwrap() == appended(&image, &tar));
    }

    #[test]
    fn an_image_off_the_filesystem_block_is_not_inserted() {
        let (dir, image_file, tar_file, image, tar) = files(100);
        let moved =
            insert_image_before(&tar_file, &image_file, image.len() as u64, tar.len() as u64)
                .unwrap();
        assert!(!moved, "inserted 100 bytes: no filesystem has such blocks");
        assert!(
            std::fs::read(dir.path().join("tar")).unwrap() == tar,
            "the tar changed"
        );
    }
}
