//! Fixture: `set` makes the one host call its params describe, logs the
//! outcome and, when the host refuses, fails with `kind: message` (e.g.
//! `denied: ...`), so a host test can assert why. `params` examples:
//!
//! ```json
//! {"call": "sql", "host": "127.0.0.1", "port": 5432}
//! {"call": "sql-connect-loop", "host": "127.0.0.1", "port": 5432, "n": 100}
//! {"call": "sql-query", "host": "db", "port": 5432, "user": "u", "password": "p", "statement": "SELECT 1"}
//! {"call": "ssh", "host": "10.0.0.5", "port": 22, "username": "u", "password": "p", "command": "true"}
//! {"call": "http", "url": "https://api.example.com/x", "method": "GET", "headers": [["Host", "evil"]]}
//! {"call": "secret", "name": "db/other"}
//! {"call": "pbkdf2", "password": "passwd", "salt": "salt", "iterations": 1, "length": 64}
//! ```
//!
//! SQL targets take `engine` (`postgres`, the default, or `mysql`),
//! `database`, `tls` (`disable`, the default, `require`, `verify-full`) and
//! either `user` and `password` or `secret` (`current`, the default,
//! `pending`, or another secret's name, filled in by the host). SSH takes
//! `password`, `private_key` or `secret` the same way.
//!
//! `sql-query` also takes `params` (bound in order: JSON null, booleans,
//! integers, floats, strings, or `{"bytes": [..]}`) and `execute: true`
//! (run as `execute`, logging the rows affected); it logs the rows as JSON
//! on a `sql-query rows: ` line. `ssh` also takes `stdin` (text) and logs
//! the command's stdout and stderr on `ssh stdout: ` / `ssh stderr: ` lines.
//! `pbkdf2` also takes `sha512: true` (SHA-256 by default); it logs the
//! key in hex on a `pbkdf2: ` line.

use serde::Deserialize;
use tumbler_sdk::crypto;
use tumbler_sdk::http::{self, Request};
use tumbler_sdk::password::{PasswordOptions, generate_password};
use tumbler_sdk::serde_json::{self, Value as Json};
use tumbler_sdk::sql::{ConnectOptions, Connection, Credentials, Engine, QueryResult, TlsMode, Value};
use tumbler_sdk::ssh::{self, Auth, Command};
use tumbler_sdk::{HostError, Info, Rotator, SecretRef, StepError, StepInput, log, secrets};

#[derive(Deserialize)]
#[serde(tag = "call", rename_all = "kebab-case")]
enum Probe {
    Sql(SqlTarget),
    SqlConnectLoop(ConnectLoop),
    SqlQuery(Query),
    Ssh(SshCall),
    Http(HttpCall),
    Secret { name: String },
    Pbkdf2(Derive),
}

#[derive(Deserialize)]
struct Derive {
    password: String,
    salt: String,
    iterations: u32,
    length: u32,
    #[serde(default)]
    sha512: bool,
}

#[derive(Deserialize)]
struct SqlTarget {
    host: String,
    port: u16,
    #[serde(default = "postgres")]
    engine: String,
    database: Option<String>,
    #[serde(default = "disable")]
    tls: String,
    user: Option<String>,
    password: Option<String>,
    secret: Option<String>,
}

#[derive(Deserialize)]
struct ConnectLoop {
    #[serde(flatten)]
    target: SqlTarget,
    n: u32,
}

#[derive(Deserialize)]
struct Query {
    #[serde(flatten)]
    target: SqlTarget,
    statement: String,
    #[serde(default)]
    params: Vec<Json>,
    #[serde(default)]
    execute: bool,
}

#[derive(Deserialize)]
struct SshCall {
    host: String,
    port: u16,
    #[serde(default)]
    username: String,
    password: Option<String>,
    private_key: Option<String>,
    secret: Option<String>,
    #[serde(default = "true_command")]
    command: String,
    stdin: Option<String>,
}

#[derive(Deserialize)]
struct HttpCall {
    url: String,
    #[serde(default = "get")]
    method: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    body: Option<String>,
}

fn postgres() -> String {
    "postgres".into()
}

fn disable() -> String {
    "disable".into()
}

fn true_command() -> String {
    "true".into()
}

fn get() -> String {
    "GET".into()
}

/// `current`, `pending`, or the name of another secret.
fn secret_ref(name: Option<String>) -> SecretRef {
    match name.as_deref() {
        None | Some("current") => SecretRef::Current,
        Some("pending") => SecretRef::Pending,
        Some(other) => SecretRef::Named(other.to_owned()),
    }
}

impl SqlTarget {
    fn options(self) -> Result<ConnectOptions, StepError> {
        let engine = match self.engine.as_str() {
            "postgres" => Engine::Postgres,
            "mysql" => Engine::Mysql,
            other => return Err(StepError::fatal(format!("unknown engine {other:?}"))),
        };
        let tls = match self.tls.as_str() {
            "disable" => TlsMode::Disable,
            "require" => TlsMode::Require,
            "verify-full" => TlsMode::VerifyFull,
            other => return Err(StepError::fatal(format!("unknown tls mode {other:?}"))),
        };
        let credentials = match (self.user, self.password) {
            (Some(user), Some(password)) => Credentials::password(user, password),
            _ => Credentials::FromSecret(secret_ref(self.secret)),
        };
        let mut options = ConnectOptions::new(engine, self.host, self.port, credentials).tls(tls);
        options.database = self.database;
        Ok(options)
    }
}

/// A JSON parameter as a bound SQL value.
fn sql_value(json: &Json) -> Result<Value, StepError> {
    Ok(match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Text(s.clone()),
        Json::Object(o) => match o.get("bytes").and_then(Json::as_array) {
            Some(bytes) => Value::Bytes(bytes.iter().map(|b| b.as_u64().unwrap_or(0) as u8).collect()),
            None => {
                return Err(StepError::fatal("an object parameter must be {\"bytes\": [..]}"));
            }
        },
        Json::Array(_) => return Err(StepError::fatal("a parameter cannot be an array")),
    })
}

/// A result's rows as JSON, the inverse of `sql_value`.
fn rows_json(result: &QueryResult) -> String {
    let cell = |value: &Value| match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::from(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(x) => Json::from(*x),
        Value::Text(s) => Json::from(s.as_str()),
        Value::Bytes(b) => serde_json::json!({ "bytes": b }),
    };
    let rows: Vec<Vec<Json>> = result.rows.iter().map(|row| row.iter().map(cell).collect()).collect();
    serde_json::json!({ "columns": result.columns, "rows": rows }).to_string()
}

/// Logs a refused call and turns it into the step's error.
fn checked<T>(call: &str, result: Result<T, HostError>) -> Result<T, StepError> {
    result.map_err(|error| {
        log::warn(format_args!("{call} failed: {}", error.describe()));
        StepError::from(error)
    })
}

fn probe(call: Probe) -> Result<(), StepError> {
    match call {
        Probe::Sql(target) => {
            checked("sql", Connection::connect(&target.options()?))?;
            log::info("sql: connected");
        }
        Probe::SqlConnectLoop(ConnectLoop { target, n }) => {
            let options = target.options()?;
            // Held, not dropped, so each new connection adds to the count.
            let mut held = Vec::new();
            for i in 1..=n {
                let connection =
                    checked(&format!("sql-connect-loop connection {i} of {n}"), Connection::connect(&options))?;
                held.push(connection);
            }
            log::info(format_args!("sql-connect-loop: holding {} connections", held.len()));
        }
        Probe::SqlQuery(Query { target, statement, params, execute }) => {
            let params = params.iter().map(sql_value).collect::<Result<Vec<_>, _>>()?;
            let connection = checked("sql-query", Connection::connect(&target.options()?))?;
            if execute {
                let affected = checked("sql-query", connection.execute(&statement, &params))?;
                log::info(format_args!("sql-query: {affected} rows affected"));
                return Ok(());
            }
            let result = checked("sql-query", connection.query(&statement, &params))?;
            log::info(format_args!("sql-query: {} rows of {} columns", result.rows.len(), result.columns.len()));
            log::info(format_args!("sql-query rows: {}", rows_json(&result)));
        }
        Probe::Ssh(call) => {
            let auth = match (call.password, call.private_key) {
                (Some(password), _) => Auth::Password(password),
                (None, Some(key)) => Auth::PrivateKey(key),
                (None, None) => Auth::FromSecret(secret_ref(call.secret)),
            };
            let mut command = Command::new(call.host, call.port, call.username, auth, call.command);
            if let Some(stdin) = call.stdin {
                command = command.stdin(stdin.into_bytes());
            }
            let output = checked("ssh", ssh::run(&command))?;
            log::info(format_args!("ssh stdout: {}", output.stdout_text()));
            log::info(format_args!("ssh stderr: {}", output.stderr_text()));
            log::info(format_args!("ssh: exit {}, {} bytes of stdout", output.exit_code, output.stdout.len()));
        }
        Probe::Http(call) => {
            let mut request = Request::new(call.method, call.url);
            request.headers = call.headers;
            request.body = call.body.map(String::into_bytes);
            let response = checked("http", http::send(&request))?;
            log::info(format_args!("http: status {}, {} bytes of body", response.status, response.body.len()));
        }
        Probe::Pbkdf2(d) => {
            let hash = if d.sha512 { crypto::Hash::Sha512 } else { crypto::Hash::Sha256 };
            let key = checked(
                "pbkdf2",
                crypto::pbkdf2(hash, d.password.as_bytes(), d.salt.as_bytes(), d.iterations, d.length),
            )?;
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            log::info(format_args!("pbkdf2: {hex}"));
        }
        Probe::Secret { name } => {
            let value = checked("secret", secrets::get(&name))?;
            log::info(format_args!("secret: read {name} ({} bytes)", value.len()));
        }
    }
    Ok(())
}

struct ProbeRotator;

impl Rotator for ProbeRotator {
    fn info() -> Info {
        use tumbler_sdk::Capability::*;
        Info::new("test-probe", env!("CARGO_PKG_VERSION"), "Test fixture: set calls the host")
            .capabilities([Sql, Ssh, Http, Secrets])
    }

    fn create(_: &StepInput) -> Result<String, StepError> {
        Ok(generate_password(&PasswordOptions::alphanumeric(32))?)
    }

    fn set(input: &StepInput) -> Result<(), StepError> {
        probe(input.params()?)
    }

    fn test(_: &StepInput) -> Result<(), StepError> {
        Ok(())
    }

    fn finish(_: &StepInput) -> Result<(), StepError> {
        Ok(())
    }
}

tumbler_sdk::export!(ProbeRotator);
