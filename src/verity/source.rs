//! Where a verity tree and its root hash come from, as the user names them:
//! `ROOT_HASH:HASH_FILE[:OFFSET][:KEY=VALUE...]`, or containerd's
//! `.dmverity` sidecar.

use std::path::{Path, PathBuf};

use super::{from_hex, VerityError, VerityParams, DIGEST_SIZE};

/// A tree to check a file against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VeritySource {
    /// A tree at byte `offset` of `hash_file`.
    Tree(TreeSpec),
    /// containerd's sidecar (`layer.erofs.dmverity`): root hash and the
    /// offset of the tree appended to the data file itself.
    Sidecar(PathBuf),
}

/// A tree named by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeSpec {
    /// The root hash the tree must match.
    pub root: [u8; DIGEST_SIZE],
    /// The file holding the tree.
    pub hash_file: PathBuf,
    /// Byte offset of the tree (of its superblock, when it has one).
    pub offset: u64,
    /// A tree made with `--no-superblock`: its parameters, given by the
    /// user since the hash file does not hold them.
    pub no_superblock: Option<NoSuperblock>,
}

/// What a `--no-superblock` tree was made with (veritysetup's defaults
/// for what is not given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoSuperblock {
    /// The salt (empty for none).
    pub salt: Vec<u8>,
    /// Data blocks covered; `None`: as many whole blocks as the data has.
    pub data_blocks: Option<u64>,
    /// Data block size.
    pub data_block_size: u32,
    /// Hash block size.
    pub hash_block_size: u32,
}

impl NoSuperblock {
    /// The full parameters for data of `data_len` bytes.
    pub fn params(&self, data_len: u64) -> VerityParams {
        VerityParams {
            data_block_size: self.data_block_size,
            hash_block_size: self.hash_block_size,
            data_blocks: self
                .data_blocks
                .unwrap_or(data_len / u64::from(self.data_block_size.max(1))),
            salt: self.salt.clone(),
            uuid: [0; 16],
        }
    }
}

/// Keys of the `KEY=VALUE` parts of a spec; any of them means the tree
/// has no superblock.
const KEYS: &[&str] = &["salt", "data-blocks", "data-block-size", "hash-block-size"];

impl VeritySource {
    /// Parses `ROOT_HASH:HASH_FILE[:OFFSET][:KEY=VALUE...]`. A trailing
    /// `:DIGITS` is the offset (a hash file whose name ends that way is
    /// written `NAME:0`). `salt=HEX` (or `-`), `data-blocks=N`,
    /// `data-block-size=N` and `hash-block-size=N` describe a tree made
    /// with `veritysetup format --no-superblock` (default sizes 4096).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (root_text, rest) = spec
            .split_once(':')
            .ok_or_else(|| format!("{spec:?}: expected ROOT_HASH:HASH_FILE[:OFFSET]"))?;
        let root = parse_root(root_text)?;
        let mut parts: Vec<&str> = rest.split(':').collect();
        let mut no_superblock: Option<NoSuperblock> = None;
        while parts.len() > 1 {
            let last = parts[parts.len() - 1];
            let Some((key, value)) = last.split_once('=').filter(|(k, _)| KEYS.contains(k)) else {
                break;
            };
            parts.pop();
            let ns = no_superblock.get_or_insert(NoSuperblock {
                salt: Vec::new(),
                data_blocks: None,
                data_block_size: 4096,
                hash_block_size: 4096,
            });
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{spec:?}: {key}={value} is not a number"))
            };
            let size = |what| {
                let size = number()?
                    .try_into()
                    .map_err(|_| format!("{spec:?}: {key}={value} is too large"))?;
                super::check_block_size(what, size).map_err(|e| format!("{spec:?}: {e}"))?;
                Ok::<u32, String>(size)
            };
            match key {
                "salt" if value == "-" => ns.salt = Vec::new(),
                "salt" => {
                    ns.salt = from_hex(value)
                        .ok_or_else(|| format!("{spec:?}: salt {value} is not hex"))?
                }
                "data-blocks" => ns.data_blocks = Some(number()?),
                "data-block-size" => ns.data_block_size = size("data")?,
                _ => ns.hash_block_size = size("hash")?,
            }
        }
        let mut offset = 0;
        if parts.len() > 1 {
            let last = parts[parts.len() - 1];
            if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
                offset = last
                    .parse()
                    .map_err(|_| format!("{spec:?}: offset {last} is too large"))?;
                parts.pop();
            }
        }
        let hash_file = parts.join(":");
        if hash_file.is_empty() {
            return Err(format!("{spec:?}: no hash file"));
        }
        Ok(Self::Tree(TreeSpec {
            root,
            hash_file: PathBuf::from(hash_file),
            offset,
            no_superblock,
        }))
    }

    /// Parses a device's tree: a spec as [`VeritySource::parse`] takes, or
    /// `-` for none (the device is served unverified, on purpose).
    pub fn parse_optional(spec: &str) -> Result<Option<Self>, String> {
        if spec == "-" {
            Ok(None)
        } else {
            Self::parse(spec).map(Some)
        }
    }

    /// The tree for checking `data`: a sidecar is read here and names
    /// `data` itself as the hash file.
    pub fn resolve(&self, data: &Path) -> Result<TreeSpec, VerityError> {
        match self {
            Self::Tree(spec) => Ok(spec.clone()),
            Self::Sidecar(path) => {
                let sidecar = Sidecar::load(path)?;
                Ok(TreeSpec {
                    root: sidecar.root,
                    hash_file: data.to_path_buf(),
                    offset: sidecar.hash_offset,
                    no_superblock: None,
                })
            }
        }
    }
}

/// A root hash in hex: exactly one sha256 digest.
pub fn parse_root(text: &str) -> Result<[u8; DIGEST_SIZE], String> {
    from_hex(text)
        .and_then(|bytes| <[u8; DIGEST_SIZE]>::try_from(bytes).ok())
        .ok_or_else(|| {
            format!(
                "root hash {text:?}: expected {} hex digits",
                2 * DIGEST_SIZE
            )
        })
}

/// containerd's `.dmverity` sidecar: `{"roothash": HEX, "hashoffset": N}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    /// The root hash.
    pub root: [u8; DIGEST_SIZE],
    /// Byte offset of the verity superblock in the layer file.
    pub hash_offset: u64,
}

/// The sidecar as JSON.
#[derive(serde::Serialize, serde::Deserialize)]
struct SidecarJson {
    roothash: String,
    hashoffset: u64,
}

/// Longest sidecar read: the real ones are under 100 bytes.
const MAX_SIDECAR: u64 = 64 * 1024;

impl Sidecar {
    /// Reads and checks a sidecar file.
    pub fn load(path: &Path) -> Result<Self, VerityError> {
        let named = |what: String| VerityError::Invalid(format!("{}: {what}", path.display()));
        // Not a FIFO, which would block the read (or the open).
        let (file, _) = crate::input::open_input(path).map_err(|e| match e {
            crate::Error::Io { source, .. } => named(source.to_string()),
            other => VerityError::Invalid(other.to_string()),
        })?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_SIDECAR), &mut text)
            .map_err(|e| named(e.to_string()))?;
        let json: SidecarJson = serde_json::from_str(&text)
            .map_err(|e| named(format!("not a .dmverity sidecar ({e})")))?;
        Ok(Self {
            root: parse_root(&json.roothash).map_err(named)?,
            hash_offset: json.hashoffset,
        })
    }

    /// The sidecar's JSON text, as containerd writes it.
    pub fn to_json(&self) -> String {
        let json = SidecarJson {
            roothash: super::hex(&self.root),
            hashoffset: self.hash_offset,
        };
        // Serializing a string and a number cannot fail.
        let text = serde_json::to_string(&json).unwrap_or_default();
        text.replace("\":", "\": ").replace(",\"", ", \"") + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "97352ebb7b073227e41a02f707b28eef7cd5f857aba47a28e5856fcd7bf652ec";

    #[test]
    fn parses_specs() {
        let tree = |file: &str, offset| {
            VeritySource::Tree(TreeSpec {
                root: parse_root(ROOT).unwrap(),
                hash_file: PathBuf::from(file),
                offset,
                no_superblock: None,
            })
        };
        let parse = |text: &str| VeritySource::parse(&format!("{ROOT}:{text}"));
        assert_eq!(parse("a.verity"), Ok(tree("a.verity", 0)));
        assert_eq!(parse("img:4096"), Ok(tree("img", 4096)));
        assert_eq!(parse("a:b:12"), Ok(tree("a:b", 12)));
        assert_eq!(parse("a:b"), Ok(tree("a:b", 0)));
        assert_eq!(parse("a=b"), Ok(tree("a=b", 0)));
        assert!(VeritySource::parse(ROOT).is_err());
        assert!(parse("").is_err());
        assert!(parse("12").is_ok());
        assert!(VeritySource::parse("abcd:file").is_err());
        assert!(parse("f:99999999999999999999999").is_err());
        let Ok(VeritySource::Tree(spec)) =
            parse("h:512:salt=00ff:data-blocks=7:data-block-size=512:hash-block-size=1024")
        else {
            panic!("no-superblock spec");
        };
        assert_eq!((spec.hash_file.to_str(), spec.offset), (Some("h"), 512));
        let ns = spec.no_superblock.unwrap();
        assert_eq!(ns.salt, vec![0, 0xff]);
        assert_eq!(ns.data_blocks, Some(7));
        assert_eq!((ns.data_block_size, ns.hash_block_size), (512, 1024));
        assert_eq!(ns.params(10_000).data_blocks, 7);
        let Ok(VeritySource::Tree(spec)) = parse("h:salt=-") else {
            panic!("salt only");
        };
        assert_eq!(spec.no_superblock.unwrap().params(10_000).data_blocks, 2);
        assert!(parse("h:salt=xyz").is_err());
        assert!(parse("h:data-block-size=99999999999").is_err());
        assert!(parse("h:data-block-size=0").is_err());
        assert!(parse("h:hash-block-size=4095").is_err());
        assert!(parse("h:data-block-size=2097152").is_err());
    }

    #[test]
    fn sidecar_round_trip() {
        let sidecar = Sidecar {
            root: parse_root(ROOT).unwrap(),
            hash_offset: 2482176,
        };
        let text = sidecar.to_json();
        assert_eq!(
            text,
            format!("{{\"roothash\": \"{ROOT}\", \"hashoffset\": 2482176}}\n")
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.dmverity");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(Sidecar::load(&path).unwrap(), sidecar);
        std::fs::write(&path, "{\"roothash\": \"zz\", \"hashoffset\": 1}").unwrap();
        assert!(Sidecar::load(&path).is_err());
        std::fs::write(&path, "not json").unwrap();
        assert!(Sidecar::load(&path).is_err());
    }
}
