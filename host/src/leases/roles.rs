//! Dynamic roles: a dynamic plugin, its parameters, grants, the admin secret
//! it logs in with, TTLs and a lease quota. Parsed at the edge; the plugin
//! itself checks the parameters (`check-role`) before a role is stored.

use crate::crypto::DataKey;
use crate::error::{Error, Result};
use crate::model::{SecretName, Ttl, now_millis, rfc3339};
use crate::plugins::capabilities::{Grants, GrantsSpec};
use crate::plugins::registry::Registry;
use crate::plugins::{CallContext, PluginErrorKind};
use crate::store::Cached;
use crate::store::Keys;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// The policy resource a role is authorized under.
pub fn resource(role: &str) -> String {
    format!("sys/roles/{role}")
}

/// Leases a role may have outstanding when it does not say.
pub const DEFAULT_MAX_LEASES: u32 = 1_000;
/// Longest TTL a role may grant.
pub const LONGEST_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Role names follow secret-name rules without `/` so they stay one path segment.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!("role name {name:?} is invalid: use 1-128 characters of A-Z a-z 0-9 _ - .")))
    }
}

/// `PUT /v1/roles/{name}`, as sent.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleRequest {
    /// A registered plugin that implements dynamic secrets (`postgres`, `mysql`).
    pub plugin: String,
    /// Its version (default: the newest); the role pins that version's sha256.
    pub plugin_version: Option<i64>,
    /// A JSON object for the plugin (checked by the plugin itself).
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
    #[serde(default)]
    pub grants: GrantsSpec,
    /// The secret holding the admin credential the plugin logs in with; the
    /// host fills it in, so it never enters the plugin.
    pub admin_secret: String,
    /// TTL of a lease when `:issue` gives none (default 1h).
    #[schema(value_type = Option<String>)]
    pub default_ttl: Option<Ttl>,
    /// No lease outlives its issue by more than this, renewals included (default 24h).
    #[schema(value_type = Option<String>)]
    pub max_ttl: Option<Ttl>,
    /// Leases the role may have outstanding at once (default 1000).
    pub max_leases: Option<u32>,
}

/// A role that parsed and that its plugin accepted.
pub struct Role {
    pub name: String,
    pub plugin: String,
    pub plugin_version: i64,
    pub plugin_sha256: String,
    /// The params as the plugin sees them: the role's, with `admin_secret` merged in.
    pub params: String,
    pub grants: String,
    pub admin_secret: SecretName,
    pub granted_secrets: Vec<SecretName>,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub max_leases: u32,
}

impl RoleRequest {
    /// Parses everything but authorization, then asks the plugin to check
    /// the params. Errors name the field.
    pub async fn parse(self, name: &str, registry: &Registry) -> Result<Role> {
        validate_name(name)?;
        let admin_secret = SecretName::parse(&self.admin_secret)
            .map_err(|e| Error::invalid(format!("admin_secret: {}", e.message())))?;
        let grants = self.grants.parse()?;
        let default_ttl = ttl(self.default_ttl, "default_ttl", Duration::from_secs(3600))?;
        let max_ttl = ttl(self.max_ttl, "max_ttl", Duration::from_secs(24 * 3600))?;
        if default_ttl > max_ttl {
            return Err(Error::invalid(format!(
                "default_ttl ({}) is longer than max_ttl ({})",
                humantime::format_duration(default_ttl),
                humantime::format_duration(max_ttl)
            )));
        }
        let max_leases = match self.max_leases {
            None => DEFAULT_MAX_LEASES,
            Some(n @ 1..=1_000_000) => n,
            Some(n) => return Err(Error::invalid(format!("max_leases: {n} is not within 1 to 1000000"))),
        };
        let mut params = match self.params.unwrap_or_else(|| Value::Object(Default::default())) {
            Value::Object(map) => map,
            _ => return Err(Error::invalid("params: must be a JSON object")),
        };
        if params.contains_key("admin_secret") {
            return Err(Error::invalid("params: `admin_secret` is a field of the role, not a param"));
        }
        params.insert("admin_secret".into(), Value::String(admin_secret.to_string()));
        let params = Value::Object(params).to_string();
        let (version, plugin) = registry.get(&self.plugin, self.plugin_version).await.map_err(|e| match e.kind {
            crate::error::Kind::NotFound => Error::invalid(format!("plugin: {}", e.message())),
            _ => e,
        })?;
        if !plugin.info.dynamic {
            return Err(Error::invalid(format!(
                "plugin: '{}' does not implement dynamic secrets (its info says dynamic: false)",
                version.name
            )));
        }
        let ctx = CallContext { plugin: version.name.clone(), ..CallContext::default() };
        let outcome = registry.runtime().check_role(&plugin, name, &params, ctx).await;
        if let Err(e) = outcome.result {
            return Err(match e.kind {
                PluginErrorKind::Fatal | PluginErrorKind::Retryable => Error::invalid(format!("params: {}", e.message)),
                _ => Error::internal(format!("checking the role failed: {}", e.message)),
            });
        }
        let mut granted_secrets = grants.secrets.clone();
        granted_secrets.push(admin_secret.clone());
        Ok(Role {
            name: name.to_owned(),
            plugin: version.name,
            plugin_version: version.version,
            plugin_sha256: version.sha256,
            params,
            grants: serde_json::to_string(&self.grants).map_err(|e| Error::internal(e.to_string()))?,
            admin_secret,
            granted_secrets,
            default_ttl,
            max_ttl,
            max_leases,
        })
    }
}

fn ttl(raw: Option<Ttl>, field: &str, default: Duration) -> Result<Duration> {
    let d = match raw {
        None => return Ok(default),
        Some(t) => t.parse(field)?,
    };
    if d < Duration::from_secs(1) || d > LONGEST_TTL {
        return Err(Error::invalid(format!("{field}: must be between 1s and 365d")));
    }
    Ok(d)
}

/// A role as stored (what issuing and the views need).
#[derive(Clone, Debug)]
pub struct RoleRow {
    pub id: i64,
    pub name: String,
    pub plugin: String,
    pub plugin_version: i64,
    pub plugin_sha256: String,
    pub params: String,
    pub grants: String,
    pub admin_secret: String,
    pub default_ttl_ms: i64,
    pub max_ttl_ms: i64,
    pub max_leases: u32,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLS: &str = "id, name, plugin, plugin_version, plugin_sha256, params, grants, admin_secret, default_ttl, \
                    max_ttl, max_leases, created_at, updated_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RoleRow> {
    Ok(RoleRow {
        id: r.get(0)?,
        name: r.get(1)?,
        plugin: r.get(2)?,
        plugin_version: r.get(3)?,
        plugin_sha256: r.get(4)?,
        params: r.get(5)?,
        grants: r.get(6)?,
        admin_secret: r.get(7)?,
        default_ttl_ms: r.get(8)?,
        max_ttl_ms: r.get(9)?,
        max_leases: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
    })
}

pub fn not_found(name: &str) -> Error {
    Error::not_found(format!("no role named '{name}'; create it with PUT /v1/roles/{name}"))
}

pub fn get(conn: &Connection, name: &str) -> Result<RoleRow> {
    find(conn, name)?.ok_or_else(|| not_found(name))
}

pub fn find(conn: &Connection, name: &str) -> Result<Option<RoleRow>> {
    Ok(conn.prepare_cached(&format!("SELECT {COLS} FROM roles WHERE name = ?1"))?.query_row([name], row).optional()?)
}

pub fn by_id(conn: &Connection, id: i64) -> Result<RoleRow> {
    conn.prepare_cached(&format!("SELECT {COLS} FROM roles WHERE id = ?1"))?
        .query_row([id], row)
        .optional()?
        .ok_or_else(|| Error::internal(format!("role row {id} is missing")))
}

/// Roles whose admin secret is `secret` (a break glass on it revokes their leases).
pub fn using_admin_secret(conn: &Connection, secret: &str) -> Result<Vec<RoleRow>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLS} FROM roles WHERE admin_secret = ?1"))?;
    Ok(stmt.query_map([secret], row)?.collect::<rusqlite::Result<_>>()?)
}

/// Names of roles using a plugin (a plugin in use cannot be deleted).
pub fn plugin_users(conn: &Connection, plugin: &str, version: Option<i64>) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT 'role ' || name FROM roles WHERE plugin = ?1 AND (?2 IS NULL OR plugin_version = ?2)
         UNION SELECT DISTINCT 'leases of role ' || r.name FROM leases l JOIN roles r ON r.id = l.role_id
             JOIN plugins p ON p.sha256 = l.plugin_sha256
         WHERE l.plugin = ?1 AND l.state != 'revoked' AND (?2 IS NULL OR p.version = ?2)
         ORDER BY 1 LIMIT 100",
    )?;
    Ok(stmt.query_map(params![plugin, version], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?)
}

/// Creates or replaces a role; a replaced role keeps its data key (its
/// leases' handles are sealed under it).
pub fn put(tx: &Transaction<'_>, keys: &Keys, role: &Role) -> Result<RoleRow> {
    tx.exec(
        "INSERT INTO roles (name, plugin, plugin_version, plugin_sha256, params, grants, admin_secret,
             default_ttl, max_ttl, max_leases, dek_wrapped, dek_kek_id, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, x'', '', ?11, ?11)
         ON CONFLICT (name) DO UPDATE SET plugin = ?2, plugin_version = ?3, plugin_sha256 = ?4, params = ?5,
             grants = ?6, admin_secret = ?7, default_ttl = ?8, max_ttl = ?9, max_leases = ?10, updated_at = ?11",
        params![
            role.name,
            role.plugin,
            role.plugin_version,
            role.plugin_sha256,
            role.params,
            role.grants,
            role.admin_secret.as_str(),
            role.default_ttl.as_millis() as i64,
            role.max_ttl.as_millis() as i64,
            role.max_leases,
            now_millis()
        ],
    )?;
    let row = get(tx, &role.name)?;
    let fresh: bool = tx.row("SELECT dek_kek_id = '' FROM roles WHERE id = ?1", [row.id], |r| r.get(0))?;
    if fresh {
        let dek = DataKey::generate();
        tx.exec(
            "UPDATE roles SET dek_wrapped = ?1, dek_kek_id = ?2 WHERE id = ?3",
            params![keys.master.wrap(-row.id, &dek), keys.master.id(), row.id],
        )?;
    }
    Ok(row)
}

/// Deletes a role; refused while any of its leases is not revoked.
pub fn delete(tx: &Transaction<'_>, name: &str) -> Result<()> {
    let role = get(tx, name)?;
    let open: i64 =
        tx.row("SELECT count(*) FROM leases WHERE role_id = ?1 AND state != 'revoked'", [role.id], |r| r.get(0))?;
    if open > 0 {
        return Err(Error::conflict(format!(
            "role '{name}' has {open} lease(s) not yet revoked; revoke them first (POST /v1/roles/{name}:revoke-all)"
        )));
    }
    tx.exec("DELETE FROM roles WHERE id = ?1", [role.id])?;
    Ok(())
}

pub fn list(conn: &Connection, after: Option<&str>, limit: usize) -> Result<Vec<RoleRow>> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {COLS} FROM roles WHERE (?1 IS NULL OR name > ?1) ORDER BY name LIMIT ?2"))?;
    Ok(stmt.query_map(params![after, limit as i64], row)?.collect::<rusqlite::Result<_>>()?)
}

/// The role's data key.
pub fn data_key(conn: &Connection, keys: &Keys, role_id: i64) -> Result<DataKey> {
    let (wrapped, kek_id): (Vec<u8>, String) = conn
        .prepare_cached("SELECT dek_wrapped, dek_kek_id FROM roles WHERE id = ?1")?
        .query_row([role_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if kek_id != keys.master.id() {
        return Err(Error::internal(format!(
            "role row {role_id} is wrapped by key {kek_id}, not the current key {}",
            keys.master.id()
        )));
    }
    keys.master.unwrap(-role_id, &wrapped).map_err(|e| Error::internal(format!("data key of role row {role_id}: {e}")))
}

/// Rewraps every role's data key under `new` (the master key rotation).
pub fn rewrap_all(
    tx: &Transaction<'_>,
    old: &crate::crypto::MasterKey,
    new: &crate::crypto::MasterKey,
) -> Result<usize> {
    let rows: Vec<(i64, Vec<u8>)> = tx
        .prepare("SELECT id, dek_wrapped FROM roles")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update = tx.prepare("UPDATE roles SET dek_wrapped = ?1, dek_kek_id = ?2 WHERE id = ?3")?;
    for (id, wrapped) in &rows {
        let dek = old
            .unwrap(-id, wrapped)
            .map_err(|e| Error::internal(format!("data key of role row {id}: {e}; nothing was changed")))?;
        update.execute(params![new.wrap(-id, &dek), new.id(), id])?;
    }
    Ok(rows.len())
}

/// Grants of a stored role or lease, parsed again (they parsed when stored).
pub fn parse_grants(raw: &str, admin_secret: &str) -> Result<Grants> {
    let mut spec: GrantsSpec =
        serde_json::from_str(raw).map_err(|e| Error::internal(format!("stored grants do not parse: {e}")))?;
    // The admin secret is the role's own: the plugin may log in with it.
    spec.secrets.push(admin_secret.to_owned());
    spec.parse()
}

/// `GET /v1/roles/{name}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RoleView {
    pub name: String,
    pub plugin: String,
    pub plugin_version: i64,
    pub plugin_sha256: String,
    #[schema(value_type = Object)]
    pub params: Value,
    #[schema(value_type = Object)]
    pub grants: Value,
    pub admin_secret: String,
    pub default_ttl: String,
    pub max_ttl: String,
    pub max_leases: u32,
    /// Leases issued and not yet revoked.
    pub open_leases: i64,
    pub created_at: String,
    pub updated_at: String,
}

pub fn view(conn: &Connection, r: &RoleRow) -> Result<RoleView> {
    let open_leases: i64 =
        conn.row("SELECT count(*) FROM leases WHERE role_id = ?1 AND state != 'revoked'", [r.id], |x| x.get(0))?;
    let mut params: Value = serde_json::from_str(&r.params).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut params {
        map.remove("admin_secret");
    }
    Ok(RoleView {
        name: r.name.clone(),
        plugin: r.plugin.clone(),
        plugin_version: r.plugin_version,
        plugin_sha256: r.plugin_sha256.clone(),
        params,
        grants: serde_json::from_str(&r.grants).unwrap_or(Value::Null),
        admin_secret: r.admin_secret.clone(),
        default_ttl: humantime::format_duration(Duration::from_millis(r.default_ttl_ms as u64)).to_string(),
        max_ttl: humantime::format_duration(Duration::from_millis(r.max_ttl_ms as u64)).to_string(),
        max_leases: r.max_leases,
        open_leases,
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leases::lease::{self, Holder};
    use crate::store::test_store;

    fn role(name: &str) -> Role {
        Role {
            name: name.into(),
            plugin: "dyn".into(),
            plugin_version: 1,
            plugin_sha256: "ab".repeat(32),
            params: r#"{"admin_secret":"db/admin"}"#.into(),
            grants: "{}".into(),
            admin_secret: SecretName::parse("db/admin").unwrap(),
            granted_secrets: vec![],
            default_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(600),
            max_leases: 1,
        }
    }

    #[tokio::test]
    async fn a_role_in_use_keeps_its_plugin_and_its_key_across_a_master_key_rotation() {
        let (_dir, store) = test_store();
        let (lease_id, handle) = store
            .write(|tx, keys| {
                tx.execute(
                    "INSERT INTO plugins (name, version, sha256, wasm, info, created_at) VALUES ('dyn', 1, ?1, x'', '{}', 0)",
                    [&"ab".repeat(32)],
                )?;
                let row = put(tx, keys, &role("r1"))?;
                let holder = Holder { token_id: "t1", token_name: "t", token_expires_at: None, token_quota: 10 };
                let l = lease::reserve(tx, &row, &holder, 1_000, now_millis())?;
                // The role's quota (1) counts the reservation.
                let again = lease::reserve(tx, &row, &holder, 1_000, now_millis()).unwrap_err();
                assert!(again.message().contains("max_leases"), "{}", again.message());
                lease::activate(tx, keys, &l, r#"{"username":"v_r1_x"}"#)?;
                Ok((l.id.clone(), lease::handle(tx, keys, &lease::get(tx, &l.id)?)?))
            })
            .await
            .unwrap();
        assert_eq!(handle.as_str(), r#"{"username":"v_r1_x"}"#);
        let users = store.read(|c, _| plugin_users(c, "dyn", None)).await.unwrap();
        assert_eq!(users, ["leases of role r1", "role r1"]);
        let refused = store.write(|tx, _| delete(tx, "r1")).await.unwrap_err();
        assert_eq!(refused.kind, crate::error::Kind::Conflict);

        // A new master key rewraps the role's data key: the handle still opens.
        let new = crate::crypto::MasterKey::generate();
        let id = lease_id.clone();
        let reopened = store
            .write(move |tx, keys| {
                assert_eq!(rewrap_all(tx, &keys.master, &new)?, 1);
                let new_keys = Keys::new(new);
                lease::handle(tx, &new_keys, &lease::get(tx, &id)?)
            })
            .await
            .unwrap();
        assert_eq!(reopened.as_str(), r#"{"username":"v_r1_x"}"#);
    }
}
