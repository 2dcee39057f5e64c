//! PostgreSQL through tokio-postgres, over a TCP stream the host opened to
//! the checked address (`connect_raw`, so the name is never resolved
//! again), with the socket metered so no single message can make the
//! driver buffer more than the result cap.

use super::{
    Login, MAX_RESULT_BYTES, ResultBuilder, WIRE_SLACK, result_too_large, server_name, tls_config, value_kind,
};
use crate::plugins::bindings::tumbler::rotator::sql::{QueryResult, TlsMode, Value};
use crate::plugins::bindings::tumbler::rotator::types::{ErrorKind, HostError};
use crate::plugins::capabilities::host_error;
use bytes::BytesMut;
use futures_util::TryStreamExt;
use std::error::Error as StdError;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Statement};

/// SQLSTATEs PostgreSQL answers a refused login with.
const INVALID_PASSWORD: &str = "28P01";
const INVALID_AUTHORIZATION: &str = "28000";

pub(super) struct PgConnection {
    client: Client,
    /// The task driving the socket; aborted on drop so a result cut short
    /// is not read to its end in the background.
    task: JoinHandle<()>,
    meter: Arc<WireMeter>,
}

impl Drop for PgConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) async fn connect(login: &Login) -> Result<PgConnection, HostError> {
    let tcp = TcpStream::connect(login.addr)
        .await
        .map_err(|e| host_error(ErrorKind::Unreachable, format!("cannot connect to {}: {e}", login.addr)))?;
    let _ = tcp.set_nodelay(true);
    let meter = Arc::new(WireMeter::default());
    let stream = Metered { inner: tcp, meter: meter.clone() };
    let mut config = tokio_postgres::Config::new();
    config.user(&login.username).password(login.password.as_bytes()).application_name("tumbler");
    if let Some(database) = &login.database {
        config.dbname(database);
    }
    let (client, task) = match login.tls {
        TlsMode::Disable => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            let (client, connection) = config.connect_raw(stream, NoTls).await.map_err(|e| connect_error(login, e))?;
            (client, spawn_connection(connection))
        }
        TlsMode::Require | TlsMode::VerifyFull => {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            let tls = RustlsConnect { config: tls_config(login.tls)?, server_name: server_name(login)? };
            let (client, connection) = config.connect_raw(stream, tls).await.map_err(|e| connect_error(login, e))?;
            (client, spawn_connection(connection))
        }
    };
    Ok(PgConnection { client, task, meter })
}

fn spawn_connection<F>(connection: F) -> JoinHandle<()>
where
    F: Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        // Its errors reach the caller through the client's next request.
        let _ = connection.await;
    })
}

impl PgConnection {
    pub(super) fn is_open(&self) -> bool {
        !self.client.is_closed() && !self.meter.tripped()
    }

    /// `DISCARD ALL`, which PostgreSQL refuses inside a transaction block:
    /// a session left in one is not reset, and so not reused.
    pub(super) async fn reset(&mut self) -> bool {
        self.meter.start();
        self.is_open() && self.client.batch_execute("DISCARD ALL").await.is_ok()
    }

    pub(super) async fn execute(&mut self, statement: &str, params: &[Value]) -> Result<u64, HostError> {
        self.meter.start();
        let prepared = self.client.prepare(statement).await.map_err(|e| self.error(e))?;
        let bound = bind(&prepared, params)?;
        self.client.execute_raw(&prepared, bound).await.map_err(|e| self.error(e))
    }

    pub(super) async fn query(&mut self, statement: &str, params: &[Value]) -> Result<QueryResult, HostError> {
        self.meter.start();
        let prepared = self.client.prepare(statement).await.map_err(|e| self.error(e))?;
        let bound = bind(&prepared, params)?;
        let mut columns = Vec::with_capacity(prepared.columns().len());
        for column in prepared.columns() {
            if !<Cell as FromSql>::accepts(column.type_()) {
                return Err(host_error(
                    ErrorKind::Invalid,
                    format!(
                        "column {:?} has type {}, which the host does not hand to plugins; cast it in the query \
                         (e.g. {}::text)",
                        column.name(),
                        column.type_(),
                        column.name()
                    ),
                ));
            }
            columns.push(column.name().to_owned());
        }
        let mut result = ResultBuilder::new(columns)?;
        let mut rows = pin!(self.client.query_raw(&prepared, bound).await.map_err(|e| self.error(e))?);
        while let Some(row) = rows.try_next().await.map_err(|e| self.error(e))? {
            let mut values = Vec::with_capacity(row.len());
            for i in 0..row.len() {
                let cell: Cell = row.try_get(i).map_err(|e| self.error(e))?;
                values.push(cell.0);
            }
            result.push(values)?;
        }
        Ok(result.finish())
    }

    /// Whose fault a failed statement is: the meter's cut is a cap, a
    /// refused parameter is the plugin's, a server error is the target's.
    fn error(&self, e: tokio_postgres::Error) -> HostError {
        if self.meter.tripped() {
            return result_too_large();
        }
        if let Some(refused) = e.source().and_then(|s| s.downcast_ref::<ParamError>()) {
            return host_error(ErrorKind::Invalid, refused.0.clone());
        }
        if let Some(db) = e.as_db_error() {
            return host_error(ErrorKind::Target, format!("{} ({})", db.message(), db.code().code()));
        }
        if e.is_closed() {
            return host_error(ErrorKind::Unreachable, format!("the connection was lost: {}", describe(&e)));
        }
        host_error(ErrorKind::Target, describe(&e))
    }
}

/// The error with its causes: tokio-postgres' `Display` leaves them out
/// ("error performing TLS handshake", not why).
fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A refused login is `auth`; any other server answer is the target's;
/// everything else (TCP, TLS, a closed socket) means it was not reached.
fn connect_error(login: &Login, e: tokio_postgres::Error) -> HostError {
    match e.as_db_error() {
        Some(db) if [INVALID_PASSWORD, INVALID_AUTHORIZATION].contains(&db.code().code()) => host_error(
            ErrorKind::Auth,
            format!("{} refused the login of {:?}: {}", login.addr, login.username, db.message()),
        ),
        Some(db) => host_error(ErrorKind::Target, format!("{} ({})", db.message(), db.code().code())),
        None => host_error(ErrorKind::Unreachable, format!("cannot connect to {}: {}", login.addr, describe(&e))),
    }
}

/// Checks the parameter count up front (the driver's own message for it
/// is not told apart from other errors) and wraps each value for binding.
fn bind<'a>(statement: &Statement, params: &'a [Value]) -> Result<Vec<Param<'a>>, HostError> {
    if statement.params().len() != params.len() {
        return Err(host_error(
            ErrorKind::Invalid,
            format!("the statement takes {} parameters; {} were given", statement.params().len(), params.len()),
        ));
    }
    Ok(params.iter().enumerate().map(|(i, value)| Param { position: i + 1, value }).collect())
}

/// Why a value could not be bound; found again by `PgConnection::error`.
#[derive(Debug)]
struct ParamError(String);

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for ParamError {}

/// A WIT value bound to `$position`, encoded for the type the server
/// inferred: numbers fit any numeric or text parameter, text any text-like
/// one; anything else asks the plugin to cast in SQL.
#[derive(Debug)]
struct Param<'a> {
    position: usize,
    value: &'a Value,
}

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let refuse = || -> Box<dyn StdError + Sync + Send> {
            Box::new(ParamError(format!(
                "parameter ${} is {} but the statement expects {ty}; cast it in SQL (e.g. ${}::text::{ty})",
                self.position,
                value_kind(self.value),
                self.position
            )))
        };
        let out_of_range = || -> Box<dyn StdError + Sync + Send> {
            Box::new(ParamError(format!("parameter ${} does not fit in {ty}", self.position)))
        };
        match self.value {
            Value::Null => Ok(IsNull::Yes),
            Value::Boolean(b) if *ty == Type::BOOL => b.to_sql(ty, out),
            Value::Int(n) => match *ty {
                Type::INT2 => i16::try_from(*n).map_err(|_| out_of_range())?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*n).map_err(|_| out_of_range())?.to_sql(ty, out),
                Type::INT8 => n.to_sql(ty, out),
                Type::OID => u32::try_from(*n).map_err(|_| out_of_range())?.to_sql(ty, out),
                Type::FLOAT4 => (*n as f32).to_sql(ty, out),
                Type::FLOAT8 => (*n as f64).to_sql(ty, out),
                _ if is_text(ty) => n.to_string().to_sql(ty, out),
                _ => Err(refuse()),
            },
            Value::Float(x) => match *ty {
                Type::FLOAT4 => (*x as f32).to_sql(ty, out),
                Type::FLOAT8 => x.to_sql(ty, out),
                _ if is_text(ty) => x.to_string().to_sql(ty, out),
                _ => Err(refuse()),
            },
            Value::Text(text) => match *ty {
                Type::JSON => {
                    out.extend_from_slice(text.as_bytes());
                    Ok(IsNull::No)
                }
                // jsonb's binary form is a version byte, then the text.
                Type::JSONB => {
                    out.extend_from_slice(&[1]);
                    out.extend_from_slice(text.as_bytes());
                    Ok(IsNull::No)
                }
                _ if is_text(ty) => text.as_str().to_sql(ty, out),
                _ => Err(refuse()),
            },
            Value::Bytes(bytes) if *ty == Type::BYTEA => bytes.as_slice().to_sql(ty, out),
            Value::Boolean(_) | Value::Bytes(_) => Err(refuse()),
        }
    }

    /// Every type is offered to `to_sql`, which decides per value.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Text, varchar, char(n), name, unknown (an untyped `$1`) and citext.
fn is_text(ty: &Type) -> bool {
    <&str as ToSql>::accepts(ty)
}

/// One column of a row as a WIT value. The types below are handed over;
/// others are refused before the query runs (see `query`).
struct Cell(Value);

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        let value = match *ty {
            Type::BOOL => Value::Boolean(bool::from_sql(ty, raw)?),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::OID => Value::Int(u32::from_sql(ty, raw)?.into()),
            Type::FLOAT4 => Value::Float(f32::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Float(f64::from_sql(ty, raw)?),
            Type::BYTEA => Value::Bytes(raw.to_vec()),
            Type::JSON => Value::Text(std::str::from_utf8(raw)?.to_owned()),
            Type::JSONB => match raw.split_first() {
                Some((1, text)) => Value::Text(std::str::from_utf8(text)?.to_owned()),
                _ => return Err("unsupported jsonb encoding version".into()),
            },
            Type::UUID => Value::Text(format_uuid(raw)?),
            _ => Value::Text(<&str as FromSql>::from_sql(ty, raw)?.to_owned()),
        };
        Ok(Cell(value))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Cell(Value::Null))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::BOOL
                | Type::INT2
                | Type::INT4
                | Type::INT8
                | Type::OID
                | Type::FLOAT4
                | Type::FLOAT8
                | Type::BYTEA
                | Type::JSON
                | Type::JSONB
                | Type::UUID
        ) || <&str as FromSql>::accepts(ty)
    }
}

fn format_uuid(raw: &[u8]) -> Result<String, Box<dyn StdError + Sync + Send>> {
    if raw.len() != 16 {
        return Err("a uuid is 16 bytes".into());
    }
    let hex = hex::encode(raw);
    Ok(format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]))
}

/// Bytes read off the socket since the current operation started. Past
/// the cap (plus protocol slack) reads fail, which ends the connection:
/// tokio-postgres holds a whole row in memory before handing it over, and
/// a single value can be a gigabyte.
#[derive(Default)]
struct WireMeter {
    read: AtomicUsize,
    tripped: AtomicBool,
}

impl WireMeter {
    const LIMIT: usize = MAX_RESULT_BYTES + WIRE_SLACK;

    fn start(&self) {
        self.read.store(0, Ordering::Relaxed);
    }

    fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }
}

struct Metered {
    inner: TcpStream,
    meter: Arc<WireMeter>,
}

impl AsyncRead for Metered {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.meter.tripped() {
            return Poll::Ready(Err(io::Error::other("result over the host's cap")));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if this.meter.read.fetch_add(read, Ordering::Relaxed) + read > WireMeter::LIMIT {
            this.meter.tripped.store(true, Ordering::Relaxed);
            return Poll::Ready(Err(io::Error::other("result over the host's cap")));
        }
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// tokio-postgres' TLS hook, over rustls.
struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
}

impl<S> tokio_postgres::tls::TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move { connector.connect(self.server_name, stream).await.map(TlsStream) })
    }
}

struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    /// No channel binding: SCRAM still runs, without the `-PLUS` variant.
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
