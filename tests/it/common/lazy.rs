//! What the `mount --lazy` tests share: a mount by reference made by the
//! binary and unmounted on drop, and the range requests a registry served.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::bin;
use super::registry::Registry;

/// `erofs-fuse mount [--lazy] REF DIR` made by the binary, unmounted
/// (lazily, so a stalled mount cannot hold the test) on drop.
pub struct Mounted(pub tempfile::TempDir);

impl Mounted {
    /// `erofs-fuse mount [--lazy] REF DIR --store STORE FLAGS...` and its
    /// stderr, or the failed command's stderr.
    pub fn try_mount(
        store: &Path,
        reference: &str,
        lazy: bool,
        flags: &[String],
    ) -> Result<(Self, String), String> {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("mount");
        if lazy {
            cmd.arg("--lazy");
        }
        cmd.arg(reference).arg(dir.path()).arg("--store").arg(store);
        let out = super::run(cmd.args(flags));
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        match out.status.success() {
            true => Ok((Self(dir), said)),
            false => Err(said),
        }
    }

    /// [`Mounted::try_mount`], failing the test when the mount fails.
    pub fn mount(store: &Path, reference: &str, lazy: bool, flags: &[String]) -> (Self, String) {
        Self::try_mount(store, reference, lazy, flags).unwrap_or_else(|e| panic!("mount: {e}"))
    }

    /// `name` under the mountpoint.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(self.0.path())
            .status();
    }
}

/// The range requests for blob `digest` in the registry's access log so
/// far, and the bytes the registry sent for them.
pub fn ranges(reg: &Registry, digest: &str) -> (usize, u64) {
    let blob = format!("/blobs/{digest} ");
    let mut count = 0;
    let mut bytes = 0;
    for line in reg.log().lines().filter(|l| l.contains(&blob)) {
        let Some(after) = line.split("\" 206 ").nth(1) else {
            continue;
        };
        count += 1;
        let n = after.split_whitespace().next().unwrap_or_default();
        bytes += n.parse::<u64>().unwrap_or(0);
    }
    (count, bytes)
}

/// `erofs-fuse mount --lazy REF HOME/mnt FLAGS...` run as `nobody`, with
/// the default store under a HOME of the test's ([`super::pulled::nobody_home`]):
/// the home, the mountpoint (a guard unmounting it on drop, so a failed
/// assertion leaves no mount behind) and what the mount said (it must
/// succeed).
pub fn mount_lazy_as_nobody(
    reference: &str,
    flags: &[String],
) -> (tempfile::TempDir, NobodyMount, String) {
    let home = super::pulled::nobody_home();
    let mnt = home.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    std::os::unix::fs::chown(&mnt, Some(65534), Some(65534)).unwrap();
    let guard = NobodyMount(mnt.clone());
    let out = super::run_ok(
        super::pulled::as_nobody(home.path())
            .arg(bin())
            .args(["mount", "--lazy", reference])
            .arg(&mnt)
            .args(flags),
    );
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    (home, guard, said)
}

/// A mountpoint made by [`mount_lazy_as_nobody`]: on drop (even after a
/// panic) unmounted with `fusermount3 -u -z`, else `umount -l`; nothing
/// happens when it is no longer a mount. Derefs to the mountpoint.
pub struct NobodyMount(PathBuf);

impl std::ops::Deref for NobodyMount {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for NobodyMount {
    fn drop(&mut self) {
        let quiet = |cmd: &mut Command| {
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !quiet(Command::new("fusermount3").args(["-u", "-z"]).arg(&self.0)) {
            quiet(Command::new("umount").arg("-l").arg(&self.0));
        }
    }
}
