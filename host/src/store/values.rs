//! Secret versions as stored (sealed value, wrapped data key, labels) kept
//! in memory, so a read of a recently read version skips SQLite. Every
//! audit record the server writes is a commit to the same database, and
//! SQLite drops a reader's whole page cache when it sees the WAL changed:
//! under audited reads, each read transaction began with a cold cache and
//! its few index lookups cost a quarter of the server's time.
//!
//! Nothing secret is kept: an entry holds what the database file holds
//! (ciphertext, the data key wrapped by the master key), and each read
//! still unwraps and decrypts. Plaintext values are never cached.
//!
//! Correctness rests on the store's data generation, as the token cache's
//! does on the auth generation: the writer moves it after every commit that
//! touched [`DATA_TABLES`](super::DATA_TABLES), before the write that made
//! the change returns; an entry remembers the generation read *before* its
//! rows were looked up and is used only while it is unchanged. So a new
//! version, a label move or a deletion applies to the very next read.

use super::secrets::{Sealed, Selector};
use crate::model::SecretName;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Entries kept at most; when full, the cache starts over.
const CAPACITY: usize = 4096;
/// Bytes kept at most (values are up to 64 KiB); when over, it starts over.
const MAX_BYTES: usize = 16 << 20;

#[derive(Default)]
pub struct ValueCache {
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    /// By secret name, then selector: a lookup borrows the name instead of
    /// building a key string for every read.
    map: HashMap<String, Vec<Cached>>,
    count: usize,
    bytes: usize,
}

struct Cached {
    selector: Selector,
    sealed: Arc<Sealed>,
    generation: u64,
}

impl ValueCache {
    /// The sealed version if it was cached under `generation` (the store's
    /// current data generation).
    pub fn get(&self, name: &SecretName, sel: &Selector, generation: u64) -> Option<Arc<Sealed>> {
        let mut entries = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let cached = entries.map.get_mut(name.as_str())?;
        let at = cached.iter().position(|c| c.selector == *sel)?;
        if cached[at].generation == generation {
            return Some(cached[at].sealed.clone());
        }
        let stale = cached.swap_remove(at);
        if cached.is_empty() {
            entries.map.remove(name.as_str());
        }
        entries.count -= 1;
        entries.bytes -= stale.sealed.size();
        None
    }

    /// Remembers `sealed`, looked up after reading `generation`.
    pub fn insert(&self, name: &SecretName, sel: &Selector, generation: u64, sealed: Arc<Sealed>) {
        let mut entries = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let size = sealed.size();
        if entries.count >= CAPACITY || entries.bytes + size > MAX_BYTES {
            *entries = Entries::default();
        }
        if size > MAX_BYTES {
            return;
        }
        let Entries { map, count, bytes } = &mut *entries;
        let cached = map.entry(name.as_str().to_owned()).or_default();
        let fresh = Cached { selector: sel.clone(), sealed, generation };
        match cached.iter_mut().find(|c| c.selector == *sel) {
            Some(old) => {
                *bytes -= old.sealed.size();
                *old = fresh;
            }
            None => {
                cached.push(fresh);
                *count += 1;
            }
        }
        *bytes += size;
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().count
    }
}
