//! Messages for the rotation record. The host caps the log and redacts the
//! values being rotated; still, log what happened, not what a value is.

use core::fmt::Display;

use crate::bindings::tumbler::rotator::log as import;
pub use import::Level;

/// Logs at `level`; accepts `&str`, `String` or `format_args!(..)`.
pub fn log(level: Level, message: impl Display) {
    import::log(level, &message.to_string());
}

pub fn debug(message: impl Display) {
    log(Level::Debug, message);
}

pub fn info(message: impl Display) {
    log(Level::Info, message);
}

pub fn warn(message: impl Display) {
    log(Level::Warn, message);
}

pub fn error(message: impl Display) {
    log(Level::Error, message);
}
