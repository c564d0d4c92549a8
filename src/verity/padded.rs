//! A tree over a stream: the data read once, in order, zero-padded to a
//! whole block, and the hash area (superblock then tree, as
//! `veritysetup format` lays it out) returned in memory. For what a
//! reader reads of a layer, which may exist only as it is decompressed.

use std::io::{self, Read};

use super::{build, level_offset, VerityError, VerityParams, DIGEST_SIZE};

/// containerd's parameters (`verity::append`): 4 KiB data and hash
/// blocks, 32 zero bytes of salt.
pub const CONTAINERD_BLOCK: u32 = 4096;

/// A tree built by [`tree_of_stream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTree {
    /// The parameters (the superblock's).
    pub params: VerityParams,
    /// Superblock (padded to a hash block) then the levels, top first.
    pub hash_area: Vec<u8>,
    /// The root hash.
    pub root: [u8; DIGEST_SIZE],
}

/// The parameters containerd uses for `data_size` bytes: 4 KiB blocks,
/// 32 zero bytes of salt, `ceil(data_size / 4096)` data blocks (at least
/// one: an empty input is one zero block).
pub fn containerd_params(data_size: u64, uuid: [u8; 16]) -> VerityParams {
    let block = u64::from(CONTAINERD_BLOCK);
    VerityParams {
        data_block_size: CONTAINERD_BLOCK,
        hash_block_size: CONTAINERD_BLOCK,
        data_blocks: data_size.div_ceil(block).max(1),
        salt: vec![0; 32],
        uuid,
    }
}

/// Builds the tree over exactly `data_size` bytes of `data`, zero-padded
/// to `params.data_blocks` blocks (which must cover them). A stream that
/// ends early or runs past `data_size` is an error: the tree would not be
/// of what was meant.
pub fn tree_of_stream(
    data: &mut dyn Read,
    data_size: u64,
    params: &VerityParams,
) -> Result<StreamTree, VerityError> {
    params.validate()?;
    let block = u64::from(params.data_block_size);
    if params.data_blocks != data_size.div_ceil(block).max(1) {
        return Err(VerityError::Invalid(format!(
            "{} blocks of {block} bytes do not cover {data_size} bytes exactly",
            params.data_blocks
        )));
    }
    let mut left = data_size;
    let (levels, root) = build(params, |_, buf| {
        let take = left.min(buf.len() as u64) as usize;
        data.read_exact(&mut buf[..take]).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(e.kind(), format!("the data ends before {data_size} bytes"))
            } else {
                e
            }
        })?;
        buf[take..].fill(0);
        left -= take as u64;
        Ok(())
    })?;
    let mut extra = [0u8; 1];
    if data.read(&mut extra)? != 0 {
        return Err(VerityError::Invalid(format!(
            "the data is longer than {data_size} bytes"
        )));
    }
    let hash_block = params.hash_block_size as usize;
    let mut hash_area = vec![0u8; params.hash_area_size() as usize];
    let superblock = params.superblock();
    hash_area[..superblock.len()].copy_from_slice(&superblock);
    for (level, bytes) in params.levels().iter().zip(&levels) {
        let at = hash_block + level_offset(params, level) as usize;
        hash_area[at..at + bytes.len()].copy_from_slice(bytes);
    }
    Ok(StreamTree {
        params: params.clone(),
        hash_area,
        root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream tree equals `format` over the padded file, superblock
    /// included; a short stream or a long one is refused.
    #[test]
    fn stream_tree_is_format_over_the_padded_data() {
        for size in [1u64, 4095, 4096, 4097, 130 * 4096 + 7] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let params = containerd_params(size, [3; 16]);
            let tree = tree_of_stream(&mut &data[..], size, &params).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let padded = dir.path().join("data");
            let mut bytes = data.clone();
            bytes.resize(size.next_multiple_of(4096) as usize, 0);
            std::fs::write(&padded, &bytes).unwrap();
            let file = std::fs::File::open(&padded).unwrap();
            let hash_path = dir.path().join("hash");
            let hash = std::fs::File::create(&hash_path).unwrap();
            let root = super::super::format(&file, &hash, 0, &params).unwrap();
            assert_eq!(tree.root, root, "{size}");
            assert_eq!(tree.hash_area, std::fs::read(&hash_path).unwrap(), "{size}");
        }
        let data = vec![1u8; 5000];
        let params = containerd_params(5000, [0; 16]);
        assert!(tree_of_stream(&mut &data[..4000], 5000, &params).is_err());
        assert!(tree_of_stream(&mut &data[..], 4999, &params).is_err());
        assert!(tree_of_stream(&mut &data[..], 5000, &containerd_params(9000, [0; 16])).is_err());
    }
}
