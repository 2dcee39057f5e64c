//! The imports a plugin may call, one file each, all the same shape: check
//! the grant, call the real driver, map the error and say whose fault it is.
//! The grant checks live here, written once.

pub mod crypto;
pub mod http;
pub mod log;
pub mod secrets;
pub mod sql;
pub mod ssh;

use super::bindings::tumbler::rotator::types::{ErrorKind, HostError, SecretRef};
use super::runtime::PluginState;
use crate::error::{Error, Result};
use crate::model::SecretName;
use crate::store::Durability;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// What an operator granted a rotation, in API form:
/// `{"sql": ["host:port"], "ssh": ["host:port SHA256:<fingerprint>" or "host:port tofu"],
/// "http": ["https://host[:port]/prefix"], "secrets": ["name"]}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantsSpec {
    #[serde(default)]
    pub sql: Vec<String>,
    #[serde(default)]
    pub ssh: Vec<String>,
    #[serde(default)]
    pub http: Vec<String>,
    #[serde(default)]
    pub secrets: Vec<String>,
}

/// Grants parsed into types that cannot hold a bad target.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    pub sql: Vec<HostPort>,
    pub ssh: Vec<SshGrant>,
    pub http: Vec<UrlPrefix>,
    pub secrets: Vec<SecretName>,
}

impl GrantsSpec {
    pub fn parse(&self) -> Result<Grants> {
        let field = |name: &str, e: Error| Error::invalid(format!("grants.{name}: {}", e.message()));
        Ok(Grants {
            sql: self.sql.iter().map(|s| HostPort::parse(s)).collect::<Result<_>>().map_err(|e| field("sql", e))?,
            ssh: self.ssh.iter().map(|s| SshGrant::parse(s)).collect::<Result<_>>().map_err(|e| field("ssh", e))?,
            http: self.http.iter().map(|s| UrlPrefix::parse(s)).collect::<Result<_>>().map_err(|e| field("http", e))?,
            secrets: self
                .secrets
                .iter()
                .map(|s| SecretName::parse(s))
                .collect::<Result<_>>()
                .map_err(|e| field("secrets", e))?,
        })
    }
}

/// A granted network target. `ip` is set when the grant names an address,
/// which is what allows a loopback or private target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
    pub ip: Option<IpAddr>,
}

impl HostPort {
    pub fn parse(raw: &str) -> Result<Self> {
        let bad = || Error::invalid(format!("{raw:?} is not host:port (IPv6 as [addr]:port)"));
        if let Ok(sa) = raw.parse::<SocketAddr>() {
            return Ok(HostPort { host: sa.ip().to_string(), port: sa.port(), ip: Some(sa.ip()) });
        }
        let (host, port) = raw.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let valid = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c));
        if !valid || port == 0 {
            return Err(bad());
        }
        let ip = host.parse::<IpAddr>().ok();
        Ok(HostPort { host, port, ip })
    }

    pub fn matches(&self, host: &str, port: u16) -> bool {
        self.port == port && normalise_host(host) == self.host
    }
}

/// A granted SSH target and how its host key is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshGrant {
    pub target: HostPort,
    pub host_key: HostKeyCheck,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKeyCheck {
    /// `host:port SHA256:<base64>`: only the key with this fingerprint, in
    /// the form `ssh-keygen -lf` prints.
    Pinned(String),
    /// `host:port tofu`: the first key seen is recorded and enforced after.
    TrustOnFirstUse,
    /// A bare `host:port`. It parses, so a grant written without a key can
    /// be stored and shown, but connecting is refused until the operator
    /// pins the key or opts into trust on first use.
    Unpinned,
}

impl SshGrant {
    pub fn parse(raw: &str) -> Result<Self> {
        let mut words = raw.split_whitespace();
        let target = HostPort::parse(words.next().unwrap_or_default())?;
        let host_key = match words.next() {
            None => HostKeyCheck::Unpinned,
            Some("tofu") => HostKeyCheck::TrustOnFirstUse,
            Some(fingerprint) => HostKeyCheck::Pinned(parse_sha256_fingerprint(fingerprint).ok_or_else(|| {
                Error::invalid(format!(
                    "{raw:?}: {fingerprint:?} is not a host key fingerprint; write \"host:port SHA256:<base64>\" \
                     as `ssh-keygen -lf` prints it, or \"host:port tofu\" to trust the first key seen"
                ))
            })?),
        };
        if words.next().is_some() {
            return Err(Error::invalid(format!(
                "{raw:?}: write \"host:port SHA256:<base64>\" or \"host:port tofu\", nothing after"
            )));
        }
        Ok(SshGrant { target, host_key })
    }
}

/// `SHA256:` and the unpadded base64 of 32 bytes, as OpenSSH prints it;
/// padding is dropped so a copied fingerprint compares equal either way.
fn parse_sha256_fingerprint(raw: &str) -> Option<String> {
    use base64::Engine as _;
    let encoded = raw.strip_prefix("SHA256:")?.trim_end_matches('=');
    let digest = base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded).ok()?;
    (digest.len() == 32).then(|| format!("SHA256:{encoded}"))
}

fn normalise_host(host: &str) -> String {
    let h = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    match h.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => h.trim_end_matches('.').to_owned(),
    }
}

/// A granted URL prefix: scheme, host, port and a path matched at a
/// segment boundary.
#[derive(Clone, Debug)]
pub struct UrlPrefix {
    pub scheme: String,
    pub target: HostPort,
    pub path: String,
}

impl UrlPrefix {
    pub fn parse(raw: &str) -> Result<Self> {
        let url = reqwest::Url::parse(raw)
            .map_err(|e| Error::invalid(format!("{raw:?} is not a URL ({e}); write https://host[:port]/prefix")))?;
        let (scheme, target) = url_target(&url).map_err(|m| Error::invalid(format!("{raw:?}: {m}")))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Error::invalid(format!("{raw:?}: a grant is a path prefix, without ?query or #fragment")));
        }
        Ok(UrlPrefix { scheme, target, path: url.path().trim_end_matches('/').to_owned() })
    }

    /// True if `url` (already normalised by parsing) falls under this prefix.
    pub fn covers(&self, scheme: &str, target: &HostPort, path: &str) -> bool {
        let path_ok = path == self.path
            || self.path.is_empty()
            || path.strip_prefix(&self.path).is_some_and(|rest| rest.starts_with('/'));
        scheme == self.scheme && target.host == self.target.host && target.port == self.target.port && path_ok
    }
}

/// Scheme and host:port of an http(s) URL, refusing userinfo.
pub fn url_target(url: &reqwest::Url) -> std::result::Result<(String, HostPort), String> {
    let scheme = url.scheme().to_owned();
    if scheme != "https" && scheme != "http" {
        return Err(format!("scheme {scheme:?} is not http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("URLs with user:password@ are refused".into());
    }
    let host = url.host_str().ok_or("the URL has no host")?;
    let port = url.port_or_known_default().ok_or("the URL has no port")?;
    let host = normalise_host(host);
    let ip = host.parse::<IpAddr>().ok();
    Ok((scheme, HostPort { host, port, ip }))
}

/// Per-call caps on what a plugin may consume, counted as it goes.
#[derive(Default)]
pub struct Budget {
    http_requests: u32,
    sql_connects: u32,
    sql_connections_held: u32,
    crypto_rounds: u64,
}

/// Enough for a plugin polling an endpoint every 100 ms for a whole minute.
pub const MAX_HTTP_REQUESTS_PER_CALL: u32 = 600;
pub const MAX_SQL_CONNECTS_PER_CALL: u32 = 16;
pub const MAX_SQL_CONNECTIONS_HELD: u32 = 4;
/// PBKDF2 rounds (iterations × output blocks) a step may ask the host for:
/// about 0.1-1 s of one core, and thousands of SCRAM verifiers.
pub const MAX_CRYPTO_ROUNDS_PER_CALL: u64 = 16_000_000;

impl Budget {
    pub fn take_http_request(&mut self) -> std::result::Result<(), HostError> {
        self.http_requests += 1;
        if self.http_requests > MAX_HTTP_REQUESTS_PER_CALL {
            return Err(host_error(
                ErrorKind::Limit,
                format!("a step may make at most {MAX_HTTP_REQUESTS_PER_CALL} HTTP requests"),
            ));
        }
        Ok(())
    }

    pub fn take_sql_connect(&mut self) -> std::result::Result<(), HostError> {
        self.sql_connects += 1;
        if self.sql_connects > MAX_SQL_CONNECTS_PER_CALL {
            return Err(host_error(
                ErrorKind::Limit,
                format!("a step may open at most {MAX_SQL_CONNECTS_PER_CALL} SQL connections"),
            ));
        }
        Ok(())
    }

    /// Refuses a new connection while the call already holds the most it may.
    pub fn check_sql_connections_held(&self) -> std::result::Result<(), HostError> {
        if self.sql_connections_held >= MAX_SQL_CONNECTIONS_HELD {
            return Err(host_error(
                ErrorKind::Limit,
                format!("a step may hold at most {MAX_SQL_CONNECTIONS_HELD} SQL connections at once; drop one first"),
            ));
        }
        Ok(())
    }

    /// Counts `rounds` of key derivation against the step's allowance.
    pub fn take_crypto_rounds(&mut self, rounds: u64) -> std::result::Result<(), HostError> {
        if self.crypto_rounds + rounds > MAX_CRYPTO_ROUNDS_PER_CALL {
            return Err(host_error(
                ErrorKind::Limit,
                format!(
                    "a step may run at most {MAX_CRYPTO_ROUNDS_PER_CALL} rounds of key derivation in all \
                     ({} used, {rounds} asked)",
                    self.crypto_rounds
                ),
            ));
        }
        self.crypto_rounds += rounds;
        Ok(())
    }

    pub fn sql_connection_opened(&mut self) {
        self.sql_connections_held += 1;
    }

    pub fn sql_connection_closed(&mut self) {
        self.sql_connections_held = self.sql_connections_held.saturating_sub(1);
    }
}

impl PluginState {
    /// Records a capability call (plugin, secret, capability, target,
    /// outcome; never a value) in the audit log, and hands the plugin the
    /// result only once the record is written: no unaudited result.
    /// (The state is not `Sync`: everything is taken from it before the await.)
    pub(crate) fn audited<T: Send>(
        &self,
        capability: &str,
        target: &str,
        result: std::result::Result<T, HostError>,
    ) -> impl std::future::Future<Output = std::result::Result<T, HostError>> + Send + use<T> {
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => error_kind_name(e.kind),
        };
        let secret = self.call.secret.as_ref().map(|s| s.as_str()).unwrap_or("");
        // The audit record says it all; the line is for runs without an
        // audit log (offline tools), or at `debug`.
        if self.call.audit.is_some() {
            tracing::debug!(target: "tumbler::audit", plugin = %self.call.plugin, secret, capability, target, outcome, "plugin capability call");
        } else {
            tracing::info!(target: "tumbler::audit", plugin = %self.call.plugin, secret, capability, target, outcome, "plugin capability call");
        }
        let record = self.call.audit.clone().map(|audit| {
            (audit, crate::audit::Entry::plugin_call(secret, &self.call.plugin, capability, target, outcome))
        });
        async move {
            if let Some((audit, entry)) = record {
                // The call is made: its record commits to the WAL before the
                // plugin sees the result, and reaches the disk within a
                // second (see the audit module's durability note).
                if let Err(e) = audit.append_with(entry, Durability::Normal).await {
                    return Err(host_error(
                        ErrorKind::Host,
                        format!("the audit log is unavailable ({e}); the call's result is withheld"),
                    ));
                }
            }
            result
        }
    }
}

pub fn error_kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Denied => "denied",
        ErrorKind::Invalid => "invalid",
        ErrorKind::Unreachable => "unreachable",
        ErrorKind::Auth => "auth",
        ErrorKind::Target => "target",
        ErrorKind::Limit => "limit",
        ErrorKind::Host => "host",
    }
}

/// Login fields the host took from a secret for `sql` or `ssh`
/// (`secret-ref`), so they never entered the plugin. No `Debug`: it holds
/// a password or key.
pub(crate) struct SecretCredentials {
    pub username: String,
    pub password: Option<Zeroizing<String>>,
    pub private_key: Option<Zeroizing<String>>,
}

impl PluginState {
    /// Reads the secret a `secret-ref` names and takes `username` and
    /// `password` / `private_key` from its JSON value (AWS's shape; other
    /// fields are ignored). Errors name the secret, never a value.
    pub(crate) async fn secret_credentials(
        &mut self,
        secret: &SecretRef,
    ) -> std::result::Result<SecretCredentials, HostError> {
        let (which, value) = match secret {
            SecretRef::Current => ("the current version".to_owned(), self.call.current_value.clone()),
            SecretRef::Pending => ("the pending version".to_owned(), self.call.pending_value.clone()),
            SecretRef::Named(name) => (format!("secret '{name}'"), Some(Arc::new(self.granted_secret(name).await?))),
        };
        let value = value.ok_or_else(|| {
            host_error(ErrorKind::Invalid, format!("this step has no {which} to take credentials from"))
        })?;
        // serde's own messages can quote the offending value, so they are
        // replaced by one that names only the secret.
        let shape = || {
            host_error(
                ErrorKind::Invalid,
                format!("{which} is not a JSON object with a string `username` and `password` or `private_key`"),
            )
        };
        let serde_json::Value::Object(mut fields) = serde_json::from_str(value.as_str()).map_err(|_| shape())? else {
            return Err(shape());
        };
        let mut take = |name: &str| match fields.remove(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(Zeroizing::new(s))),
            Some(_) => Err(shape()),
        };
        let username = take("username")?.ok_or_else(shape)?;
        let password = take("password")?;
        let private_key = take("private_key")?;
        if password.is_none() && private_key.is_none() {
            return Err(shape());
        }
        Ok(SecretCredentials { username: username.to_string(), password, private_key })
    }
}

pub fn host_error(kind: ErrorKind, message: impl Into<String>) -> HostError {
    HostError { kind, message: message.into() }
}

pub fn denied(message: impl Into<String>) -> HostError {
    host_error(ErrorKind::Denied, message)
}

/// Resolves a granted target once and returns the address to connect to.
/// Loopback, private, link-local and metadata addresses are refused unless
/// the grant names that very IP, so a DNS name cannot be pointed inwards.
pub async fn resolve_checked(grant: &HostPort) -> std::result::Result<SocketAddr, HostError> {
    let lookup =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((grant.host.as_str(), grant.port)))
            .await
            .map_err(|_| host_error(ErrorKind::Unreachable, format!("resolving {} timed out", grant.host)))?
            .map_err(|e| host_error(ErrorKind::Unreachable, format!("cannot resolve {}: {e}", grant.host)))?;
    let mut refused = Vec::new();
    for addr in lookup {
        if !is_internal(addr.ip()) || grant.ip == Some(addr.ip()) {
            return Ok(addr);
        }
        refused.push(addr.ip().to_string());
    }
    Err(denied(format!(
        "{} resolves to internal address(es) {}; grant the IP itself (e.g. \"{}:{}\") to allow it",
        grant.host,
        refused.join(", "),
        refused.first().map(String::as_str).unwrap_or("IP"),
        grant.port
    )))
}

/// Addresses a plugin may reach only when granted by IP.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_prefixes_match_at_segment_boundaries_after_normalising() {
        let g = UrlPrefix::parse("https://api.example.com/v1/keys").unwrap();
        let check = |u: &str| {
            let url = reqwest::Url::parse(u).unwrap();
            let (scheme, target) = url_target(&url).unwrap();
            g.covers(&scheme, &target, url.path())
        };
        assert!(check("https://api.example.com/v1/keys"));
        assert!(check("https://api.example.com/v1/keys/abc"));
        assert!(!check("https://api.example.com/v1/keysX"));
        assert!(!check("https://api.example.com/v1/keys/../other"));
        assert!(!check("https://api.example.com/v1/keys/%2e%2e/other"));
        assert!(!check("http://api.example.com/v1/keys"));
        assert!(!check("https://api.example.com:444/v1/keys"));
        assert!(url_target(&reqwest::Url::parse("https://api.example.com@evil/v1/keys").unwrap()).is_err());
    }

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn ssh_grants_pin_a_host_key_or_opt_into_trust_on_first_use() {
        let fingerprint = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
        let pinned = SshGrant::parse(&format!("Web1.example.com:22 {fingerprint}")).unwrap();
        assert!(pinned.target.matches("web1.example.com", 22));
        assert_eq!(pinned.host_key, HostKeyCheck::Pinned(fingerprint.to_owned()));
        // Padding, as some tools print it, compares equal.
        let padded = SshGrant::parse(&format!("10.0.0.5:22 {fingerprint}=")).unwrap();
        assert_eq!(padded.host_key, HostKeyCheck::Pinned(fingerprint.to_owned()));
        assert_eq!(SshGrant::parse("10.0.0.5:2222 tofu").unwrap().host_key, HostKeyCheck::TrustOnFirstUse);
        assert_eq!(SshGrant::parse("10.0.0.5:22").unwrap().host_key, HostKeyCheck::Unpinned);
        for bad in [
            "10.0.0.5:22 MD5:aa:bb",
            "10.0.0.5:22 SHA256:tooshort",
            "10.0.0.5:22 SHA256:!!!notbase64!!!",
            "10.0.0.5:22 tofu extra",
            "10.0.0.5 tofu",
            "",
        ] {
            assert!(SshGrant::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_port_grants_parse_and_match_exactly() {
        let g = HostPort::parse("DB.example.com:5432").unwrap();
        assert!(g.matches("db.example.com", 5432));
        assert!(!g.matches("db.example.com", 5433));
        assert!(!g.matches("db.example.com.evil", 5432));
        assert_eq!(HostPort::parse("[::1]:22").unwrap().ip, Some("::1".parse().unwrap()));
        assert!(HostPort::parse("nohostport").is_err());
        assert!(HostPort::parse("a b:1").is_err());
    }
}
