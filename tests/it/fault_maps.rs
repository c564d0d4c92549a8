//! The SIGBUS guard over image maps (`erofs_fuse::fault`): a file that
//! shrinks under its map fails the watched access instead of killing the
//! process, zeros are never served, and the map reads the file again once
//! it is restored.

use std::fs::File;
use std::sync::Mutex;

use erofs_fuse::fault::{watch, ImageMap};

use std::io::Write;

/// Fault counts are process-wide: these tests run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn a_shrunk_file_fails_the_watch_and_reads_again_when_restored() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // As the binary does at start.
    erofs_fuse::fault::install();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let bytes: Vec<u8> = (0..4 * 4096u32).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(&path, &bytes).unwrap();
    let file = File::open(&path).unwrap();
    let map = ImageMap::map(&file, &path, bytes.len() as u64).unwrap();
    map.advise(memmap2::Advice::Random).unwrap();
    let vmas = || {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let name = path.to_str().unwrap().to_string();
        maps.lines().filter(|l| l.ends_with(&name)).count()
    };
    assert_eq!(vmas(), 1);
    assert_eq!(watch(|| map[3 * 4096 + 5]), Ok(bytes[3 * 4096 + 5]));
    let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    writer.set_len(4096).unwrap();
    let err = watch(|| map[3 * 4096 + 5]).unwrap_err();
    assert_eq!(err.path.as_deref(), Some(path.as_path()));
    // Still there, and not zeros: it faults again.
    assert!(watch(|| map[2 * 4096]).is_err());
    assert_eq!(watch(|| map[100]), Ok(bytes[100]));
    // Restored: the file's bytes again.
    let mut writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    writer.write_all(&bytes[4096..]).unwrap();
    assert_eq!(watch(|| map[3 * 4096 + 5]), Ok(bytes[3 * 4096 + 5]));
    // Pages mapped back, with the map's advice, merge with it again.
    assert_eq!(vmas(), 1);
    assert_eq!(
        watch(|| map.iter().map(|&b| u64::from(b)).sum::<u64>()),
        Ok(bytes.iter().map(|&b| u64::from(b)).sum())
    );
}

#[test]
fn many_faults_in_one_watch_are_all_repaired() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // As the binary does at start.
    erofs_fuse::fault::install();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    // More pages than a request notes one by one (32).
    let pages = 40;
    let bytes = vec![7u8; pages * 4096];
    std::fs::write(&path, &bytes).unwrap();
    let file = File::open(&path).unwrap();
    let map = ImageMap::map(&file, &path, bytes.len() as u64).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    let sum = |map: &ImageMap| (0..pages).map(|p| u64::from(map[p * 4096])).sum::<u64>();
    let vmas = || {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let name = path.to_str().unwrap().to_string();
        maps.lines().filter(|l| l.ends_with(&name)).count()
    };
    let before = vmas();
    assert!(watch(|| sum(&map)).is_err());
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(watch(|| sum(&map)), Ok(7 * pages as u64));
    // Pages mapped back merge with their map: faults do not pile up
    // mappings (the kernel caps them per process).
    assert_eq!(vmas(), before);
}

#[test]
#[allow(unsafe_code)]
fn a_fault_outside_a_watch_exits_with_one_line_naming_the_file() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // As the binary does at start.
    erofs_fuse::fault::install();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image");
    std::fs::write(&path, vec![1u8; 3 * 4096]).unwrap();
    let map = ImageMap::map(&File::open(&path).unwrap(), &path, 3 * 4096).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4096)
        .unwrap();
    // The child only touches the map (no allocation after fork); its
    // stderr goes to a pipe read here.
    // Close-on-exec: other tests of this binary spawn programs meanwhile,
    // and one that inherited the write end would keep the read below open.
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    // SAFETY: the child calls only dup2, reads a byte of the map (the
    // handler then writes and calls _exit) and _exit.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            // SAFETY: dup2 and _exit are async-signal-safe.
            unsafe {
                libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&write), 2);
                let byte = std::ptr::read_volatile(&map[2 * 4096]);
                libc::_exit(i32::from(byte) + 10);
            }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(write);
            let mut message = String::new();
            std::io::Read::read_to_string(&mut File::from(read), &mut message).unwrap();
            let status = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 1));
            assert_eq!(
                message,
                format!(
                    "erofs-fuse: {}: the file shrank while being read (a page past its new end was read)\n",
                    path.display()
                )
            );
        }
    }
}
