//! The compiled-plugin cache: native code on disk, keyed by the plugin's
//! sha256 and MAC'd with a key derived from the master key. Loading native
//! code is only safe if nobody could have swapped it, so a bad MAC means
//! the file is discarded and the plugin recompiled.

use crate::crypto;
use std::path::PathBuf;
use subtle::ConstantTimeEq;
use wasmtime::Engine;
use wasmtime::component::Component;
use zeroize::Zeroizing;

const MAC_LEN: usize = 32;

pub struct ComponentCache {
    dir: PathBuf,
    key: Zeroizing<[u8; 32]>,
}

impl ComponentCache {
    pub fn new(dir: PathBuf, key: Zeroizing<[u8; 32]>) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(ComponentCache { dir, key })
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.cwasm"))
    }

    fn mac(&self, sha256: &str, body: &[u8]) -> Vec<u8> {
        crypto::mac(&self.key, &[b"plugin-cache", sha256.as_bytes(), body])
    }

    /// The cached component, if present, untampered and built by this engine.
    pub fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path(sha256);
        let bytes = std::fs::read(&path).ok()?;
        if bytes.len() < MAC_LEN {
            return self.discard(sha256, "truncated");
        }
        let (mac, body) = bytes.split_at(MAC_LEN);
        if !bool::from(mac.ct_eq(&self.mac(sha256, body))) {
            return self.discard(sha256, "its MAC does not match (tampered or written under another master key)");
        }
        // SAFETY: the bytes were written by `store` below with this master
        // key's MAC, so they are wasmtime's own serialization; wasmtime also
        // checks they match this engine's version and settings.
        match unsafe { Component::deserialize(engine, body) } {
            Ok(c) => {
                tracing::info!(sha256, "plugin loaded from the compiled cache");
                Some(c)
            }
            Err(e) => self.discard(sha256, &format!("it does not fit this engine ({e})")),
        }
    }

    fn discard(&self, sha256: &str, why: &str) -> Option<Component> {
        tracing::warn!(sha256, "discarding the compiled plugin cache entry: {why}; recompiling");
        let _ = std::fs::remove_file(self.path(sha256));
        None
    }

    pub fn store(&self, sha256: &str, component: &Component) -> anyhow::Result<()> {
        let body = component.serialize().map_err(super::runtime::wasmtime_error)?;
        let mut bytes = self.mac(sha256, &body);
        bytes.extend_from_slice(&body);
        let tmp = self.dir.join(format!("{sha256}.tmp"));
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, self.path(sha256))?;
        tracing::info!(sha256, "plugin compiled and cached");
        Ok(())
    }
}
