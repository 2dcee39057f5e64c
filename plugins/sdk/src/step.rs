//! What a step is told ([`StepInput`]) and the checks that keep a retried
//! step harmless: where the labels stand, what to clean up.

use core::fmt;

use serde::de::DeserializeOwned;

use crate::database_secret::replace_password;
use crate::redact::Redacted;
use crate::{StepError, StepInput};

/// One version of a secret: its id and its value. `Debug` shows the id only.
#[derive(Clone, PartialEq, Eq)]
pub struct Version {
    pub id: String,
    pub value: String,
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Version").field("id", &self.id).field("value", &Redacted).finish()
    }
}

impl StepInput {
    /// The rotation's parameters parsed into `T` (any `serde` type, or
    /// [`serde_json::Value`]). Bad parameters are a fatal error.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, StepError> {
        parse_params(&self.params)
    }

    /// The version labeled `current`, or a fatal error when the secret has
    /// no value yet (a rotator that needs one to reach its target).
    pub fn current_version(&self) -> Result<&Version, StepError> {
        self.current
            .as_ref()
            .ok_or_else(|| StepError::fatal(format!("secret {} has no current version", self.secret_name)))
    }

    /// The version being rotated in; `set`, `test` and `finish` always have one
    /// unless the host moved the labels already.
    pub fn pending_version(&self) -> Result<&Version, StepError> {
        self.pending
            .as_ref()
            .ok_or_else(|| StepError::fatal(format!("secret {} has no pending version", self.secret_name)))
    }

    /// True when the pending version already carries the `current` label: the
    /// rotation's label move is done, so `set` and `test` have nothing left
    /// to do (a rotation resumed after a crash).
    pub fn pending_is_current(&self) -> bool {
        matches!((&self.pending, &self.current), (Some(p), Some(c)) if p.id == c.id)
    }

    /// The versions whose credentials `finish` should remove at the target:
    /// the one that fell off, or in an emergency every older one. Never the
    /// current or pending version.
    pub fn stale_versions(&self) -> Vec<&Version> {
        let live = |v: &Version| [&self.current, &self.pending].into_iter().flatten().any(|live| live.id == v.id);
        let candidates: Vec<&Version> = if self.emergency {
            self.older.iter().chain(self.fell_off.as_ref()).collect()
        } else {
            self.fell_off.iter().collect()
        };
        let mut stale: Vec<&Version> = Vec::with_capacity(candidates.len());
        for version in candidates {
            if !live(version) && !stale.iter().any(|s| s.id == version.id) {
                stale.push(version);
            }
        }
        stale
    }

    /// The value `create` returns for a rotator that only changes a
    /// password: the current value with its `password` field replaced when
    /// it is a JSON object that has one (other fields kept, see
    /// [`replace_password`]), else the password itself.
    pub fn new_value_with_password(&self, password: &str) -> String {
        self.current
            .as_ref()
            .and_then(|current| replace_password(&current.value, password))
            .unwrap_or_else(|| password.to_owned())
    }
}

/// Parses a JSON parameters string; an empty string counts as `{}`.
/// Parameters are configuration, not secrets, so serde's message (which may
/// quote a parameter) is safe to return.
pub(crate) fn parse_params<T: DeserializeOwned>(params: &str) -> Result<T, StepError> {
    let params = if params.trim().is_empty() { "{}" } else { params };
    serde_json::from_str(params).map_err(|e| StepError::fatal(format!("bad params: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(id: &str) -> Version {
        Version { id: id.into(), value: format!("value-of-{id}") }
    }

    fn input() -> StepInput {
        StepInput {
            secret_name: "db/app".into(),
            params: String::new(),
            current: Some(version("v2")),
            pending: Some(version("v3")),
            previous: Some(version("v1")),
            fell_off: None,
            emergency: false,
            older: Vec::new(),
        }
    }

    #[test]
    fn debug_of_an_input_shows_no_value() {
        let shown = format!("{:?}", input());
        assert!(shown.contains("v2") && !shown.contains("value-of"), "{shown}");
    }

    #[test]
    fn pending_is_current_once_the_labels_moved() {
        let mut input = input();
        assert!(!input.pending_is_current());
        input.current = Some(version("v3"));
        assert!(input.pending_is_current());
        input.pending = None;
        assert!(!input.pending_is_current());
    }

    #[test]
    fn missing_versions_are_fatal_errors_naming_the_secret() {
        let mut input = input();
        input.pending = None;
        let error = input.pending_version().unwrap_err();
        assert!(!error.is_retryable());
        assert!(error.message().contains("db/app"));
        assert_eq!(input.current_version().unwrap().id, "v2");
    }

    #[test]
    fn finish_removes_only_what_fell_off() {
        let mut input = input();
        assert!(input.stale_versions().is_empty());
        input.fell_off = Some(version("v0"));
        let ids: Vec<&str> = input.stale_versions().iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["v0"]);
    }

    #[test]
    fn an_emergency_removes_every_older_version_but_never_a_live_one() {
        let mut input = input();
        input.current = Some(version("v3"));
        input.emergency = true;
        input.older = vec![version("v3"), version("v2"), version("v1"), version("v0")];
        input.fell_off = Some(version("v0"));
        let ids: Vec<&str> = input.stale_versions().iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["v2", "v1", "v0"]);
    }

    #[test]
    fn params_parse_into_any_serde_type() {
        let mut input = input();
        let empty: serde_json::Value = input.params().unwrap();
        assert_eq!(empty, serde_json::json!({}));
        input.params = r#"{"port": 5432}"#.into();
        let params: serde_json::Value = input.params().unwrap();
        assert_eq!(params["port"], 5432);
        input.params = "{".into();
        assert!(input.params::<serde_json::Value>().is_err());
    }

    #[test]
    fn a_new_value_keeps_the_json_around_the_password() {
        let mut input = input();
        assert_eq!(input.new_value_with_password("pw"), "pw");
        input.current = Some(Version { id: "v2".into(), value: r#"{"username":"app","password":"old","x":1}"#.into() });
        assert_eq!(input.new_value_with_password("pw"), r#"{"username":"app","password":"pw","x":1}"#);
        input.current = None;
        assert_eq!(input.new_value_with_password("pw"), "pw");
    }
}
