//! Fixture: `set` allocates 1 MiB chunks, writing every byte, until the
//! host's memory limit makes the allocation (and so the step) fail.
//! `test` grows its memory by 48 MiB itself and fails if any byte of the
//! new pages is not zero: run after `set` on the same host, it shows
//! whether memory that an earlier call filled reaches the next one.

use std::hint::black_box;

use tumbler_sdk::password::{PasswordOptions, generate_password};
use tumbler_sdk::{Info, Rotator, StepError, StepInput, log};

const CHUNK: usize = 1 << 20;
/// What `test` grows its memory by and checks.
const FRESH: usize = 48 << 20;
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
        // Grown with `memory.grow` directly, not through the allocator
        // (whose `calloc` would clear the bytes before we saw them): these
        // are the pages exactly as the host hands them over.
        const PAGE: usize = 64 << 10;
        const PAGES: usize = FRESH >> 16;
        let first = core::arch::wasm32::memory_grow(0, PAGES);
        if first == usize::MAX {
            return Err(StepError::fatal("memory.grow refused 48 MiB"));
        }
        // SAFETY: the pages were just added to the memory and nothing else
        // (the allocator included) knows of them; they are only read.
        let fresh = unsafe { core::slice::from_raw_parts((first * PAGE) as *const u8, PAGES * PAGE) };
        match fresh.iter().position(|&b| b != 0) {
            None => Ok(()),
            Some(at) => Err(StepError::fatal(format!(
                "fresh memory holds {:#x} at address {:#x}",
                fresh[at],
                first * PAGE + at
            ))),
        }
    }

    fn finish(_: &StepInput) -> Result<(), StepError> {
        Ok(())
    }
}

tumbler_sdk::export!(Memhog);
