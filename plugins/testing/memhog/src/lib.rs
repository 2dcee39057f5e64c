//! Fixture: `set` allocates 1 MiB chunks, writing every byte, until the
//! host's memory limit makes the allocation (and so the step) fail.
//! `test` takes 48 MiB of fresh memory and fails if any byte of it is not
//! zero: run after `set` on the same host, it shows whether memory that an
//! earlier call filled reaches the next one.

use std::hint::black_box;

use tumbler_sdk::password::{PasswordOptions, generate_password};
use tumbler_sdk::{Info, Rotator, StepError, StepInput, log};

const CHUNK: usize = 1 << 20;
/// Log a line every this many chunks, so the record shows how far it got.
const LOG_EVERY: usize = 16;

struct Memhog;

impl Rotator for Memhog {
    fn info() -> Info {
        Info::new("test-memhog", env!("CARGO_PKG_VERSION"), "Test fixture: set eats memory")
    }

    fn create(_: &StepInput) -> Result<String, StepError> {
        Ok(generate_password(&PasswordOptions::alphanumeric(32))?)
    }

    fn set(_: &StepInput) -> Result<(), StepError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Filled rather than zeroed, so no allocator shortcut for fresh
            // (already zero) memory can skip the work.
            hoard.push(black_box(vec![0xA5; CHUNK]));
            if hoard.len().is_multiple_of(LOG_EVERY) {
                log::info(format_args!("holding {} MiB", hoard.len()));
            }
        }
    }

    fn test(_: &StepInput) -> Result<(), StepError> {
        // `vec![0; n]` asks for zeroed memory; the allocator takes pages
        // the memory grew by as zero without writing them, so this reads
        // what the host handed over.
        let fresh = black_box(vec![0u8; 48 << 20]);
        match fresh.iter().position(|&b| b != 0) {
            None => Ok(()),
            Some(at) => Err(StepError::fatal(format!("fresh memory holds {:#x} at offset {at}", fresh[at]))),
        }
    }

    fn finish(_: &StepInput) -> Result<(), StepError> {
        Ok(())
    }
}

tumbler_sdk::export!(Memhog);
