//! What a rotator says about itself (`GET /v1/plugins/NAME` shows it).

use crate::bindings::PluginInfo;

/// A host import a rotator uses. The operator grants targets per rotation;
/// listing the capability tells them which grants the plugin needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    Sql,
    Ssh,
    Http,
    Secrets,
}

impl Capability {
    /// The name the WIT contract uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Sql => "sql",
            Capability::Ssh => "ssh",
            Capability::Http => "http",
            Capability::Secrets => "secrets",
        }
    }
}

/// Name, version, description, parameter schema and capabilities.
///
/// ```
/// use tumbler_sdk::{Capability, Info};
/// let info = Info::new("postgres", "1.0.0", "Rotates a PostgreSQL role's password")
///     .capabilities([Capability::Sql, Capability::Secrets])
///     .params_schema(r#"{"type":"object"}"#);
/// assert_eq!(info.capabilities.len(), 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub version: String,
    pub description: String,
    /// JSON Schema of the rotation's `params`, if the plugin checks them.
    pub params_schema: Option<String>,
    pub capabilities: Vec<Capability>,
}

impl Info {
    pub fn new(name: impl Into<String>, version: impl Into<String>, description: impl Into<String>) -> Self {
        Info {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            params_schema: None,
            capabilities: Vec::new(),
        }
    }

    pub fn params_schema(mut self, schema: impl Into<String>) -> Self {
        self.params_schema = Some(schema.into());
        self
    }

    pub fn capabilities(mut self, capabilities: impl IntoIterator<Item = Capability>) -> Self {
        self.capabilities.extend(capabilities);
        self
    }

    pub(crate) fn into_plugin_info(self, dynamic: bool) -> PluginInfo {
        PluginInfo {
            name: self.name,
            version: self.version,
            description: self.description,
            params_schema: self.params_schema,
            capabilities: self.capabilities.iter().map(|c| c.as_str().to_owned()).collect(),
            dynamic,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_info_takes_dynamic_from_the_caller_and_names_capabilities() {
        let info = Info::new("x", "1", "d").capabilities([Capability::Sql, Capability::Http]);
        let plugin_info = info.into_plugin_info(false);
        assert_eq!(plugin_info.capabilities, ["sql", "http"]);
        assert!(!plugin_info.dynamic);
    }
}
