//! Idle sessions kept for the next plugin call that logs in the same way.
//!
//! Logging in to PostgreSQL or MySQL costs more than the statements a
//! rotation or a lease runs (a backend process or thread, a SCRAM exchange
//! of thousands of hash rounds on both sides), and the admin secret of a
//! role or an alternating-users rotation logs in on every call. So a
//! session whose credentials the host took from another, granted secret
//! (`from-secret(named(..))`) is, when the plugin drops it, reset and kept
//! for [`IDLE_FOR`]; the next connect with the same target, database, TLS
//! mode, user and password takes it instead of logging in again.
//!
//! Never reused: sessions logged in with a password the plugin gave, or with
//! the rotated secret's own `current` or `pending` version. Those logins are
//! what a rotation's `test` step proves, so each is a real login.
//!
//! A reset is what the server offers for handing a session to someone new:
//! `DISCARD ALL` in PostgreSQL (settings, session authorization, temporary
//! tables, prepared statements, advisory locks, listeners), `COM_RESET_
//! CONNECTION` in MySQL (user variables, temporary tables, session
//! settings, an open transaction rolled back). A session that is inside a
//! transaction, was cut at a cap, broke, or fails its reset is closed, not
//! kept. Passwords are held only as a keyed hash (HMAC-SHA256 under a key
//! drawn when the process starts), so a changed admin password never finds
//! the old session; a break glass closes every idle session when it ends
//! (see [`super::close_idle_sessions`]).

use super::Driver;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle session is kept.
pub const IDLE_FOR: Duration = Duration::from_secs(30);
/// Idle sessions kept per login.
const PER_LOGIN: usize = 8;
/// Idle sessions kept in all.
const TOTAL: usize = 64;

/// Everything that decides what a session is logged in as, and where.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct LoginKey {
    pub postgres: bool,
    pub addr: SocketAddr,
    pub server_name: String,
    pub database: Option<String>,
    pub tls: u8,
    pub username: String,
    /// HMAC of the password under the pool's key.
    password: [u8; 32],
}

impl LoginKey {
    pub fn new(
        postgres: bool,
        addr: SocketAddr,
        server_name: &str,
        database: Option<&str>,
        tls: u8,
        username: &str,
        password: &str,
    ) -> LoginKey {
        LoginKey {
            postgres,
            addr,
            server_name: server_name.to_owned(),
            database: database.map(str::to_owned),
            tls,
            username: username.to_owned(),
            password: pool().tag(password),
        }
    }
}

struct Idle {
    driver: Driver,
    since: Instant,
}

pub(super) struct Pool {
    key: [u8; 32],
    idle: Mutex<HashMap<LoginKey, Vec<Idle>>>,
}

pub(super) fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        Pool { key, idle: Mutex::new(HashMap::new()) }
    })
}

impl Pool {
    fn tag(&self, password: &str) -> [u8; 32] {
        // HMAC takes a key of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The most recently returned live session for `key`, if one is idle.
    pub fn take(&self, key: &LoginKey) -> Option<Driver> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let sessions = idle.get_mut(key)?;
        let now = Instant::now();
        let taken = loop {
            match sessions.pop() {
                None => break None,
                Some(s) if now.duration_since(s.since) < IDLE_FOR && s.driver.is_open() => break Some(s.driver),
                // Too old or gone: dropping it closes it.
                Some(_) => {}
            }
        };
        if sessions.is_empty() {
            idle.remove(key);
        }
        taken
    }

    /// Resets `driver` and keeps it for `key`, or closes it if it cannot
    /// be reset or there is no room. The reset is one round trip, awaited
    /// in the plugin's `drop` of the connection (inside the step's time
    /// limit), so a session is ready for the next step when this one ends.
    pub async fn give_back(&'static self, key: LoginKey, mut driver: Driver) {
        if !driver.reset().await {
            return;
        }
        self.prune();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = idle.values().map(Vec::len).sum();
        let sessions = idle.entry(key).or_default();
        if total >= TOTAL || sessions.len() >= PER_LOGIN {
            return;
        }
        sessions.push(Idle { driver, since: Instant::now() });
        drop(idle);
        // Closed once its time is up even if no one connects again.
        tokio::spawn(async move {
            tokio::time::sleep(IDLE_FOR).await;
            self.prune();
        });
    }

    /// Closes every idle session.
    pub fn close_all(&self) {
        let closed = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        // Dropping a driver closes its session.
        drop(closed);
    }

    /// Closes the sessions idle for [`IDLE_FOR`] or longer.
    fn prune(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        idle.retain(|_, sessions| {
            sessions.retain(|s| now.duration_since(s.since) < IDLE_FOR);
            !sessions.is_empty()
        });
    }
}
