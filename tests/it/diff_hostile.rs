//! `diff` over hostile upper directories (fast tier): UPPER itself a
//! symlink or FIFO, names starting with `.wh.`, xattrs a layer must not
//! carry or a PAX record cannot, hard links to files outside UPPER, and
//! the trusted namespace asked for without the right to read it; and
//! (privileged: a mount) a mount point inside UPPER.
use crate::common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use common::*;
use erofs_fuse::diff::{DiffOptions, OverlayXattrs};

use super::diff::{lower, members, run_diff};

fn user() -> DiffOptions {
    DiffOptions {
        overlay_xattrs: OverlayXattrs::User,
        ..Default::default()
    }
}

/// The one-line error of a diff of `up` that must fail.
fn fails(up: &Path, options: &DiffOptions) -> String {
    let dir = tempfile::tempdir().unwrap();
    let stack = lower(dir.path());
    let err = run_diff(&stack, up, options).unwrap_err().to_string();
    assert!(!err.contains('\n'), "{err}");
    err
}

#[test]
fn upper_itself_a_symlink_or_fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    fs::create_dir(&real).unwrap();
    let link = dir.path().join("link");
    symlink(&real, &link).unwrap();
    let err = fails(&link, &user());
    assert!(
        err.starts_with(&format!("{}: not a directory", link.display())),
        "{err}"
    );
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let shown = fifo.clone();
    std::thread::spawn(move || tx.send(fails(&shown, &user())).unwrap());
    let err = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("diff blocked on a FIFO given as UPPER");
    assert!(
        err.starts_with(&format!("{}: not a directory", fifo.display())),
        "{err}"
    );
}

#[test]
fn an_upper_name_starting_with_wh_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up");
    fs::create_dir_all(up.join("etc")).unwrap();
    fs::write(up.join("etc/.wh.passwd"), b"x").unwrap();
    let err = fails(&up, &user());
    let shown = up.join("etc/.wh.passwd").display().to_string();
    assert!(
        err.starts_with(&format!("{shown}: a name starting with .wh.")),
        "{err}"
    );
}

#[test]
fn only_capability_and_user_xattrs_are_carried_and_compared() {
    let dir = tempfile::tempdir().unwrap();
    let stack = lower(dir.path());
    let up = dir.path().join("up");
    fs::create_dir(&up).unwrap();
    fs::write(up.join("f"), b"x").unwrap();
    xattr::set(up.join("f"), "user.keep", b"1").unwrap();
    xattr::set(up.join("f"), "user.overlay.origin", b"o").unwrap();
    let trusted = xattr::set(up.join("f"), "trusted.host", b"t").is_ok();
    let tar = run_diff(&stack, &up, &user()).unwrap();
    let got = members(&tar);
    let file = got.iter().find(|m| m.contains(" f ")).expect("f written");
    assert!(file.contains("SCHILY.xattr.user.keep"), "{got:?}");
    assert!(
        !file.contains("overlay") && !file.contains("trusted"),
        "{got:?}"
    );
    if !trusted {
        skip("xattr filter (trusted part)", "cannot set trusted.* here");
    }
}

#[test]
fn an_xattr_name_with_equals_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up");
    fs::create_dir(&up).unwrap();
    fs::write(up.join("f"), b"x").unwrap();
    xattr::set(up.join("f"), "user.a=b", b"v").unwrap();
    let err = fails(&up, &user());
    let shown = up.join("f").display().to_string();
    assert!(
        err.starts_with(&format!("{shown}: xattr name \"user.a=b\" contains '='")),
        "{err}"
    );
}

#[test]
fn a_hard_link_to_a_file_outside_upper_is_refused_as_root() {
    if !nix::unistd::Uid::effective().is_root() {
        skip("hard links outside UPPER", "needs root (chown)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up");
    fs::create_dir(&up).unwrap();
    let secret = dir.path().join("secret");
    fs::write(&secret, b"host secret").unwrap();
    std::os::unix::fs::chown(&secret, Some(4321), Some(4321)).unwrap();
    fs::hard_link(&secret, dir.path().join("secret2")).unwrap();
    fs::hard_link(&secret, up.join("stolen")).unwrap();
    let err = fails(&up, &user());
    let shown = up.join("stolen").display().to_string();
    assert!(
        err.starts_with(&format!("{shown}: 3 links but 1 names")),
        "{err}"
    );
    // Two names in UPPER (+1 for overlayfs's index) are fine.
    fs::remove_file(dir.path().join("secret2")).unwrap();
    let stack = lower(dir.path());
    run_diff(&stack, &up, &user()).unwrap();
}

#[test]
fn trusted_markers_without_the_right_to_read_them_are_refused() {
    // A user namespace: root there, not in the initial one.
    let dir = tempfile::tempdir().unwrap();
    let _stack = lower(dir.path());
    let up = dir.path().join("up");
    fs::create_dir(&up).unwrap();
    let run = |ns: &str| {
        Command::new("unshare")
            .args(["--user", "--map-root-user"])
            .arg(bin())
            .args(["diff", "--overlay-xattrs", ns, "--layer"])
            .arg(dir.path().join("lower.erofs"))
            .arg(&up)
            .arg("-")
            .output()
    };
    let Ok(out) = run("trusted") else {
        skip("trusted namespace refusal", "no unshare");
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("unshare:") {
        skip(
            "trusted namespace refusal",
            &format!("unshare fails: {stderr}"),
        );
        return;
    }
    assert!(!out.status.success());
    assert!(
        stderr.contains("reading trusted.overlay.* markers needs root"),
        "{stderr}"
    );
    let out = run("auto").unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory as the lower one but for an xattr no layer carries is
/// unchanged: nothing is written for it.
#[test]
fn a_dir_differing_only_in_uncarried_xattrs_is_unchanged() {
    if !nix::unistd::Uid::effective().is_root() {
        skip(
            "uncarried xattrs compared",
            "needs root (0:0 owner, trusted.*)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stack = lower(dir.path());
    let up = dir.path().join("up");
    fs::create_dir_all(up.join("etc")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(up.join("etc"), fs::Permissions::from_mode(0o755)).unwrap();
    if xattr::set(up.join("etc"), "trusted.host", b"t").is_err() {
        skip("uncarried xattrs compared", "cannot set trusted.* here");
        return;
    }
    let t = nix::sys::time::TimeSpec::new(1000, 0);
    nix::sys::stat::utimensat(
        None,
        &up.join("etc"),
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    let got = members(&run_diff(&stack, &up, &user()).unwrap());
    assert!(!got.iter().any(|m| m.contains("etc/")), "{got:?}");
}

/// A mount point inside UPPER is not crossed: the error names it.
#[cfg(feature = "privileged")]
#[test]
fn a_mount_point_inside_upper_is_refused() {
    use nix::mount::{mount, umount, MsFlags};
    if !nix::unistd::Uid::effective().is_root() {
        skip("mount point in UPPER", "needs root (mount)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up");
    fs::create_dir_all(up.join("mnt")).unwrap();
    let none: Option<&str> = None;
    mount(
        Some("tmpfs"),
        &up.join("mnt"),
        Some("tmpfs"),
        MsFlags::empty(),
        none,
    )
    .unwrap();
    fs::write(up.join("mnt/f"), b"x").unwrap();
    let stack = lower(dir.path());
    let result = run_diff(&stack, &up, &user());
    umount(&up.join("mnt")).unwrap();
    let err = result.unwrap_err().to_string();
    let shown = up.join("mnt").display().to_string();
    assert!(
        err.starts_with(&format!("{shown}: on another filesystem")),
        "{err}"
    );
}
