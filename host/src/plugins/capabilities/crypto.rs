//! `crypto`: PBKDF2 at native speed. Pure computation: no grant, no audit
//! record, but bounded per call and per step, and run on the blocking pool
//! so a long derivation never holds up a runtime thread.

use super::host_error;
use crate::plugins::bindings::tumbler::rotator::crypto::{Hash, Host};
use crate::plugins::bindings::tumbler::rotator::types::{ErrorKind, HostError};
use crate::plugins::runtime::PluginState;
use zeroize::Zeroizing;

pub const MAX_ITERATIONS: u32 = 1_000_000;
pub const MAX_LENGTH: u32 = 1024;
pub const MAX_SALT: usize = 1024;
pub const MAX_PASSWORD: usize = 64 * 1024;

impl Host for PluginState {
    async fn pbkdf2(
        &mut self,
        hash: Hash,
        password: Vec<u8>,
        salt: Vec<u8>,
        iterations: u32,
        length: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, HostError>> {
        let password = Zeroizing::new(password);
        let rounds = match check(hash, password.len(), salt.len(), iterations, length) {
            Ok(rounds) => rounds,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = self.budget.take_crypto_rounds(rounds) {
            return Ok(Err(e));
        }
        let job = tokio::task::spawn_blocking(move || derive(hash, &password, &salt, iterations, length as usize));
        // The derived key goes to the plugin as a plain `Vec`: the
        // bindings own it from here, as they own every value they pass.
        Ok(job
            .await
            .map(|key| key.to_vec())
            .map_err(|e| host_error(ErrorKind::Host, format!("key derivation failed: {e}"))))
    }
}

/// Checks the arguments against the limits the WIT states and returns the
/// rounds the call costs (iterations × output blocks).
fn check(hash: Hash, password: usize, salt: usize, iterations: u32, length: u32) -> Result<u64, HostError> {
    let invalid = |m: String| Err(host_error(ErrorKind::Invalid, m));
    if iterations == 0 || iterations > MAX_ITERATIONS {
        return invalid(format!("iterations must be 1 to {MAX_ITERATIONS}, not {iterations}"));
    }
    if length == 0 || length > MAX_LENGTH {
        return invalid(format!("length must be 1 to {MAX_LENGTH} bytes, not {length}"));
    }
    if salt > MAX_SALT {
        return invalid(format!("the salt may be at most {MAX_SALT} bytes, not {salt}"));
    }
    if password > MAX_PASSWORD {
        return invalid(format!("the password may be at most {MAX_PASSWORD} bytes, not {password}"));
    }
    let block = match hash {
        Hash::Sha256 => 32,
        Hash::Sha512 => 64,
    };
    Ok(u64::from(iterations) * u64::from(length.div_ceil(block)))
}

fn derive(hash: Hash, password: &[u8], salt: &[u8], iterations: u32, length: usize) -> Zeroizing<Vec<u8>> {
    let mut key = Zeroizing::new(vec![0u8; length]);
    match hash {
        Hash::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, &mut key),
        Hash::Sha512 => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, &mut key),
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn derives_the_published_vectors() {
        // RFC 7914 section 11, and a SHA-512 vector from Python's hashlib.
        assert_eq!(
            hex(&derive(Hash::Sha256, b"passwd", b"salt", 1, 64)),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc\
             49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"
        );
        assert_eq!(
            hex(&derive(Hash::Sha256, b"Password", b"NaCl", 80000, 64)),
            "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56\
             a1d425a1225833549adb841b51c9b3176a272bdebba1d078478f62b397f33c8d"
        );
        assert_eq!(
            hex(&derive(Hash::Sha512, b"password", b"salt", 4096, 64)),
            "d197b1b33db0143e018b12f3d1d1479e6cdebdcc97c5c0f87f6902e072f457b5\
             143f30602641b3d55cd335988cb36b84376060ecd532e039b742a239434af2d5"
        );
    }

    #[test]
    fn arguments_past_the_limits_are_refused_and_say_which() {
        let refused = |r: Result<u64, HostError>| {
            let e = r.unwrap_err();
            assert!(matches!(e.kind, ErrorKind::Invalid));
            e.message
        };
        assert!(refused(check(Hash::Sha256, 8, 16, 0, 32)).contains("iterations must be 1 to 1000000"));
        assert!(refused(check(Hash::Sha256, 8, 16, MAX_ITERATIONS + 1, 32)).contains("not 1000001"));
        assert!(refused(check(Hash::Sha256, 8, 16, 4096, 0)).contains("length must be 1 to 1024"));
        assert!(refused(check(Hash::Sha256, 8, 16, 4096, 1025)).contains("length"));
        assert!(refused(check(Hash::Sha256, 8, 1025, 4096, 32)).contains("salt"));
        assert!(refused(check(Hash::Sha256, MAX_PASSWORD + 1, 16, 4096, 32)).contains("password"));
        // Rounds are counted per output block of the hash.
        assert_eq!(check(Hash::Sha256, 8, 16, 4096, 32).unwrap(), 4096);
        assert_eq!(check(Hash::Sha256, 8, 16, 4096, 33).unwrap(), 8192);
        assert_eq!(check(Hash::Sha512, 8, 16, 10, 64).unwrap(), 10);
    }

    #[test]
    fn a_step_runs_out_of_rounds_and_stays_out() {
        let mut budget = crate::plugins::capabilities::Budget::default();
        let max = crate::plugins::capabilities::MAX_CRYPTO_ROUNDS_PER_CALL;
        budget.take_crypto_rounds(max - 4096).unwrap();
        budget.take_crypto_rounds(4096).unwrap();
        let e = budget.take_crypto_rounds(1).unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Limit));
        assert!(e.message.contains("at most 16000000 rounds"), "{}", e.message);
    }
}
