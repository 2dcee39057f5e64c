//! Write a tumbler rotator: implement [`Rotator`], call [`export!`].
//!
//! A rotator is a WebAssembly component (built for `wasm32-wasip2`) that
//! implements the `tumbler:rotator` WIT world. This crate generates the
//! bindings once and hides them behind one trait and one macro:
//!
//! ```text
//! use tumbler_sdk::{Info, Rotator, StepError, StepInput};
//!
//! struct MyRotator;
//!
//! impl Rotator for MyRotator {
//!     fn info() -> Info { Info::new("my-rotator", env!("CARGO_PKG_VERSION"), "What it rotates") }
//!     fn create(input: &StepInput) -> Result<String, StepError> { /* new value */ }
//!     fn set(input: &StepInput) -> Result<(), StepError> { /* target accepts pending */ }
//!     fn test(input: &StepInput) -> Result<(), StepError> { /* pending works */ }
//!     fn finish(input: &StepInput) -> Result<(), StepError> { /* remove what fell off */ }
//! }
//!
//! tumbler_sdk::export!(MyRotator);
//! ```
//!
//! Helpers: [`password`] (AWS GetRandomPassword's options),
//! [`database_secret`] (AWS's database-secret JSON), [`database_rotation`]
//! (AWS's single-user and alternating-users strategies for any SQL engine),
//! [`dynamic_database`] (a user per lease from statement templates, for any
//! SQL engine), and typed wrappers over
//! what the host lets a plugin reach: [`log`], [`secrets`], [`sql`], [`ssh`],
//! [`http`], and [`crypto`] (key derivation at native speed). Every host
//! call that reaches a target is checked against the operator's grants; a
//! refused one comes back as a [`HostError`] that `?` turns into a
//! [`StepError`].
//!
//! The pure helpers compile and test on the native target too; calling a
//! host import there panics, since only the tumbler host provides them.

mod bindings_glue;
pub mod crypto;
pub mod database_rotation;
pub mod database_secret;
pub mod dynamic;
pub mod dynamic_database;
mod errors;
pub mod http;
mod info;
pub mod log;
pub mod password;
mod redact;
mod rotator;
pub mod secrets;
pub mod sql;
pub mod ssh;
mod step;

/// The wit-bindgen output for world `dynamic-rotator`; used by [`export!`].
/// Authors need nothing from here directly: every type is re-exported.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "tumbler:rotator/dynamic-rotator",
        pub_export_macro: true,
        default_bindings_module: "tumbler_sdk::bindings",
        export_macro_name: "export_bindings",
        // Types that carry secret values are defined by the SDK instead, so
        // their `Debug` redacts the value (see each type).
        with: {
            "tumbler:rotator/types@0.1.1/version": crate::step::Version,
            "tumbler:rotator/sql@0.1.1/credentials": crate::sql::Credentials,
            "tumbler:rotator/ssh@0.1.1/auth": crate::ssh::Auth,
            "tumbler:rotator/ssh@0.1.1/command": crate::ssh::Command,
            "tumbler:rotator/http@0.1.1/request": crate::http::Request,
            "tumbler:rotator/http@0.1.1/response": crate::http::Response,
            "tumbler:rotator/dynamic@0.1.1/issued": crate::dynamic::Issued,
        },
    });
}

pub use bindings::tumbler::rotator::types::{ErrorKind, HostError, SecretRef, StepError, StepInput};
pub use dynamic::{IssueRequest, Issued};
pub use info::{Capability, Info};
pub use rotator::Rotator;
pub use step::Version;

/// Re-exported so a rotator can read JSON values and parameters without
/// adding the dependency itself.
pub use serde_json;

/// Exports a [`Rotator`] as the component's implementation of the world.
///
/// Call it once, at the top level of the plugin crate, with the name of the
/// type (a plain identifier) that implements [`Rotator`]:
///
/// ```text
/// tumbler_sdk::export!(MyRotator);
/// ```
#[macro_export]
macro_rules! export {
    ($rotator:ident) => {
        $crate::bindings::export_bindings!($rotator with_types_in $crate::bindings);
    };
}
