//! The rotators compiled into the binary (built and embedded by
//! host/build.rs), registered at start under reserved names.

use super::registry::Builtin;

pub const BUILTINS: &[Builtin] = include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));
