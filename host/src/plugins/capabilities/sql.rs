//! `sql`: connections to granted PostgreSQL and MySQL/MariaDB targets.
//! Every call reads the same way: check the grant and the caps, take the
//! credentials (given, or from a secret so they never enter the plugin),
//! connect to the address `resolve_checked` approved, run the statement
//! with its parameters bound, and map the driver's error to whose fault it
//! is. Results are read row by row and cut off at the caps, never
//! buffered whole first.

mod mysql;
mod pool;
mod postgres;

use super::{denied, host_error, resolve_checked};
use crate::plugins::bindings::tumbler::rotator::sql::{
    ConnectOptions, Credentials, Engine, Host, HostConnection, QueryResult, TlsMode, Value,
};
use crate::plugins::bindings::tumbler::rotator::types::SecretRef;
use crate::plugins::bindings::tumbler::rotator::types::{ErrorKind, HostError};
use crate::plugins::runtime::PluginState;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use wasmtime::component::Resource;
use zeroize::Zeroizing;

/// Rows one query may return to the plugin.
pub const MAX_ROWS: usize = 10_000;
/// Bytes of values (and column names) one query may return to the plugin.
pub const MAX_RESULT_BYTES: usize = 4 << 20;
/// From the TCP connect to a logged-in session.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Protocol overhead allowed on the wire on top of [`MAX_RESULT_BYTES`]
/// before the drivers' own reads are cut (see `postgres::WireMeter` and
/// MySQL's `max_allowed_packet`).
const WIRE_SLACK: usize = 1 << 20;

/// Closes every session kept idle for reuse (see `pool`): after a break
/// glass, a session logged in with a password it made invalid must not
/// outlive it.
pub fn close_idle_sessions() {
    pool::pool().close_all();
}

/// A live connection held in the store's resource table.
pub struct Connection {
    /// `host:port` as granted, for the audit line and messages.
    target: String,
    driver: Driver,
    /// Set when the session may be kept for the next call (see `pool`).
    reuse: Option<pool::LoginKey>,
}

enum Driver {
    Postgres(postgres::PgConnection),
    Mysql(mysql::MyConnection),
    /// Closed by the host after a cap was hit or the link broke; the
    /// driver was dropped so the server stops sending.
    Closed,
}

/// What the drivers need to log in, credentials already resolved.
struct Login {
    /// The checked address to connect to.
    addr: SocketAddr,
    /// The granted host name, for TLS server name checks.
    server_name: String,
    username: String,
    password: Zeroizing<String>,
    database: Option<String>,
    tls: TlsMode,
}

impl Host for PluginState {}

impl HostConnection for PluginState {
    async fn connect(&mut self, options: ConnectOptions) -> wasmtime::Result<Result<Resource<Connection>, HostError>> {
        let target = format!("{}:{}", options.host, options.port);
        let result = match self.sql_connect(options).await {
            Ok(connection) => {
                self.table.push(connection).map_err(|e| host_error(ErrorKind::Host, format!("resource table: {e}")))
            }
            Err(e) => Err(e),
        };
        if result.is_ok() {
            self.budget.sql_connection_opened();
        }
        Ok(self.audited("sql", &target, result).await)
    }

    async fn execute(
        &mut self,
        connection: Resource<Connection>,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<u64, HostError>> {
        let connection = self.table.get_mut(&connection)?;
        let result = connection.driver.execute(&statement, &params).await;
        let target = connection.close_if_broken(&result);
        Ok(self.audited("sql", &target, result).await)
    }

    async fn query(
        &mut self,
        connection: Resource<Connection>,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<QueryResult, HostError>> {
        let connection = self.table.get_mut(&connection)?;
        let result = connection.driver.query(&statement, &params).await;
        let target = connection.close_if_broken(&result);
        Ok(self.audited("sql", &target, result).await)
    }

    async fn drop(&mut self, connection: Resource<Connection>) -> wasmtime::Result<()> {
        let connection = self.table.delete(connection)?;
        if let Some(key) = connection.reuse
            && !matches!(connection.driver, Driver::Closed)
        {
            pool::pool().give_back(key, connection.driver).await;
        }
        self.budget.sql_connection_closed();
        Ok(())
    }
}

impl PluginState {
    async fn sql_connect(&mut self, options: ConnectOptions) -> Result<Connection, HostError> {
        let Some(grant) = self.call.grants.sql.iter().find(|g| g.matches(&options.host, options.port)).cloned() else {
            let target = format!("{}:{}", options.host, options.port);
            return Err(denied(format!("connecting to {target} is not granted; add it to grants.sql")));
        };
        self.budget.check_sql_connections_held()?;
        self.budget.take_sql_connect()?;
        // Only another secret's login is reused; see `pool`.
        let reusable = matches!(options.credentials, Credentials::FromSecret(SecretRef::Named(_)));
        let (username, password) = match options.credentials {
            Credentials::Password((username, password)) => (username, Zeroizing::new(password)),
            Credentials::FromSecret(secret) => {
                let credentials = self.secret_credentials(&secret).await?;
                let password = credentials.password.ok_or_else(|| {
                    host_error(ErrorKind::Invalid, "the secret has no `password` to log in to a database with")
                })?;
                (credentials.username, password)
            }
        };
        let addr = resolve_checked(&grant).await?;
        let target = format!("{}:{}", grant.host, grant.port);
        let login = Login {
            addr,
            server_name: grant.host.clone(),
            username,
            password,
            database: options.database,
            tls: options.tls,
        };
        let reuse = reusable.then(|| {
            pool::LoginKey::new(
                matches!(options.engine, Engine::Postgres),
                addr,
                &login.server_name,
                login.database.as_deref(),
                login.tls as u8,
                &login.username,
                &login.password,
            )
        });
        if let Some(driver) = reuse.as_ref().and_then(|key| pool::pool().take(key)) {
            return Ok(Connection { target, driver, reuse });
        }
        let connecting = async {
            match options.engine {
                Engine::Postgres => postgres::connect(&login).await.map(Driver::Postgres),
                Engine::Mysql => mysql::connect(&login).await.map(Driver::Mysql),
            }
        };
        let driver = tokio::time::timeout(CONNECT_TIMEOUT, connecting).await.map_err(|_| {
            host_error(ErrorKind::Unreachable, format!("connecting to {target} took longer than {CONNECT_TIMEOUT:?}"))
        })??;
        Ok(Connection { target, driver, reuse })
    }
}

impl Driver {
    /// Whether the link is still up, as far as the host can tell.
    fn is_open(&self) -> bool {
        match self {
            Driver::Postgres(pg) => pg.is_open(),
            Driver::Mysql(my) => my.is_open(),
            Driver::Closed => false,
        }
    }

    /// Makes the session as fresh as a new login (see `pool`); false if it
    /// cannot be, and must be closed.
    async fn reset(&mut self) -> bool {
        let reset = async {
            match self {
                Driver::Postgres(pg) => pg.reset().await,
                Driver::Mysql(my) => my.reset().await,
                Driver::Closed => false,
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, reset).await.unwrap_or(false)
    }

    async fn execute(&mut self, statement: &str, params: &[Value]) -> Result<u64, HostError> {
        match self {
            Driver::Postgres(pg) => pg.execute(statement, params).await,
            Driver::Mysql(my) => my.execute(statement, params).await,
            Driver::Closed => Err(closed()),
        }
    }

    async fn query(&mut self, statement: &str, params: &[Value]) -> Result<QueryResult, HostError> {
        match self {
            Driver::Postgres(pg) => pg.query(statement, params).await,
            Driver::Mysql(my) => my.query(statement, params).await,
            Driver::Closed => Err(closed()),
        }
    }
}

impl Connection {
    /// After a cap is hit or the link failed, the rest of a result may
    /// still be on its way: the driver is dropped (closing the socket) so
    /// the server stops sending and the next call says why. Returns the
    /// target, for the audit line.
    fn close_if_broken<T>(&mut self, result: &Result<T, HostError>) -> String {
        if let Err(e) = result
            && matches!(e.kind, ErrorKind::Limit | ErrorKind::Unreachable)
        {
            self.driver = Driver::Closed;
        }
        self.target.clone()
    }
}

fn closed() -> HostError {
    host_error(
        ErrorKind::Unreachable,
        "this connection was closed after a cap was hit or the link failed; connect again",
    )
}

/// Collects a query's rows as they arrive and stops at the first that would
/// pass a cap, so a huge result never sits in host memory.
struct ResultBuilder {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
    bytes: usize,
}

impl ResultBuilder {
    fn new(columns: Vec<String>) -> Result<Self, HostError> {
        let bytes = columns.iter().map(String::len).sum();
        let builder = ResultBuilder { columns, rows: Vec::new(), bytes };
        builder.check_bytes()?;
        Ok(builder)
    }

    fn push(&mut self, row: Vec<Value>) -> Result<(), HostError> {
        if self.rows.len() >= MAX_ROWS {
            return Err(host_error(
                ErrorKind::Limit,
                format!("the query returned more than {MAX_ROWS} rows; add a LIMIT or page through it"),
            ));
        }
        self.bytes += row.iter().map(value_size).sum::<usize>();
        self.check_bytes()?;
        self.rows.push(row);
        Ok(())
    }

    fn check_bytes(&self) -> Result<(), HostError> {
        if self.bytes > MAX_RESULT_BYTES {
            return Err(result_too_large());
        }
        Ok(())
    }

    fn finish(self) -> QueryResult {
        QueryResult { columns: self.columns, rows: self.rows }
    }
}

fn result_too_large() -> HostError {
    host_error(
        ErrorKind::Limit,
        format!("the query returned more than {MAX_RESULT_BYTES} bytes; select less, or page through it"),
    )
}

/// Bytes a value costs against [`MAX_RESULT_BYTES`].
fn value_size(value: &Value) -> usize {
    match value {
        Value::Text(text) => text.len(),
        Value::Bytes(bytes) => bytes.len(),
        Value::Null | Value::Boolean(_) | Value::Int(_) | Value::Float(_) => 8,
    }
}

/// The WIT name of a parameter's variant, for messages.
fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Text(_) => "text",
        Value::Bytes(_) => "bytes",
    }
}

/// rustls client settings for `require` (encrypted, certificate not
/// checked) and `verify-full` (webpki roots and the host name). Built once
/// with the ring provider, whatever the process default is.
fn tls_config(mode: TlsMode) -> Result<Arc<rustls::ClientConfig>, HostError> {
    static REQUIRE: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    static VERIFY_FULL: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    let (cell, verify) = match mode {
        TlsMode::Disable => {
            return Err(host_error(ErrorKind::Host, "TLS config asked for with tls = disable"));
        }
        TlsMode::Require => (&REQUIRE, false),
        TlsMode::VerifyFull => (&VERIFY_FULL, true),
    };
    cell.get_or_init(|| build_tls_config(verify).map(Arc::new).map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| host_error(ErrorKind::Host, format!("TLS setup failed: {e}")))
}

fn build_tls_config(verify: bool) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    if verify {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        return Ok(builder.with_root_certificates(roots).with_no_client_auth());
    }
    Ok(builder.dangerous().with_custom_certificate_verifier(Arc::new(EncryptOnly(provider))).with_no_client_auth())
}

/// `tls = require`: any certificate is accepted (as libpq's `sslmode=require`
/// does), but the handshake signatures are still checked, so the session is
/// encrypted to whoever holds the presented key.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The server name TLS checks the certificate against: the granted host.
fn server_name(login: &Login) -> Result<rustls::pki_types::ServerName<'static>, HostError> {
    rustls::pki_types::ServerName::try_from(login.server_name.clone())
        .map_err(|_| host_error(ErrorKind::Invalid, format!("{:?} is not a valid TLS server name", login.server_name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_stops_at_the_row_cap() {
        let mut result = ResultBuilder::new(vec!["n".into()]).unwrap();
        for n in 0..MAX_ROWS {
            result.push(vec![Value::Int(n as i64)]).unwrap();
        }
        let refused = result.push(vec![Value::Int(0)]).unwrap_err();
        assert!(matches!(refused.kind, ErrorKind::Limit));
    }

    #[test]
    fn a_result_stops_at_the_byte_cap() {
        let mut result = ResultBuilder::new(vec!["t".into()]).unwrap();
        let chunk = "x".repeat(MAX_RESULT_BYTES / 4);
        for _ in 0..3 {
            result.push(vec![Value::Text(chunk.clone())]).unwrap();
        }
        let refused = result.push(vec![Value::Text(chunk)]).unwrap_err();
        assert!(matches!(refused.kind, ErrorKind::Limit));
        assert_eq!(result.finish().rows.len(), 3);
    }
}
