//! AWS's database-secret JSON:
//! `{"engine", "host", "port", "username", "password", "dbname", ...}`.
//!
//! Secrets moved from AWS Secrets Manager keep working: fields this module
//! does not know (`masterarn`, `dbClusterIdentifier`, ...) are kept as found,
//! and so is the port's type (AWS writes a number; some tools a string).
//! Parse errors name the field, never its value.

use core::fmt;

use serde_json::{Map, Value};

use crate::StepError;
use crate::redact::Redacted;
use crate::sql::{ConnectOptions, Credentials, Engine};

/// A database secret as AWS Secrets Manager's rotation templates store it.
/// `engine`, `host`, `username` and `password` are required, as in AWS.
#[derive(Clone, PartialEq)]
pub struct DatabaseSecret {
    pub engine: String,
    pub host: String,
    /// `None` means the engine's default port.
    pub port: Option<u16>,
    pub username: String,
    pub password: String,
    pub dbname: Option<String>,
    /// Every other field, in the order found.
    pub other: Map<String, Value>,
    /// Whether the port was written as a string, so it is written back so.
    port_as_text: bool,
}

impl fmt::Debug for DatabaseSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSecret")
            .field("engine", &self.engine)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &Redacted)
            .field("dbname", &self.dbname)
            .field("other", &self.other.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl DatabaseSecret {
    /// A new secret with no `dbname` and no other fields (e.g. a dynamic
    /// credential); the port, if any, is written as a number.
    pub fn new(
        engine: impl Into<String>,
        host: impl Into<String>,
        port: Option<u16>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        DatabaseSecret {
            engine: engine.into(),
            host: host.into(),
            port,
            username: username.into(),
            password: password.into(),
            dbname: None,
            other: Map::new(),
            port_as_text: false,
        }
    }

    /// Parses a secret's value. A fatal error says which field is wrong.
    pub fn parse(value: &str) -> Result<Self, StepError> {
        let mut fields =
            parse_object(value).ok_or_else(|| StepError::fatal("the secret's value is not a JSON object"))?;
        let (port, port_as_text) = take_port(&mut fields)?;
        Ok(DatabaseSecret {
            engine: take_required_text(&mut fields, "engine")?,
            host: take_required_text(&mut fields, "host")?,
            port,
            username: take_required_text(&mut fields, "username")?,
            password: take_required_text(&mut fields, "password")?,
            dbname: take_text(&mut fields, "dbname")?,
            other: fields,
            port_as_text,
        })
    }

    /// The JSON value to store: the known fields in AWS's order, then the others.
    pub fn to_json(&self) -> String {
        let mut fields = Map::new();
        fields.insert("engine".into(), self.engine.clone().into());
        fields.insert("host".into(), self.host.clone().into());
        if let Some(port) = self.port {
            let port = if self.port_as_text { port.to_string().into() } else { port.into() };
            fields.insert("port".into(), port);
        }
        fields.insert("username".into(), self.username.clone().into());
        fields.insert("password".into(), self.password.clone().into());
        if let Some(dbname) = &self.dbname {
            fields.insert("dbname".into(), dbname.clone().into());
        }
        fields.extend(self.other.iter().map(|(k, v)| (k.clone(), v.clone())));
        Value::Object(fields).to_string()
    }

    /// The SQL engine: `postgres` (also `postgresql`, `aurora-postgresql`) or
    /// `mysql` (also `mariadb`, `aurora-mysql`, `aurora`).
    pub fn sql_engine(&self) -> Result<Engine, StepError> {
        match self.engine.as_str() {
            "postgres" | "postgresql" | "aurora-postgresql" => Ok(Engine::Postgres),
            "mysql" | "mariadb" | "aurora-mysql" | "aurora" => Ok(Engine::Mysql),
            other => Err(StepError::fatal(format!("engine {other:?} is not supported: use postgres or mysql"))),
        }
    }

    /// Connection options for this database (TLS `verify-full` unless
    /// changed), logging in with `credentials` — usually
    /// `Credentials::FromSecret(..)` so the host fills them in.
    pub fn connect_options(&self, credentials: Credentials) -> Result<ConnectOptions, StepError> {
        let engine = self.sql_engine()?;
        let port = self.port.unwrap_or(engine.default_port());
        let mut options = ConnectOptions::new(engine, &self.host, port, credentials);
        options.database = self.dbname.clone();
        Ok(options)
    }
}

/// Replaces the `password` field of a JSON object, keeping every other
/// field and their order. `None` when `value` is not a JSON object with a
/// string `password`, so the caller decides what a plain value becomes.
pub fn replace_password(value: &str, password: &str) -> Option<String> {
    let mut fields = parse_object(value)?;
    let slot = fields.get_mut("password")?;
    if !slot.is_string() {
        return None;
    }
    *slot = password.into();
    Some(Value::Object(fields).to_string())
}

fn parse_object(value: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(value) {
        Ok(Value::Object(fields)) => Some(fields),
        _ => None,
    }
}

fn take_text(fields: &mut Map<String, Value>, name: &str) -> Result<Option<String>, StepError> {
    match fields.shift_remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(StepError::fatal(format!("field {name:?} of the secret must be a string"))),
    }
}

fn take_required_text(fields: &mut Map<String, Value>, name: &str) -> Result<String, StepError> {
    take_text(fields, name)?.ok_or_else(|| StepError::fatal(format!("the secret has no {name:?} field")))
}

/// The port and whether it was written as text (`"5432"`).
fn take_port(fields: &mut Map<String, Value>) -> Result<(Option<u16>, bool), StepError> {
    let bad_port = || StepError::fatal("field \"port\" of the secret must be a port number");
    match fields.shift_remove("port") {
        None | Some(Value::Null) => Ok((None, false)),
        Some(Value::Number(n)) => {
            let port = n.as_u64().and_then(|n| u16::try_from(n).ok()).ok_or_else(bad_port)?;
            Ok((Some(port), false))
        }
        Some(Value::String(text)) => Ok((Some(text.trim().parse().map_err(|_| bad_port())?), true)),
        Some(_) => Err(bad_port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AWS_SECRET: &str = r#"{"engine":"postgres","host":"db.internal","port":5432,"username":"app","password":"s3cr3t-value","dbname":"orders","masterarn":"arn:aws:x"}"#;

    #[test]
    fn parses_aws_shape_and_writes_it_back_unchanged() {
        let secret = DatabaseSecret::parse(AWS_SECRET).unwrap();
        assert_eq!(secret.host, "db.internal");
        assert_eq!(secret.port, Some(5432));
        assert_eq!(secret.dbname.as_deref(), Some("orders"));
        assert_eq!(secret.other["masterarn"], "arn:aws:x");
        assert_eq!(secret.to_json(), AWS_SECRET);
    }

    #[test]
    fn a_new_password_keeps_every_other_field() {
        let mut secret = DatabaseSecret::parse(AWS_SECRET).unwrap();
        secret.password = "new".into();
        let written = DatabaseSecret::parse(&secret.to_json()).unwrap();
        assert_eq!(written.password, "new");
        assert_eq!(written.other, secret.other);
    }

    #[test]
    fn a_text_port_stays_text() {
        let value = r#"{"engine":"mysql","host":"h","port":"3306","username":"u","password":"p"}"#;
        let secret = DatabaseSecret::parse(value).unwrap();
        assert_eq!(secret.port, Some(3306));
        assert_eq!(secret.to_json(), value);
    }

    #[test]
    fn errors_name_the_field_but_never_the_value() {
        let wrong_type = r#"{"engine":"postgres","host":"h","username":"u","password":["s3cr3t-value"]}"#;
        let message = DatabaseSecret::parse(wrong_type).unwrap_err().message().to_owned();
        assert!(message.contains("password") && !message.contains("s3cr3t"), "{message}");

        let missing = r#"{"engine":"postgres","host":"h","password":"s3cr3t-value"}"#;
        let message = DatabaseSecret::parse(missing).unwrap_err().message().to_owned();
        assert!(message.contains("username") && !message.contains("s3cr3t"), "{message}");

        let bad_port = r#"{"engine":"postgres","host":"h","port":"s3cr3t","username":"u","password":"p"}"#;
        let message = DatabaseSecret::parse(bad_port).unwrap_err().message().to_owned();
        assert!(message.contains("port") && !message.contains("s3cr3t"), "{message}");

        assert!(DatabaseSecret::parse("s3cr3t-value").is_err());
    }

    #[test]
    fn debug_redacts_the_password() {
        let shown = format!("{:?}", DatabaseSecret::parse(AWS_SECRET).unwrap());
        assert!(shown.contains("db.internal") && !shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn engines_map_to_sql_engines_with_their_default_port() {
        let mut secret = DatabaseSecret::parse(AWS_SECRET).unwrap();
        secret.port = None;
        let options = secret.connect_options(Credentials::FromSecret(crate::SecretRef::Current)).unwrap();
        assert_eq!((options.engine, options.port), (Engine::Postgres, 5432));
        assert_eq!(options.database.as_deref(), Some("orders"));
        secret.engine = "mariadb".into();
        assert_eq!(secret.sql_engine().unwrap(), Engine::Mysql);
        secret.engine = "oracle".into();
        assert!(secret.sql_engine().is_err());
    }

    #[test]
    fn a_new_secret_is_written_in_aws_order() {
        let mut secret = DatabaseSecret::new("mysql", "db", Some(3306), "u", "p");
        assert_eq!(secret.to_json(), r#"{"engine":"mysql","host":"db","port":3306,"username":"u","password":"p"}"#);
        secret.dbname = Some("app".into());
        assert_eq!(DatabaseSecret::parse(&secret.to_json()).unwrap(), secret);
    }

    #[test]
    fn replace_password_only_touches_a_json_password() {
        assert_eq!(replace_password("plain", "new"), None);
        assert_eq!(replace_password(r#"{"user":"u"}"#, "new"), None);
        assert_eq!(replace_password(r#"{"password":1}"#, "new"), None);
        assert_eq!(
            replace_password(r#"{"z":1,"password":"old","a":[2]}"#, "new").as_deref(),
            Some(r#"{"z":1,"password":"new","a":[2]}"#)
        );
    }
}
