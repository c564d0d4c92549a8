//! Background prefetch: once a mount is live, a thread per lazy device
//! fills the chunks it lacks, in order, one request at a time, standing
//! aside while readers are fetching, until the device is complete or the
//! budget is spent.

use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::ChunkCache;

/// How long the prefetch waits while readers are fetching.
const YIELD: Duration = Duration::from_millis(20);
/// Failed requests in a row after which the prefetch gives up (reads go
/// on fetching what they need).
const MAX_FAILURES: u32 = 5;

/// How much of a lazy device to fetch in the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prefetch {
    /// Nothing: only what is read.
    #[default]
    None,
    /// The whole device.
    All,
    /// Up to this many bytes of the device (counted from its start).
    Bytes(u64),
}

impl FromStr for Prefetch {
    type Err = String;

    /// `all`, `none`, or a number of MiB.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "all" => Ok(Self::All),
            "none" | "0" => Ok(Self::None),
            _ => text
                .parse::<u64>()
                .ok()
                .and_then(|mib| mib.checked_mul(1 << 20))
                .map(Self::Bytes)
                .ok_or_else(|| format!("{text:?}: expected all, none or a number of MiB")),
        }
    }
}

impl Prefetch {
    /// The byte budget, or `None` for no prefetch.
    fn budget(self) -> Option<u64> {
        match self {
            Self::None | Self::Bytes(0) => None,
            Self::All => Some(u64::MAX),
            Self::Bytes(n) => Some(n),
        }
    }
}

/// Starts the prefetch thread of `cache` (a no-op for [`Prefetch::None`]);
/// it ends when the cache is dropped.
pub(super) fn start(cache: &Arc<ChunkCache>, prefetch: Prefetch) {
    let Some(budget) = prefetch.budget() else {
        return;
    };
    let weak = Arc::downgrade(cache);
    let spawned = std::thread::Builder::new()
        .name("erofs-prefetch".into())
        .spawn(move || run(&weak, budget));
    if let Err(e) = spawned {
        tracing::warn!("{}: no prefetch thread: {e}", cache.path().display());
    }
}

/// The prefetch loop: each step holds the cache only while it fetches.
fn run(weak: &Weak<ChunkCache>, budget: u64) {
    let (mut cursor, mut spent, mut failures) = (0, 0u64, 0);
    while spent < budget {
        let Some(cache) = weak.upgrade() else {
            return;
        };
        if cache.readers_fetching() {
            drop(cache);
            std::thread::sleep(YIELD);
            continue;
        }
        let Some(chunk) = cache.next_missing(cursor) else {
            tracing::info!("{}: prefetch complete", cache.path().display());
            return;
        };
        let offset = chunk * cache.chunk_size();
        let len = cache
            .max_request()
            .min(cache.len() - offset)
            .min(budget - spent);
        match cache.ensure(offset, len) {
            Ok(()) => {
                spent += len;
                cursor = (offset + len).div_ceil(cache.chunk_size());
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!("{}: prefetch: {e}", cache.path().display());
                if failures >= MAX_FAILURES {
                    return;
                }
                drop(cache);
                std::thread::sleep(Duration::from_secs(1 << failures));
            }
        }
    }
}
