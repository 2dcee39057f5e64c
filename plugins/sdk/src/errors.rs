//! How a step fails ([`StepError`]) and how a failed host call
//! ([`HostError`]) becomes one.

use crate::{ErrorKind, HostError, StepError};

impl StepError {
    /// The target refused or could not be reached: the host retries the step.
    pub fn retryable(message: impl Into<String>) -> Self {
        StepError::Retryable(message.into())
    }

    /// The parameters or the value are wrong: retrying will not help.
    pub fn fatal(message: impl Into<String>) -> Self {
        StepError::Fatal(message.into())
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, StepError::Retryable(_))
    }

    pub fn message(&self) -> &str {
        match self {
            StepError::Retryable(message) | StepError::Fatal(message) => message,
        }
    }
}

impl ErrorKind {
    /// The WIT name of the kind (`denied`, `unreachable`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Denied => "denied",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Auth => "auth",
            ErrorKind::Target => "target",
            ErrorKind::Limit => "limit",
            ErrorKind::Host => "host",
        }
    }

    /// Whether the same call may succeed later without the operator acting:
    /// a missing grant, a malformed request or a cap hit will not change.
    pub fn is_retryable(self) -> bool {
        !matches!(self, ErrorKind::Denied | ErrorKind::Invalid | ErrorKind::Limit)
    }
}

impl HostError {
    /// `kind: message`, e.g. `denied: sql 10.0.0.5:5432 is not granted`.
    pub fn describe(&self) -> String {
        format!("{}: {}", self.kind.as_str(), self.message)
    }
}

/// Lets a step use `?` on host calls; the message keeps the kind first so
/// the rotation record says whose fault it was.
impl From<HostError> for StepError {
    fn from(error: HostError) -> Self {
        if error.kind.is_retryable() {
            StepError::Retryable(error.describe())
        } else {
            StepError::Fatal(error.describe())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_error(kind: ErrorKind) -> HostError {
        HostError { kind, message: "sql 10.0.0.5:5432 is not granted".into() }
    }

    #[test]
    fn a_denied_call_is_a_fatal_step_error_naming_the_kind() {
        let error = StepError::from(host_error(ErrorKind::Denied));
        assert!(!error.is_retryable());
        assert_eq!(error.message(), "denied: sql 10.0.0.5:5432 is not granted");
    }

    #[test]
    fn an_unreachable_target_is_retryable() {
        assert!(StepError::from(host_error(ErrorKind::Unreachable)).is_retryable());
        assert!(StepError::from(host_error(ErrorKind::Auth)).is_retryable());
        assert!(!StepError::from(host_error(ErrorKind::Limit)).is_retryable());
    }
}
