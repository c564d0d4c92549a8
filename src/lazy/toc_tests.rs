//! Tests of the extent map and [`TocSource`] against hostile TOCs.

use super::*;
use serde_json::json;

const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn toc(format: Format, entries: serde_json::Value, data_end: u64) -> Toc {
    Toc {
        format,
        digest: D.into(),
        entries: serde_json::from_value(entries).unwrap(),
        data_end,
    }
}

fn reg(name: &str, size: u64, offset: u64, end: u64) -> serde_json::Value {
    json!({"type": "reg", "name": name, "size": size, "digest": D,
           "chunkDigest": D, "offset": offset, "endOffset": end})
}

fn refused(t: &Toc, expect: &str) {
    let err = TocMap::new(t)
        .expect_err("a hostile TOC was mapped")
        .to_string();
    assert!(err.contains(expect), "{err:?} does not say {expect:?}");
    assert!(!err.contains('\n'));
}

#[test]
fn files_get_aligned_slots_and_extents() {
    let t = toc(
        Format::ZstdChunked,
        json!([reg("a", 10, 0, 20), reg("b", 5000, 20, 60),
               {"type": "chunk", "name": "b", "offset": 40, "chunkOffset": 4000,
                "chunkDigest": D}]),
        100,
    );
    let map = TocMap::new(&t).unwrap();
    assert_eq!(map.align, MIN_ALIGN);
    assert_eq!(map.files, vec![(0, 0), (1, 4096)]);
    assert_eq!(map.size, 4096 * 3);
    let spans: Vec<_> = map
        .extents
        .iter()
        .map(|x| (x.start, x.len, x.blob_offset, x.blob_end))
        .collect();
    assert_eq!(
        spans,
        vec![(0, 10, 0, 20), (4096, 4000, 20, 40), (8096, 1000, 40, 60)]
    );
    assert_eq!(map.overlapping(4095, 2), 1..2);
    assert_eq!(map.overlapping(4200, 8000), 1..3);
    assert_eq!(map.overlapping(20, 4000), 1..1);
}

#[test]
fn hostile_tocs_are_refused_not_mapped() {
    let chunk = |off: u64, at: u64| json!({"type": "chunk", "name": "b", "offset": off, "chunkOffset": at, "chunkDigest": D});
    // Overlapping chunks, a gap, chunks out of order in the blob.
    for (chunks, what) in [
        (vec![chunk(30, 100), chunk(40, 50)], "the next starts at 50"),
        (
            vec![chunk(10, 1000)],
            "outside the blob's data or out of order",
        ),
    ] {
        let mut entries = vec![reg("b", 5000, 20, 60)];
        entries.extend(chunks);
        refused(&toc(Format::ZstdChunked, json!(entries), 100), what);
    }
    // Data past the blob's data; a chunk larger than the file says.
    refused(
        &toc(Format::ZstdChunked, json!([reg("a", 10, 0, 200)]), 100),
        "outside",
    );
    let sized = json!([{"type": "reg", "name": "a", "size": 10, "digest": D,
        "offset": 0, "endOffset": 20, "chunkSize": 11}]);
    refused(&toc(Format::ZstdChunked, sized, 100), "chunk of 11 bytes");
    // Sizes that overflow or exceed the device, decoding past the bound.
    let huge = json!([reg("a", u64::MAX, 0, 20)]);
    refused(
        &toc(Format::ZstdChunked, huge, 100),
        "too large or too many",
    );
    let many: Vec<_> = (0..64)
        .map(|i| {
            json!({"type": "reg", "name": format!("f{i}"), "size": 1u64 << 40, "digest": D,
                   "offset": 0, "endOffset": 20})
        })
        .collect();
    refused(&toc(Format::ZstdChunked, json!(many), 100), "to decode");
    let inner = json!([{"type": "reg", "name": "a", "size": 10, "digest": D,
        "offset": 0, "innerOffset": MAX_DECODED}]);
    refused(&toc(Format::Estargz, inner, 100), "to decode");
    // A chunk of a multi-chunk file without its own digest.
    let bare = json!([{"type": "reg", "name": "b", "size": 5000, "digest": D,
           "offset": 20, "endOffset": 60},
        {"type": "chunk", "name": "b", "offset": 40, "chunkOffset": 4000}]);
    refused(&toc(Format::ZstdChunked, bare, 100), "without a digest");
}

#[test]
fn many_files_widen_the_slots_instead_of_the_chunk_count() {
    // 2^23 slots of 4 KiB would be needed: the alignment doubles.
    let files: Vec<_> = (0..1024)
        .map(|i| {
            json!({"type": "reg", "name": format!("f{i}"), "size": 40u64 << 20,
                         "digest": D, "offset": i, "endOffset": i + 1,
                         "chunkSize": 40u64 << 20})
        })
        .collect();
    let map = TocMap::new(&toc(Format::ZstdChunked, json!(files), 2000)).unwrap();
    assert!(map.align > MIN_ALIGN && map.size / map.align <= MAX_CHUNKS / 2);
}

/// A source of fixed bytes.
struct Bytes(Vec<u8>);
impl ChunkSource for Bytes {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        buf.copy_from_slice(&self.0[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn name(&self) -> String {
        "bytes".into()
    }
}

#[test]
fn frames_decode_to_exactly_their_chunk_or_fail() {
    let hex = |b: &[u8]| format!("sha256:{}", crate::format::hex(&Sha256::digest(b)));
    let data = b"hello, world";
    // A frame that decodes to a megabyte where the TOC says 12 bytes.
    let bomb = zstd::bulk::compress(&vec![b'x'; 1 << 20], 3).unwrap();
    let good = zstd::bulk::compress(data, 3).unwrap();
    let blob = [good.clone(), bomb.clone()].concat();
    let (g, b) = (good.len() as u64, blob.len() as u64);
    let t = toc(
        Format::ZstdChunked,
        json!([{"type": "reg", "name": "good", "size": 12, "digest": hex(data),
                "offset": 0, "endOffset": g},
               {"type": "reg", "name": "bomb", "size": 12, "digest": hex(data),
                "offset": g, "endOffset": b},
               {"type": "reg", "name": "zeros", "size": 12, "digest": hex(&[0; 12]),
                "offset": 0, "endOffset": g, "chunkType": "zeros"}]),
        b,
    );
    let map = Arc::new(TocMap::new(&t).unwrap());
    let source = TocSource::new(Arc::new(Bytes(blob)), map);
    let mut buf = vec![0u8; 12];
    source.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, data);
    let err = source.read_at(4096, &mut buf).unwrap_err().to_string();
    assert!(err.contains("decodes to 13 bytes"), "{err}");
    assert_eq!(buf, [0; 12], "bytes of a failed read were left");
    source.read_at(8192, &mut buf).unwrap();
    assert_eq!(buf, [0; 12]);
    // Twice for the bomb (once, then the retry), once for the good one.
    assert_eq!(source.fetched(), g + 2 * (b - g));
}
