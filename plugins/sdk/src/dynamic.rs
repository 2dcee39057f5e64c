//! Leased credentials created on demand. A rotator backs a dynamic role by
//! overriding [`Rotator::issue`](crate::Rotator::issue) and
//! [`Rotator::revoke`](crate::Rotator::revoke) and setting
//! [`Rotator::DYNAMIC`](crate::Rotator::DYNAMIC).

use core::fmt;

use serde::de::DeserializeOwned;

use crate::StepError;
use crate::redact::Redacted;
use crate::step::parse_params;

pub use crate::bindings::exports::tumbler::rotator::dynamic::IssueRequest;

/// What `issue` returns: the credential handed to the caller and what
/// `revoke` will need to remove it. `Debug` shows neither.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The credential handed to the caller (usually JSON).
    pub credential: String,
    /// What `revoke` needs to remove it (e.g. the user name); the host
    /// stores it encrypted.
    pub revoke_handle: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued").field("credential", &Redacted).field("revoke_handle", &Redacted).finish()
    }
}

impl IssueRequest {
    /// The role's parameters parsed into `T`; bad parameters are fatal.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, StepError> {
        parse_params(&self.params)
    }
}
