//! Bridges a [`Rotator`] to the traits wit-bindgen generated, so that
//! `export!` can export any rotator as the whole `dynamic-rotator` world.

use crate::bindings::exports::tumbler::rotator::dynamic;
use crate::bindings::{self, PluginInfo};
use crate::{IssueRequest, Issued, Rotator, StepError, StepInput};

impl<R: Rotator> bindings::Guest for R {
    fn info() -> PluginInfo {
        // `dynamic` comes from the trait's constant, never from the author's
        // `Info`, so it cannot claim a dynamic role it does not implement.
        R::info().into_plugin_info(R::DYNAMIC)
    }

    fn create(input: StepInput) -> Result<String, StepError> {
        // As in AWS's template: a pending version already made is the
        // answer, so a repeated `create` never mints a second credential.
        if let Some(pending) = input.pending {
            return Ok(pending.value);
        }
        R::create(&input)
    }

    fn set(input: StepInput) -> Result<(), StepError> {
        R::set(&input)
    }

    fn test(input: StepInput) -> Result<(), StepError> {
        R::test(&input)
    }

    fn finish(input: StepInput) -> Result<(), StepError> {
        R::finish(&input)
    }
}

impl<R: Rotator> dynamic::Guest for R {
    fn check_role(role: String, params: String) -> Result<(), StepError> {
        R::check_role(&role, &params)
    }

    fn issue(request: IssueRequest) -> Result<Issued, StepError> {
        R::issue(&request)
    }

    fn renew(role: String, params: String, revoke_handle: String, expires_at: String) -> Result<(), StepError> {
        R::renew(&role, &params, &revoke_handle, &expires_at)
    }

    fn revoke(role: String, params: String, revoke_handle: String) -> Result<(), StepError> {
        R::revoke(&role, &params, &revoke_handle)
    }
}
