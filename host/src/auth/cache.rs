//! Authenticated tokens kept in memory, so a request whose token was seen
//! recently skips the token and policy lookups (a trip to the blocking
//! pool and SQLite) and the compilation of its policies' globs.
//!
//! Correctness rests on the store's auth generation
//! ([`Store::auth_generation`](crate::store::Store::auth_generation)): the
//! writer bumps it after committing any change to the `tokens` or
//! `policies` tables (revocation, minting, a policy put or deleted), before
//! the request that made the change returns. An entry remembers the
//! generation read *before* its rows were looked up and is used only while
//! the generation is unchanged, so a revocation or policy change applies to
//! the very next request. Expiry is checked on every hit. The process is
//! the data dir's only writer (it holds the data dir lock), so no change
//! can reach the store without passing through that counter.

use super::Caller;
use crate::model::now_millis;
use std::collections::HashMap;
use std::sync::Mutex;

/// Entries kept at most; when full, the cache starts over (a burst of
/// distinct tokens costs lookups, never memory).
const CAPACITY: usize = 4096;

/// Callers by the SHA-256 of their token (the token itself is never kept).
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], Cached>>,
}

struct Cached {
    caller: Caller,
    generation: u64,
}

impl TokenCache {
    /// The caller for `hash` if it was cached under `generation` (the
    /// store's current one) and its token has not expired.
    pub fn get(&self, hash: &[u8; 32], generation: u64) -> Option<Caller> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let cached = entries.get(hash)?;
        let fresh = cached.generation == generation && cached.caller.expires_at.is_none_or(|e| e > now_millis());
        if fresh {
            return Some(cached.caller.clone());
        }
        entries.remove(hash);
        None
    }

    /// Remembers `caller`, looked up after reading `generation`.
    pub fn insert(&self, hash: [u8; 32], generation: u64, caller: Caller) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CAPACITY && !entries.contains_key(&hash) {
            entries.clear();
        }
        entries.insert(hash, Cached { caller, generation });
    }
}
