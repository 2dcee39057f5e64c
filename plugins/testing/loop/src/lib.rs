//! Fixture: `set` spins forever and makes no host call, so only the host's
//! deadline (fuel or epoch, and the step timeout) can stop it.

use std::hint::black_box;

use tumbler_sdk::password::{PasswordOptions, generate_password};
use tumbler_sdk::{Info, Rotator, StepError, StepInput};

struct Loop;

impl Rotator for Loop {
    fn info() -> Info {
        Info::new("test-loop", env!("CARGO_PKG_VERSION"), "Test fixture: set never returns")
    }

    fn create(_: &StepInput) -> Result<String, StepError> {
        Ok(generate_password(&PasswordOptions::alphanumeric(32))?)
    }

    fn set(_: &StepInput) -> Result<(), StepError> {
        // `black_box` keeps the loop a real loop of instructions rather than
        // something the optimiser may reduce to a bare `loop {}`.
        let mut spins: u64 = 0;
        loop {
            spins = black_box(spins.wrapping_add(1));
        }
    }

    fn test(_: &StepInput) -> Result<(), StepError> {
        Ok(())
    }

    fn finish(_: &StepInput) -> Result<(), StepError> {
        Ok(())
    }
}

tumbler_sdk::export!(Loop);
