//! Fixture: `set` panics with a message (printed to stderr, then a trap);
//! `test` executes `unreachable` directly, with no message at all.

use tumbler_sdk::password::{PasswordOptions, generate_password};
use tumbler_sdk::{Info, Rotator, StepError, StepInput};

struct Trap;

impl Rotator for Trap {
    fn info() -> Info {
        Info::new("test-trap", env!("CARGO_PKG_VERSION"), "Test fixture: set panics, test traps")
    }

    fn create(_: &StepInput) -> Result<String, StepError> {
        Ok(generate_password(&PasswordOptions::alphanumeric(32))?)
    }

    fn set(_: &StepInput) -> Result<(), StepError> {
        panic!("test-trap: set panicked on purpose");
    }

    fn test(_: &StepInput) -> Result<(), StepError> {
        #[cfg(target_arch = "wasm32")]
        core::arch::wasm32::unreachable();
        #[cfg(not(target_arch = "wasm32"))]
        std::process::abort();
    }

    fn finish(_: &StepInput) -> Result<(), StepError> {
        Ok(())
    }
}

tumbler_sdk::export!(Trap);
