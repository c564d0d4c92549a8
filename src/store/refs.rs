//! The store view's table of image references: names kept for the logs,
//! inode numbers hashed from them.

use std::hash::BuildHasher;

use super::{Ino, StoreView, REF_INO_BIT};

impl StoreView {
    /// The inode of reference `name`'s directory if it looks like one:
    /// base64 (as containers/storage encodes references) of printable
    /// ASCII. It costs no inode and takes no slot in the reference table.
    pub(super) fn reference(&self, name: &[u8]) -> Option<Ino> {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(name)
            .ok()?;
        if decoded.is_empty() || !decoded.iter().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let r = REF_INO_BIT | (self.ref_hasher.hash_one(name) & (REF_INO_BIT - 1));
        let mut state = self.write_state();
        if state.refs.get(&r).is_none() {
            state.candidates.put(r, name.to_vec());
        }
        Some(r)
    }

    /// Records that a layer the store holds was looked up under reference
    /// `r`: it takes (or refreshes) a slot in the reference table.
    pub(super) fn used(&self, r: Ino) {
        let mut state = self.write_state();
        if state.refs.get(&r).is_none() {
            let name = state.candidates.pop(&r).unwrap_or_default();
            state.refs.put(r, name);
        }
    }

    /// The name of reference `r`, for the logs.
    pub(super) fn ref_name(&self, r: Ino) -> String {
        match self.write_state().refs.get(&r) {
            Some(name) if !name.is_empty() => String::from_utf8_lossy(name).into_owned(),
            _ => format!("reference (inode {r:#x})"),
        }
    }
}
