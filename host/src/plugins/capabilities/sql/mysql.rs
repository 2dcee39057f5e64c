//! MySQL and MariaDB through mysql_async, connecting to the checked IP (so
//! the name is never resolved again), never switching to a local socket,
//! with the client's `max_allowed_packet` set to the result cap so no
//! single row can make the driver buffer more.

use super::{Login, MAX_RESULT_BYTES, ResultBuilder, WIRE_SLACK, result_too_large};
use crate::plugins::bindings::tumbler::rotator::sql::{QueryResult, TlsMode, Value};
use crate::plugins::bindings::tumbler::rotator::types::{ErrorKind, HostError};
use crate::plugins::capabilities::host_error;
use futures_util::TryStreamExt;
use mysql_async::consts::ColumnType;
use mysql_async::prelude::{Protocol, Queryable};
use mysql_async::{Column, Conn, OptsBuilder, Params, QueryResult as MyResult, Row, SslOpts};
use std::time::Duration;

/// `ER_ACCESS_DENIED_ERROR`: user or password refused.
const ACCESS_DENIED: u16 = 1045;
/// `ER_ACCESS_DENIED_NO_PASSWORD_ERROR`: the account needs a password.
const ACCESS_DENIED_NO_PASSWORD: u16 = 1698;
/// `ER_UNSUPPORTED_PS`: a statement the server will not prepare.
const UNSUPPORTED_PREPARED: u16 = 1295;
/// The binary character set: the column holds bytes, not text.
const BINARY_CHARSET: u16 = 63;
/// How long a closing connection may spend on a polite goodbye.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

pub(super) struct MyConnection {
    /// `None` only while being dropped.
    conn: Option<Conn>,
}

impl Drop for MyConnection {
    /// mysql_async reads a half-read result to its end before it says
    /// goodbye; bounded here, so a result cut at the cap is not drained for
    /// long (when the grace ends, the socket is simply closed).
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(CLOSE_GRACE, conn.disconnect()).await;
            });
        }
    }
}

pub(super) async fn connect(login: &Login) -> Result<MyConnection, HostError> {
    let ssl = match login.tls {
        TlsMode::Disable => None,
        // Encrypted, certificate not checked (as the MySQL client's
        // `--ssl-mode=REQUIRED`).
        TlsMode::Require => Some(
            SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true)
                .with_danger_tls_hostname_override(Some(login.server_name.clone())),
        ),
        // We connect to an IP; the certificate is checked for the granted name.
        TlsMode::VerifyFull => {
            Some(SslOpts::default().with_danger_tls_hostname_override(Some(login.server_name.clone())))
        }
    };
    let opts = OptsBuilder::default()
        .ip_or_hostname(login.addr.ip().to_string())
        .tcp_port(login.addr.port())
        .user(Some(login.username.clone()))
        .pass(Some(login.password.as_str()))
        .db_name(login.database.clone())
        .prefer_socket(false)
        .max_allowed_packet(Some(MAX_RESULT_BYTES + WIRE_SLACK))
        .ssl_opts(ssl);
    let conn = Conn::new(opts).await.map_err(|e| match e {
        mysql_async::Error::Server(server) if [ACCESS_DENIED, ACCESS_DENIED_NO_PASSWORD].contains(&server.code) => {
            host_error(
                ErrorKind::Auth,
                format!("{} refused the login of {:?}: {}", login.addr, login.username, server.message),
            )
        }
        mysql_async::Error::Server(server) => server_error(&server),
        other => host_error(ErrorKind::Unreachable, format!("cannot connect to {}: {other}", login.addr)),
    })?;
    Ok(MyConnection { conn: Some(conn) })
}

impl MyConnection {
    pub(super) fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    /// `COM_RESET_CONNECTION`: false on servers too old for it, or if it failed.
    pub(super) async fn reset(&mut self) -> bool {
        match self.conn.as_mut() {
            Some(conn) => matches!(conn.reset().await, Ok(true)),
            None => false,
        }
    }

    fn conn(&mut self) -> Result<&mut Conn, HostError> {
        self.conn.as_mut().ok_or_else(|| host_error(ErrorKind::Host, "the connection is closing"))
    }

    pub(super) async fn execute(&mut self, statement: &str, params: &[Value]) -> Result<u64, HostError> {
        let conn = self.conn()?;
        match conn.exec_drop(statement, bind(params)).await {
            Err(mysql_async::Error::Server(e)) if e.code == UNSUPPORTED_PREPARED && params.is_empty() => {
                conn.query_drop(statement).await.map_err(error)?;
            }
            other => other.map_err(error)?,
        }
        Ok(conn.affected_rows())
    }

    pub(super) async fn query(&mut self, statement: &str, params: &[Value]) -> Result<QueryResult, HostError> {
        let conn = self.conn()?;
        // A few statements cannot be prepared; without parameters they can
        // still run as plain text (whose rows `cell` reads the same way).
        let prepared = conn.exec_iter(statement, bind(params)).await;
        match prepared {
            Err(mysql_async::Error::Server(e)) if e.code == UNSUPPORTED_PREPARED && params.is_empty() => {
                collect(conn.query_iter(statement).await.map_err(error)?).await
            }
            other => collect(other.map_err(error)?).await,
        }
    }
}

/// Reads the first result set row by row into the capped builder.
async fn collect<P: Protocol + Unpin>(mut result: MyResult<'_, '_, P>) -> Result<QueryResult, HostError> {
    let columns = result.columns_ref().iter().map(|c| c.name_str().into_owned()).collect();
    let mut builder = ResultBuilder::new(columns)?;
    if let Some(mut rows) = result.stream::<Row>().await.map_err(error)? {
        while let Some(row) = rows.try_next().await.map_err(error)? {
            let values = (0..row.len()).map(|i| cell(&row.columns_ref()[i], row.as_ref(i))).collect();
            builder.push(values)?;
        }
    }
    Ok(builder.finish())
}

fn bind(params: &[Value]) -> Params {
    if params.is_empty() {
        return Params::Empty;
    }
    Params::Positional(
        params
            .iter()
            .map(|value| match value {
                Value::Null => mysql_async::Value::NULL,
                Value::Boolean(b) => mysql_async::Value::Int(i64::from(*b)),
                Value::Int(n) => mysql_async::Value::Int(*n),
                Value::Float(x) => mysql_async::Value::Double(*x),
                Value::Text(text) => mysql_async::Value::Bytes(text.as_bytes().to_vec()),
                Value::Bytes(bytes) => mysql_async::Value::Bytes(bytes.clone()),
            })
            .collect(),
    )
}

/// One column of a row as a WIT value. The binary protocol sends typed
/// numbers and dates; the text protocol sends everything as bytes, so
/// bytes are read by the column's type: numbers parsed, dates and decimals
/// as text, strings as text unless the column's charset is binary.
fn cell(column: &Column, value: Option<&mysql_async::Value>) -> Value {
    use mysql_async::Value as My;
    match value {
        None | Some(My::NULL) => Value::Null,
        Some(My::Int(n)) => Value::Int(*n),
        Some(My::UInt(n)) => i64::try_from(*n).map_or_else(|_| Value::Text(n.to_string()), Value::Int),
        Some(My::Float(x)) => Value::Float(f64::from(*x)),
        Some(My::Double(x)) => Value::Float(*x),
        Some(My::Date(year, month, day, hour, minute, second, micros)) => {
            let date = format!("{year:04}-{month:02}-{day:02}");
            if column.column_type() == ColumnType::MYSQL_TYPE_DATE {
                return Value::Text(date);
            }
            Value::Text(format!("{date} {}", clock(*hour as u32, *minute, *second, *micros)))
        }
        Some(My::Time(negative, days, hours, minute, second, micros)) => {
            let sign = if *negative { "-" } else { "" };
            Value::Text(format!("{sign}{}", clock(days * 24 + *hours as u32, *minute, *second, *micros)))
        }
        Some(My::Bytes(bytes)) => bytes_cell(column, bytes),
    }
}

fn clock(hours: u32, minute: u8, second: u8, micros: u32) -> String {
    if micros == 0 {
        format!("{hours:02}:{minute:02}:{second:02}")
    } else {
        format!("{hours:02}:{minute:02}:{second:02}.{micros:06}")
    }
}

fn bytes_cell(column: &Column, bytes: &[u8]) -> Value {
    use ColumnType::*;
    let text = std::str::from_utf8(bytes).ok();
    match column.column_type() {
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_LONG | MYSQL_TYPE_LONGLONG | MYSQL_TYPE_INT24
        | MYSQL_TYPE_YEAR => match text {
            Some(t) => t.parse().map_or_else(|_| Value::Text(t.to_owned()), Value::Int),
            None => Value::Bytes(bytes.to_vec()),
        },
        MYSQL_TYPE_FLOAT | MYSQL_TYPE_DOUBLE => match text.and_then(|t| t.parse().ok()) {
            Some(x) => Value::Float(x),
            None => Value::Bytes(bytes.to_vec()),
        },
        MYSQL_TYPE_DECIMAL
        | MYSQL_TYPE_NEWDECIMAL
        | MYSQL_TYPE_DATE
        | MYSQL_TYPE_NEWDATE
        | MYSQL_TYPE_TIME
        | MYSQL_TYPE_TIME2
        | MYSQL_TYPE_DATETIME
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIMESTAMP
        | MYSQL_TYPE_TIMESTAMP2 => match text {
            Some(t) => Value::Text(t.to_owned()),
            None => Value::Bytes(bytes.to_vec()),
        },
        _ if column.character_set() == BINARY_CHARSET => Value::Bytes(bytes.to_vec()),
        _ => match text {
            Some(t) => Value::Text(t.to_owned()),
            None => Value::Bytes(bytes.to_vec()),
        },
    }
}

/// Whose fault a failed statement is. A row over `max_allowed_packet` is
/// the cap (mysql_async reports it only as an I/O error with this text).
fn error(e: mysql_async::Error) -> HostError {
    match e {
        mysql_async::Error::Server(server) => server_error(&server),
        mysql_async::Error::Driver(driver) => {
            use mysql_async::DriverError::*;
            let kind = match driver {
                Params(_)
                | MixedParams
                | StmtParamsMismatch { .. }
                | StmtParamsNumberExceedsLimit { .. }
                | PacketTooLarge => ErrorKind::Invalid,
                ConnectionClosed => ErrorKind::Unreachable,
                _ => ErrorKind::Target,
            };
            host_error(kind, driver.to_string())
        }
        mysql_async::Error::Io(io) if io.to_string().contains("max_allowed_packet") => result_too_large(),
        mysql_async::Error::Io(io) => host_error(ErrorKind::Unreachable, format!("the connection was lost: {io}")),
        other => host_error(ErrorKind::Target, other.to_string()),
    }
}

fn server_error(server: &mysql_async::ServerError) -> HostError {
    host_error(ErrorKind::Target, format!("{} ({} {})", server.message, server.code, server.state))
}
