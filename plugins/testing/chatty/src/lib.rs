//! Fixture: `set` writes 10 MiB to stdout and 10 MiB through the `log`
//! import (params `stdout_bytes`, `stderr_bytes`, `log_bytes` change the
//! amounts), then succeeds. Lines are numbered so a test can see which part
//! of the output the host kept.

use std::io::Write;

use serde::Deserialize;
use tumbler_sdk::password::{PasswordOptions, generate_password};
use tumbler_sdk::{Info, Rotator, StepError, StepInput, log};

const MIB: usize = 1 << 20;
const LINE_BYTES: usize = 1024;

#[derive(Deserialize)]
#[serde(default)]
struct Params {
    stdout_bytes: usize,
    stderr_bytes: usize,
    log_bytes: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params { stdout_bytes: 10 * MIB, stderr_bytes: 0, log_bytes: 10 * MIB }
    }
}

/// Line `n` of a stream, `LINE_BYTES` long with its newline.
fn line(stream: &str, n: usize) -> String {
    let head = format!("{stream} line {n:08} ");
    format!("{head}{}\n", "x".repeat(LINE_BYTES.saturating_sub(head.len() + 1)))
}

/// Writes `bytes` of numbered lines; stops quietly if the host closes the
/// stream (a capped pipe may), since the fixture must still succeed.
fn flood(stream: &str, out: &mut impl Write, bytes: usize) {
    for n in 0..bytes.div_ceil(LINE_BYTES) {
        if let Err(e) = out.write_all(line(stream, n).as_bytes()) {
            log::warn(format_args!("{stream} refused line {n}: {e}"));
            return;
        }
    }
    let _ = out.flush();
}

struct Chatty;

impl Rotator for Chatty {
    fn info() -> Info {
        Info::new("test-chatty", env!("CARGO_PKG_VERSION"), "Test fixture: set floods its output")
    }

    fn create(_: &StepInput) -> Result<String, StepError> {
        Ok(generate_password(&PasswordOptions::alphanumeric(32))?)
    }

    fn set(input: &StepInput) -> Result<(), StepError> {
        let params: Params = input.params()?;
        flood("stdout", &mut std::io::stdout().lock(), params.stdout_bytes);
        flood("stderr", &mut std::io::stderr().lock(), params.stderr_bytes);
        for n in 0..params.log_bytes.div_ceil(LINE_BYTES) {
            log::info(line("log", n).trim_end());
        }
        Ok(())
    }

    fn test(_: &StepInput) -> Result<(), StepError> {
        Ok(())
    }

    fn finish(_: &StepInput) -> Result<(), StepError> {
        Ok(())
    }
}

tumbler_sdk::export!(Chatty);
