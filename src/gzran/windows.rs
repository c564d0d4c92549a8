//! Windows of a zinfo fetched on demand: a remote zinfo is mostly windows
//! (32 KiB per checkpoint), of which a lazy reader needs only those of the
//! spans it reads.

use std::sync::{Arc, OnceLock};

use super::zinfo::WINDOW;

/// Where a lazy zinfo's windows come from.
pub trait WindowSource: Send + Sync {
    /// Fills `window` ([`WINDOW`] bytes) with checkpoint `index`'s window,
    /// or says why it cannot.
    fn read_window(&self, index: usize, window: &mut [u8]) -> Result<(), String>;
}

/// The windows of a zinfo, each fetched on first use and kept.
#[derive(Clone)]
pub struct LazyWindows {
    source: Arc<dyn WindowSource>,
    loaded: Vec<OnceLock<Box<[u8]>>>,
}

impl LazyWindows {
    /// `count` windows from `source`, none fetched yet.
    pub fn new(source: Arc<dyn WindowSource>, count: usize) -> Self {
        Self {
            source,
            loaded: (0..count).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Window `index`, fetched now if it is not yet.
    pub fn get(&self, index: usize) -> Result<&[u8], String> {
        let slot = self
            .loaded
            .get(index)
            .ok_or_else(|| format!("no checkpoint {index}"))?;
        if slot.get().is_none() {
            let mut window = vec![0; WINDOW];
            self.source.read_window(index, &mut window)?;
            // Two readers may both fetch it; either copy is the same.
            let _ = slot.set(window.into_boxed_slice());
        }
        slot.get()
            .map(|w| &w[..])
            .ok_or_else(|| format!("checkpoint {index}: window missing"))
    }

    /// Window `index`, if it was fetched.
    pub fn loaded(&self, index: usize) -> Option<&[u8]> {
        self.loaded.get(index)?.get().map(|w| &w[..])
    }
}

impl std::fmt::Debug for LazyWindows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fetched = self.loaded.iter().filter(|w| w.get().is_some()).count();
        write!(f, "LazyWindows({fetched} of {} fetched)", self.loaded.len())
    }
}

/// Two lazy zinfos are equal when they read the same source.
impl PartialEq for LazyWindows {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.source, &other.source)
    }
}

impl Eq for LazyWindows {}
