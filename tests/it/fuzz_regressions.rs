//! Inputs the fuzzers found, replayed through the fuzz targets' own bodies
//! (`fuzz/targets/`): each file in `tests/fuzz-regressions/TARGET/` must
//! now run clean. A new finding is added by copying it there from
//! `fuzz/artifacts/TARGET/` with a name that says what it was.

#[path = "../../fuzz/targets/mod.rs"]
mod targets;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut count = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        eprintln!("{target}: replaying {}", path.display());
        run(&input);
        count += 1;
    }
    count
}

#[test]
fn every_kept_finding_runs_clean() {
    let replayed = replay("image", targets::image::run)
        + replay("decompress", targets::decompress::run)
        + replay("convert", targets::convert::run)
        + replay("verity", targets::verity::run)
        + replay("stack", targets::stack::run)
        + replay("nydus", targets::nydus::run);
    // The directory ships with the findings so far; an empty replay would
    // mean the inputs went missing.
    assert!(replayed >= 1, "no kept findings were replayed");
}
