//! Reading another secret's current value (e.g. the admin credential of the
//! alternating-users strategy). Only names granted to the rotation are
//! readable; anything else fails with [`ErrorKind::Denied`](crate::ErrorKind).
//!
//! Prefer `SecretRef::Named(..)` credentials in [`sql`](crate::sql) and
//! [`ssh`](crate::ssh) when the plugin only needs to log in with the secret:
//! then its value never enters the plugin.

/// The current value of the secret `name`.
pub use crate::bindings::tumbler::rotator::secrets::get;
