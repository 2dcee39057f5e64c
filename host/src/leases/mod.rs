//! Dynamic secrets: credentials a plugin creates on demand, each held by a
//! lease that ends by itself.
//!
//! - `roles.rs`: a role = dynamic plugin + params + grants + admin secret +
//!   TTLs + quota, checked by the plugin when saved.
//! - `lease.rs`: the lease rows (`issuing` → `active` → `revoke_pending` →
//!   `revoked`).
//! - this file: issuing, renewing and revoking through the plugin, and the
//!   sweeper that revokes expired leases and retries failed revocations
//!   with backoff until the target confirms — a lease is never forgotten.

pub mod lease;
pub mod roles;

use crate::audit::{AuditLog, Entry};
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::metrics::metrics;
use crate::model::{SecretName, now_millis, rfc3339};
use crate::plugins::CallContext;
use crate::plugins::dynamic_bindings::exports::tumbler::rotator::dynamic::IssueRequest;
use crate::plugins::registry::Registry;
use crate::store::{Durability, Store};
use lease::{Holder, LeaseRow, LeaseView};
use roles::RoleRow;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use zeroize::Zeroizing;

/// How leases behave; `serve` flags set these.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Leases one token may hold at once.
    pub token_quota: u32,
    /// Revocations run at once.
    pub concurrency: usize,
    /// First wait after a failed revocation; doubles up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            token_quota: 100,
            concurrency: 8,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
        }
    }
}

/// The sweeper looks at least this often, so an expiry is acted on within it.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

pub struct Leases {
    store: Store,
    audit: AuditLog,
    registry: Arc<Registry>,
    settings: Settings,
    wake: Notify,
    slots: Arc<Semaphore>,
    /// Leases whose revocation runs now in this process.
    revoking: Mutex<HashSet<String>>,
}

/// `POST /v1/roles/{name}:issue` answers this; the credential only here.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Issued {
    pub lease_id: String,
    pub role: String,
    pub expires_at: String,
    pub max_expires_at: String,
    /// What the plugin issued (JSON when it is JSON).
    #[schema(value_type = Object)]
    pub credential: serde_json::Value,
}

impl Leases {
    /// Clears issues a crash interrupted and starts the sweeper; leases
    /// that expired while the server was down are revoked at once.
    pub async fn start(
        store: Store,
        audit: AuditLog,
        registry: Arc<Registry>,
        settings: Settings,
    ) -> Result<Arc<Self>> {
        let log = audit.clone();
        let interrupted = store
            .write(move |tx, keys| {
                let rows = lease::clear_interrupted(tx)?;
                for (id, role) in &rows {
                    let entry = Entry::lease("lease.issue", &roles::resource(role), id, "interrupted");
                    log.append_in(tx, keys, vec![entry])?;
                }
                Ok(rows)
            })
            .await?;
        if !interrupted.is_empty() {
            tracing::warn!(
                count = interrupted.len(),
                "leases whose issue a restart interrupted were dropped; a credential made just before the \
                 crash expires at the target by itself only where the target supports expiry"
            );
        }
        let leases = Arc::new(Leases {
            slots: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            store,
            audit,
            registry,
            settings,
            wake: Notify::new(),
            revoking: Mutex::new(HashSet::new()),
        });
        tokio::spawn(sweep(leases.clone()));
        Ok(leases)
    }

    /// Wakes the sweeper (leases were marked for revocation).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Issues a credential from `role` for `caller`.
    pub async fn issue(
        &self,
        caller: &Caller,
        role_name: &str,
        ttl: Option<Duration>,
        audit: &crate::audit::RequestAudit,
    ) -> Result<Issued> {
        let name = role_name.to_owned();
        let role = self.store.read(move |c, _| roles::get(c, &name)).await?;
        let ttl_ms = match ttl {
            None => role.default_ttl_ms,
            Some(t) if t < Duration::from_secs(1) => return Err(Error::invalid("ttl: must be at least 1s")),
            Some(t) => (t.as_millis() as i64).min(role.max_ttl_ms),
        };
        let (token_id, token_name) = (caller.token_id.clone(), caller.token_name.clone());
        let (token_expires_at, token_quota) = (caller.expires_at, self.settings.token_quota);
        let r = role.clone();
        // Relaxed: a reservation lost in a power cut is one the next start
        // would drop anyway; the lease becomes durable when it is activated.
        let reserved = self
            .store
            .write_with(Durability::Normal, move |tx, _| {
                let holder = Holder { token_id: &token_id, token_name: &token_name, token_expires_at, token_quota };
                lease::reserve(tx, &r, &holder, ttl_ms, now_millis())
            })
            .await?;
        let request = IssueRequest {
            role: role.name.clone(),
            params: reserved.params.clone(),
            lease_id: reserved.id.clone(),
            expires_at: rfc3339(reserved.expires_at),
        };
        let outcome = match self.plugin_for(&reserved).await {
            Ok((plugin, ctx)) => self.registry.runtime().issue(&plugin, request, ctx).await.result,
            Err(e) => {
                self.drop_reservation(&reserved.id).await;
                return Err(e);
            }
        };
        let issued = match outcome {
            Ok(Some(json)) => json,
            Ok(None) => {
                self.drop_reservation(&reserved.id).await;
                return Err(Error::internal("the plugin's issue returned nothing"));
            }
            Err(e) => {
                self.drop_reservation(&reserved.id).await;
                return Err(Error::plugin_failed(format!("issuing from role '{}' failed: {}", role.name, e.message)));
            }
        };
        let parsed: IssuedJson =
            serde_json::from_str(&issued).map_err(|e| Error::internal(format!("issue result: {e}")))?;
        let handle = Zeroizing::new(parsed.revoke_handle.clone());
        let l = reserved.clone();
        let log = self.audit.clone();
        let written = audit
            .write_with_status(
                |_| axum::http::StatusCode::CREATED,
                move |tx, keys| {
                    lease::activate(tx, keys, &l, &handle)?;
                    let entry = Entry::lease("lease.issue", &roles::resource(&l.role), &l.id, "ok")
                        .with_detail("expires_at", rfc3339(l.expires_at));
                    log.append_in(tx, keys, vec![entry])
                },
            )
            .await;
        if let Err(e) = written {
            // The credential exists but no lease holds it: take it back now.
            tracing::error!(lease_id = %reserved.id, error = %e, "could not record an issued lease; revoking it");
            self.revoke_unrecorded(&reserved, &parsed.revoke_handle).await;
            self.drop_reservation(&reserved.id).await;
            return Err(e);
        }
        metrics().leases_active.add(&[], 1.0);
        let credential = serde_json::from_str(&parsed.credential)
            .unwrap_or_else(|_| serde_json::Value::String(parsed.credential.clone()));
        Ok(Issued {
            lease_id: reserved.id,
            role: role.name,
            expires_at: rfc3339(reserved.expires_at),
            max_expires_at: rfc3339(reserved.max_expires_at),
            credential,
        })
    }

    async fn drop_reservation(&self, id: &str) {
        let id = id.to_owned();
        if let Err(e) = self.store.write(move |tx, _| lease::abandon(tx, &id)).await {
            tracing::error!(error = %e, "could not drop a lease reservation; it is cleared at the next start");
        }
    }

    async fn revoke_unrecorded(&self, l: &LeaseRow, handle: &str) {
        if let Ok((plugin, ctx)) = self.plugin_for(l).await {
            let outcome = self.registry.runtime().revoke(&plugin, &l.role, &l.params, handle, ctx).await;
            if let Err(e) = outcome.result {
                tracing::error!(lease_id = %l.id, code = e.code(), "revoking an unrecorded credential failed");
            }
        }
    }

    /// Renews a lease: its end moves to now + `ttl` (the role's default
    /// when absent), never past its max; the target's own expiry follows.
    pub async fn renew(
        &self,
        caller: &Caller,
        id: &str,
        ttl: Option<Duration>,
        audit: &crate::audit::RequestAudit,
    ) -> Result<LeaseView> {
        let (l, role) = self.load_for(caller, id).await?;
        if l.state != "active" {
            return Err(Error::conflict(format!("lease '{id}' is {}; only an active lease can be renewed", l.state)));
        }
        let ttl_ms = match ttl {
            None => role.default_ttl_ms,
            Some(t) if t < Duration::from_secs(1) => return Err(Error::invalid("ttl: must be at least 1s")),
            Some(t) => t.as_millis() as i64,
        };
        let now = now_millis();
        let expires_at = (now + ttl_ms).min(l.max_expires_at);
        if expires_at <= l.expires_at {
            // Nothing to extend (already at its max): say so rather than shorten it.
            return Err(Error::conflict(format!(
                "lease '{id}' already ends at {}, its max TTL; it cannot be renewed further",
                rfc3339(l.expires_at)
            )));
        }
        let handle = self.handle(&l).await?;
        let (plugin, ctx) = self.plugin_for(&l).await?;
        let outcome =
            self.registry.runtime().renew(&plugin, &l.role, &l.params, &handle, &rfc3339(expires_at), ctx).await;
        if let Err(e) = outcome.result {
            return Err(Error::plugin_failed(format!("renewing lease '{id}' at the target failed: {}", e.message)));
        }
        let lid = l.id.clone();
        let log = self.audit.clone();
        let role_resource = roles::resource(&l.role);
        let updated = audit
            .write(move |tx, keys| {
                lease::set_expiry(tx, &lid, expires_at)?;
                let entry = Entry::lease("lease.renew", &role_resource, &lid, "ok")
                    .with_detail("expires_at", rfc3339(expires_at));
                log.append_in(tx, keys, vec![entry])?;
                lease::get(tx, &lid)
            })
            .await?;
        Ok(LeaseView::from(&updated))
    }

    /// Revokes a lease now; answers once the target confirmed, or with the
    /// lease left `revoke_pending` (retried until it succeeds).
    pub async fn revoke(&self, caller: &Caller, id: &str, audit: &crate::audit::RequestAudit) -> Result<LeaseView> {
        let (l, _) = self.load_for(caller, id).await?;
        let lid = l.id.clone();
        audit
            .write(move |tx, _| {
                lease::mark_revoke(tx, std::slice::from_ref(&lid), "revoked by request", now_millis())?;
                Ok(())
            })
            .await?;
        self.revoke_one(&l.id).await;
        let lid = l.id.clone();
        let after = self.store.read(move |c, _| lease::get(c, &lid)).await?;
        Ok(LeaseView::from(&after))
    }

    /// Marks every lease of a role for revocation; the sweeper revokes them.
    pub async fn revoke_all(&self, role: &str, audit: &crate::audit::RequestAudit) -> Result<usize> {
        let name = role.to_owned();
        let ids = audit
            .write(move |tx, _| {
                let role = roles::get(tx, &name)?;
                lease::mark_role(tx, role.id, "revoke-all on the role", now_millis())
            })
            .await?;
        self.wake();
        Ok(ids.len())
    }

    /// A lease and its role, if `caller` may act on it: `read` on the role,
    /// and the lease is theirs (or they hold `admin` on the role).
    async fn load_for(&self, caller: &Caller, id: &str) -> Result<(LeaseRow, RoleRow)> {
        let lid = id.to_owned();
        let (l, role) = self
            .store
            .read(move |c, _| {
                let l = lease::get(c, &lid)?;
                let role = roles::by_id(c, l.role_id)?;
                Ok((l, role))
            })
            .await?;
        let resource = roles::resource(&role.name);
        caller.require(crate::model::Capability::Read, &resource)?;
        if *l.token_id != *caller.token_id && !caller.allows(crate::model::Capability::Admin, &resource) {
            return Err(Error::forbidden(format!(
                "lease '{id}' was issued to another token; only its holder or an admin of {resource} may act on it"
            )));
        }
        Ok((l, role))
    }

    async fn handle(&self, l: &LeaseRow) -> Result<Zeroizing<String>> {
        let l = l.clone();
        self.store.read(move |c, keys| lease::handle(c, keys, &l)).await
    }

    /// The plugin a lease was issued with, and a call context granting what
    /// its role granted (plus the admin secret).
    async fn plugin_for(&self, l: &LeaseRow) -> Result<(Arc<crate::plugins::LoadedPlugin>, CallContext)> {
        let (_, plugin) = self.registry.get_pinned(&l.plugin, &l.plugin_sha256).await?;
        let admin = serde_json::from_str::<serde_json::Value>(&l.params)
            .ok()
            .and_then(|p| p.get("admin_secret").and_then(|v| v.as_str()).map(str::to_owned))
            .unwrap_or_default();
        let grants = roles::parse_grants(&l.grants, &admin)?;
        let ctx = CallContext {
            plugin: l.plugin.clone(),
            secret: SecretName::parse(&roles::resource(&l.role)).ok(),
            grants: Arc::new(grants),
            store: Some(self.store.clone()),
            current_value: None,
            pending_value: None,
            audit: Some(self.audit.clone()),
        };
        Ok((plugin, ctx))
    }

    /// One attempt at revoking a `revoke_pending` lease at its target.
    async fn revoke_one(&self, id: &str) {
        if !self.revoking.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned()) {
            return;
        }
        let _permit = self.slots.acquire().await;
        let result = self.try_revoke(id).await;
        self.revoking.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        if let Err(e) = result {
            tracing::error!(lease_id = id, error = %e, "revoking a lease failed in the host; retried later");
        }
    }

    async fn try_revoke(&self, id: &str) -> Result<()> {
        let lid = id.to_owned();
        let l = self.store.read(move |c, _| lease::get(c, &lid)).await?;
        if l.state != "revoke_pending" {
            return Ok(());
        }
        let handle = self.handle(&l).await?;
        let outcome = match self.plugin_for(&l).await {
            Ok((plugin, ctx)) => self.registry.runtime().revoke(&plugin, &l.role, &l.params, &handle, ctx).await.result,
            Err(e) => {
                Err(crate::plugins::PluginError { kind: crate::plugins::PluginErrorKind::Host, message: e.to_string() })
            }
        };
        let now = now_millis();
        let log = self.audit.clone();
        let resource = roles::resource(&l.role);
        let action = if l.revoke_reason.as_deref() == Some("expired") { "lease.expire" } else { "lease.revoke" };
        match outcome {
            Ok(_) => {
                let lid = l.id.clone();
                let done = self
                    .store
                    .write(move |tx, keys| {
                        let changed = lease::revoked(tx, &lid, now)?;
                        if changed {
                            log.append_in(tx, keys, vec![Entry::lease(action, &resource, &lid, "ok")])?;
                        }
                        Ok(changed)
                    })
                    .await?;
                if done {
                    let m = metrics();
                    m.leases_active.add(&[], -1.0);
                    if action == "lease.expire" {
                        m.leases_expired.inc(&[]);
                    }
                }
            }
            Err(e) => {
                let delay = backoff(&self.settings, l.attempts + 1);
                let next = now + delay.as_millis() as i64;
                tracing::warn!(
                    lease_id = %l.id,
                    role = %l.role,
                    code = e.code(),
                    retry_in_ms = delay.as_millis() as u64,
                    "revoking a lease at its target failed; it stays revoke_pending and is retried"
                );
                let lid = l.id.clone();
                let error = format!("{}: {}", e.code(), e.message);
                let code = e.code();
                self.store
                    .write(move |tx, keys| {
                        lease::revoke_failed(tx, &lid, next, &error)?;
                        let entry = Entry::lease("lease.revoke_failed", &resource, &lid, code)
                            .with_detail("next_attempt_at", rfc3339(next));
                        log.append_in(tx, keys, vec![entry])
                    })
                    .await?;
            }
        }
        Ok(())
    }
}

/// The issue result as the runtime hands it over; wiped when dropped.
#[derive(serde::Deserialize)]
struct IssuedJson {
    credential: String,
    revoke_handle: String,
}

impl Drop for IssuedJson {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.credential.zeroize();
        self.revoke_handle.zeroize();
    }
}

/// Capped exponential backoff with jitter (up to a quarter more).
fn backoff(settings: &Settings, attempt: u32) -> Duration {
    let base = settings.retry_base.as_millis() as u64;
    let exp = base.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(settings.retry_max.as_millis() as u64).max(1);
    let jitter = rand::random::<u64>() % (capped / 4 + 1);
    Duration::from_millis(capped + jitter)
}

/// The sweeper: marks expired leases, runs due revocations concurrently,
/// sleeps until the next expiry or retry (at most [`SWEEP_EVERY`]).
async fn sweep(leases: Arc<Leases>) {
    let mut last_prune = 0;
    loop {
        let next = match sweep_once(&leases, &mut last_prune).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "lease sweep failed; trying again shortly");
                None
            }
        };
        let wait = match next {
            Some(t) => Duration::from_millis((t - now_millis()).clamp(0, SWEEP_EVERY.as_millis() as i64) as u64),
            None => SWEEP_EVERY,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = leases.wake.notified() => {}
        }
    }
}

/// One sweep; returns when the sweeper next has something to do.
async fn sweep_once(leases: &Arc<Leases>, last_prune: &mut i64) -> Result<Option<i64>> {
    let now = now_millis();
    let prune = now - *last_prune > 3_600_000;
    let mut next = leases.store.read(|c, _| lease::next_due(c)).await?;
    // Nothing expired and no revocation due (the common case, twice a
    // second): no write, so an idle server commits nothing.
    if next.is_some_and(|t| t <= now) || prune {
        leases
            .store
            .write(move |tx, _| {
                lease::expire_due(tx, now)?;
                if prune {
                    lease::prune(tx, now)?;
                }
                Ok(())
            })
            .await?;
        if prune {
            *last_prune = now;
        }
        let due = leases.store.read(move |c, _| lease::revocations_due(c, now, 1_000)).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for id in due {
            let l = leases.clone();
            tasks.spawn(async move { l.revoke_one(&id).await });
        }
        while tasks.join_next().await.is_some() {}
        next = leases.store.read(|c, _| lease::next_due(c)).await?;
    }
    let (active, pending) = leases.store.read(|c, _| lease::counts(c)).await?;
    let m = metrics();
    m.leases_active.set(&[], active as f64);
    m.leases_revoke_pending.set(&[], pending as f64);
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_idle_sweeper_reads_but_never_writes() {
        let (dir, store) = crate::store::test_store();
        let alerts = crate::alerts::Alerts::new(None, crate::alerts::Retry::default()).unwrap();
        let audit = AuditLog::start(store.clone(), None, alerts).unwrap();
        let cache =
            crate::plugins::cache::ComponentCache::new(dir.path().join("cache"), Zeroizing::new([3; 32])).unwrap();
        let runtime = crate::plugins::Runtime::new(Default::default(), cache).unwrap();
        let registry = Registry::start(store.clone(), runtime, &[]).await.unwrap();
        let _leases = Leases::start(store.clone(), audit, registry, Settings::default()).await.unwrap();
        // The first sweep prunes (it does so hourly): a write. After it, with
        // no lease at all, sweeps every SWEEP_EVERY find nothing due.
        tokio::time::sleep(SWEEP_EVERY * 2).await;
        let before = store.commits();
        tokio::time::sleep(SWEEP_EVERY * 4).await;
        assert_eq!(store.commits(), before, "the sweeper wrote with nothing due");
    }

    #[test]
    fn revocation_backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let s = Settings {
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
            ..Settings::default()
        };
        for (attempt, floor) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1_600), (6, 2_000), (30, 2_000)] {
            for _ in 0..50 {
                let d = backoff(&s, attempt).as_millis() as u64;
                assert!(d >= floor && d <= floor + floor / 4, "attempt {attempt}: {d} ms");
            }
        }
    }

    #[test]
    fn role_names_stay_one_path_segment() {
        for ok in ["app", "orders-ro", "a.b_c"] {
            roles::validate_name(ok).unwrap();
        }
        for bad in ["", "a/b", "a:issue", "sp ace", &"x".repeat(129)] {
            let e = roles::validate_name(bad).unwrap_err();
            assert!(e.message().contains("role name"), "{}", e.message());
        }
    }
}
