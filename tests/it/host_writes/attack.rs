//! The other local user of the host-writes tests: a real account created
//! for the test (removed after), and attacks it runs as a separate process
//! (this test binary run again as that user, see [`attacker_main`]).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Environment variable selecting the attack in the re-run binary.
pub const ATTACK_ENV: &str = "EROFS_FUSE_HOST_WRITES_ATTACK";

/// The attacker's test, by its full name in the one integration binary
/// (run with `--exact`, so nothing else runs in the attacker process).
const ATTACKER_TEST: &str = "host_writes::attacker_main";

/// useradd and userdel lock /etc/passwd: one at a time in this process.
static ACCOUNTS: Mutex<()> = Mutex::new(());

/// A user account made for one test, deleted on drop.
pub struct OtherUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl OtherUser {
    /// Creates a system user `ehw<pid><tag>` with its own group.
    pub fn create(tag: &str) -> Self {
        let name = format!("ehw{}{tag}", std::process::id());
        let _guard = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
        // Other processes may hold the passwd lock for a moment.
        for attempt in 0.. {
            let status = Command::new("useradd")
                .args(["--system", "--user-group", "--no-create-home"])
                .args(["--shell", "/usr/sbin/nologin", &name])
                .status()
                .expect("useradd runs");
            if status.success() {
                break;
            }
            assert!(attempt < 20, "useradd {name} failed: {status}");
            std::thread::sleep(Duration::from_millis(200));
        }
        let user = nix::unistd::User::from_name(&name)
            .unwrap()
            .expect("the new user exists");
        Self {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }
    }

    /// A command run as this user (no supplementary groups).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .args(["--clear-groups", "--"])
            .arg(program);
        cmd
    }

    /// Makes `path` (a directory or file) this user's.
    pub fn give(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).unwrap();
    }

    /// Plants a symlink at `link` pointing to `target`, as this user.
    pub fn plant_symlink(&self, target: &Path, link: &Path) {
        let status = self
            .command("ln")
            .arg("-s")
            .arg(target)
            .arg(link)
            .status()
            .unwrap();
        assert!(status.success(), "ln -s as {} failed", self.name);
    }

    /// Whether this user can run this test binary (its path must be
    /// reachable: a 0700 home on the way is not).
    pub fn can_run_tests(&self) -> bool {
        let exe = std::env::current_exe().unwrap();
        let out = self
            .command(&exe)
            .args([ATTACKER_TEST, "--exact", "--quiet"])
            .env_remove(ATTACK_ENV)
            .stderr(std::process::Stdio::null())
            .output();
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            return false;
        }
        // A filter that names no test succeeds too, and every attack would
        // then run nothing: the attacker must be exactly one test.
        let stdout = String::from_utf8_lossy(&out.unwrap().stdout).into_owned();
        assert!(
            stdout.contains(" 1 passed"),
            "{ATTACKER_TEST} names no test of {}: {stdout}",
            exe.display()
        );
        true
    }

    /// Starts this test binary again as this user, running `attack` on
    /// `base` against `victim` until `until` from now.
    pub fn start_attack(&self, attack: &str, base: &Path, victim: &Path, until: Duration) -> Child {
        let exe = std::env::current_exe().unwrap();
        self.command(exe)
            .args([ATTACKER_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(ATTACK_ENV, attack)
            .env("ATTACK_BASE", base)
            .env("ATTACK_VICTIM", victim)
            .env("ATTACK_MILLIS", until.as_millis().to_string())
            .spawn()
            .expect("the attacker starts")
    }
}

impl Drop for OtherUser {
    fn drop(&mut self) {
        let _guard = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..20 {
            let status = Command::new("userdel").arg(&self.name).status();
            if status.is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("warning: could not remove test user {}", self.name);
    }
}

/// A root-owned 0600 file the attacks aim at, and what it must stay.
pub struct Victim {
    pub path: PathBuf,
    content: Vec<u8>,
}

impl Victim {
    /// Creates `dir/name` (root's, 0600).
    pub fn new(dir: &Path, name: &str) -> Self {
        let path = dir.join(name);
        let content = format!("{name}: root's secret\n").into_bytes();
        std::fs::write(&path, &content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self { path, content }
    }

    /// Panics unless mode, owner and content are as created.
    pub fn assert_intact(&self, when: &str) {
        let meta = std::fs::symlink_metadata(&self.path).unwrap();
        assert!(
            meta.is_file(),
            "{when}: {} is no longer a file",
            self.path.display()
        );
        assert_eq!(
            meta.mode() & 0o7777,
            0o600,
            "{when}: the mode of {} changed",
            self.path.display()
        );
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{when}: owner changed");
        assert!(
            std::fs::read(&self.path).unwrap() == self.content,
            "{when}: the content of {} changed",
            self.path.display()
        );
    }
}

/// The attacker process: runs the attack named in [`ATTACK_ENV`] until its
/// time is up. `swap`: every entry that appears in a directory under
/// ATTACK_BASE is renamed away and replaced by a symlink to ATTACK_VICTIM.
/// `read`: every file that appears two levels under ATTACK_BASE is opened
/// for reading; any that opens is a leak, and the process fails listing
/// them.
pub fn attacker_main() {
    let Ok(attack) = std::env::var(ATTACK_ENV) else {
        return;
    };
    let base = PathBuf::from(std::env::var("ATTACK_BASE").unwrap());
    let victim = PathBuf::from(std::env::var("ATTACK_VICTIM").unwrap());
    let millis: u64 = std::env::var("ATTACK_MILLIS").unwrap().parse().unwrap();
    let deadline = Instant::now() + Duration::from_millis(millis);
    let mut leaks = std::collections::BTreeSet::new();
    let mut swaps = 0u64;
    while Instant::now() < deadline {
        for round in entries(&base) {
            match attack.as_str() {
                "swap" => swaps += swap_all(&round, &victim),
                "read" => read_all(&round, 2, &mut leaks),
                other => panic!("unknown attack {other}"),
            }
        }
    }
    eprintln!("attacker: {swaps} swaps, {} leaks", leaks.len());
    let first: Vec<&String> = leaks.iter().take(5).collect();
    assert!(leaks.is_empty(), "opened as another user: {first:?} ...");
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Replaces every entry of `dir` not yet swapped by a symlink to `victim`.
fn swap_all(dir: &Path, victim: &Path) -> u64 {
    let mut swaps = 0;
    for entry in entries(dir) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(".moved") || entry.is_symlink() {
            continue;
        }
        let away = dir.join(format!(".moved{swaps}-{name}"));
        if std::fs::rename(&entry, &away).is_ok()
            && std::os::unix::fs::symlink(victim, &entry).is_ok()
        {
            swaps += 1;
        }
    }
    swaps
}

/// Opens every non-directory up to `depth` levels under `dir`; records
/// those that opened.
fn read_all(dir: &Path, depth: u32, leaks: &mut std::collections::BTreeSet<String>) {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    for entry in entries(dir) {
        let Ok(meta) = std::fs::symlink_metadata(&entry) else {
            continue;
        };
        if meta.is_dir() {
            if depth > 1 {
                read_all(&entry, depth - 1, leaks);
            }
            continue;
        }
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(&entry);
        // Opened is leaked: the descriptor reads whatever is written later.
        if let Ok(mut file) = opened {
            let _ = file.read(&mut [0u8; 1]);
            leaks.insert(entry.display().to_string());
        }
    }
}
