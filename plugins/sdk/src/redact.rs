//! Stands in for a secret in `Debug` output, so that logging or returning a
//! `{:?}` of a step's input never leaks a value.

use core::fmt;

pub(crate) struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}
