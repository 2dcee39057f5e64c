//! `tumbler serve`: open (or, with `--dev`, create) the store, hold the data
//! dir lock, start background jobs and listen, with TLS unless on loopback.

use crate::alerts::{Alerts, Retry};
use crate::api::{self, AppState, Shared};
use crate::audit::{self, AuditLog, Entry, EntryKind, sink::FileSink};
use crate::auth;
use crate::crypto::MasterKey;
use crate::keyfile::KeySource;
use crate::model::now_millis;
use crate::plugins::cache::ComponentCache;
use crate::plugins::registry::Registry;
use crate::plugins::{Runtime, RuntimeLimits, builtin};
use crate::rotation;
use crate::store::{DataDirLock, Store, secrets};
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use zeroize::Zeroizing;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The data dir made by `tumbler init`.
    #[arg(long, env = "TUMBLER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Master key file (default: the one `tumbler init` wrote for this data dir).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8200")]
    pub listen: SocketAddr,
    /// PEM certificate chain for TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address (only behind a TLS-terminating proxy).
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Throwaway in-memory-keyed store in a temporary dir, deleted on exit.
    #[arg(long, conflicts_with_all = ["data_dir", "key_file"])]
    pub dev: bool,
    /// Root token to use in --dev mode (default: a random one, printed).
    #[arg(long, requires = "dev")]
    pub dev_root_token: Option<String>,
    /// Wall-clock limit of one plugin step (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub plugin_timeout: Duration,
    /// Memory limit of one plugin call, in MiB.
    #[arg(long, default_value_t = 64)]
    pub plugin_memory_mib: usize,
    /// POST alerts (failed rotations, break glass, an unwritable audit log)
    /// as JSON to this URL, retried with backoff. The environment variable
    /// keeps a URL holding a credential out of `ps`.
    #[arg(long, env = "TUMBLER_ALERT_WEBHOOK", hide_env_values = true)]
    pub alert_webhook: Option<String>,
    /// Also write every audit record as a JSON line to this file (a second
    /// sink for log shippers); a record that cannot be written there fails
    /// its request like one that cannot be stored.
    #[arg(long)]
    pub audit_file: Option<PathBuf>,
    /// Rotate the audit file before it grows past this many bytes.
    #[arg(long, default_value_t = 100 << 20, requires = "audit_file")]
    pub audit_file_max_bytes: u64,
    /// Rotated audit files kept beside it (FILE.1 is the newest).
    #[arg(long, default_value_t = 10, requires = "audit_file")]
    pub audit_file_keep: u32,
    /// Rotations whose steps may run at once, across all secrets.
    #[arg(long, default_value_t = crate::rotation::DEFAULT_CONCURRENCY)]
    pub rotation_concurrency: usize,
    /// Attempts per rotation step before the rotation fails (a config may say otherwise).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rotation_max_attempts: u32,
    /// Wait after a step's first failure; doubled each time, with jitter.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub rotation_retry_base: Duration,
    /// Longest wait between two attempts of a step.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub rotation_retry_max: Duration,
    /// Leases one token may hold at once (issue beyond it is refused with 409).
    #[arg(long, default_value_t = 100)]
    pub lease_token_quota: u32,
    /// Wait after a lease's revocation first fails at its target; doubled each time, with jitter.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub lease_retry_base: Duration,
    /// Longest wait between two attempts to revoke a lease.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub lease_retry_max: Duration,
}

/// What must stay alive while the server runs.
struct Running {
    store: Store,
    data_dir: PathBuf,
    _lock: DataDirLock,
    _dev_dir: Option<tempfile::TempDir>,
}

pub async fn run(args: ServeArgs, env_key: Option<Zeroizing<String>>) -> anyhow::Result<()> {
    // Taken over before anything is opened: a SIGTERM or Ctrl-C during
    // start-up then ends the server as soon as it serves, cleanly (the
    // dev server's throwaway dir removed), instead of killing it midway.
    let signals = Signals::take_over()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| format!("loading TLS certificate {} and key {}", cert.display(), key.display()))?,
        ),
        _ => None,
    };
    if tls.is_none() && !args.listen.ip().is_loopback() && !args.insecure_plaintext {
        bail!(
            "refusing to serve plain HTTP on {}: secrets would cross the network in clear. \
             Give --tls-cert and --tls-key, listen on 127.0.0.1, or pass --insecure-plaintext \
             if a TLS-terminating proxy sits in front",
            args.listen
        );
    }
    let alerts = Alerts::new(args.alert_webhook.as_deref(), Retry::default())?;
    let sink = match &args.audit_file {
        Some(path) => Some(FileSink::open(path, args.audit_file_max_bytes, args.audit_file_keep)?),
        None => None,
    };
    let running = if args.dev { open_dev(args.dev_root_token.as_deref()).await? } else { open(&args, env_key)? };
    let audit = AuditLog::start(running.store.clone(), sink, alerts.clone())?;
    spawn_purge_job(audit.clone());
    let limits = RuntimeLimits {
        step_timeout: args.plugin_timeout,
        memory_bytes: args.plugin_memory_mib << 20,
        ..RuntimeLimits::default()
    };
    let cache = ComponentCache::new(
        running.data_dir.join("plugin-cache"),
        running.store.derive_key("tumbler/v1/plugin-cache-mac"),
    )?;
    let runtime = Runtime::new(limits, cache)?;
    let plugins = Registry::start(running.store.clone(), runtime, builtin::BUILTINS).await?;
    let settings = rotation::Settings {
        concurrency: args.rotation_concurrency.max(1),
        max_attempts: args.rotation_max_attempts,
        ..rotation::Settings::default()
    }
    .with_retry(args.rotation_retry_base, args.rotation_retry_max);
    let leases = crate::leases::Leases::start(
        running.store.clone(),
        audit.clone(),
        plugins.clone(),
        crate::leases::Settings {
            token_quota: args.lease_token_quota.max(1),
            retry_base: args.lease_retry_base,
            retry_max: args.lease_retry_max,
            ..crate::leases::Settings::default()
        },
    )
    .await?;
    let rotation = rotation::Engine::start(
        running.store.clone(),
        audit.clone(),
        plugins.clone(),
        leases.clone(),
        alerts,
        settings,
    )
    .await?;

    let listener = std::net::TcpListener::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let tokens = std::sync::Arc::new(auth::TokenCache::default());
    let closing = audit.clone();
    let app =
        api::router(AppState::new(Shared { store: running.store.clone(), audit, plugins, rotation, leases, tokens }));
    let handle = axum_server::Handle::new();
    tokio::spawn(signals.shut_down(handle.clone()));
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, "serving");
    println!("listening on {scheme}://{addr}");
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        Some(config) => axum_server::from_tcp_rustls(listener, config).handle(handle).serve(service).await?,
        None => axum_server::from_tcp(listener).handle(handle).serve(service).await?,
    }
    closing.close().await;
    drop(running);
    Ok(())
}

fn open(args: &ServeArgs, env_key: Option<Zeroizing<String>>) -> anyhow::Result<Running> {
    let data_dir = args
        .data_dir
        .clone()
        .context("pass --data-dir DIR (made by `tumbler init`), or --dev for a throwaway server")?;
    let lock = DataDirLock::acquire(&data_dir, "start a second server on it")?;
    let source = KeySource::choose(&data_dir, args.key_file.clone(), env_key)?;
    let master = source.load(&data_dir)?;
    let store = Store::open(&data_dir, master)?;
    Ok(Running { store, data_dir, _lock: lock, _dev_dir: None })
}

async fn open_dev(root_token: Option<&str>) -> anyhow::Result<Running> {
    let dir = tempfile::Builder::new().prefix("tumbler-dev-").tempdir()?;
    let lock = DataDirLock::acquire(dir.path(), "start a second server on it")?;
    let store = Store::create(dir.path(), MasterKey::generate())?;
    let token = match root_token {
        Some(t) if t.is_empty() => bail!("--dev-root-token must not be empty"),
        Some(t) => {
            let t = t.to_owned();
            store
                .write(move |tx, keys| {
                    auth::insert_root_token(tx, &t)?;
                    audit::append_offline(tx, keys, Entry::event(EntryKind::Operator, "token.create", "root", "ok"))
                })
                .await?;
            None
        }
        None => Some(
            store
                .write(|tx, keys| {
                    let minted = auth::mint_root(tx, keys)?;
                    audit::append_offline(tx, keys, Entry::event(EntryKind::Operator, "token.create", "root", "ok"))?;
                    Ok(minted)
                })
                .await?
                .token,
        ),
    };
    println!(
        "tumbler dev server: throwaway store in {} (deleted on exit); do not use it for real secrets",
        dir.path().display()
    );
    if let Some(token) = token {
        println!("root token: {token}");
    }
    Ok(Running { store, data_dir: dir.path().to_path_buf(), _lock: lock, _dev_dir: Some(dir) })
}

/// Removes secrets whose recovery window has passed, at start and hourly;
/// a purge that cannot be audited does not happen.
fn spawn_purge_job(audit: AuditLog) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let log = audit.clone();
            let purged = audit
                .store()
                .write(move |tx, keys| {
                    let n = secrets::purge_expired(tx, now_millis())?;
                    if n > 0 {
                        let entry = Entry::event(EntryKind::System, "secret.purge", "", "ok").with_detail("count", n);
                        log.append_in(tx, keys, vec![entry])?;
                    }
                    Ok(n)
                })
                .await;
            match purged {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "purged secrets past their recovery window"),
                Err(e) => tracing::error!(error = %e, "purge of deleted secrets failed"),
            }
        }
    });
}

/// SIGTERM and SIGINT, caught from the start of `serve` on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn take_over() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("catching SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("catching SIGINT")?,
        })
    }

    /// Shuts the server down gracefully at the first signal (one that came
    /// during start-up counts).
    async fn shut_down(mut self, handle: axum_server::Handle) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        tracing::info!("shutting down");
        handle.graceful_shutdown(Some(Duration::from_secs(10)));
    }
}
