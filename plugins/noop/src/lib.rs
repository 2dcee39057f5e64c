//! The smallest rotator: a new random value, no target. Copy it to start yours.

use tumbler_sdk::password::{PasswordOptions, generate_password};
use tumbler_sdk::{Info, Rotator, StepError, StepInput, log};

struct Noop;

impl Rotator for Noop {
    fn info() -> Info {
        Info::new("noop", env!("CARGO_PKG_VERSION"), "Random value, no target")
    }

    /// 32 random letters and digits; of a JSON value, only `password` changes.
    fn create(input: &StepInput) -> Result<String, StepError> {
        let password = generate_password(&PasswordOptions::alphanumeric(32))?;
        Ok(input.new_value_with_password(&password))
    }

    // A real rotator updates the target in `set`, tries it in `test` and removes
    // `input.stale_versions()` in `finish`, each step safe to run again.
    fn set(input: &StepInput) -> Result<(), StepError> {
        log::info(format_args!("set: no target for {}", input.secret_name));
        Ok(())
    }

    fn test(input: &StepInput) -> Result<(), StepError> {
        log::info(format_args!("test: no target for {}", input.secret_name));
        Ok(())
    }

    fn finish(input: &StepInput) -> Result<(), StepError> {
        log::info(format_args!("finish: no target for {}", input.secret_name));
        Ok(())
    }
}

tumbler_sdk::export!(Noop);
