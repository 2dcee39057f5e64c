//! `secrets`: read another secret's current value, only if granted.

use super::{denied, host_error};
use crate::model::{Label, SecretName};
use crate::plugins::bindings::tumbler::rotator::secrets::Host;
use crate::plugins::bindings::tumbler::rotator::types::{ErrorKind, HostError};
use crate::plugins::runtime::PluginState;
use crate::store::secrets::Selector;
use zeroize::Zeroizing;

impl PluginState {
    /// The current value of a granted secret. Used by `secrets.get` and by
    /// `secret-ref.named` credentials in `sql` and `ssh`.
    pub(crate) async fn granted_secret(&mut self, name: &str) -> Result<Zeroizing<String>, HostError> {
        let parsed = SecretName::parse(name).map_err(|e| host_error(ErrorKind::Invalid, e.message()))?;
        if !self.call.grants.secrets.contains(&parsed) {
            return Err(denied(format!(
                "reading secret '{name}' is not granted to this rotation; add it to grants.secrets"
            )));
        }
        let store =
            self.call.store.clone().ok_or_else(|| host_error(ErrorKind::Host, "no secret store in this call"))?;
        let read = store
            .read_value(parsed, Selector::Label(Label::current()))
            .await
            .map_err(|e| host_error(ErrorKind::Invalid, e.message()))?;
        let value = Zeroizing::new(read.value.expose().to_owned());
        self.redactions.add(&value);
        Ok(value)
    }
}

impl Host for PluginState {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, HostError>> {
        let result = self.granted_secret(&name).await.map(|v| v.to_string());
        Ok(self.audited("secrets", &name, result).await)
    }
}
