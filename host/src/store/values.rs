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
    map: HashMap<String, Cached>,
    bytes: usize,
}

struct Cached {
    sealed: Arc<Sealed>,
    generation: u64,
}

/// One key per secret and selector: the name cannot hold a NUL.
fn key(name: &SecretName, sel: &Selector) -> String {
    match sel {
        Selector::Label(label) => format!("{name}\0l{}", label.as_str()),
        Selector::Version(id) => format!("{name}\0v{id}"),
    }
}

impl ValueCache {
    /// The sealed version if it was cached under `generation` (the store's
    /// current data generation).
    pub fn get(&self, name: &SecretName, sel: &Selector, generation: u64) -> Option<Arc<Sealed>> {
        let mut entries = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = key(name, sel);
        let cached = entries.map.get(&key)?;
        if cached.generation == generation {
            return Some(cached.sealed.clone());
        }
        if let Some(stale) = entries.map.remove(&key) {
            entries.bytes -= stale.sealed.size();
        }
        None
    }

    /// Remembers `sealed`, looked up after reading `generation`.
    pub fn insert(&self, name: &SecretName, sel: &Selector, generation: u64, sealed: Arc<Sealed>) {
        let mut entries = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let size = sealed.size();
        if entries.map.len() >= CAPACITY || entries.bytes + size > MAX_BYTES {
            entries.map.clear();
            entries.bytes = 0;
        }
        if size > MAX_BYTES {
            return;
        }
        if let Some(old) = entries.map.insert(key(name, sel), Cached { sealed, generation }) {
            entries.bytes -= old.sealed.size();
        }
        entries.bytes += size;
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().map.len()
    }
}
