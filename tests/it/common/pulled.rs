//! What tests of pulled images share: the store's image records and state
//! (compared before and after a failed pull), and the fixture image's
//! kernel manifest compared loosely with a mount's, as the fixtures'
//! README allows.

use std::path::Path;

use serde_json::Value;

use super::registry::oci_fixture;

/// The store's image records, by reference.
pub fn records(store: &Path) -> Vec<Value> {
    let dir = store.join("images");
    let mut out: Vec<Value> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|r: &Value| r["reference"].as_str().unwrap().to_string());
    out
}

/// What a failed pull must leave as it was: the store's entries (no
/// staging directory, no new layer), blobs and records.
pub fn store_state(store: &Path) -> (Vec<String>, Vec<String>, Vec<Value>) {
    let names = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "locks")
            .collect();
        names.sort();
        names
    };
    (
        names(store),
        names(&store.join("blobs/sha256")),
        records(store),
    )
}

/// The fixture's kernel manifest and a mount's, compared as the fixture
/// README says: directories no layer lists (`/`, `/home...`,
/// `/usr/share`) get each implementation's mode and mtime, and merged
/// directories' link counts differ.
pub fn loosely(manifest: &str) -> Vec<Value> {
    manifest
        .lines()
        .map(|line| {
            let mut v: Value = serde_json::from_str(line).unwrap();
            let obj = v.as_object_mut().unwrap();
            if obj["type"] == "dir" {
                obj.remove("nlink");
                let path = obj["path"].as_str().unwrap().to_string();
                if path == "/"
                    || path == "/usr/share"
                    || path == "/home"
                    || path.starts_with("/home/")
                {
                    obj.remove("mode");
                    obj.remove("mtime");
                }
            }
            v
        })
        .collect()
}

/// `merged.kernel.manifest.jsonl` of the fixture layouts.
pub fn kernel_manifest() -> String {
    std::fs::read_to_string(oci_fixture("merged.kernel.manifest.jsonl")).unwrap()
}

/// An entry without its `trusted.*` xattrs (which a user other than root
/// does not see).
pub fn without_trusted_xattrs(mut v: Value) -> Value {
    if let Some(Value::Object(x)) = v.get_mut("xattrs") {
        x.retain(|k, _| !k.starts_with("trusted."));
        if x.is_empty() {
            v.as_object_mut().unwrap().remove("xattrs");
        }
    }
    v
}

/// /dev/fuse as udev would leave it (these machines create it 0600), so
/// unprivileged users can mount.
pub fn open_dev_fuse() {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
}

/// A HOME for `nobody` (uid 65534): a temporary directory it owns.
pub fn nobody_home() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(home.path(), Some(65534), Some(65534)).unwrap();
    home
}

/// A command run as `nobody` with `home` as HOME and none of root's
/// store, runtime or credential settings (the default store is then under
/// `home`).
pub fn as_nobody(home: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .env("HOME", home)
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("REGISTRY_AUTH_FILE");
    cmd
}

/// `scripts/manifest.py` of the mount at `mnt`, walked as `nobody`, which
/// is unmounted after (the walk must succeed).
pub fn walk_and_unmount_as_nobody(home: &Path, mnt: &Path) -> String {
    let walk = super::run(
        as_nobody(home)
            .arg("/usr/bin/python3")
            .arg(super::script("manifest.py"))
            .arg(mnt),
    );
    let _ = as_nobody(home)
        .arg("fusermount3")
        .arg("-u")
        .arg(mnt)
        .status();
    assert!(
        walk.status.success(),
        "{}",
        String::from_utf8_lossy(&walk.stderr)
    );
    String::from_utf8_lossy(&walk.stdout).into_owned()
}

/// No extra arguments for [`pull`] and [`pull_ok`].
pub const NO_ARGS: &[&str] = &[];

/// `erofs-fuse ARGS --store STORE`.
pub fn cli(store: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(super::bin());
    cmd.args(args).arg("--store").arg(store);
    cmd
}

/// `erofs-fuse pull --quiet REF --store STORE EXTRA...`.
pub fn pull<S: AsRef<std::ffi::OsStr>>(
    store: &Path,
    reference: &str,
    extra: &[S],
) -> std::process::Output {
    super::run(cli(store, &["pull", "--quiet", reference]).args(extra))
}

/// [`pull`], which must succeed; gives the printed manifest digest.
pub fn pull_ok<S: AsRef<std::ffi::OsStr>>(store: &Path, reference: &str, extra: &[S]) -> String {
    let out = pull(store, reference, extra);
    assert!(
        out.status.success(),
        "pull {reference} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A tar of `files` (path, contents): regular files, mode 0644, mtime 1,
/// owned by root.
pub fn tar_of<P: AsRef<Path>, D: AsRef<[u8]>>(files: &[(P, D)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let data = data.as_ref();
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, data).unwrap();
    }
    builder.into_inner().unwrap()
}
