//! Each decoder on arbitrary input with an arbitrary declared output size
//! and arbitrary algorithm configs, as a pcluster of a hostile image.
//!
//! Input: byte 0 picks the algorithm (low 3 bits: 4 to 7 are unknown ones),
//! zero padding (bit 3), partial decoding (bit 4) and whether a config
//! record follows (bit 5);
//! bytes 1..4 the output size (24 bits: past the 12 MiB the reader would
//! ever ask for, so oversized requests are covered); with a config, byte
//! 4 is its length and that many bytes follow; the rest is the pcluster.
use erofs_fuse::reader::Codecs;

/// Runs one input; panics on a finding.
pub fn run(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let flags = data[0];
    let alg = flags & 7;
    let out_len = u32::from_le_bytes([data[1], data[2], data[3], 0]) as usize;
    let mut rest = &data[4..];
    let mut configs = Vec::new();
    if flags & 0x20 != 0 {
        let Some((&len, tail)) = rest.split_first() else {
            return;
        };
        let len = usize::from(len).min(tail.len());
        configs.push((alg, &tail[..len]));
        rest = &tail[len..];
    }
    let Ok(codecs) = Codecs::with_configs(flags & 8 != 0, &configs) else {
        return;
    };
    let mut out = vec![0u8; out_len];
    let partial = flags & 0x10 != 0;
    if codecs.decode(alg, rest, &mut out, partial).is_ok() && !partial {
        // A full decode that succeeded must be repeatable: same bytes.
        let mut again = vec![0u8; out_len];
        codecs
            .decode(alg, rest, &mut again, false)
            .expect("a pcluster decoded once fails the second time");
        assert!(out == again, "decoding the same pcluster twice differs");
    }
}
