//! Key derivation done by the host at native speed: PBKDF2 in WebAssembly
//! runs several times slower, and a password verifier (PostgreSQL's
//! SCRAM-SHA-256 takes 4096 rounds) sits on the path of every rotation.
//! Needs no grant. The host bounds each call (1 to 1,000,000 iterations,
//! at most 1024 bytes out) and a step's calls together (16,000,000 rounds),
//! answering [`ErrorKind::Invalid`](crate::ErrorKind) or
//! [`ErrorKind::Limit`](crate::ErrorKind) past them.

use crate::HostError;

/// PBKDF2 (RFC 8018) with HMAC over `hash`: `length` bytes from `password`
/// and `salt` in `iterations` rounds.
pub use crate::bindings::tumbler::rotator::crypto::{Hash, pbkdf2};

/// PBKDF2-HMAC-SHA-256 with a 32-byte output: the salted password of
/// SCRAM-SHA-256 (RFC 7677).
pub fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> Result<[u8; 32], HostError> {
    let key = pbkdf2(Hash::Sha256, password, salt, iterations, 32)?;
    // The host returns exactly `length` bytes; anything else is its bug.
    key.try_into().map_err(|_| HostError {
        kind: crate::ErrorKind::Host,
        message: "the host's PBKDF2 returned the wrong length".into(),
    })
}
