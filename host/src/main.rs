//! The `tumbler` binary: the server (`serve`), local operator commands
//! (`init`, `operator`) and the client, over the library in lib.rs.

use tumbler::{cli, keyfile, operator, server};

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc instead of the system allocator: a request allocates and frees
/// many small objects on one thread and the next on another, which glibc's
/// malloc served with a tenth of the server's CPU under load (its arena
/// consolidation and free lists); see BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    /// mimalloc's `mi_option_set` (`mi_option_t` is a C enum).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Keeps mimalloc's resident memory near the system allocator's: by
/// default it asks for transparent huge pages for its arenas (off at build
/// time: the `no_thp` feature) and returns freed pages to the system only
/// after a second, which together more than doubled the idle server's RSS
/// (50 to 120 MiB). `mi_option_purge_delay` is 15 in mimalloc.h (v3); a
/// `MIMALLOC_PURGE_DELAY` variable still overrides this.
fn lean_allocator() {
    const PURGE_DELAY: std::ffi::c_int = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option is a plain store mimalloc allows at any time.
        unsafe { mi_option_set(PURGE_DELAY, 0) };
    }
}

#[derive(Parser, Debug)]
#[command(name = "tumbler", version, about = "Self-hosted secrets manager with sandboxed WebAssembly rotators")]
struct Cli {
    /// Log format for the server.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a data dir and master key file; prints the root token once.
    Init(operator::InitArgs),
    /// Run the server.
    Serve(server::ServeArgs),
    /// Offline maintenance of a data dir (the server must be stopped).
    Operator {
        #[command(subcommand)]
        command: operator::OperatorCommand,
    },
    /// Check the audit log of a data dir.
    Audit {
        #[command(subcommand)]
        command: operator::AuditCommand,
    },
    /// Create, read, list and delete secrets.
    Secret {
        #[command(flatten)]
        client: cli::ClientArgs,
        #[command(subcommand)]
        command: cli::SecretCommand,
    },
    /// Mint, list and revoke tokens.
    Token {
        #[command(flatten)]
        client: cli::ClientArgs,
        #[command(subcommand)]
        command: cli::TokenCommand,
    },
    /// Upload and manage rotator plugins.
    Plugin {
        #[command(flatten)]
        client: cli::ClientArgs,
        #[command(subcommand)]
        command: cli::PluginCommand,
    },
    /// Attach, show or remove a secret's rotation config.
    Rotation {
        #[command(flatten)]
        client: cli::ClientArgs,
        #[command(subcommand)]
        command: cli::RotationCommand,
    },
    /// Start a rotation of a secret now.
    Rotate {
        #[command(flatten)]
        client: cli::ClientArgs,
        name: String,
        /// Wait until it ends; exit non-zero if it failed.
        #[arg(long)]
        wait: bool,
    },
    /// Break glass: rotate NAME now, invalidate every older credential at
    /// its target, revoke leases issued with it, alert.
    Revoke {
        #[command(flatten)]
        client: cli::ClientArgs,
        name: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Dynamic roles: define them and issue leased credentials.
    Role {
        #[command(flatten)]
        client: cli::ClientArgs,
        #[command(subcommand)]
        command: cli::RoleCommand,
    },
    /// Leases of dynamic credentials.
    Lease {
        #[command(flatten)]
        client: cli::ClientArgs,
        #[command(subcommand)]
        command: cli::LeaseCommand,
    },
    /// A secret's rotations, newest first.
    History {
        #[command(flatten)]
        client: cli::ClientArgs,
        name: String,
    },
    /// Manage policies.
    Policy {
        #[command(flatten)]
        client: cli::ClientArgs,
        #[command(subcommand)]
        command: cli::PolicyCommand,
    },
}

fn main() -> ExitCode {
    lean_allocator();
    // Before any thread exists: the key leaves the environment, and a crash
    // can never write memory holding secrets to a core file.
    let env_key = keyfile::take_env_master_key();
    harden_process();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Init(args) => operator::init(args).await,
            Command::Serve(args) => server::run(args, env_key).await,
            Command::Operator { command } => operator::operator(command, env_key),
            Command::Audit { command } => operator::audit(command, env_key),
            Command::Secret { client, command } => cli::secret(client, command).await,
            Command::Token { client, command } => cli::token(client, command).await,
            Command::Policy { client, command } => cli::policy(client, command).await,
            Command::Rotation { client, command } => cli::rotation(client, command).await,
            Command::Rotate { client, name, wait } => cli::rotate(client, name, wait).await,
            Command::History { client, name } => cli::history(client, name).await,
            Command::Revoke { client, name, reason } => cli::revoke(client, name, reason).await,
            Command::Role { client, command } => cli::role(client, command).await,
            Command::Lease { client, command } => cli::lease(client, command).await,
            Command::Plugin { client, command } => cli::plugin(client, command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn harden_process() {
    let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on this process with valid arguments.
    unsafe {
        // Files we create (store, WAL, key files) are private to the owner.
        libc::umask(0o077);
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TUMBLER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}
