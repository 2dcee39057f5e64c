//! The plugin registry: versions of each plugin by name, stored with their
//! sha256, checked to implement the world before they are accepted, and
//! pre-instantiated once. Built-in rotators are registered at start under
//! reserved names.

use super::runtime::{LoadedPlugin, PluginErrorKind, PluginInfo, Runtime};
use crate::audit::RequestAudit;
use crate::error::{Error, Result};
use crate::model::{now_millis, rfc3339};
use crate::store::Keys;
use crate::store::Store;
use axum::http::StatusCode;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// Largest plugin upload accepted.
pub const MAX_PLUGIN_BYTES: usize = 32 << 20;

/// A plugin built into the binary: its reserved name and component bytes.
pub type Builtin = (&'static str, &'static [u8]);

/// How a registry change commits: in one transaction with the API
/// request's audit record (fail closed), or alone for built-ins at start.
pub enum Commit<'a> {
    Request(&'a RequestAudit),
    Startup,
}

#[derive(Clone, Serialize, utoipa::ToSchema)]
pub struct PluginVersion {
    pub name: String,
    pub version: i64,
    pub sha256: String,
    pub info: PluginInfo,
    pub builtin: bool,
    pub created_at: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PluginDescription {
    pub name: String,
    pub builtin: bool,
    /// Newest first.
    pub versions: Vec<PluginVersion>,
    /// Secrets whose rotation config pins a version of it (at most 100 shown).
    pub used_by: Vec<String>,
}

pub struct Registry {
    runtime: Arc<Runtime>,
    store: Store,
    builtin_names: Vec<&'static str>,
    /// Pre-instantiated plugins by sha256.
    loaded: RwLock<HashMap<String, Arc<LoadedPlugin>>>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!("plugin name {name:?} is not valid; use 1-64 characters from [a-z0-9_-]")))
    }
}

impl Registry {
    /// Registers the built-ins (a new version when their bytes changed) and
    /// loads every stored version, from the compiled cache when possible.
    pub async fn start(store: Store, runtime: Arc<Runtime>, builtins: &[Builtin]) -> anyhow::Result<Arc<Self>> {
        let registry = Arc::new(Registry {
            runtime,
            store,
            builtin_names: builtins.iter().map(|(name, _)| *name).collect(),
            loaded: RwLock::new(HashMap::new()),
        });
        let stored: Vec<(String, Vec<u8>)> = registry
            .store
            .read(|conn, _| {
                let mut stmt = conn.prepare("SELECT sha256, wasm FROM plugins GROUP BY sha256")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
                Ok(rows)
            })
            .await?;
        let started = Instant::now();
        let (mut cached, mut compiled) = (0, 0);
        for (sha, wasm) in stored {
            if registry.loaded_plugin(&sha).is_some() {
                continue;
            }
            let plugin = registry
                .runtime
                .load(&sha, Arc::new(wasm))
                .await
                .map_err(|e| anyhow::anyhow!("stored plugin {sha} no longer loads: {e}"))?;
            if plugin.from_cache {
                cached += 1;
            } else {
                compiled += 1;
            }
            registry.insert_loaded(plugin);
        }
        tracing::info!(cached, compiled, elapsed_ms = started.elapsed().as_millis() as u64, "stored plugins loaded");
        // After the stored ones, so an unchanged built-in is found already loaded.
        for (name, wasm) in builtins {
            registry
                .register(name, wasm.to_vec(), None, true, Commit::Startup)
                .await
                .map_err(|e| anyhow::anyhow!("built-in plugin {name} could not be registered: {}", e.message()))?;
        }
        Ok(registry)
    }

    fn loaded_plugin(&self, sha256: &str) -> Option<Arc<LoadedPlugin>> {
        self.loaded.read().unwrap_or_else(|p| p.into_inner()).get(sha256).cloned()
    }

    fn insert_loaded(&self, plugin: LoadedPlugin) -> Arc<LoadedPlugin> {
        let plugin = Arc::new(plugin);
        self.loaded.write().unwrap_or_else(|p| p.into_inner()).insert(plugin.sha256.clone(), plugin.clone());
        plugin
    }

    /// The runtime plugins of this registry run in.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.clone()
    }

    /// The version with these exact bytes (what a rotation config pins) and
    /// its loaded code; not found once that version was removed.
    pub async fn get_pinned(&self, name: &str, sha256: &str) -> Result<(PluginVersion, Arc<LoadedPlugin>)> {
        let v = self
            .find_by_sha(name, sha256)
            .await?
            .ok_or_else(|| Error::not_found(format!("plugin '{name}' has no version with sha256 {sha256} any more")))?;
        let loaded = self
            .loaded_plugin(&v.sha256)
            .ok_or_else(|| Error::internal(format!("plugin '{name}' version {} is not loaded", v.version)))?;
        Ok((v, loaded))
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin_names.contains(&name)
    }

    /// An upload through the API: built-in names are reserved.
    pub async fn upload(
        &self,
        name: &str,
        wasm: Vec<u8>,
        expected_sha256: Option<&str>,
        audit: &RequestAudit,
    ) -> Result<(PluginVersion, bool)> {
        validate_name(name)?;
        if self.is_builtin(name) {
            return Err(Error::conflict(format!(
                "'{name}' is the name of a built-in rotator; upload under another name"
            )));
        }
        self.register(name, wasm, expected_sha256, false, Commit::Request(audit)).await
    }

    async fn commit<T, F>(&self, how: Commit<'_>, status: StatusCode, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>, &Keys) -> Result<T> + Send + 'static,
    {
        match how {
            Commit::Request(audit) => audit.write_with_status(move |_| status, f).await,
            Commit::Startup => self.store.write(f).await,
        }
    }

    /// Stores a new version unless this name already has these bytes.
    /// Returns the version and whether it is new.
    async fn register(
        &self,
        name: &str,
        wasm: Vec<u8>,
        expected_sha256: Option<&str>,
        builtin: bool,
        how: Commit<'_>,
    ) -> Result<(PluginVersion, bool)> {
        let sha = sha256_hex(&wasm);
        if let Some(expected) = expected_sha256 {
            if !expected.eq_ignore_ascii_case(&sha) {
                return Err(Error::invalid(format!(
                    "X-Tumbler-Sha256 is {expected} but the body's sha256 is {sha}; the upload was damaged or is not the file you meant"
                )));
            }
        }
        if let Some(existing) = self.find_by_sha(name, &sha).await? {
            return Ok((existing, false));
        }
        let plugin = match self.loaded_plugin(&sha) {
            Some(p) => p,
            None => {
                let wasm = Arc::new(wasm.clone());
                let loaded = self.runtime.load(&sha, wasm).await.map_err(|e| match e.kind {
                    PluginErrorKind::Invalid => Error::invalid(format!("plugin '{name}' was refused: {}", e.message)),
                    _ => Error::invalid(format!(
                        "plugin '{name}' failed while describing itself ({}): {}",
                        e.code(),
                        e.message
                    )),
                })?;
                self.insert_loaded(loaded)
            }
        };
        let info = plugin.info.clone();
        let info_json = serde_json::to_string(&info).map_err(|e| Error::internal(e.to_string()))?;
        let (n, s) = (name.to_owned(), sha.clone());
        let now = now_millis();
        let version = self
            .commit(how, StatusCode::CREATED, move |tx, _| {
                let version: i64 =
                    tx.query_row("SELECT coalesce(max(version), 0) + 1 FROM plugins WHERE name = ?1", [&n], |r| {
                        r.get(0)
                    })?;
                tx.execute(
                    "INSERT INTO plugins (name, version, sha256, wasm, info, builtin, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![n, version, s, wasm, info_json, builtin, now],
                )?;
                Ok(version)
            })
            .await?;
        let v = PluginVersion { name: name.to_owned(), version, sha256: sha, info, builtin, created_at: rfc3339(now) };
        tracing::info!(plugin = name, version, sha256 = %v.sha256, "plugin registered");
        Ok((v, true))
    }

    async fn find_by_sha(&self, name: &str, sha: &str) -> Result<Option<PluginVersion>> {
        let (n, s) = (name.to_owned(), sha.to_owned());
        self.store
            .read(move |conn, _| {
                Ok(conn
                    .query_row(
                        &format!("SELECT {VERSION_COLS} FROM plugins WHERE name = ?1 AND sha256 = ?2"),
                        params![n, s],
                        version_row,
                    )
                    .optional()?)
            })
            .await
    }

    /// The newest version of every plugin.
    pub async fn list(&self) -> Result<Vec<PluginVersion>> {
        self.store
            .read(|conn, _| {
                let mut stmt = conn.prepare(&format!(
                    "SELECT {VERSION_COLS} FROM plugins p
                     WHERE version = (SELECT max(version) FROM plugins q WHERE q.name = p.name)
                     ORDER BY name"
                ))?;
                let rows = stmt.query_map([], version_row)?.collect::<rusqlite::Result<_>>()?;
                Ok(rows)
            })
            .await
    }

    pub async fn describe(&self, name: &str) -> Result<PluginDescription> {
        let n = name.to_owned();
        let (versions, used_by): (Vec<PluginVersion>, Vec<String>) = self
            .store
            .read(move |conn, _| {
                let mut stmt =
                    conn.prepare(&format!("SELECT {VERSION_COLS} FROM plugins WHERE name = ?1 ORDER BY version DESC"))?;
                let rows = stmt.query_map([&n], version_row)?.collect::<rusqlite::Result<_>>()?;
                Ok((rows, crate::store::rotations::plugin_users(conn, &n, None, 100)?))
            })
            .await?;
        if versions.is_empty() {
            return Err(not_found(name));
        }
        Ok(PluginDescription { name: name.to_owned(), builtin: self.is_builtin(name), versions, used_by })
    }

    /// A version (the newest when `version` is None) and its loaded code.
    pub async fn get(&self, name: &str, version: Option<i64>) -> Result<(PluginVersion, Arc<LoadedPlugin>)> {
        let d = self.describe(name).await?;
        let v = match version {
            None => d.versions.into_iter().next(),
            Some(want) => d.versions.into_iter().find(|v| v.version == want),
        }
        .ok_or_else(|| Error::not_found(format!("plugin '{name}' has no version {}", version.unwrap_or(0))))?;
        let loaded = self
            .loaded_plugin(&v.sha256)
            .ok_or_else(|| Error::internal(format!("plugin '{name}' version {} is not loaded", v.version)))?;
        Ok((v, loaded))
    }

    /// Removes one version, or all. Built-ins cannot be removed.
    pub async fn delete(&self, name: &str, version: Option<i64>, audit: &RequestAudit) -> Result<usize> {
        if self.is_builtin(name) {
            return Err(Error::conflict(format!("'{name}' is a built-in rotator and cannot be removed")));
        }
        let n = name.to_owned();
        let removed = self
            .commit(Commit::Request(audit), StatusCode::OK, move |tx, _| {
                // A config pins the code that runs under its grants: that code
                // stays until no config names it.
                let users = crate::store::rotations::plugin_users(tx, &n, version, 5)?;
                if !users.is_empty() {
                    return Err(Error::conflict(format!(
                        "plugin '{n}'{} is used by the rotation config of {}; set those configs to another plugin \
                         or remove them (DELETE /v1/secrets/NAME:rotation) first",
                        version.map(|v| format!(" version {v}")).unwrap_or_default(),
                        users.iter().map(|u| format!("'{u}'")).collect::<Vec<_>>().join(", ")
                    )));
                }
                // So does a dynamic role, and every lease not yet revoked (it
                // is revoked with the code that issued it).
                let roles = crate::leases::roles::plugin_users(tx, &n, version)?;
                if !roles.is_empty() {
                    return Err(Error::conflict(format!(
                        "plugin '{n}' is used by {}; point those roles at another plugin, revoke their leases                          and delete them first",
                        roles.join(", ")
                    )));
                }
                Ok(match version {
                    Some(v) => tx.execute("DELETE FROM plugins WHERE name = ?1 AND version = ?2", params![n, v])?,
                    None => tx.execute("DELETE FROM plugins WHERE name = ?1", [&n])?,
                })
            })
            .await?;
        if removed == 0 {
            return Err(match version {
                Some(v) => Error::not_found(format!("plugin '{name}' has no version {v}")),
                None => not_found(name),
            });
        }
        Ok(removed)
    }
}

fn not_found(name: &str) -> Error {
    Error::not_found(format!("no plugin is registered as '{name}'; list them with GET /v1/plugins"))
}

const VERSION_COLS: &str = "name, version, sha256, info, builtin, created_at";

fn version_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PluginVersion> {
    let info: String = r.get(3)?;
    Ok(PluginVersion {
        name: r.get(0)?,
        version: r.get(1)?,
        sha256: r.get(2)?,
        info: serde_json::from_str(&info)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e)))?,
        builtin: r.get(4)?,
        created_at: rfc3339(r.get(5)?),
    })
}
