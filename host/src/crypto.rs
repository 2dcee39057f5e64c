//! Envelope encryption: one data key (DEK) per secret, wrapped by the master
//! key (KEK); values sealed under the DEK with AAD that binds them to their
//! row, and every other key derived from the master key with HKDF.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;

/// Why a decryption failed. Never carries key or plaintext bytes.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("integrity check failed: the ciphertext does not belong to this row or was altered")]
    Integrity,
    #[error("malformed ciphertext ({0})")]
    Malformed(&'static str),
    #[error("the master key must be 32 bytes, standard base64 encoded ({0})")]
    BadMasterKey(&'static str),
}

/// The key-encryption key. Its id is derived from the key itself, so a data
/// dir can tell a wrong key from the right one without storing anything
/// secret.
pub struct MasterKey {
    key: Zeroizing<[u8; 32]>,
    /// The key expanded once for AES-GCM, as every read unwraps a data key
    /// with it (`aes` and `polyval`, built with `zeroize`, wipe it when dropped).
    cipher: Aes256Gcm,
    id: String,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({}, [redacted])", self.id)
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        Self::from_bytes(key)
    }

    pub fn from_bytes(key: Zeroizing<[u8; 32]>) -> Self {
        let id = hex::encode(&derive(&key, "tumbler/v1/key-id")[..8]);
        let cipher = Aes256Gcm::new_from_slice(key.as_ref()).expect("32-byte key");
        MasterKey { key, cipher, id }
    }

    /// Parses the text form (what the key file and `TUMBLER_MASTER_KEY` hold).
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let decoded =
            Zeroizing::new(B64.decode(text.trim()).map_err(|_| CryptoError::BadMasterKey("not valid base64"))?);
        if decoded.len() != 32 {
            return Err(CryptoError::BadMasterKey("wrong length"));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&decoded);
        Ok(Self::from_bytes(key))
    }

    /// The text form written to key files.
    pub fn encode(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(self.key.as_ref()))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// A purpose-bound key derived with HKDF-SHA256 (audit MAC, token MACs...).
    pub fn derive(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        derive(&self.key, purpose)
    }

    pub fn wrap(&self, secret_id: i64, dek: &DataKey) -> Vec<u8> {
        seal(&self.cipher, &dek_aad(secret_id), dek.0.as_ref())
    }

    pub fn unwrap(&self, secret_id: i64, wrapped: &[u8]) -> Result<DataKey, CryptoError> {
        let plain = open(&self.cipher, &dek_aad(secret_id), wrapped)?;
        if plain.len() != 32 {
            return Err(CryptoError::Malformed("data key length"));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&plain);
        Ok(DataKey(key))
    }
}

/// A secret's own data key; lives unwrapped only for the duration of a call.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        DataKey(key)
    }

    /// Seals a value; the result is `nonce || ciphertext+tag`, split for storage.
    pub fn encrypt(&self, secret_id: i64, version_id: &str, plain: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let cipher = Aes256Gcm::new_from_slice(self.0.as_ref()).expect("32-byte key");
        let mut sealed = seal(&cipher, &value_aad(secret_id, version_id), plain);
        let ciphertext = sealed.split_off(NONCE_LEN);
        (sealed, ciphertext)
    }

    pub fn decrypt(
        &self,
        secret_id: i64,
        version_id: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if nonce.len() != NONCE_LEN {
            return Err(CryptoError::Malformed("nonce length"));
        }
        let cipher = Aes256Gcm::new_from_slice(self.0.as_ref()).expect("32-byte key");
        let aad = value_aad(secret_id, version_id);
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: aad.as_bytes() })
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Integrity)
    }
}

/// HMAC-SHA256 under a derived key; used where a plain hash would be a
/// guessing oracle (client tokens compared against values).
pub fn mac(key: &[u8; 32], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    for part in parts {
        m.update(&(part.len() as u64).to_be_bytes());
        m.update(part);
    }
    m.finalize().into_bytes().to_vec()
}

fn derive(ikm: &[u8; 32], purpose: &str) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(b"tumbler"), ikm)
        .expand(purpose.as_bytes(), out.as_mut())
        .expect("32 bytes is a valid HKDF output length");
    out
}

// The associated data binds a sealed key or value to its row. Built with
// pushes rather than `format!`: these run for every read.

fn dek_aad(secret_id: i64) -> String {
    let mut aad = String::with_capacity(40);
    aad.push_str("tumbler/v1/dek/");
    aad.push_str(itoa::Buffer::new().format(secret_id));
    aad
}

fn value_aad(secret_id: i64, version_id: &str) -> String {
    let mut aad = String::with_capacity(48 + version_id.len());
    aad.push_str("tumbler/v1/value/");
    aad.push_str(itoa::Buffer::new().format(secret_id));
    aad.push('/');
    aad.push_str(version_id);
    aad
}

fn seal(cipher: &Aes256Gcm, aad: &str, plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad: aad.as_bytes() })
        .expect("AES-GCM encryption of a bounded buffer cannot fail");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    out
}

fn open(cipher: &Aes256Gcm, aad: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(CryptoError::Malformed("too short"));
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: aad.as_bytes() })
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Integrity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn associated_data_names_the_row() {
        assert_eq!(dek_aad(-3), "tumbler/v1/dek/-3");
        assert_eq!(dek_aad(i64::MAX), format!("tumbler/v1/dek/{}", i64::MAX));
        assert_eq!(value_aad(42, "v_ab"), "tumbler/v1/value/42/v_ab");
    }

    #[test]
    fn values_round_trip_and_are_bound_to_their_row() {
        let dek = DataKey::generate();
        let (nonce, ct) = dek.encrypt(7, "v1", b"hunter2");
        assert_eq!(dek.decrypt(7, "v1", &nonce, &ct).unwrap().as_slice(), b"hunter2");
        assert!(matches!(dek.decrypt(7, "v2", &nonce, &ct), Err(CryptoError::Integrity)));
        assert!(matches!(dek.decrypt(8, "v1", &nonce, &ct), Err(CryptoError::Integrity)));
    }

    #[test]
    fn wrapped_keys_need_the_same_master_key_and_secret() {
        let kek = MasterKey::generate();
        let dek = DataKey::generate();
        let wrapped = kek.wrap(1, &dek);
        assert!(kek.unwrap(1, &wrapped).is_ok());
        assert!(kek.unwrap(2, &wrapped).is_err());
        assert!(MasterKey::generate().unwrap(1, &wrapped).is_err());
    }

    #[test]
    fn expanded_aes_keys_are_zeroized_when_dropped() {
        // Compiles only while `aes` is built with its `zeroize` feature (see
        // Cargo.toml): the master key's expanded form lives as long as the
        // server, and a data key's for the length of a call.
        fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        zeroized_on_drop::<aes::Aes256>();
    }

    #[test]
    fn master_key_text_form_round_trips_and_ids_differ() {
        let a = MasterKey::generate();
        let b = MasterKey::parse(&a.encode()).unwrap();
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), MasterKey::generate().id());
        assert!(MasterKey::parse("not base64!").is_err());
        assert!(MasterKey::parse(&B64.encode([0u8; 16])).is_err());
        assert!(!format!("{a:?}").contains(a.encode().as_str()));
    }
}
