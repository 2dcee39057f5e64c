//! Rotates a webhook signing secret: the receiver takes the new one at
//! POST {url}/secrets and drops an old one at DELETE {url}/secrets/{id}.
use serde::Deserialize;
use tumbler_sdk::http::{self, Request};
use tumbler_sdk::password::{PasswordOptions, generate_password};
use tumbler_sdk::{Capability, Info, Rotator, StepError, StepInput, serde_json::json};

#[derive(Deserialize)]
struct Params {
    url: String, // e.g. https://hooks.example.com/admin; grant it as an http prefix
}

struct Webhook;

impl Rotator for Webhook {
    fn info() -> Info {
        Info::new("webhook", "0.1.0", "Webhook signing secret").capabilities([Capability::Http])
    }

    fn create(_: &StepInput) -> Result<String, StepError> {
        Ok(generate_password(&PasswordOptions::alphanumeric(40))?)
    }

    fn set(input: &StepInput) -> Result<(), StepError> {
        let (p, new) = (input.params::<Params>()?, input.pending_version()?);
        let body = json!({"id": new.id, "secret": new.value}); // PUT-like: safe to repeat
        http::send(&Request::post(format!("{}/secrets", p.url)).json(&body))?.check()?;
        Ok(())
    }

    fn test(input: &StepInput) -> Result<(), StepError> {
        let (p, new) = (input.params::<Params>()?, input.pending_version()?);
        http::send(&Request::get(format!("{}/secrets/{}", p.url, new.id)))?.check()?;
        Ok(())
    }

    fn finish(input: &StepInput) -> Result<(), StepError> {
        let p = input.params::<Params>()?;
        for old in input.stale_versions() {
            http::send(&Request::delete(format!("{}/secrets/{}", p.url, old.id)))?; // gone already is fine
        }
        Ok(())
    }
}

tumbler_sdk::export!(Webhook);
