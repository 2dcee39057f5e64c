//! Tokens and policies: who is calling, and may they do this to that name.
//! Deny by default. A request's caller comes from its token's rows or from
//! the [`TokenCache`], which holds only what those rows still say: any
//! commit touching tokens or policies invalidates it before the change's
//! request returns, so a revocation or a policy change is effective on the
//! very next request.

mod cache;
mod glob;

pub use cache::TokenCache;
pub use glob::Glob;

use crate::error::{Error, Result};
use crate::model::{Capability, now_millis, rfc3339};
use crate::store::{Keys, Store, policies, tokens};
use base64::Engine as _;
use rand::RngCore;
use rusqlite::{Connection, Transaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

pub const TOKEN_PREFIX: &str = "tmb_";
pub const ROOT_POLICY: &str = "root";
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(32 * 86_400);

/// One policy rule: a name glob and the capabilities it grants.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub names: String,
    pub capabilities: Vec<Capability>,
}

/// A rule whose glob has been parsed.
#[derive(Clone, Debug)]
struct CompiledRule {
    names: Glob,
    capabilities: Vec<Capability>,
}

pub fn validate_rules(rules: &[Rule]) -> Result<()> {
    if rules.is_empty() {
        return Err(Error::invalid("a policy needs at least one rule"));
    }
    for rule in rules {
        Glob::parse(&rule.names)?;
        if rule.capabilities.is_empty() {
            return Err(Error::invalid(format!(
                "rule for {:?} grants no capabilities; list some of read, write, delete, list, rotate, admin",
                rule.names
            )));
        }
    }
    Ok(())
}

pub fn validate_policy_name(name: &str) -> Result<()> {
    if name == ROOT_POLICY {
        return Err(Error::invalid("the policy name 'root' is reserved"));
    }
    let ok =
        !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        return Err(Error::invalid(format!(
            "policy name {name:?} is not valid; use 1-128 characters from [A-Za-z0-9_.-]"
        )));
    }
    Ok(())
}

/// The authenticated caller of one request.
#[derive(Clone, Debug)]
pub struct Caller {
    // Shared, as `rules`: cloned out of the cache for every request.
    pub token_id: Arc<str>,
    pub token_name: Arc<str>,
    pub policies: Arc<[String]>,
    pub expires_at: Option<i64>,
    root: bool,
    /// Shared: a caller is cloned out of the cache for every request.
    rules: Arc<[CompiledRule]>,
}

impl Caller {
    pub fn allows(&self, cap: Capability, resource: &str) -> bool {
        self.root || self.rules.iter().any(|r| r.capabilities.contains(&cap) && r.names.matches(resource))
    }

    pub fn require(&self, cap: Capability, resource: &str) -> Result<()> {
        if self.allows(cap, resource) {
            Ok(())
        } else {
            Err(Error::forbidden(format!(
                "token '{}' has no `{}` capability on '{resource}'; ask an administrator for a policy granting it",
                self.token_name,
                cap.as_str()
            )))
        }
    }

    pub fn is_root(&self) -> bool {
        self.root
    }
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Resolves a bearer token to a caller, from `cache` when it holds a
/// current entry, else from the store (then cached): unknown, revoked and
/// expired tokens are all refused with 401.
pub async fn authenticate_cached(store: &Store, cache: &TokenCache, bearer: &str) -> Result<Caller> {
    let hash = hash_token(bearer);
    // Read before the rows: a change committed after this moves it, and
    // the entry made from the rows read here is then never used.
    let generation = store.auth_generation();
    if let Some(caller) = cache.get(&hash, generation) {
        return Ok(caller);
    }
    let caller = store.read_quick(move |conn, _| authenticate_hash(conn, &hash)).await?;
    cache.insert(hash, generation, caller.clone());
    Ok(caller)
}

/// Resolves a bearer token to a caller: unknown, revoked and expired
/// tokens are all refused with 401.
pub fn authenticate(conn: &Connection, bearer: &str) -> Result<Caller> {
    authenticate_hash(conn, &hash_token(bearer))
}

/// [`authenticate`] for a token known by its SHA-256.
fn authenticate_hash(conn: &Connection, hash: &[u8; 32]) -> Result<Caller> {
    let row = tokens::by_hash(conn, hash)?
        .filter(|row| bool::from(row.hash.ct_eq(hash)))
        .ok_or_else(|| Error::unauthorized("the token is not valid; check TUMBLER_TOKEN"))?;
    if row.revoked_at.is_some() {
        return Err(Error::unauthorized("the token has been revoked; ask for a new one"));
    }
    if row.expires_at.is_some_and(|e| e <= now_millis()) {
        return Err(Error::unauthorized("the token has expired; ask for a new one"));
    }
    let root = row.policies.iter().any(|p| p == ROOT_POLICY);
    let mut rules = Vec::new();
    if !root {
        for name in &row.policies {
            for rule in policies::get(conn, name)?.unwrap_or_default() {
                rules.push(CompiledRule { names: Glob::parse(&rule.names)?, capabilities: rule.capabilities });
            }
        }
    }
    Ok(Caller {
        token_id: row.id.into(),
        token_name: row.name.into(),
        policies: row.policies.into(),
        expires_at: row.expires_at,
        root,
        rules: rules.into(),
    })
}

/// A freshly minted token; the plaintext exists only in this response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Minted {
    pub token: String,
    pub id: String,
    pub expires_at: Option<String>,
}

pub struct MintRequest {
    pub name: String,
    pub policies: Vec<String>,
    pub ttl: Option<Duration>,
}

/// Mints a token for `parent`: only policies the parent holds, and a
/// lifetime no longer than the parent's remaining one.
pub fn mint(tx: &Transaction<'_>, parent: Option<&Caller>, req: MintRequest) -> Result<Minted> {
    if req.name.is_empty() || req.name.len() > 128 {
        return Err(Error::invalid("token name needs 1-128 characters"));
    }
    if req.policies.is_empty() {
        return Err(Error::invalid("a token needs at least one policy"));
    }
    let now = now_millis();
    for p in &req.policies {
        if let Some(parent) = parent.filter(|c| !c.is_root()) {
            if !parent.policies.contains(p) {
                return Err(Error::forbidden(format!(
                    "cannot grant policy '{p}': your token does not hold it (a token mints only a subset of its own policies)"
                )));
            }
        }
        if p != ROOT_POLICY && policies::get(tx, p)?.is_none() {
            return Err(Error::invalid(format!("policy '{p}' does not exist; create it with PUT /v1/policies/{p}")));
        }
    }
    let parent_expiry = parent.and_then(|c| c.expires_at);
    let expires_at = match (req.ttl, parent_expiry) {
        (Some(ttl), _) if ttl.is_zero() => return Err(Error::invalid("ttl must be positive")),
        (Some(ttl), Some(limit)) if now + ttl.as_millis() as i64 > limit => {
            return Err(Error::forbidden(format!(
                "ttl {} is longer than your token's remaining lifetime (it expires at {}); ask for less",
                humantime::format_duration(ttl),
                rfc3339(limit)
            )));
        }
        (Some(ttl), _) => Some(now + ttl.as_millis() as i64),
        (None, Some(limit)) => Some((now + DEFAULT_TOKEN_TTL.as_millis() as i64).min(limit)),
        (None, None) if req.policies.iter().any(|p| p == ROOT_POLICY) && parent.is_none() => None,
        (None, None) => Some(now + DEFAULT_TOKEN_TTL.as_millis() as i64),
    };
    let token = new_token_string();
    let id = random_id();
    tokens::insert(
        tx,
        &tokens::NewToken {
            id: &id,
            name: &req.name,
            hash: &hash_token(&token),
            policies: &req.policies,
            parent_id: parent.map(|p| &*p.token_id),
            created_at: now,
            expires_at,
        },
    )?;
    Ok(Minted { token, id, expires_at: expires_at.map(rfc3339) })
}

/// Stores a root token chosen by the operator (`serve --dev --dev-root-token`).
pub fn insert_root_token(tx: &Transaction<'_>, token: &str) -> Result<()> {
    tokens::insert(
        tx,
        &tokens::NewToken {
            id: &random_id(),
            name: "root",
            hash: &hash_token(token),
            policies: &[ROOT_POLICY.to_owned()],
            parent_id: None,
            created_at: now_millis(),
            expires_at: None,
        },
    )
}

pub fn mint_root(tx: &Transaction<'_>, _keys: &Keys) -> Result<Minted> {
    mint(tx, None, MintRequest { name: "root".into(), policies: vec![ROOT_POLICY.into()], ttl: None })
}

fn new_token_string() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

fn random_id() -> String {
    let mut raw = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    format!("tok_{}", hex::encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_store;

    #[tokio::test]
    async fn minted_tokens_authenticate_and_are_scoped() {
        let (_dir, store) = test_store();
        let minted = store
            .write(|tx, _| {
                policies::put(tx, "app", &[Rule { names: "app/*".into(), capabilities: vec![Capability::Read] }])?;
                mint(tx, None, MintRequest { name: "t".into(), policies: vec!["app".into()], ttl: None })
            })
            .await
            .unwrap();
        assert!(minted.token.starts_with(TOKEN_PREFIX));
        let token = minted.token.clone();
        let caller = store.read(move |c, _| authenticate(c, &token)).await.unwrap();
        assert!(caller.allows(Capability::Read, "app/x"));
        assert!(!caller.allows(Capability::Write, "app/x"));
        assert!(!caller.allows(Capability::Read, "db/x"));
        assert!(store.read(|c, _| authenticate(c, "tmb_nope")).await.is_err());
    }

    fn read_rule(names: &str) -> Vec<Rule> {
        vec![Rule { names: names.into(), capabilities: vec![Capability::Read] }]
    }

    /// A policy `app` on `app/*`, a token holding it, and one minted from that token.
    async fn parent_and_child(store: &Store) -> (Minted, Minted) {
        store
            .write(|tx, _| {
                policies::put(tx, "app", &read_rule("app/*"))?;
                let parent = mint(tx, None, MintRequest { name: "p".into(), policies: vec!["app".into()], ttl: None })?;
                let caller = authenticate(tx, &parent.token)?;
                let child =
                    mint(tx, Some(&caller), MintRequest { name: "c".into(), policies: vec!["app".into()], ttl: None })?;
                Ok((parent, child))
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_cached_token_is_refused_once_it_or_its_parent_is_revoked() {
        let (_dir, store) = test_store();
        let cache = TokenCache::default();
        let (parent, child) = parent_and_child(&store).await;
        for token in [&parent.token, &child.token] {
            authenticate_cached(&store, &cache, token).await.unwrap();
            assert!(cache.get(&hash_token(token), store.auth_generation()).is_some(), "cached");
        }
        let id = parent.id.clone();
        store.write(move |tx, _| tokens::revoke_tree(tx, &id, now_millis())).await.unwrap();
        for token in [&parent.token, &child.token] {
            let err = authenticate_cached(&store, &cache, token).await.unwrap_err();
            assert_eq!(err.kind, crate::error::Kind::Unauthorized, "{err}");
        }
    }

    #[tokio::test]
    async fn a_policy_change_applies_to_a_cached_token_at_once() {
        let (_dir, store) = test_store();
        let cache = TokenCache::default();
        let (parent, _) = parent_and_child(&store).await;
        let caller = authenticate_cached(&store, &cache, &parent.token).await.unwrap();
        assert!(caller.allows(Capability::Read, "app/x"));
        store.write(|tx, _| policies::put(tx, "app", &read_rule("db/*"))).await.unwrap();
        let caller = authenticate_cached(&store, &cache, &parent.token).await.unwrap();
        assert!(!caller.allows(Capability::Read, "app/x"));
        assert!(caller.allows(Capability::Read, "db/x"));
        store.write(|tx, _| policies::delete(tx, "app")).await.unwrap();
        let caller = authenticate_cached(&store, &cache, &parent.token).await.unwrap();
        assert!(!caller.allows(Capability::Read, "db/x"));
    }

    #[tokio::test]
    async fn an_expired_cached_token_is_refused() {
        let (_dir, store) = test_store();
        let cache = TokenCache::default();
        let ttl = Some(Duration::from_millis(300));
        let minted = store
            .write(move |tx, _| {
                policies::put(tx, "app", &read_rule("app/*"))?;
                mint(tx, None, MintRequest { name: "brief".into(), policies: vec!["app".into()], ttl })
            })
            .await
            .unwrap();
        authenticate_cached(&store, &cache, &minted.token).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(cache.get(&hash_token(&minted.token), store.auth_generation()).is_none());
        let err = authenticate_cached(&store, &cache, &minted.token).await.unwrap_err();
        assert!(err.message().contains("expired"), "{err}");
    }

    #[tokio::test]
    async fn only_changes_to_tokens_or_policies_invalidate_the_cache() {
        let (_dir, store) = test_store();
        let before = store.auth_generation();
        store
            .write(|tx, _| {
                tx.execute("INSERT INTO meta (key, value) VALUES ('unrelated', 'x')", [])?;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(store.auth_generation(), before, "a write elsewhere keeps cached callers");
        // Even a change that then rolls back moves it: stale is never served.
        let refused = store
            .write(|tx, _| -> Result<()> {
                policies::put(tx, "app", &read_rule("app/*"))?;
                Err(Error::conflict("roll back"))
            })
            .await;
        assert!(refused.is_err());
        assert!(store.auth_generation() > before);
    }
}
