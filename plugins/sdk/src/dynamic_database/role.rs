//! A dynamic role's parameters, read and checked in full: `check_role`,
//! `issue` and `revoke` all start here, so none trusts that another ran.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::DynamicDatabase;
use super::names::{check_prefix, default_prefix};
use super::template::{Placeholder, Template};
use crate::StepError;
use crate::database_rotation::Tls;

/// Every parameter a role may have; any other name is refused.
pub const PARAM_NAMES: [&str; 8] = [
    "host",
    "port",
    "database",
    "tls",
    "admin_secret",
    "username_prefix",
    "creation_statements",
    "revocation_statements",
];

/// A role's parameters (a JSON object). Errors name the parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleParams {
    pub host: String,
    /// `None`: the engine's default port.
    pub port: Option<u16>,
    /// `None`: the engine's default database, if it has one.
    pub database: Option<String>,
    /// Default `verify-full`, as for rotations.
    pub tls: Tls,
    /// The granted secret holding the admin's `username` and `password`;
    /// the host merges the role's admin secret in under this name.
    pub admin_secret: String,
    pub username_prefix: Option<String>,
    /// `None`: the engine's defaults.
    pub creation_statements: Option<Vec<String>>,
    pub revocation_statements: Option<Vec<String>>,
}

impl RoleParams {
    /// Parses the role's params; an empty string counts as `{}`.
    pub fn parse(params: &str) -> Result<Self, StepError> {
        let params = if params.trim().is_empty() { "{}" } else { params };
        let mut fields = match serde_json::from_str(params) {
            Ok(Value::Object(fields)) => fields,
            Ok(_) => return Err(StepError::fatal("role params must be a JSON object")),
            Err(e) => return Err(StepError::fatal(format!("role params are not JSON: {e}"))),
        };
        if let Some(unknown) = fields.keys().find(|name| !PARAM_NAMES.contains(&name.as_str())) {
            return Err(StepError::fatal(format!(
                "unknown role param {unknown:?}; the params are {}",
                PARAM_NAMES.join(", ")
            )));
        }
        let params = RoleParams {
            host: required(&mut fields, "host")?,
            port: optional(&mut fields, "port")?,
            database: optional(&mut fields, "database")?,
            tls: optional(&mut fields, "tls")?.unwrap_or_default(),
            admin_secret: required(&mut fields, "admin_secret")?,
            username_prefix: optional(&mut fields, "username_prefix")?,
            creation_statements: optional(&mut fields, "creation_statements")?,
            revocation_statements: optional(&mut fields, "revocation_statements")?,
        };
        for (name, value) in [("host", Some(&params.host)), ("admin_secret", Some(&params.admin_secret))]
            .into_iter()
            .chain([("database", params.database.as_ref())])
        {
            if value.is_some_and(|v| v.trim().is_empty()) {
                return Err(StepError::fatal(format!("role param {name:?} is empty")));
            }
        }
        if params.port == Some(0) {
            return Err(StepError::fatal("role param \"port\" must be a port number (1 to 65535)"));
        }
        Ok(params)
    }
}

/// The value of `name`, absent or `null` giving `None`.
fn optional<T: DeserializeOwned>(fields: &mut Map<String, Value>, name: &str) -> Result<Option<T>, StepError> {
    match fields.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => {
            serde_json::from_value(value).map(Some).map_err(|e| StepError::fatal(format!("role param {name:?}: {e}")))
        }
    }
}

fn required<T: DeserializeOwned>(fields: &mut Map<String, Value>, name: &str) -> Result<T, StepError> {
    optional(fields, name)?.ok_or_else(|| StepError::fatal(format!("role param {name:?} is missing")))
}

/// A role ready to use: params, the name prefix, and checked templates.
#[derive(Clone, Debug)]
pub struct Role {
    pub params: RoleParams,
    pub prefix: String,
    pub creation: Vec<Template>,
    pub revocation: Vec<Template>,
}

impl Role {
    /// Reads and checks everything about role `name` for engine `D`;
    /// touches no target. Every error is fatal.
    pub fn parse<D: DynamicDatabase>(name: &str, params: &str) -> Result<Self, StepError> {
        let params = RoleParams::parse(params)?;
        let prefix = match &params.username_prefix {
            Some(prefix) => {
                check_prefix(prefix, D::RESERVED_PREFIXES).map_err(StepError::fatal)?;
                prefix.clone()
            }
            None => default_prefix(name),
        };
        let creation = templates::<D>(
            "creation_statements",
            params.creation_statements.as_deref(),
            D::DEFAULT_CREATION_STATEMENTS,
            &Placeholder::ALL,
            &[Placeholder::Name, Placeholder::Password],
        )?;
        let revocation = templates::<D>(
            "revocation_statements",
            params.revocation_statements.as_deref(),
            D::DEFAULT_REVOCATION_STATEMENTS,
            &[Placeholder::Name],
            &[Placeholder::Name],
        )?;
        Ok(Role { params, prefix, creation, revocation })
    }

    pub fn port<D: DynamicDatabase>(&self) -> u16 {
        self.params.port.unwrap_or(D::ENGINE.default_port())
    }

    /// The database to connect to and to name in the credential.
    pub fn database<D: DynamicDatabase>(&self) -> Option<String> {
        self.params.database.clone().or(D::DEFAULT_DATABASE.map(str::to_owned))
    }
}

/// The statements of list `field` (or the engine's `defaults` when the role
/// gives none), each checked; together they must use every one of `required`.
fn templates<D: DynamicDatabase>(
    field: &str,
    given: Option<&[String]>,
    defaults: &[&str],
    allowed: &[Placeholder],
    required: &[Placeholder],
) -> Result<Vec<Template>, StepError> {
    let statements: Vec<&str> = match given {
        Some(given) => given.iter().map(String::as_str).collect(),
        None => defaults.to_vec(),
    };
    if statements.is_empty() {
        return Err(StepError::fatal(format!(
            "{field} is empty: give at least one statement, or leave it out for the default"
        )));
    }
    let mut templates = Vec::with_capacity(statements.len());
    for (i, statement) in statements.into_iter().enumerate() {
        let at = |message: String| StepError::fatal(format!("{field}[{i}]: {message}"));
        let template = Template::parse(D::ENGINE, statement, allowed).map_err(at)?;
        for before in template.text_before_each(Placeholder::Password) {
            D::check_password_use(&before).map_err(at)?;
        }
        templates.push(template);
    }
    for placeholder in required {
        if !templates.iter().any(|t| t.uses(*placeholder)) {
            return Err(StepError::fatal(format!("{field} never use {placeholder}: {}", why_required(*placeholder))));
        }
    }
    Ok(templates)
}

fn why_required(placeholder: Placeholder) -> &'static str {
    match placeholder {
        Placeholder::Name => "they must act on the user tumbler names for the lease",
        _ => "without it the issued password would not work",
    }
}
