//! The artifact manifest written and read back, and what parsing refuses.

use super::*;

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

fn parts() -> ArtifactParts {
    ArtifactParts {
        subject: Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: digest('5'),
            size: 500,
        },
        layer: digest('1'),
        data_size: 10240,
        tar_index: Some(BlobRef {
            digest: digest('2'),
            size: 4096,
        }),
        zinfo: Some(BlobRef {
            digest: digest('3'),
            size: 100,
        }),
        tree: BlobRef {
            digest: digest('4'),
            size: tree_size(10240),
        },
        root: [0xab; 32],
        zinfo_table: Some(vec![1, 2, 0xfe]),
        index_tree: Some((
            BlobRef {
                digest: digest('6'),
                size: tree_size(4096),
            },
            [0xcd; 32],
        )),
    }
}

/// `bytes` as JSON, changed by `edit`, as bytes again.
fn edited(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn artifact_manifest_round_trips() {
    let parts = parts();
    let bytes = artifact_manifest(&parts);
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["artifactType"], LAYER_INDEX_ARTIFACT_TYPE);
    assert_eq!(v["mediaType"], OCI_MANIFEST);
    assert_eq!(v["config"]["digest"], EMPTY_DIGEST);
    assert_eq!(v["config"]["mediaType"], EMPTY_MEDIA_TYPE);
    assert_eq!(v["subject"]["digest"], digest('5'));
    let types: Vec<&str> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            TAR_INDEX_MEDIA_TYPE,
            ZINFO_MEDIA_TYPE,
            VERITY_TREE_MEDIA_TYPE,
            TAR_INDEX_TREE_MEDIA_TYPE
        ]
    );
    assert_eq!(v["annotations"][ROOT_ANNOTATION], "ab".repeat(32));
    assert_eq!(v["annotations"][DATA_SIZE_ANNOTATION], "10240");
    let index = LayerIndex::parse("sha256:art", &digest('5'), &bytes).unwrap();
    assert_eq!(
        index,
        LayerIndex {
            artifact: "sha256:art".into(),
            layer: parts.layer.clone(),
            data_size: 10240,
            tar_index: parts.tar_index.clone(),
            zinfo: parts.zinfo.clone(),
            tree: parts.tree.clone(),
            root: [0xab; 32],
            zinfo_table: Some(vec![1, 2, 0xfe]),
            index_tree: parts.index_tree.clone(),
        }
    );
    assert_eq!(v["annotations"][INDEX_ROOT_ANNOTATION], "cd".repeat(32));
    assert_eq!(v["annotations"][ZINFO_TABLE_ANNOTATION], "0102fe");
    let typed: ArtifactManifest = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(serde_json::to_vec(&typed).unwrap(), bytes);
    assert_eq!(
        crate::registry::oci_layout::sha256_digest(EMPTY_CONFIG),
        EMPTY_DIGEST
    );
}

#[test]
fn parsing_refuses_what_is_not_a_layer_index() {
    let good = artifact_manifest(&parts());
    let subject = digest('5');
    let refused = |bytes: Vec<u8>, why: &str| {
        let err = LayerIndex::parse("sha256:x", &subject, &bytes).unwrap_err();
        assert!(err.contains(why), "{err} (wanted {why})");
        assert!(!err.contains('\n'), "{err}");
    };
    refused(
        edited(&good, |v| v["artifactType"] = "application/other".into()),
        "not ours",
    );
    refused(
        edited(&good, |v| {
            v["annotations"]
                .as_object_mut()
                .unwrap()
                .remove(INDEX_ROOT_ANNOTATION);
        }),
        "go together",
    );
    refused(
        edited(&good, |v| v["layers"][3]["size"] = 8192.into()),
        "another size than the index takes",
    );
    for table in ["0g", "012", "ABCD"] {
        refused(
            edited(&good, |v| {
                v["annotations"][ZINFO_TABLE_ANNOTATION] = table.into()
            }),
            ZINFO_TABLE_ANNOTATION,
        );
    }
    refused(
        edited(&good, |v| {
            v["annotations"][ZINFO_TABLE_ANNOTATION] = "ab".repeat(MAX_ZINFO_TABLE + 1).into()
        }),
        ZINFO_TABLE_ANNOTATION,
    );
    refused(
        edited(&good, |v| {
            v["layers"].as_array_mut().unwrap().remove(2);
        }),
        "no verity tree",
    );
    refused(
        edited(&good, |v| {
            v["layers"][0]["size"] = ((1u64 << 30) + 1).into()
        }),
        "at most",
    );
    refused(
        edited(&good, |v| {
            v["layers"][1]["size"] = ((256u64 << 20) + 1).into()
        }),
        "at most",
    );
    refused(
        edited(&good, |v| v["layers"][2]["size"] = (1u64 << 21).into()),
        "at most",
    );
    refused(
        edited(&good, |v| v["layers"][2]["size"] = 4096.into()),
        "a tree of 4096 bytes",
    );
    refused(
        edited(&good, |v| {
            v["annotations"][DATA_SIZE_ANNOTATION] = "1e9".into()
        }),
        "not a number",
    );
    refused(
        edited(&good, |v| {
            v["annotations"][DATA_SIZE_ANNOTATION] = (1u64 << 49).to_string().into()
        }),
        "not a number",
    );
    for root in [
        "AB".repeat(32),
        "ab".repeat(31),
        "zz".repeat(32),
        format!("+{}", "a".repeat(63)),
    ] {
        refused(
            edited(&good, |v| v["annotations"][ROOT_ANNOTATION] = root.into()),
            "root hash",
        );
    }
    refused(
        edited(&good, |v| {
            v["annotations"][LAYER_ANNOTATION] = "sha512:abcd".into()
        }),
        "not a sha256 digest",
    );
    refused(
        edited(&good, |v| {
            v["annotations"][LAYER_ANNOTATION] = "sha256:../../x".into()
        }),
        "not a sha256 digest",
    );
    refused(
        edited(&good, |v| {
            v["annotations"]
                .as_object_mut()
                .unwrap()
                .remove(ROOT_ANNOTATION);
        }),
        "no org.erofs-fuse.verity.root",
    );
    refused(
        edited(&good, |v| v["subject"]["digest"] = digest('6').into()),
        "its subject",
    );
    refused(
        edited(&good, |v| {
            let zinfo = v["layers"][1].clone();
            v["layers"].as_array_mut().unwrap().push(zinfo);
        }),
        "two",
    );
    refused(
        edited(&good, |v| v["layers"][0]["mediaType"] = "x/y".into()),
        "unknown blob",
    );
    refused(
        edited(&good, |v| v["layers"][0]["digest"] = "md5:1".into()),
        "not a sha256",
    );
    refused(
        edited(&good, |v| {
            v["layers"].as_array_mut().unwrap().remove(0);
        }),
        "zinfo without a tar index",
    );
    refused(b"[1,2]".to_vec(), "not an artifact manifest");
    refused(edited(&good, |v| v["schemaVersion"] = 1.into()), "schema 2");
}

#[test]
fn tree_sizes_count_the_superblock_and_every_level() {
    assert_eq!(tree_size(0), 4096);
    assert_eq!(tree_size(4096), 4096);
    assert_eq!(tree_size(4097), 2 * 4096);
    assert_eq!(tree_size(128 * 4096), 2 * 4096);
    assert_eq!(tree_size(129 * 4096), 4 * 4096);
    assert_eq!(
        tree_size(MAX_DATA_SIZE) / 4096,
        1 + (1 << 29) + (1 << 22) + (1 << 15) + 256 + 2 + 1
    );
}

/// An in-memory source: manifests by digest, one referrers listing.
struct Fake {
    manifests: Vec<(String, Vec<u8>)>,
    listing: Vec<Referrer>,
}

impl ImageSource for Fake {
    fn name(&self) -> String {
        "fake".into()
    }

    fn manifest(&self, reference: &str) -> Result<crate::registry::FetchedManifest> {
        let (digest, bytes) = self
            .manifests
            .iter()
            .find(|(d, _)| d == reference)
            .ok_or_else(|| crate::Error::Registry(format!("{reference}: manifest unknown")))?;
        Ok(crate::registry::FetchedManifest {
            bytes: bytes.clone(),
            media_type: OCI_MANIFEST.into(),
            digest: digest.clone(),
        })
    }

    fn blob(&self, _: &str, _: u64, _: &mut dyn std::io::Write, _: &dyn Fn(u64)) -> Result<()> {
        unreachable!("not read")
    }

    fn blob_range(&self, _: &str, _: u64, _: &mut [u8]) -> Result<()> {
        unreachable!("not read")
    }

    fn referrers(&self, _: &str, _: Option<&str>) -> Result<Vec<Referrer>> {
        Ok(self.listing.clone())
    }
}

/// `bytes` as a listed referrer of our type (or `artifact_type`).
fn listed(bytes: &[u8], artifact_type: &str) -> (String, Referrer) {
    let digest = crate::registry::oci_layout::sha256_digest(bytes);
    let d = Referrer {
        media_type: OCI_MANIFEST.into(),
        digest: digest.clone(),
        size: bytes.len() as u64,
        artifact_type: Some(artifact_type.into()),
        annotations: Default::default(),
    };
    (digest, d)
}

#[test]
fn find_skips_other_types_malformed_ones_and_later_ones_per_layer() {
    let subject = digest('5');
    let good = artifact_manifest(&parts());
    let mut other_layer = parts();
    other_layer.layer = digest('7');
    let other_layer = artifact_manifest(&other_layer);
    let mut later = parts();
    later.root = [1; 32];
    let later = artifact_manifest(&later);
    let malformed = edited(&good, |v| v["annotations"][ROOT_ANNOTATION] = "xyz".into());
    let wrong_subject = edited(&good, |v| v["subject"]["digest"] = digest('6').into());
    let mut source = Fake {
        manifests: Vec::new(),
        listing: Vec::new(),
    };
    for (bytes, kind) in [
        (&malformed, LAYER_INDEX_ARTIFACT_TYPE),
        (&wrong_subject, LAYER_INDEX_ARTIFACT_TYPE),
        (&good, "application/vnd.example.sbom"),
        (&good, LAYER_INDEX_ARTIFACT_TYPE),
        (&later, LAYER_INDEX_ARTIFACT_TYPE),
        (&other_layer, LAYER_INDEX_ARTIFACT_TYPE),
    ] {
        let (digest, d) = listed(bytes, kind);
        source.manifests.push((digest, bytes.clone()));
        source.listing.push(d);
    }
    // A listed referrer the source cannot serve is skipped too.
    source
        .listing
        .push(listed(b"{}", LAYER_INDEX_ARTIFACT_TYPE).1);
    let found = find_layer_indexes(&source, &subject).unwrap();
    let got: Vec<(&str, [u8; 32])> = found.iter().map(|i| (i.layer.as_str(), i.root)).collect();
    assert_eq!(
        got,
        [
            (digest('1').as_str(), [0xab; 32]),
            (digest('7').as_str(), [0xab; 32])
        ]
    );
    assert_eq!(
        found[0].artifact,
        crate::registry::oci_layout::sha256_digest(&good)
    );
}
