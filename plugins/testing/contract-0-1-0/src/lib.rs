//! Fixture: a plugin built against the first released contract,
//! `tumbler:rotator@0.1.0`, whose WIT is kept frozen in this crate's `wit/`
//! (a copy of `wit/rotator.wit` as it was released; never edit it). A host
//! that provides a later 0.1.x must still link its imports (`log`) and find
//! its `dynamic` export: that is what the patch-level versioning promises.

wit_bindgen::generate!({ path: "wit", world: "tumbler:rotator/dynamic-rotator@0.1.0" });

use exports::tumbler::rotator::dynamic::{Guest as Dynamic, IssueRequest, Issued};
use tumbler::rotator::log::{Level, log};

struct Legacy;

impl Guest for Legacy {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "test-contract-0-1-0".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Test fixture: built against tumbler:rotator@0.1.0".into(),
            params_schema: None,
            capabilities: Vec::new(),
            dynamic: true,
        }
    }

    fn create(input: StepInput) -> Result<String, StepError> {
        log(Level::Info, "create from a 0.1.0 plugin");
        let current = input.current.map(|v| v.value).unwrap_or_default();
        Ok(format!("{current}+0.1.0"))
    }

    fn set(_: StepInput) -> Result<(), StepError> {
        Ok(())
    }

    fn test(_: StepInput) -> Result<(), StepError> {
        Ok(())
    }

    fn finish(_: StepInput) -> Result<(), StepError> {
        Ok(())
    }
}

impl Dynamic for Legacy {
    fn check_role(_: String, _: String) -> Result<(), StepError> {
        Ok(())
    }

    fn issue(request: IssueRequest) -> Result<Issued, StepError> {
        log(Level::Info, "issue from a 0.1.0 plugin");
        Ok(Issued {
            credential: format!(r#"{{"issued_by":"0.1.0","lease":"{}"}}"#, request.lease_id),
            revoke_handle: request.lease_id,
        })
    }

    fn renew(_: String, _: String, _: String, _: String) -> Result<(), StepError> {
        Ok(())
    }

    fn revoke(_: String, _: String, _: String) -> Result<(), StepError> {
        Ok(())
    }
}

export!(Legacy);
