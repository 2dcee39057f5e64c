//! Types parsed at the edge: once a value of one of these exists it is valid,
//! so inner code never re-checks names, labels, values or capabilities.

use crate::error::Error;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use zeroize::Zeroizing;

pub const MAX_NAME_LEN: usize = 512;
/// Starts a deserialization error that must become 413 `too_large`, not 400
/// (serde can carry only a message out of a `Deserialize` impl).
pub const TOO_LARGE_PREFIX: &str = "too large: ";
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// A secret name: `[A-Za-z0-9/_+=.@-]`, 1–512 characters, `/` separating
/// non-empty segments. Never contains `:`, which starts an action suffix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretName(String);

impl SecretName {
    pub fn parse(raw: &str) -> Result<Self, Error> {
        if raw.is_empty() {
            return Err(Error::invalid("secret name is empty; use 1-512 characters from [A-Za-z0-9/_+=.@-]"));
        }
        if raw.len() > MAX_NAME_LEN {
            return Err(Error::invalid(format!(
                "secret name is {} characters long; the limit is {MAX_NAME_LEN}",
                raw.len()
            )));
        }
        if let Some(bad) = raw.chars().find(|c| !is_name_char(*c)) {
            return Err(Error::invalid(format!(
                "secret name contains {bad:?}; allowed characters are A-Z a-z 0-9 / _ + = . @ -{}",
                if bad == ':' { " (':' starts an action such as :value)" } else { "" }
            )));
        }
        if raw.starts_with('/') || raw.ends_with('/') || raw.contains("//") {
            return Err(Error::invalid(
                "secret name has an empty path segment; do not start or end it with '/' or repeat '/'",
            ));
        }
        Ok(SecretName(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "/_+=.@-".contains(c)
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A staging label: `current`, `pending`, `previous` or a custom one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Label(String);

impl Label {
    pub const CURRENT: &'static str = "current";
    pub const PREVIOUS: &'static str = "previous";
    pub const PENDING: &'static str = "pending";

    pub fn parse(raw: &str) -> Result<Self, Error> {
        let ok =
            !raw.is_empty() && raw.len() <= 64 && raw.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if ok {
            Ok(Label(raw.to_owned()))
        } else {
            Err(Error::invalid(format!("label {raw:?} is not valid; use 1-64 characters from [A-Za-z0-9_.-]")))
        }
    }

    pub fn current() -> Self {
        Label(Self::CURRENT.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A secret value: 1 byte to 64 KiB of UTF-8. Zeroized on drop; its `Debug`
/// prints `[redacted]` and it has no `Display`, so it cannot be formatted
/// into a log line or an error by accident.
#[derive(Clone)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    pub fn parse(raw: Zeroizing<String>) -> Result<Self, Error> {
        if raw.is_empty() {
            return Err(Error::invalid("value is empty; a secret value needs at least one byte"));
        }
        if raw.len() > MAX_VALUE_LEN {
            return Err(Error::too_large(format!(
                "value is {} bytes; the limit is {MAX_VALUE_LEN} bytes (64 KiB)",
                raw.len()
            )));
        }
        Ok(SecretValue(raw))
    }

    pub fn from_plaintext(bytes: Zeroizing<Vec<u8>>) -> Result<Self, Error> {
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| Error::internal("stored value is not UTF-8"))?;
        Ok(SecretValue(Zeroizing::new(text)))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Zeroizing::new(String::deserialize(d)?);
        // The message names the rule, never the value.
        SecretValue::parse(raw).map_err(|e| match e.kind {
            crate::error::Kind::TooLarge => serde::de::Error::custom(format!("{TOO_LARGE_PREFIX}{}", e.message())),
            _ => serde::de::Error::custom(e.message()),
        })
    }
}

impl Serialize for SecretValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// What a policy rule may grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Read,
    Write,
    Delete,
    List,
    Rotate,
    Admin,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Read => "read",
            Capability::Write => "write",
            Capability::Delete => "delete",
            Capability::List => "list",
            Capability::Rotate => "rotate",
            Capability::Admin => "admin",
        }
    }
}

/// A caller-chosen idempotency key for writes. Stored only as a keyed MAC.
pub struct ClientToken(String);

impl ClientToken {
    pub fn parse(raw: &str) -> Result<Self, Error> {
        let ok = !raw.is_empty() && raw.len() <= 128 && raw.chars().all(|c| c.is_ascii_graphic());
        if ok {
            Ok(ClientToken(raw.to_owned()))
        } else {
            Err(Error::invalid("client_token must be 1-128 printable ASCII characters without spaces"))
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Soft-delete recovery window in days (7–30).
#[derive(Clone, Copy, Debug)]
pub struct RecoveryDays(u32);

impl RecoveryDays {
    pub fn parse(days: Option<u32>) -> Result<Self, Error> {
        match days {
            None => Ok(RecoveryDays(30)),
            Some(d @ 7..=30) => Ok(RecoveryDays(d)),
            Some(d) => Err(Error::invalid(format!(
                "recovery_days is {d}; choose 7 to 30 days, or force=true to delete at once"
            ))),
        }
    }

    pub fn millis(self) -> i64 {
        i64::from(self.0) * 86_400_000
    }
}

pub fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds, as every time in the API is written.
pub fn rfc3339(millis: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        for ok in ["a", "app/db/main", "A-Z_0.9+=@x", &"n".repeat(512)] {
            assert!(SecretName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a:b", "a b", "a#b", "/a", "a/", "a//b", &"n".repeat(513), "é"] {
            assert!(SecretName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_are_bounded_and_redacted() {
        assert!(SecretValue::parse(Zeroizing::new(String::new())).is_err());
        assert!(SecretValue::parse(Zeroizing::new("x".repeat(MAX_VALUE_LEN))).is_ok());
        assert!(SecretValue::parse(Zeroizing::new("x".repeat(MAX_VALUE_LEN + 1))).is_err());
        let v = SecretValue::parse(Zeroizing::new("hunter2".into())).unwrap();
        assert_eq!(format!("{v:?}"), "[redacted]");
    }

    #[test]
    fn recovery_window_is_7_to_30_days() {
        assert!(RecoveryDays::parse(Some(6)).is_err());
        assert!(RecoveryDays::parse(Some(31)).is_err());
        assert_eq!(RecoveryDays::parse(None).unwrap().millis(), 30 * 86_400_000);
    }
}

/// A duration as sent: seconds as a number, or text such as `30m`, `12h`, `7d`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum Ttl {
    Seconds(u64),
    Text(String),
}

impl Ttl {
    /// Parses it; the error names `field`.
    pub fn parse(self, field: &str) -> Result<std::time::Duration, Error> {
        match self {
            Ttl::Seconds(s) => Ok(std::time::Duration::from_secs(s)),
            Ttl::Text(t) => humantime::parse_duration(&t).map_err(|e| {
                Error::invalid(format!("{field} {t:?} is not a duration ({e}); write e.g. 30m, 12h or 7d"))
            }),
        }
    }
}
