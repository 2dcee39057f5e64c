//! SCRAM-SHA-256 password verifiers (RFC 5802, RFC 7677), in the form
//! PostgreSQL stores: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
//!
//! `ALTER ROLE ... PASSWORD '<verifier>'` stores such a string as it is, so
//! the plaintext never travels in a statement, where `log_statement`,
//! `pg_stat_statements` and error reports could keep it. The server can
//! still check a login against it, and nobody can log in with it.
//!
//! The 4096 PBKDF2 rounds are the host's (`tumbler_sdk::crypto`): computed
//! here in WebAssembly they took 10-15 ms, most of a rotation's own CPU.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tumbler_sdk::StepError;

/// PostgreSQL's own choices (`scram_iterations` default, salt length).
const ITERATIONS: u32 = 4096;
const SALT_BYTES: usize = 16;

/// The verifier of `password` with a fresh random salt.
pub fn verifier(password: &str) -> Result<String, StepError> {
    // PostgreSQL runs SASLprep on the password before hashing, which leaves
    // ASCII untouched; past ASCII the result would depend on Unicode
    // normalisation done here exactly as the server does it. Generated
    // passwords are ASCII, so anything else is refused, not guessed at.
    if !password.is_ascii() {
        return Err(StepError::fatal(
            "the new password holds non-ASCII characters; PostgreSQL would normalise them \
             (SASLprep) before hashing, so no verifier is computed for it",
        ));
    }
    let salt = fresh_salt()?;
    let salted = tumbler_sdk::crypto::pbkdf2_sha256(password.as_bytes(), &salt, ITERATIONS)?;
    verifier_from_salted(&salt, &salted)
}

fn fresh_salt() -> Result<[u8; SALT_BYTES], StepError> {
    let mut salt = [0u8; SALT_BYTES];
    getrandom::fill(&mut salt).map_err(|e| StepError::retryable(format!("no randomness for the salt: {e}")))?;
    Ok(salt)
}

/// The verifier given the salt and the salted password (PBKDF2 of the
/// password over the salt, `ITERATIONS` rounds).
fn verifier_from_salted(salt: &[u8], salted: &[u8; 32]) -> Result<String, StepError> {
    let client_key = hmac_sha256(salted, b"Client Key")?;
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac_sha256(salted, b"Server Key")?;
    Ok(format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    ))
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Result<[u8; 32], StepError> {
    // HMAC takes keys of any length; the error exists only in the type.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| StepError::fatal("HMAC-SHA-256 refused its key"))?;
    mac.update(message);
    Ok(mac.finalize().into_bytes().into())
}

/// [`verifier`] with PBKDF2 computed here rather than by the host, for
/// tests on the native target (where there is no host).
#[cfg(test)]
pub(crate) fn verifier_without_host(password: &str, salt: &[u8]) -> String {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, ITERATIONS, &mut salted);
    verifier_from_salted(salt, &salted).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_verifier_computed_independently() {
        // Python: hashlib.pbkdf2_hmac / hmac / sha256 over the same inputs.
        let salt: Vec<u8> = (0..16).collect();
        let verifier = verifier_without_host("p\"s w'rd", &salt);
        assert_eq!(
            verifier,
            "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$dmvhKKO0w48tHXzrAkDCZ/ozwLTN9E1Ji9GWLXgQIQw=:I+33WSQJ9YkmhNYS5R2RB8bTTv2x6jz0nA9vMjq/Dds="
        );
    }

    #[test]
    fn each_verifier_has_its_own_salt_and_never_the_password() {
        // `verifier` itself needs the host's PBKDF2; its parts run here.
        assert_ne!(fresh_salt().unwrap(), fresh_salt().unwrap());
        let salted = [7u8; 32];
        let a = verifier_from_salted(b"s3cret pw salt16", &salted).unwrap();
        assert!(a.starts_with("SCRAM-SHA-256$4096:") && !a.contains("s3cret"));
        // Refused before any host call or randomness is asked for.
        assert!(!verifier("pässword").unwrap_err().is_retryable());
    }
}
