//! `ssh`: one command on a granted host. The host key is checked against
//! the grant: a pinned fingerprint, or trust on first use (the first key
//! seen is recorded in `ssh_known_hosts` and enforced from then on); a
//! grant that says neither is refused. Output is capped.

use super::{HostKeyCheck, SshGrant, denied, host_error, resolve_checked};
use crate::plugins::bindings::tumbler::rotator::ssh::{Auth, Command, Host, Output};
use crate::plugins::bindings::tumbler::rotator::types::{ErrorKind, HostError};
use crate::plugins::runtime::PluginState;
use rusqlite::OptionalExtension;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, client};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zeroize::Zeroizing;

/// Bytes of stdout, and separately of stderr, handed back to the plugin.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// From the TCP connect to a logged-in session. The command itself runs
/// under the step's timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Host for PluginState {
    async fn run(&mut self, command: Command) -> wasmtime::Result<Result<Output, HostError>> {
        let target = format!("{}:{}", command.host, command.port);
        let result = self.ssh_run(command).await;
        Ok(self.audited("ssh", &target, result).await)
    }
}

/// How to log in, with secrets kept in zeroized memory.
enum Login {
    Password(Zeroizing<String>),
    Key(Box<PrivateKey>),
}

impl PluginState {
    async fn ssh_run(&mut self, command: Command) -> Result<Output, HostError> {
        let Command { host, port, username, auth, command, stdin } = command;
        let Some(grant) = self.call.grants.ssh.iter().find(|g| g.target.matches(&host, port)).cloned() else {
            let target = format!("{host}:{port}");
            return Err(denied(format!("ssh to {target} is not granted; add it to grants.ssh")));
        };
        let known = format!("{}:{}", grant.target.host, grant.target.port);
        let expected = match &grant.host_key {
            HostKeyCheck::Pinned(fingerprint) => Expected::Pinned(fingerprint.clone()),
            HostKeyCheck::TrustOnFirstUse => match known_host(&self.known_hosts_store()?, &known).await? {
                Some(fingerprint) => Expected::Recorded(fingerprint),
                None => Expected::FirstUse,
            },
            HostKeyCheck::Unpinned => {
                return Err(denied(format!(
                    "the grant for {known} does not say how to check its host key; pin it as \
                     \"{known} SHA256:<base64>\" (from `ssh-keygen -lf` on the host's public key) or opt into \
                     trust on first use with \"{known} tofu\""
                )));
            }
        };
        let (username, login) = self.ssh_login(username, auth).await?;
        let addr = resolve_checked(&grant.target).await?;
        let store = match expected {
            Expected::FirstUse => Some(self.known_hosts_store()?),
            _ => None,
        };
        let plugin = self.call.plugin.clone();
        let connecting = async {
            let mut session = open_session(addr, &grant, &expected).await?;
            if let Some(store) = &store {
                let seen = session
                    .seen
                    .as_deref()
                    .ok_or_else(|| host_error(ErrorKind::Host, "the handshake ended without showing a host key"))?;
                record_known_host(store, &known, seen).await?;
                tracing::info!(target: "tumbler::audit", plugin = %plugin, host = %known, fingerprint = seen,
                    "ssh host key recorded on first use");
            }
            authenticate(&mut session.handle, &known, &username, login).await?;
            Ok::<_, HostError>(session.handle)
        };
        let handle = tokio::time::timeout(CONNECT_TIMEOUT, connecting).await.map_err(|_| {
            host_error(ErrorKind::Unreachable, format!("logging in to {known} took longer than {CONNECT_TIMEOUT:?}"))
        })??;
        let output = run_command(&handle, &known, &command, stdin).await;
        let _ = handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
        output
    }

    /// Username and credentials: the plugin's own, or a secret's.
    async fn ssh_login(&mut self, username: String, auth: Auth) -> Result<(String, Login), HostError> {
        match auth {
            Auth::Password(password) => Ok((username, Login::Password(Zeroizing::new(password)))),
            Auth::PrivateKey(pem) => Ok((username, Login::Key(parse_key(&Zeroizing::new(pem))?))),
            Auth::FromSecret(secret) => {
                let credentials = self.secret_credentials(&secret).await?;
                let login = match (credentials.private_key, credentials.password) {
                    (Some(pem), _) => Login::Key(parse_key(&pem)?),
                    (None, Some(password)) => Login::Password(password),
                    (None, None) => {
                        return Err(host_error(ErrorKind::Invalid, "the secret has no `private_key` or `password`"));
                    }
                };
                Ok((credentials.username, login))
            }
        }
    }

    fn known_hosts_store(&self) -> Result<crate::store::Store, HostError> {
        self.call.store.clone().ok_or_else(|| {
            host_error(ErrorKind::Host, "trust on first use needs the store, which this call does not have")
        })
    }
}

/// The fingerprint recorded for `target` by an earlier connection.
async fn known_host(store: &crate::store::Store, target: &str) -> Result<Option<String>, HostError> {
    let target = target.to_owned();
    store
        .read(move |conn, _| {
            Ok(conn
                .query_row("SELECT fingerprint FROM ssh_known_hosts WHERE target = ?1", [&target], |r| r.get(0))
                .optional()?)
        })
        .await
        .map_err(|e| host_error(ErrorKind::Host, format!("reading ssh_known_hosts: {}", e.message())))
}

/// Records the first key seen. If another call recorded one first, that
/// one stands, and a different key here is refused.
async fn record_known_host(store: &crate::store::Store, target: &str, seen: &str) -> Result<(), HostError> {
    let (key, fingerprint) = (target.to_owned(), seen.to_owned());
    let recorded: String = store
        .write(move |tx, _| {
            tx.execute(
                "INSERT INTO ssh_known_hosts (target, fingerprint, first_seen) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (target) DO NOTHING",
                rusqlite::params![key, fingerprint, crate::model::now_millis()],
            )?;
            Ok(tx.query_row("SELECT fingerprint FROM ssh_known_hosts WHERE target = ?1", [&key], |r| r.get(0))?)
        })
        .await
        .map_err(|e| host_error(ErrorKind::Host, format!("recording the host key: {}", e.message())))?;
    if recorded != seen {
        return Err(key_mismatch(target, seen, &recorded, "was recorded on first use"));
    }
    Ok(())
}

/// The key the server must present.
enum Expected {
    Pinned(String),
    Recorded(String),
    FirstUse,
}

impl Expected {
    fn fingerprint(&self) -> Option<&str> {
        match self {
            Expected::Pinned(f) | Expected::Recorded(f) => Some(f),
            Expected::FirstUse => None,
        }
    }
}

/// russh asks this during the key exchange; a key that does not match
/// ends the handshake before anything is sent.
struct HostKeyVerifier {
    expected: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for HostKeyVerifier {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let fingerprint = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.fingerprint(HashAlg::Sha256),
            PublicKeyOrCertificate::Certificate(certificate) => certificate.public_key().fingerprint(HashAlg::Sha256),
        }
        .to_string();
        let accepted = self.expected.as_deref().is_none_or(|expected| expected == fingerprint);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(fingerprint);
        Ok(accepted)
    }
}

struct Session {
    handle: client::Handle<HostKeyVerifier>,
    /// The fingerprint the server presented.
    seen: Option<String>,
}

async fn open_session(addr: SocketAddr, grant: &SshGrant, expected: &Expected) -> Result<Session, HostError> {
    let target = format!("{}:{}", grant.target.host, grant.target.port);
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| host_error(ErrorKind::Unreachable, format!("cannot connect to {target} ({addr}): {e}")))?;
    let _ = tcp.set_nodelay(true);
    let seen = Arc::new(Mutex::new(None));
    let check = HostKeyVerifier { expected: expected.fingerprint().map(str::to_owned), seen: seen.clone() };
    let config = Arc::new(client::Config::default());
    let connected = client::connect_stream(config, tcp, check).await;
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).take();
    match (connected, expected.fingerprint(), seen.as_deref()) {
        (Ok(handle), _, _) => Ok(Session { handle, seen }),
        (Err(russh::Error::UnknownKey), Some(wanted), Some(presented)) => {
            let how = match expected {
                Expected::Pinned(_) => "is pinned by the grant",
                _ => "was recorded on first use",
            };
            Err(key_mismatch(&target, presented, wanted, how))
        }
        (Err(e), _, _) => Err(host_error(ErrorKind::Unreachable, format!("ssh handshake with {target} failed: {e}"))),
    }
}

/// A host key that is not the expected one is refused: it may be an
/// attacker, or a re-keyed host the operator must confirm.
fn key_mismatch(target: &str, presented: &str, wanted: &str, how: &str) -> HostError {
    denied(format!(
        "{target} presented host key {presented}, but {wanted} {how}; refusing to connect. If the host was \
         re-keyed, update the grant's fingerprint"
    ))
}

fn parse_key(pem: &str) -> Result<Box<PrivateKey>, HostError> {
    // The parser's own messages are not passed on: they could quote the key.
    russh::keys::decode_secret_key(pem, None)
        .map(Box::new)
        .map_err(|_| host_error(ErrorKind::Invalid, "the private key is not an unencrypted OpenSSH or PEM private key"))
}

async fn authenticate(
    handle: &mut client::Handle<HostKeyVerifier>,
    target: &str,
    username: &str,
    login: Login,
) -> Result<(), HostError> {
    let lost = |e: russh::Error| host_error(ErrorKind::Unreachable, format!("ssh login to {target} failed: {e}"));
    let result = match login {
        Login::Password(password) => handle.authenticate_password(username, password.as_str()).await.map_err(lost)?,
        Login::Key(key) => {
            // RSA keys sign with the SHA-2 hash the server asks for; old
            // servers that say nothing get SHA-256, not SHA-1. Other keys
            // have one signature algorithm: nothing to ask.
            let hash = if key.algorithm().is_rsa() {
                match handle.best_supported_rsa_hash().await {
                    Ok(Some(Some(hash))) => Some(hash),
                    _ => Some(HashAlg::Sha256),
                }
            } else {
                None
            };
            let key = PrivateKeyWithHashAlg::new(Arc::new(*key), hash);
            handle.authenticate_publickey(username, key).await.map_err(lost)?
        }
    };
    if !result.success() {
        return Err(host_error(ErrorKind::Auth, format!("{target} refused the login of {username:?}")));
    }
    Ok(())
}

/// Runs the command, feeding stdin while reading the output (a command
/// may fill its output before it reads all its input).
async fn run_command(
    handle: &client::Handle<HostKeyVerifier>,
    target: &str,
    command: &str,
    stdin: Option<Vec<u8>>,
) -> Result<Output, HostError> {
    let failed = |e: russh::Error| host_error(ErrorKind::Unreachable, format!("ssh session with {target} failed: {e}"));
    let channel = handle.channel_open_session().await.map_err(failed)?;
    channel.exec(true, command).await.map_err(failed)?;
    let (mut reader, writer) = channel.split();
    let feed = async {
        // A command may exit without reading its input: not an error.
        if let Some(stdin) = stdin {
            let _ = writer.data(stdin.as_slice()).await;
        }
        let _ = writer.eof().await;
    };
    let collect = async {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut exit_code = None;
        while let Some(message) = reader.wait().await {
            match message {
                ChannelMsg::Data { data } => append(&mut stdout, &data, "stdout")?,
                ChannelMsg::ExtendedData { data, ext: 1 } => append(&mut stderr, &data, "stderr")?,
                ChannelMsg::ExitStatus { exit_status } => exit_code = Some(exit_status as i32),
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    return Err(host_error(
                        ErrorKind::Target,
                        format!("the command on {target} was killed by signal {signal_name:?}"),
                    ));
                }
                ChannelMsg::Failure => {
                    return Err(host_error(ErrorKind::Target, format!("{target} refused to run the command")));
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        let exit_code = exit_code.ok_or_else(|| {
            host_error(ErrorKind::Unreachable, format!("{target} closed the session without an exit status"))
        })?;
        Ok(Output { exit_code, stdout, stderr })
    };
    // Once the output is in (or a cap is hit), stdin no longer matters.
    tokio::pin!(feed, collect);
    let mut fed = false;
    loop {
        tokio::select! {
            output = &mut collect => return output,
            () = &mut feed, if !fed => fed = true,
        }
    }
}

fn append(buffer: &mut Vec<u8>, data: &[u8], stream: &str) -> Result<(), HostError> {
    if buffer.len() + data.len() > MAX_OUTPUT_BYTES {
        return Err(host_error(
            ErrorKind::Limit,
            format!("the command wrote more than {MAX_OUTPUT_BYTES} bytes to {stream}"),
        ));
    }
    buffer.extend_from_slice(data);
    Ok(())
}
