//! `attach`: for each layer of an image in a registry, the layer-index
//! artifact ([`crate::registry::referrers`]) computed and pushed as a
//! referrer of the image manifest: the tar index and zinfo exactly as
//! `pull` and `convert --gzinfo` make them, and a dm-verity tree over what
//! a reader reads (the uncompressed tar, or the EROFS-native blob).
//!
//! The layer's blob is the store's when `pull` already has it, else it is
//! streamed from the registry into a private staging directory of the
//! store (removed afterwards, and by gc if a crash leaves it); either way
//! its digest is checked while it is read. Layers that already have our
//! referrer are left alone unless forced; zstd layers are skipped (no
//! random access into zstd). Nothing is printed: a report comes back.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::convert::{convert_at, ConvertOptions, Mode};
use crate::error::{Error, Result};
use crate::gzran::Zinfo;
use crate::registry::manifest::{LayerKind, Platform, OCI_MANIFEST};
use crate::registry::oci_layout::sha256_digest;
use crate::registry::push::Referrers;
use crate::registry::referrers::{
    artifact_manifest, find_layer_indexes, referrer_descriptor, ArtifactParts, BlobRef, Descriptor,
    LayerIndex, EMPTY_CONFIG, LAYER_ANNOTATION, LAYER_INDEX_ARTIFACT_TYPE, MAX_TAR_INDEX,
    MAX_ZINFO,
};
use crate::registry::{ImageSource, RegistryClient};
use crate::safe_fs::proc_path;
use crate::verity::{containerd_params, tree_of_stream, StreamTree};

use super::images::{ImageRef, LayerRecord, Store};
use super::layout::{layer_dir, Staging, BLOB_FILE};
use super::pull::{layer_record, resolve, Progress, PullOptions, PULL_PREFIX};

/// The tar index made in the staging directory.
const INDEX_FILE: &str = "index.erofs";
/// The uncompressed tar of a tar+gzip layer.
const TAR_FILE: &str = "layer.tar";
/// The zinfo of a tar+gzip layer.
const ZINFO_FILE: &str = "zinfo";

/// How to attach.
#[derive(Debug, Clone, Default)]
pub struct AttachOptions {
    /// The platform to choose from an index (default: the host's).
    pub platform: Option<Platform>,
    /// Compute and push even for layers that already have our referrer.
    pub force: bool,
}

/// What happened to one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An artifact was pushed: its digest and the tree's root hash.
    Attached {
        /// The referrer manifest's digest.
        referrer: String,
        /// The root hash.
        root: [u8; 32],
    },
    /// The layer already had one (the first listed).
    AlreadyAttached {
        /// The referrer manifest's digest.
        referrer: String,
        /// The root hash it records.
        root: [u8; 32],
    },
    /// Not attachable: why.
    Skipped(String),
}

/// One layer's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerReport {
    /// The layer's digest.
    pub digest: String,
    /// What happened.
    pub outcome: Outcome,
}

/// What `attach` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachReport {
    /// The image manifest the artifacts refer to.
    pub manifest: String,
    /// Whether the registry has the referrers API (else the tag schema
    /// was updated).
    pub referrers_api: bool,
    /// The layers, in the manifest's order.
    pub layers: Vec<LayerReport>,
    /// Blobs and manifests uploaded (those the registry had are not).
    pub uploads: usize,
}

/// The artifacts of one layer, computed.
struct Computed {
    data_size: u64,
    tar_index: Option<Vec<u8>>,
    zinfo: Option<Vec<u8>>,
    tree: StreamTree,
}

/// Computes and pushes the layer-index artifacts of `image`'s layers to
/// the registry `client` reaches (the image's own repository).
pub fn attach(
    store: &Store,
    image: &ImageRef,
    client: &RegistryClient,
    options: &AttachOptions,
    progress: &dyn Progress,
) -> Result<AttachReport> {
    let name = image.to_string();
    client.for_push();
    let _lock = store.lock(false)?;
    let pull_options = PullOptions {
        platform: options.platform.clone(),
        ..PullOptions::default()
    };
    let resolved = resolve(image, client, &pull_options, &name)?;
    let layers = resolved
        .manifest
        .layers()
        .iter()
        .map(|d| layer_record(d, &name))
        .collect::<Result<Vec<_>>>()?;
    let fetched = resolved.platform_manifest.as_ref().unwrap_or(&resolved.top);
    let subject = Descriptor {
        media_type: match fetched.media_type.as_str() {
            "" => OCI_MANIFEST.to_string(),
            given => given.to_string(),
        },
        digest: fetched.digest.clone(),
        size: fetched.bytes.len() as u64,
    };
    let listing = client.list_referrers(&subject.digest, Some(LAYER_INDEX_ARTIFACT_TYPE))?;
    let existing = find_layer_indexes(client, &subject.digest)?;
    let mut report = AttachReport {
        manifest: subject.digest.clone(),
        referrers_api: listing.api,
        layers: Vec::new(),
        uploads: 0,
    };
    for (index, layer) in layers.iter().enumerate() {
        progress.start(index, &layer.digest, layer.size);
        let outcome = match (
            existing.iter().find(|x| x.layer == layer.digest),
            layer.kind,
        ) {
            (Some(found), _) if !options.force => {
                progress.finish(index, "already attached");
                already(found)
            }
            (_, LayerKind::TarZstd) => {
                progress.finish(index, "skipped: zstd");
                Outcome::Skipped("tar+zstd has no random access".into())
            }
            (_, LayerKind::NydusBootstrap | LayerKind::NydusBlob) => {
                progress.finish(index, "skipped: nydus");
                Outcome::Skipped("Nydus chunks carry their own digests".into())
            }
            _ => {
                let job = Job {
                    store,
                    client,
                    layer,
                    index,
                    progress,
                };
                let outcome = job
                    .run(&subject, &listing, &mut report.uploads)
                    .inspect_err(|_| progress.finish(index, "failed"))?;
                progress.finish(index, "attached");
                outcome
            }
        };
        report.layers.push(LayerReport {
            digest: layer.digest.clone(),
            outcome,
        });
    }
    Ok(report)
}

/// The outcome for a layer that has an artifact already.
fn already(found: &LayerIndex) -> Outcome {
    Outcome::AlreadyAttached {
        referrer: found.artifact.clone(),
        root: found.root,
    }
}

/// One layer to attach.
struct Job<'a> {
    store: &'a Store,
    client: &'a RegistryClient,
    layer: &'a LayerRecord,
    index: usize,
    progress: &'a dyn Progress,
}

impl Job<'_> {
    /// Computes the layer's artifacts and pushes them.
    fn run(
        &self,
        subject: &Descriptor,
        listing: &Referrers,
        uploads: &mut usize,
    ) -> Result<Outcome> {
        let computed = self.compute()?;
        self.progress.step(self.index, "pushing");
        let mut push = |bytes: &[u8]| -> Result<BlobRef> {
            let (digest, uploaded) = self.client.push_blob(bytes)?;
            *uploads += usize::from(uploaded);
            Ok(BlobRef {
                digest,
                size: bytes.len() as u64,
            })
        };
        push(EMPTY_CONFIG)?;
        let index_tree = match &computed.tar_index {
            Some(index) => {
                let size = index.len() as u64;
                let params = containerd_params(size, uuid_of(&self.layer.digest));
                let tree = tree_of_stream(&mut &index[..], size, &params)
                    .map_err(|e| Error::Invalid(format!("the tar index's tree: {e}")))?;
                Some((push(&tree.hash_area)?, tree.root))
            }
            None => None,
        };
        let parts = ArtifactParts {
            subject: subject.clone(),
            layer: self.layer.digest.clone(),
            data_size: computed.data_size,
            tar_index: computed.tar_index.as_deref().map(&mut push).transpose()?,
            zinfo: computed.zinfo.as_deref().map(&mut push).transpose()?,
            tree: push(&computed.tree.hash_area)?,
            root: computed.tree.root,
            zinfo_table: computed
                .zinfo
                .as_deref()
                .map(|bytes| Zinfo::parse(bytes).map(|z| z.table()))
                .transpose()
                .map_err(|e| Error::Invalid(format!("the zinfo made: {e}")))?,
            index_tree,
        };
        let bytes = artifact_manifest(&parts);
        let digest = sha256_digest(&bytes);
        self.client.push_manifest(&digest, OCI_MANIFEST, &bytes)?;
        *uploads += 1;
        if !listing.api {
            let descriptor = referrer_descriptor(&parts, &digest, bytes.len() as u64);
            let layer = self.layer.digest.as_str();
            let replaces = |old: &crate::registry::Referrer| {
                old.artifact_type.as_deref() == Some(LAYER_INDEX_ARTIFACT_TYPE)
                    && old.annotations.get(LAYER_ANNOTATION).map(String::as_str) == Some(layer)
            };
            self.client
                .add_to_referrers_tag(&subject.digest, &descriptor, &replaces)?;
            *uploads += 1;
        }
        Ok(Outcome::Attached {
            referrer: digest,
            root: computed.tree.root,
        })
    }

    /// The artifacts, from the store's blob or one fetched into staging.
    fn compute(&self) -> Result<Computed> {
        let digest = self.layer.digest.as_str();
        let staging = Staging::create(&self.store.root, PULL_PREFIX)?;
        let pinned = proc_path(staging.dir.fd());
        let blob = if self.store.has_layer(digest) {
            self.progress.step(self.index, "from the store");
            layer_dir(self.store.path(), digest).join(BLOB_FILE)
        } else {
            let file = staging.create_file(BLOB_FILE)?;
            let path = staging.dir.path().join(BLOB_FILE);
            let mut sink = std::io::BufWriter::with_capacity(1 << 20, &file);
            let progress = |n| self.progress.bytes(self.index, n);
            self.client
                .blob(digest, self.layer.size, &mut sink, &progress)?;
            std::io::Write::flush(&mut sink).map_err(|e| Error::io(&path, e))?;
            pinned.join(BLOB_FILE)
        };
        self.progress.step(self.index, "indexing");
        let what =
            |e: String| Error::Invalid(format!("layer {digest} ({}): {e}", self.layer.media_type));
        match self.layer.kind {
            LayerKind::Erofs => {
                let size = std::fs::metadata(&blob)
                    .map_err(|e| Error::io(&blob, e))?
                    .len();
                let tree = self.tree(&blob, size, true)?;
                Ok(Computed {
                    data_size: size,
                    tar_index: None,
                    zinfo: None,
                    tree,
                })
            }
            LayerKind::Tar | LayerKind::TarGzip => {
                let gzip = self.layer.kind == LayerKind::TarGzip;
                for made in [INDEX_FILE, TAR_FILE, ZINFO_FILE] {
                    staging.made(made);
                }
                let options = ConvertOptions {
                    mode: Mode::Index,
                    aufs: true,
                    append_tar: false,
                    tar_out: gzip.then(|| pinned.join(TAR_FILE)),
                    gzinfo: gzip.then(|| pinned.join(ZINFO_FILE)),
                    progress: false,
                    implied_mtime: None,
                    skip_digests: false,
                    verified_input: None,
                };
                let report = convert_at(&blob, &staging.dir, INDEX_FILE.as_ref(), &options)
                    .map_err(|e| what(format!("converting: {e}")))?;
                let (got, _) = report
                    .digests()
                    .ok_or_else(|| what("converting: no digests were computed".into()))?;
                if got != digest {
                    return Err(what(format!("{}: its digest is {got}", blob.display())));
                }
                let tar = if gzip { pinned.join(TAR_FILE) } else { blob };
                let tree = self.tree(&tar, report.tar_size, false)?;
                let zinfo = gzip
                    .then(|| read_bounded(&pinned.join(ZINFO_FILE), MAX_ZINFO))
                    .transpose()?;
                Ok(Computed {
                    data_size: report.tar_size,
                    tar_index: Some(read_bounded(&pinned.join(INDEX_FILE), MAX_TAR_INDEX)?),
                    zinfo,
                    tree,
                })
            }
            LayerKind::TarZstd => Err(what("zstd layers have no random access".into())),
            LayerKind::NydusBootstrap | LayerKind::NydusBlob => {
                Err(what("Nydus layers need no layer index".into()))
            }
        }
    }

    /// The tree over the `size` bytes of `path`; with `check_digest`,
    /// they must be the layer's (an EROFS blob taken from the store).
    fn tree(&self, path: &Path, size: u64, check_digest: bool) -> Result<StreamTree> {
        // Built in memory (about 1/64 of the data): no larger than the
        // trees mounts accept.
        let tree_size = crate::registry::referrers::tree_size(size);
        if tree_size > crate::lazy::MAX_TREE {
            return Err(Error::Invalid(format!(
                "{}: {size} bytes of data need a tree of {tree_size} bytes, over the {} mounts accept",
                path.display(),
                crate::lazy::MAX_TREE
            )));
        }
        self.progress.step(self.index, "hashing");
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut reader = Hashing {
            inner: BufReader::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
        };
        let params = containerd_params(size, uuid_of(&self.layer.digest));
        let tree = tree_of_stream(&mut reader, size, &params)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let got = format!("sha256:{}", crate::verity::hex(&reader.hasher.finalize()));
        if check_digest && got != self.layer.digest {
            return Err(Error::Invalid(format!(
                "{}: layer {} has digest {got}",
                path.display(),
                self.layer.digest
            )));
        }
        Ok(tree)
    }
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The tree's UUID: the first 16 bytes of the layer digest (the same
/// layer gives the same tree, byte for byte).
fn uuid_of(digest: &str) -> [u8; 16] {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let bytes = crate::verity::from_hex(hex.get(..32).unwrap_or("")).unwrap_or_default();
    let mut uuid = [0u8; 16];
    if bytes.len() == 16 {
        uuid.copy_from_slice(&bytes);
    }
    uuid
}

/// The file at `path`, refused past `max` bytes.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(Error::Invalid(format!(
            "{}: larger than {max} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tree size the artifact parser expects is the one made.
    #[test]
    fn parser_tree_size_is_the_tree_made() {
        for size in [0, 1, 4096, 4097, 128 * 4096, 129 * 4096 + 1, 1 << 30] {
            let made = containerd_params(size, [0; 16]).hash_area_size();
            assert_eq!(crate::registry::referrers::tree_size(size), made, "{size}");
        }
    }

    #[test]
    fn uuids_come_from_the_digest() {
        let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
        assert_eq!(uuid_of(&digest)[..4], [0x01, 0x23, 0x45, 0x67]);
        assert_eq!(uuid_of("sha256:zz"), [0; 16]);
    }
}
