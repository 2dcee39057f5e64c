//! Fixture: every step first polls `GET {params.gate_url}/{step}` (every
//! 100 ms, for up to 60 s) and goes on only once it answers 200, so a test
//! can hold a rotation inside a chosen step, e.g. to kill the server there.
//! The gate URL must be granted to the rotation, and the host's per-step
//! request cap and step timeout must allow the wait.

use std::thread::sleep;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tumbler_sdk::http::{self, Request};
use tumbler_sdk::password::{PasswordOptions, generate_password};
use tumbler_sdk::{Capability, Info, Rotator, StepError, StepInput, log};

const POLL_EVERY: Duration = Duration::from_millis(100);
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
struct Params {
    gate_url: String,
}

/// Returns once the gate for `step` is open; fails if it stays closed, or
/// at once if the host refuses the request for good (e.g. not granted).
fn wait_for_gate(input: &StepInput, step: &str) -> Result<(), StepError> {
    let Params { gate_url } = input.params()?;
    let request = Request::get(format!("{}/{step}", gate_url.trim_end_matches('/')));
    let deadline = Instant::now() + GIVE_UP_AFTER;
    loop {
        match http::send(&request) {
            Ok(response) if response.status == 200 => {
                log::info(format_args!("gate {step}: open"));
                return Ok(());
            }
            Err(error) if !error.kind.is_retryable() => return Err(error.into()),
            // Closed, or the gate server is not up yet: keep waiting.
            Ok(_) | Err(_) => {}
        }
        if Instant::now() >= deadline {
            return Err(StepError::retryable(format!("gate {step}: still closed after 60 s")));
        }
        sleep(POLL_EVERY);
    }
}

struct Gate;

impl Rotator for Gate {
    fn info() -> Info {
        Info::new("test-gate", env!("CARGO_PKG_VERSION"), "Test fixture: steps wait for a gate")
            .capabilities([Capability::Http])
    }

    fn create(input: &StepInput) -> Result<String, StepError> {
        wait_for_gate(input, "create")?;
        Ok(generate_password(&PasswordOptions::alphanumeric(32))?)
    }

    fn set(input: &StepInput) -> Result<(), StepError> {
        wait_for_gate(input, "set")
    }

    fn test(input: &StepInput) -> Result<(), StepError> {
        wait_for_gate(input, "test")
    }

    fn finish(input: &StepInput) -> Result<(), StepError> {
        wait_for_gate(input, "finish")
    }
}

tumbler_sdk::export!(Gate);
