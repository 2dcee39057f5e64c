//! The one trait a plugin author implements.

use crate::{Info, IssueRequest, Issued, StepError, StepInput};

/// What `issue` and `revoke` answer when the rotator does not override them.
pub(crate) const NOT_DYNAMIC: &str = "this rotator does not issue dynamic credentials";

/// A rotator: the four rotation steps AWS users know, plus `info`, and
/// optionally `issue`/`revoke` for dynamic secrets.
///
/// # Every step must be safe to run again
///
/// The host retries a step after a failure and resumes a rotation from its
/// recorded step after a crash, so each step may run again after it already
/// did its work — possibly half of it. Like the AWS rotation template, each
/// step first checks where things stand:
///
/// | step | what the host gives | what a retry must do |
/// |---|---|---|
/// | `create` | `current` (absent for a secret with no value yet); no `pending` | return a fresh value; touch no target (the host discards a value it did not store). Given a `pending` version, `export!` returns it without calling `create` |
/// | `set` | `current`, `pending` | if the target already accepts `pending` (try it first, e.g. log in with it), return `Ok` |
/// | `test` | `current`, `pending` | only check; nothing to undo |
/// | `finish` | labels already moved: `current` is the new version, `previous` the old one, `fell_off` what lost its last label | remove [`StepInput::stale_versions`] at the target; removing what is already gone must succeed |
///
/// [`StepInput::pending_version`] and [`StepInput::pending_is_current`] do
/// the label checks; the target check is the rotator's own.
///
/// Return [`StepError::retryable`] when the target may accept a retry and
/// [`StepError::fatal`] when only the operator can fix things; a failed host
/// call converts with `?` (denied and invalid requests are fatal).
pub trait Rotator {
    /// Set to `true` when overriding [`issue`](Self::issue) and
    /// [`revoke`](Self::revoke): it becomes `info().dynamic`, which is what
    /// lets the host attach the plugin to a dynamic role.
    const DYNAMIC: bool = false;

    /// Name, version, description, parameter schema and capabilities.
    fn info() -> Info;

    /// Returns the new value; the host stores it as the `pending` version.
    fn create(input: &StepInput) -> Result<String, StepError>;

    /// Makes the target accept the pending value.
    fn set(input: &StepInput) -> Result<(), StepError>;

    /// Proves the pending value works against the target.
    fn test(input: &StepInput) -> Result<(), StepError>;

    /// Cleans up after the host moved the labels: removes the credentials
    /// of [`StepInput::stale_versions`] (all older ones in an emergency).
    fn finish(input: &StepInput) -> Result<(), StepError>;

    /// Checks a dynamic role's parameters when the role is saved; touches
    /// no target. The default accepts what [`issue`](Self::issue) will parse.
    fn check_role(role: &str, params: &str) -> Result<(), StepError> {
        let _ = (role, params);
        if Self::DYNAMIC { Ok(()) } else { Err(StepError::fatal(NOT_DYNAMIC)) }
    }

    /// Creates a leased credential at the target (dynamic secrets).
    fn issue(request: &IssueRequest) -> Result<Issued, StepError> {
        let _ = request;
        Err(StepError::fatal(NOT_DYNAMIC))
    }

    /// Moves a leased credential's expiry at the target when its lease is
    /// renewed. The default suits targets with no expiry of their own.
    fn renew(role: &str, params: &str, revoke_handle: &str, expires_at: &str) -> Result<(), StepError> {
        let _ = (role, params, revoke_handle, expires_at);
        if Self::DYNAMIC { Ok(()) } else { Err(StepError::fatal(NOT_DYNAMIC)) }
    }

    /// Removes a leased credential; must succeed when it is already gone.
    fn revoke(role: &str, params: &str, revoke_handle: &str) -> Result<(), StepError> {
        let _ = (role, params, revoke_handle);
        Err(StepError::fatal(NOT_DYNAMIC))
    }
}
