//! Rootless mounts: as an unprivileged user through fusermount3, and inside
//! a user namespace (`unshare -Urm`) with a direct mount. Both walk the
//! mounted tree as that user and compare it with the kernel's manifest, less
//! what the kernel itself hides from such a user: trusted.* xattrs (they
//! need CAP_SYS_ADMIN in the initial namespace) and, inside the namespace,
//! owners it does not map (shown as the overflow id 65534) and POSIX ACLs
//! (refused on FUSE mounts there unless permissions are enforced).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::pulled::open_dev_fuse;
use common::*;
use serde_json::Value;

const NOBODY: u32 = 65534;

/// Debian's python3, which an unprivileged user can run (a root-only pyenv
/// may come first on root's PATH).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// The kernel's manifest as `nobody` sees it.
fn as_unprivileged(manifest: &str, map_ids: bool) -> Vec<Value> {
    manifest
        .lines()
        .map(|line| {
            let mut v: Value = serde_json::from_str(line).unwrap();
            let obj = v.as_object_mut().unwrap();
            if let Some(Value::Object(x)) = obj.get_mut("xattrs") {
                // In a user namespace the kernel refuses POSIX ACLs on a
                // FUSE mount that does not enforce permissions.
                let hidden = |name: &str| {
                    name.starts_with("trusted.")
                        || (map_ids && name.starts_with("system.posix_acl_"))
                };
                x.retain(|name, _| !hidden(name));
                if x.is_empty() {
                    obj.remove("xattrs");
                }
            }
            if map_ids {
                for key in ["uid", "gid"] {
                    if obj[key] != 0 {
                        obj.insert(key.into(), NOBODY.into());
                    }
                }
            }
            v
        })
        .collect()
}

fn parse(manifest: &str) -> Vec<Value> {
    manifest
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn first_difference(expected: &[Value], got: &[Value]) -> Option<String> {
    if expected == got {
        return None;
    }
    for (e, g) in expected.iter().zip(got) {
        if e != g {
            return Some(format!("expected {e}\n     got {g}"));
        }
    }
    Some(format!(
        "{} entries expected, {} found",
        expected.len(),
        got.len()
    ))
}

/// A directory `nobody` owns, with the fixture image and its devices
/// copied in (readable by nobody).
fn nobody_workdir(f: &Fixture) -> (tempfile::TempDir, PathBuf, Vec<PathBuf>, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let chown = |p: &Path| std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    chown(dir.path());
    let copy = |name: &str| {
        let to = dir.path().join(name);
        std::fs::copy(fixture(name), &to).unwrap();
        chown(&to);
        to
    };
    let image = copy(f.image);
    let devices = f.devices.iter().map(|d| copy(d)).collect();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    chown(&mnt);
    (dir, image, devices, mnt)
}

fn as_nobody() -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
    cmd
}

/// The binary and scripts must be reachable by nobody.
fn reachable_by_nobody() -> bool {
    let out = as_nobody().arg(bin()).arg("--version").output();
    out.is_ok_and(|o| o.status.success())
}

#[test]
fn unprivileged_mount_through_fusermount3() {
    let needs = [
        Need::Root,
        Need::Fuse,
        Need::Program("fusermount3"),
        Need::Program("setpriv"),
        Need::Program(SYSTEM_PYTHON),
    ];
    if !have("unprivileged_mount_through_fusermount3", &needs) {
        return;
    }
    open_dev_fuse();
    assert!(
        reachable_by_nobody(),
        "{} is not executable by nobody",
        bin().display()
    );
    for f in FIXTURES {
        let (_dir, image, devices, mnt) = nobody_workdir(f);
        let mut mount = as_nobody();
        mount.arg(bin()).arg("mount").arg(&image).arg(&mnt);
        for d in &devices {
            mount.arg("--device").arg(d);
        }
        run_ok(&mut mount);
        let walk = run(as_nobody()
            .arg(SYSTEM_PYTHON)
            .arg(script("manifest.py"))
            .arg(&mnt));
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let _ = as_nobody().arg("fusermount3").arg("-u").arg(&mnt).status();
        assert!(
            walk.status.success(),
            "{}: walk failed: {}",
            f.image,
            String::from_utf8_lossy(&walk.stderr)
        );
        let line = mounts
            .lines()
            .find(|l| l.contains(&*mnt.to_string_lossy()))
            .unwrap()
            .to_string();
        assert!(
            line.contains("nosuid") && line.contains("nodev"),
            "unprivileged mount is not nosuid,nodev: {line}"
        );
        let expected = as_unprivileged(&expected_manifest(f), false);
        let got = parse(&String::from_utf8_lossy(&walk.stdout));
        if let Some(diff) = first_difference(&expected, &got) {
            panic!("{} mounted by nobody differs:\n{diff}", f.image);
        }
    }
}

#[test]
fn mount_inside_a_user_namespace() {
    let needs = [
        Need::Root,
        Need::Fuse,
        Need::Program("unshare"),
        Need::Program("setpriv"),
        Need::Program(SYSTEM_PYTHON),
    ];
    if !have("mount_inside_a_user_namespace", &needs) {
        return;
    }
    open_dev_fuse();
    for f in FIXTURES {
        walk_in_user_namespace(f);
    }
}

/// As nobody: `unshare -Urm`, mount in the foreground inside, wait until it
/// answers, walk, then SIGTERM unmounts.
fn walk_in_user_namespace(f: &Fixture) {
    let (_dir, image, devices, mnt) = nobody_workdir(f);
    let devices: String = devices
        .iter()
        .map(|d| format!(" --device {}", d.display()))
        .collect();
    let script = format!(
        "{bin} mount -f {image}{devices} {mnt} & pid=$!; \
         for i in $(seq 100); do mountpoint -q {mnt} && break; sleep 0.05; done; \
         {python} {manifest} {mnt}; status=$?; kill -TERM $pid; wait $pid; exit $status",
        bin = bin().display(),
        image = image.display(),
        mnt = mnt.display(),
        manifest = script("manifest.py").display(),
        python = SYSTEM_PYTHON,
    );
    let out = run(as_nobody().args(["unshare", "-Urm", "sh", "-c", &script]));
    assert!(
        out.status.success(),
        "{}: walk inside unshare -Urm failed: {}",
        f.image,
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = as_unprivileged(&expected_manifest(f), true);
    let got = parse(&String::from_utf8_lossy(&out.stdout));
    if let Some(diff) = first_difference(&expected, &got) {
        panic!("{} mounted inside unshare -Urm differs:\n{diff}", f.image);
    }
}

#[test]
fn shared_mount_enforces_the_image_permissions() {
    let needs = [
        Need::Root,
        Need::Fuse,
        Need::Program("fusermount3"),
        Need::Program("setpriv"),
    ];
    if !have("shared_mount_enforces_the_image_permissions", &needs) {
        return;
    }
    let mount = FuseMount::new(&fixture("plain-4k.erofs"), &[], &["-o", "allow_other"]);
    let read_as_nobody = |path: &str| {
        as_nobody()
            .args(["head", "-c", "1"])
            .arg(mount.path().join(path))
            .output()
            .unwrap()
    };
    // Mode 1600, owner 1000: another user must be refused.
    let denied = read_as_nobody("meta/sticky_private");
    assert!(
        !denied.status.success(),
        "nobody read a mode 1600 file of uid 1000 through allow_other"
    );
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Permission denied"));
    // Mode 0644: readable by anyone.
    assert!(read_as_nobody("hard/one").status.success());
}
