//! SQL against PostgreSQL or MySQL/MariaDB. The target must be granted to
//! the rotation as `host:port`; the host caps connections, rows and bytes.
//!
//! ```text
//! use tumbler_sdk::sql::{ConnectOptions, Connection, Credentials, Engine};
//! use tumbler_sdk::SecretRef;
//!
//! // Log in with the pending version: the host fills in its username and
//! // password, which never enter the plugin.
//! let options = ConnectOptions::new(Engine::Postgres, "db.internal", 5432,
//!     Credentials::FromSecret(SecretRef::Pending)).database("orders");
//! let connection = Connection::connect(&options)?;
//! connection.query("SELECT 1", &[])?;
//! ```
//!
//! Statements bind their parameters (`$1` for PostgreSQL, `?` for MySQL).
//! Utility statements such as `ALTER ROLE ... PASSWORD` take no parameters;
//! build those with [`Engine::quote_identifier`] and [`Engine::quote_literal`].

use core::fmt;

use crate::SecretRef;
use crate::redact::Redacted;

pub use crate::bindings::tumbler::rotator::sql::{ConnectOptions, Connection, Engine, QueryResult, TlsMode, Value};

/// How to log in. `Debug` hides the password.
#[derive(Clone)]
pub enum Credentials {
    /// Username and password given by the plugin.
    Password((String, String)),
    /// Username and password taken by the host from a secret.
    FromSecret(SecretRef),
}

impl Credentials {
    pub fn password(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials::Password((username.into(), password.into()))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Password((username, _)) => f.debug_tuple("Password").field(username).field(&Redacted).finish(),
            Credentials::FromSecret(secret) => f.debug_tuple("FromSecret").field(secret).finish(),
        }
    }
}

impl ConnectOptions {
    /// Options for `host:port`, no database named, TLS checking the
    /// certificate and host name (`verify-full`).
    pub fn new(engine: Engine, host: impl Into<String>, port: u16, credentials: Credentials) -> Self {
        ConnectOptions { engine, host: host.into(), port, database: None, tls: TlsMode::VerifyFull, credentials }
    }

    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    pub fn tls(mut self, tls: TlsMode) -> Self {
        self.tls = tls;
        self
    }
}

impl Engine {
    pub fn default_port(self) -> u16 {
        match self {
            Engine::Postgres => 5432,
            Engine::Mysql => 3306,
        }
    }

    /// An identifier (role, user, database name) quoted for a statement.
    pub fn quote_identifier(self, identifier: &str) -> String {
        match self {
            Engine::Postgres => format!("\"{}\"", identifier.replace('"', "\"\"")),
            Engine::Mysql => format!("`{}`", identifier.replace('`', "``")),
        }
    }

    /// A string literal quoted for a statement that cannot bind parameters.
    ///
    /// PostgreSQL: like its own `quote_literal`, correct whatever
    /// `standard_conforming_strings` says. MySQL: correct in the default
    /// SQL mode; under `NO_BACKSLASH_ESCAPES` a backslash would be doubled
    /// (never an injection), so keep `\` out of generated MySQL passwords.
    pub fn quote_literal(self, text: &str) -> String {
        let quoted = text.replace('\'', "''");
        match self {
            Engine::Postgres if text.contains('\\') => {
                format!("E'{}'", quoted.replace('\\', "\\\\"))
            }
            Engine::Postgres => format!("'{quoted}'"),
            Engine::Mysql => format!("'{}'", quoted.replace('\\', "\\\\")),
        }
    }
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(text) => Some(text),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }
}

/// `Value::from(..)` / `.into()` for the Rust types a parameter usually is.
macro_rules! value_from {
    ($($ty:ty => $variant:ident),* $(,)?) => {$(
        impl From<$ty> for Value {
            fn from(value: $ty) -> Self {
                Value::$variant(value.into())
            }
        }
    )*};
}

value_from! {
    bool => Boolean,
    i32 => Int,
    u32 => Int,
    i64 => Int,
    f64 => Float,
    String => Text,
    &str => Text,
    Vec<u8> => Bytes,
    &[u8] => Bytes,
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Self {
        value.map_or(Value::Null, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_cannot_break_out_of_their_quotes() {
        assert_eq!(Engine::Postgres.quote_identifier("app\"; DROP"), "\"app\"\"; DROP\"");
        assert_eq!(Engine::Mysql.quote_identifier("app`x"), "`app``x`");
    }

    #[test]
    fn literals_cannot_break_out_of_their_quotes() {
        assert_eq!(Engine::Postgres.quote_literal("it's"), "'it''s'");
        assert_eq!(Engine::Postgres.quote_literal("a\\'b"), "E'a\\\\''b'");
        assert_eq!(Engine::Mysql.quote_literal("a\\'b"), "'a\\\\''b'");
    }

    #[test]
    fn debug_hides_a_password() {
        let shown = format!("{:?}", Credentials::password("app", "s3cr3t"));
        assert!(shown.contains("app") && !shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn rust_values_convert_to_parameters() {
        assert_eq!(Value::from("x").as_str(), Some("x"));
        assert_eq!(Value::from(7u32).as_i64(), Some(7));
        assert!(Value::from(None::<i64>).is_null());
        assert_eq!(Value::from(Some(true)).as_bool(), Some(true));
    }
}
