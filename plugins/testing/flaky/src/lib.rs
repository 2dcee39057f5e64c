//! Fixture: each step makes one request, `GET {params.url}/{step}`, and
//! does what the answer says: 200 go on, 400 fail for good (`fatal`),
//! anything else (or no answer) fail so that a retry may pass
//! (`retryable`). The test's server decides, e.g. "fail `set` twice, then
//! let it through", to show retries, backoff and failure. Each step logs a
//! line naming the current and pending values, which the host must redact.

use serde::Deserialize;
use tumbler_sdk::http::{self, Request};
use tumbler_sdk::password::{PasswordOptions, generate_password};
use tumbler_sdk::{Capability, Info, Rotator, StepError, StepInput, log};

#[derive(Deserialize)]
struct Params {
    url: String,
}

fn ask(input: &StepInput, step: &str) -> Result<(), StepError> {
    let Params { url } = input.params()?;
    let values: Vec<&str> = [&input.current, &input.pending].into_iter().flatten().map(|v| v.value.as_str()).collect();
    log::info(format_args!("{step}: values in play {values:?}"));
    let response = http::send(&Request::get(format!("{}/{step}", url.trim_end_matches('/'))))
        .map_err(|e| StepError::retryable(format!("{step}: endpoint unreachable: {}", e.message)))?;
    match response.status {
        200 => Ok(()),
        400 => Err(StepError::fatal(format!("{step}: told to fail for good"))),
        status => Err(StepError::retryable(format!("{step}: told to fail ({status})"))),
    }
}

struct Flaky;

impl Rotator for Flaky {
    fn info() -> Info {
        Info::new("test-flaky", env!("CARGO_PKG_VERSION"), "Test fixture: steps fail when told to")
            .capabilities([Capability::Http])
            .params_schema(
                r#"{"type": "object", "required": ["url"], "additionalProperties": false,
                    "properties": {"url": {"type": "string", "minLength": 1}}}"#,
            )
    }

    fn create(input: &StepInput) -> Result<String, StepError> {
        ask(input, "create")?;
        Ok(generate_password(&PasswordOptions::alphanumeric(32))?)
    }

    fn set(input: &StepInput) -> Result<(), StepError> {
        ask(input, "set")
    }

    fn test(input: &StepInput) -> Result<(), StepError> {
        ask(input, "test")
    }

    fn finish(input: &StepInput) -> Result<(), StepError> {
        ask(input, "finish")
    }
}

tumbler_sdk::export!(Flaky);
