//! Mount options (`-o a,b,c`): parsing and the secure defaults.
//!
//! - The mount is always read-only.
//! - Visible to other users (`allow_other`/`allow_root`) implies
//!   `default_permissions`: the kernel enforces the image's modes, so nobody
//!   reads a file the image forbids them. `no_default_permissions` opts out.
//! - Every mount is `nosuid,nodev` unless root asks for `suid` or `dev`:
//!   the image is untrusted input, so a setuid binary or a device node in it
//!   must not become a way in for whoever can reach the mount. (The
//!   kernel's erofs takes mount(8)'s `suid,dev` defaults; here opting in is
//!   explicit.) An unprivileged user cannot opt in (fusermount3 refuses too).
//! - Serving threads: 1 to [`MAX_THREADS`].

use std::path::PathBuf;

use fuser::{Config, MountOption, SessionACL};

use crate::error::{Error, Result};
use crate::verity::VeritySource;

/// Options that the `mount` helper protocol and fstab pass along and that
/// mean nothing to a FUSE filesystem.
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "nofail",
    "_netdev",
    "async",
    "sync",
    "dirsync",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "lazytime",
    "loop",
];

/// Parsed `-o` options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// Let every user reach the mount.
    pub allow_other: bool,
    /// Let root reach the mount too.
    pub allow_root: bool,
    /// `Some(true)` for `default_permissions`, `Some(false)` for the opt-out.
    pub default_permissions: Option<bool>,
    /// `suid`/`nosuid`, if given.
    pub suid: Option<bool>,
    /// `dev`/`nodev`, if given.
    pub dev: Option<bool>,
    /// `noexec` given.
    pub noexec: bool,
    /// `fsname=`.
    pub fsname: Option<String>,
    /// `subtype=`.
    pub subtype: Option<String>,
    /// `device=PATH`, in order: extra devices.
    pub devices: Vec<PathBuf>,
    /// `auto_unmount`: unmount when the server dies.
    pub auto_unmount: bool,
    /// `threads=N`.
    pub threads: Option<usize>,
    /// `cache_size=SIZE`: budget of the decoded-extent cache.
    pub cache_size: Option<u64>,
    /// `readahead=SIZE`: the kernel's readahead window for the mount.
    pub readahead: Option<u64>,
    /// `debug`: log every request.
    pub debug: bool,
    /// `verity=ROOT_HASH:HASH_FILE[:OFFSET]` or `dmverity=SIDECAR`.
    pub verity: Option<VeritySource>,
    /// `device_verity=ROOT_HASH:HASH_FILE[:OFFSET]` or `device_verity=-`,
    /// in order, for the `device=` options.
    pub device_verity: Vec<Option<VeritySource>>,
    /// `verity_once`: trust verified file data not to change (see
    /// [`crate::OpenOptions::verity_once`]).
    pub verity_once: bool,
}

/// The most serving threads a mount may ask for. Each holds a cloned
/// `/dev/fuse` descriptor and a stack.
pub const MAX_THREADS: usize = 1024;

/// Parses a serving thread count: a whole number from 1 to [`MAX_THREADS`].
pub fn parse_threads(text: &str) -> std::result::Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?}: expected a number of threads from 1 to {MAX_THREADS}"
        )),
    }
}

/// Parses a byte size: a number with an optional binary suffix K, M, G or
/// T (`64M` is 64 MiB; `KiB`, `MB` and lower case are accepted too).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 64M, 1G, 0)"))?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown size suffix {suffix:?} (use K, M, G or T)"
            ))
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

impl MountOptions {
    /// Parses options as given to `-o` (each may hold several, comma-separated).
    pub fn parse<S: AsRef<str>>(groups: &[S]) -> Result<Self> {
        let mut o = Self::default();
        for option in groups.iter().flat_map(|g| g.as_ref().split(',')) {
            let (key, value) = match option.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (option, None),
            };
            let need = |v: Option<&str>| {
                v.filter(|v| !v.is_empty())
                    .map(str::to_string)
                    .ok_or_else(|| {
                        Error::Invalid(format!("mount option {key} needs a value ({key}=...)"))
                    })
            };
            match key {
                "" | "ro" => {}
                "rw" => tracing::warn!("EROFS images are read-only: ignoring mount option rw"),
                "allow_other" => o.allow_other = true,
                "allow_root" => o.allow_root = true,
                "default_permissions" => o.default_permissions = Some(true),
                "no_default_permissions" => o.default_permissions = Some(false),
                "suid" => o.suid = Some(true),
                "nosuid" => o.suid = Some(false),
                "dev" => o.dev = Some(true),
                "nodev" => o.dev = Some(false),
                "exec" => o.noexec = false,
                "noexec" => o.noexec = true,
                "fsname" => o.fsname = Some(need(value)?),
                "subtype" => o.subtype = Some(need(value)?),
                "device" => o.devices.push(PathBuf::from(need(value)?)),
                "auto_unmount" => o.auto_unmount = true,
                "debug" => o.debug = true,
                "verity_once" => o.verity_once = true,
                "threads" => {
                    let n = need(value)?;
                    let n = parse_threads(&n)
                        .map_err(|e| Error::Invalid(format!("mount option threads: {e}")))?;
                    o.threads = Some(n);
                }
                "cache_size" => {
                    let v = need(value)?;
                    o.cache_size = Some(parse_size(&v).map_err(|e| {
                        Error::Invalid(format!("mount option cache_size={v}: {e}"))
                    })?);
                }
                "readahead" => {
                    let v = need(value)?;
                    o.readahead =
                        Some(parse_size(&v).map_err(|e| {
                            Error::Invalid(format!("mount option readahead={v}: {e}"))
                        })?);
                }
                "verity" | "dmverity" => {
                    if o.verity.is_some() {
                        return Err(Error::Invalid(
                            "mount options verity= and dmverity= given twice".into(),
                        ));
                    }
                    let v = need(value)?;
                    o.verity = Some(if key == "dmverity" {
                        VeritySource::Sidecar(PathBuf::from(v))
                    } else {
                        VeritySource::parse(&v)
                            .map_err(|e| Error::Invalid(format!("mount option verity: {e}")))?
                    });
                }
                "device_verity" => {
                    let v = need(value)?;
                    o.device_verity.push(
                        VeritySource::parse_optional(&v).map_err(|e| {
                            Error::Invalid(format!("mount option device_verity: {e}"))
                        })?,
                    );
                }
                k if IGNORED.contains(&k) || k.starts_with("x-") || k == "comment" => {}
                _ => return Err(Error::Invalid(format!("unknown mount option {option:?}"))),
            }
        }
        Ok(o)
    }

    /// Whether the kernel checks the image's permissions: asked for, or
    /// implied by a mount other users can reach.
    pub fn enforces_permissions(&self) -> bool {
        let shared = self.allow_other || self.allow_root;
        self.default_permissions.unwrap_or(shared)
    }

    /// The fuser configuration for these options, for a mount by root
    /// (`is_root`) or by an unprivileged user.
    pub fn fuser_config(&self, is_root: bool, threads: usize, fsname: &str) -> Result<Config> {
        if !is_root && (self.suid == Some(true) || self.dev == Some(true)) {
            return Err(Error::Invalid(
                "only root may mount with suid or dev; an unprivileged mount is always nosuid,nodev".into(),
            ));
        }
        let shared = self.allow_other || self.allow_root;
        let default_permissions = self.enforces_permissions();
        if shared && !default_permissions {
            tracing::warn!(
                "no_default_permissions with allow_other: every user can read every file, whatever its mode in the image"
            );
        }
        let mut opts = vec![
            MountOption::RO,
            MountOption::FSName(self.fsname.clone().unwrap_or_else(|| fsname.to_string())),
            MountOption::Subtype(self.subtype.clone().unwrap_or_else(|| "erofs".to_string())),
            MountOption::NoAtime,
        ];
        if default_permissions {
            opts.push(MountOption::DefaultPermissions);
        }
        opts.push(if self.suid.unwrap_or(false) {
            MountOption::Suid
        } else {
            MountOption::NoSuid
        });
        opts.push(if self.dev.unwrap_or(false) {
            MountOption::Dev
        } else {
            MountOption::NoDev
        });
        if self.noexec {
            opts.push(MountOption::NoExec);
        }
        if self.auto_unmount {
            opts.push(MountOption::AutoUnmount);
        }
        let mut config = Config::default();
        config.mount_options = opts;
        config.acl = if self.allow_other {
            SessionACL::All
        } else if self.allow_root {
            SessionACL::RootAndOwner
        } else {
            SessionACL::Owner
        };
        let threads = self.threads.unwrap_or(threads);
        parse_threads(&threads.to_string()).map_err(|e| Error::Invalid(format!("threads: {e}")))?;
        config.n_threads = Some(threads);
        config.clone_fd = true;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(opts: &str, root: bool) -> Config {
        MountOptions::parse(&[opts])
            .unwrap()
            .fuser_config(root, 2, "img")
            .unwrap()
    }

    #[test]
    fn shared_mounts_enforce_image_permissions() {
        let c = config("allow_other", false);
        assert!(c.mount_options.contains(&MountOption::DefaultPermissions));
        assert_eq!(c.acl, SessionACL::All);
        let c = config("allow_other,no_default_permissions", false);
        assert!(!c.mount_options.contains(&MountOption::DefaultPermissions));
    }

    #[test]
    fn unprivileged_mounts_are_nosuid_nodev() {
        let c = config("", false);
        assert!(c.mount_options.contains(&MountOption::NoSuid));
        assert!(c.mount_options.contains(&MountOption::NoDev));
        assert!(MountOptions::parse(&["suid"])
            .unwrap()
            .fuser_config(false, 1, "x")
            .is_err());
        assert!(MountOptions::parse(&["dev"])
            .unwrap()
            .fuser_config(false, 1, "x")
            .is_err());
    }

    #[test]
    fn root_mounts_are_nosuid_nodev_unless_asked() {
        for opts in ["", "allow_other", "allow_root", "nosuid,nodev"] {
            let c = config(opts, true);
            assert!(c.mount_options.contains(&MountOption::NoSuid), "{opts}");
            assert!(c.mount_options.contains(&MountOption::NoDev), "{opts}");
            assert!(!c.mount_options.contains(&MountOption::Suid), "{opts}");
            assert!(!c.mount_options.contains(&MountOption::Dev), "{opts}");
        }
        let c = config("allow_other,suid", true);
        assert!(c.mount_options.contains(&MountOption::Suid));
        assert!(c.mount_options.contains(&MountOption::NoDev));
        let c = config("dev", true);
        assert!(c.mount_options.contains(&MountOption::Dev));
        assert!(c.mount_options.contains(&MountOption::NoSuid));
    }

    #[test]
    fn parsing() {
        let o =
            MountOptions::parse(&["ro,device=/a,defaults", "device=/b,threads=3,x-systemd.foo"])
                .unwrap();
        assert_eq!(o.devices, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(o.threads, Some(3));
        assert!(MountOptions::parse(&["bogus"]).is_err());
        assert!(MountOptions::parse(&["threads=0"]).is_err());
        assert!(MountOptions::parse(&["threads=1025"]).is_err());
        assert!(MountOptions::parse(&["threads=99999999999999999999999"]).is_err());
        assert!(MountOptions::parse(&["threads=-1"]).is_err());
        assert_eq!(
            MountOptions::parse(&["threads=1024"]).unwrap().threads,
            Some(1024)
        );
        assert!(MountOptions::default().fuser_config(true, 0, "x").is_err());
        assert_eq!(
            MountOptions::parse(&["cache_size=16M"]).unwrap().cache_size,
            Some(16 << 20)
        );
        assert!(MountOptions::parse(&["cache_size=lots"]).is_err());
        assert_eq!(
            MountOptions::parse(&["readahead=4M"]).unwrap().readahead,
            Some(4 << 20)
        );
        assert!(MountOptions::parse(&["readahead="]).is_err());
        assert!(MountOptions::parse(&["device="]).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert!(parse_size("").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
