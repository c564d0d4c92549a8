//! The module order, checked: every library module has a rank in
//! [`LAYERS`], and a module may name (`crate::x`, `use crate::{x, ..}`) only
//! modules of a lower rank. A new module must be given its place here.

use std::collections::BTreeSet;
use std::path::Path;

/// Library modules by rank, from the bottom. Same-rank modules do not use
/// each other either.
const LAYERS: &[(u32, &[&str])] = &[
    (0, &["error"]),
    (1, &["format", "safe_fs", "sys"]),
    (2, &["mmap", "input", "registry"]),
    (3, &["fault", "gzran", "toc"]),
    (4, &["verity"]),
    (5, &["lazy"]),
    (6, &["device"]),
    (7, &["reader", "mkfs"]),
    (
        8,
        &["view", "inspect", "fsck", "extract", "convert", "nydus"],
    ),
    (9, &["overlay", "manifest"]),
    (10, &["store", "diff"]),
    (11, &["fuse"]),
];

/// Names `lib.rs` re-exports at the crate root, and the module each is from.
const ROOT_EXPORTS: &[(&str, &str)] = &[
    ("Error", "error"),
    ("Result", "error"),
    ("Nid", "format"),
    ("Image", "reader"),
    ("Inode", "reader"),
    ("OpenOptions", "reader"),
];

/// Files of the crate root that are not layers.
const NOT_LAYERS: &[&str] = &["lib", "main", "layering", "cli"];

fn rank(module: &str) -> Option<u32> {
    LAYERS
        .iter()
        .find(|(_, names)| names.contains(&module))
        .map(|&(rank, _)| rank)
}

/// `text` without `//` comments (doc links may point anywhere).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| line.find("//").map_or(line, |at| &line[..at]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifier at the start of `text`.
fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The first path segments named after each `crate::` in `text`, with
/// `crate::{a, b::c}` giving `a` and `b`.
fn crate_references(text: &str) -> BTreeSet<String> {
    let text = strip_comments(text);
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            found.insert(ident(rest).to_string());
            continue;
        };
        // Top-level items of the brace group: those after `{` or a `,` at
        // depth one.
        let mut depth = 1;
        let mut start = true;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 1 => break,
                '}' => depth -= 1,
                ',' if depth == 1 => start = true,
                c if start && !c.is_whitespace() => {
                    found.insert(ident(&group[i..]).to_string());
                    start = false;
                }
                _ => {}
            }
        }
    }
    found.remove("");
    found
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str();
    let first = first.to_str().unwrap();
    first.strip_suffix(".rs").unwrap_or(first).to_string()
}

/// The library's files under `src` (those of [`NOT_LAYERS`] aside), sorted,
/// each with its top-level module and its text.
fn library_files() -> Vec<(String, std::path::PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|file| (module_of(&src, &file), file))
        .filter(|(module, _)| !NOT_LAYERS.contains(&module.as_str()))
        .map(|(module, file)| {
            let text = std::fs::read_to_string(&file).unwrap();
            (module, file, text)
        })
        .collect()
}

/// What `module`'s references break: names not placed in the table, and
/// references to modules of its rank or above.
fn violations(module: &str, references: &BTreeSet<String>) -> Vec<String> {
    let own = rank(module).unwrap();
    let mut found = Vec::new();
    for name in references {
        let target = ROOT_EXPORTS
            .iter()
            .find(|(export, _)| export == name)
            .map_or(name.as_str(), |&(_, module)| module);
        if target == module {
            continue;
        }
        match rank(target) {
            None => found.push(format!("{module} uses crate::{name}, which has no rank")),
            Some(r) if r >= own => found.push(format!(
                "{module} (rank {own}) uses crate::{name} (rank {r}): not below it"
            )),
            Some(_) => {}
        }
    }
    found
}

#[test]
fn every_module_uses_only_lower_layers() {
    let mut broken = Vec::new();
    for (module, file, text) in library_files() {
        if rank(&module).is_none() {
            broken.push(format!("{module}: not placed in LAYERS"));
            continue;
        }
        for v in violations(&module, &crate_references(&text)) {
            broken.push(format!("{}: {v}", file.display()));
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

/// Calls that change the whole process (daemonizing, the allocator, the
/// standard descriptors, limits, signal dispositions): the binary's.
const PROCESS_WIDE: &[&str] = &[
    "fork(",
    "setsid(",
    "process::exit(",
    "mallopt(",
    "dup2(",
    "setrlimit(",
    "sigaction(",
];

/// The library's one exception: `fault::install`, which only the binary
/// calls (the SIGBUS handler is process-wide by nature).
const PROCESS_WIDE_ALLOWED: &[(&str, &str)] = &[("fault", "sigaction(")];

#[test]
fn the_library_leaves_the_process_alone() {
    let mut found = Vec::new();
    for (module, file, text) in library_files() {
        let text = strip_comments(&text);
        for call in PROCESS_WIDE {
            if text.contains(call) && !PROCESS_WIDE_ALLOWED.contains(&(module.as_str(), *call)) {
                found.push(format!("{}: {call}", file.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "process-wide calls in the library:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_table_names_each_module_once() {
    let mut seen = BTreeSet::new();
    for (_, names) in LAYERS {
        for name in *names {
            assert!(seen.insert(*name), "{name} placed twice");
        }
    }
}

#[test]
fn references_are_found_in_paths_and_groups() {
    let text = "use crate::error::Error;\n\
                // crate::fuse in a comment\n\
                use crate::{format::{A, B}, mmap,\n    reader::x};\n\
                let y = crate::verity::hex(b);\n\
                Err($crate::error::Error::Corrupt(s))";
    let found: Vec<_> = crate_references(text).into_iter().collect();
    assert_eq!(found, ["error", "format", "mmap", "reader", "verity"]);
}

#[test]
fn an_upward_or_unplaced_reference_is_reported() {
    let refs = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
    assert!(violations("device", &refs(&["verity", "Error", "mmap"])).is_empty());
    assert_eq!(violations("verity", &refs(&["device"])).len(), 1);
    assert_eq!(violations("error", &refs(&["verity"])).len(), 1);
    assert_eq!(violations("view", &refs(&["inspect"])).len(), 1);
    assert_eq!(violations("reader", &refs(&["nowhere"])).len(), 1);
}
