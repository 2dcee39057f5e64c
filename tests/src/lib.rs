//! Harness for the end-to-end tests: builds the real `tumbler` binary once per
//! test process, initialises stores in throwaway directories, runs servers on
//! ephemeral ports, and talks to them over HTTP or through the CLI.
//!
//! Every child process is killed when its owner is dropped, and is also tied
//! to the test process through `PR_SET_PDEATHSIG`, so no server outlives a
//! test, even one that crashes.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod apikey_provider;
pub mod bench;
pub mod bench_http;
pub mod bench_openbao;
pub mod bench_pg;
pub mod bench_scale;
pub mod bench_store;
pub mod bench_wrk;
pub mod fixtures;
pub mod gate;
pub mod http_target;
pub mod servers;

/// How long a server may take to print its `listening on` line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a one-shot command (`init`, a CLI call, an operator tool) may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a server may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The one `TUMBLER_*` variable passed through to spawned commands (log
/// verbosity, handy when debugging a test); the others are cleared so the
/// caller's shell cannot leak into a test.
const PASSED_THROUGH_ENV: &str = "TUMBLER_LOG";

// ---------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests crate lives inside the workspace").to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace
/// root if relative) or `<root>/target`.
fn target_dir() -> PathBuf {
    let root = workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// Path of the `tumbler` binary, built once per test process: the debug
/// profile, or the release one when `TUMBLER_TEST_RELEASE` is set (the
/// benchmarks set it).
pub fn tumbler_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_tumbler(std::env::var_os("TUMBLER_TEST_RELEASE").is_some()))
}

/// Variables cargo sets for the test or bench binary it runs (its own
/// package's manifest dir, name, version...). A nested cargo must not see
/// them: build scripts that track one (ring's tracks `CARGO_MANIFEST_DIR`)
/// would then be rerun, and everything above them rebuilt, each time a
/// build alternates between a test run and a shell.
const CARGO_RUN_VARS: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_PKG_",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_BIN_EXE_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
];

/// A `cargo` command (the one running the tests, else `cargo` on PATH)
/// with the environment of the running test binary's package removed.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if CARGO_RUN_VARS.iter().any(|v| if v.ends_with('_') { name.starts_with(v) } else { name == *v }) {
            cmd.env_remove(&*name);
        }
    }
    cmd
}

fn build_tumbler(release: bool) -> PathBuf {
    let target = target_dir();
    let profile = if release { "release" } else { "debug" };
    let mut args = vec!["build", "-p", "tumbler", "--bin", "tumbler"];
    if release {
        args.push("--release");
    }
    let output = cargo()
        .args(&args)
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build tumbler: {e}"));
    if !output.status.success() {
        panic!("`cargo {}` failed ({}):\n{}", args.join(" "), output.status, String::from_utf8_lossy(&output.stderr));
    }
    let bin = target.join(profile).join("tumbler");
    assert!(bin.is_file(), "cargo build succeeded but {} does not exist", bin.display());
    bin
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A `tumbler ARGS` command with the `TUMBLER_*` environment cleared
/// (but for `TUMBLER_LOG`).
pub fn command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(tumbler_bin());
    cmd.args(args);
    for (var, _) in std::env::vars_os() {
        let name = var.to_string_lossy();
        if name.starts_with("TUMBLER_") && name != PASSED_THROUGH_ENV {
            cmd.env_remove(&var);
        }
    }
    cmd
}

/// Spawns `cmd` so that the child gets SIGKILL if the test process dies.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked exits, so every
/// spawn goes through one thread that lives as long as the process.
fn spawn(mut cmd: Command) -> Child {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("tumbler-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start spawner thread");
        tx
    });

    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure only makes async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1); // the test process died before prctl took effect
            }
            Ok(())
        });
    }
    let description = format!("{cmd:?}");
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner.send((cmd, reply_tx)).expect("spawner thread is alive");
    reply_rx.recv().expect("spawner thread replies").unwrap_or_else(|e| panic!("cannot spawn {description}: {e}"))
}

fn send_signal(child: &Child, signal: libc::c_int) {
    // SAFETY: plain kill(2) on our own, not yet reaped, child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// Polls `child` until it exits or `timeout` passes.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait on child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A text buffer filled by a background thread draining a pipe.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<String>>);

impl Captured {
    fn push_line(&self, line: &str) {
        let mut text = self.0.lock().unwrap();
        text.push_str(line);
        text.push('\n');
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// Drains `pipe` line by line into `sink`, also sending each line to `lines`.
fn drain<R: Read + Send + 'static>(pipe: R, sink: Captured, lines: Option<mpsc::Sender<String>>) -> JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            sink.push_line(&line);
            if let Some(lines) = &lines {
                let _ = lines.send(line);
            }
        }
    })
}

/// The result of a finished one-shot command.
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics, showing both streams, unless the command exited 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "command failed: {self:?}");
        self
    }

    /// Panics, showing both streams, unless the command exited non-zero.
    #[track_caller]
    pub fn assert_failure(&self) -> &Self {
        assert!(!self.success(), "command unexpectedly succeeded: {self:?}");
        self
    }

    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// stdout and stderr together, lower-cased, for searching messages.
    pub fn text_lowercase(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr).to_lowercase()
    }
}

impl std::fmt::Debug for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs `cmd` to completion, feeding it `stdin` (or nothing), with a timeout.
pub fn run(mut cmd: Command, stdin: Option<&[u8]>) -> CmdOutput {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let description = format!("{cmd:?}");
    let mut child = spawn(cmd);
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let input = input.to_vec();
        // A closed pipe is the command's business (it may not read stdin).
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let (stdout, stderr) = (Captured::default(), Captured::default());
    let readers = [
        drain(child.stdout.take().expect("piped stdout"), stdout.clone(), None),
        drain(child.stderr.take().expect("piped stderr"), stderr.clone(), None),
    ];
    let Some(status) = wait_timeout(&mut child, COMMAND_TIMEOUT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{description} did not finish within {COMMAND_TIMEOUT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            stdout.text(),
            stderr.text()
        );
    };
    for reader in readers {
        let _ = reader.join();
    }
    CmdOutput { status, stdout: stdout.text(), stderr: stderr.text() }
}

/// Runs the CLI client `tumbler ARGS` against `addr` with `token`
/// (through `TUMBLER_ADDR` / `TUMBLER_TOKEN`), optionally feeding stdin.
pub fn cli<I, S>(addr: &str, token: Option<&str>, args: I, stdin: Option<&[u8]>) -> CmdOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = command(args);
    cmd.env("TUMBLER_ADDR", addr);
    if let Some(token) = token {
        cmd.env("TUMBLER_TOKEN", token);
    }
    run(cmd, stdin)
}

// ---------------------------------------------------------------------------
// init
// ---------------------------------------------------------------------------

/// What `tumbler init --output json` prints.
#[derive(Debug, Clone)]
pub struct InitOutput {
    pub root_token: String,
    pub key_file: PathBuf,
    pub data_dir: PathBuf,
}

/// `tumbler init --data-dir D [--key-file K] --output json`, not yet run.
pub fn init_command(data_dir: &Path, key_file: Option<&Path>) -> Command {
    let mut cmd = command(["init", "--output", "json"]);
    cmd.arg("--data-dir").arg(data_dir);
    if let Some(key_file) = key_file {
        cmd.arg("--key-file").arg(key_file);
    }
    cmd
}

/// Runs an init command built by [`init_command`] and parses its output.
pub fn run_init(cmd: Command) -> InitOutput {
    let out = run(cmd, None);
    out.assert_success();
    let json = out.json();
    let field = |name: &str| {
        json[name].as_str().unwrap_or_else(|| panic!("init output lacks string field {name:?}: {json}")).to_string()
    };
    InitOutput {
        root_token: field("root_token"),
        key_file: field("key_file").into(),
        data_dir: field("data_dir").into(),
    }
}

/// Initialises a store in `data_dir` with its master key in `key_file`.
pub fn init(data_dir: &Path, key_file: &Path) -> InitOutput {
    run_init(init_command(data_dir, Some(key_file)))
}

// ---------------------------------------------------------------------------
// serve
// ---------------------------------------------------------------------------

/// `tumbler serve ARGS`, listening on `127.0.0.1:0` unless ARGS say `--listen`.
pub fn serve_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let mut cmd = command(["serve"]);
    cmd.args(&args);
    if !args.iter().any(|a| a == "--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    cmd
}

/// A server that exited before it started listening.
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Time from spawn to exit.
    pub after: Duration,
}

impl Exited {
    /// stdout and stderr together, lower-cased, for searching messages.
    pub fn text_lowercase(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr).to_lowercase()
    }
}

impl std::fmt::Debug for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.after, self.stdout, self.stderr
        )
    }
}

/// A running `tumbler serve`. Killed (SIGKILL) and reaped on drop.
pub struct Server {
    child: Child,
    url: String,
    stdout: Captured,
    stderr: Captured,
    status: Option<ExitStatus>,
}

impl Server {
    /// Starts `tumbler serve ARGS` (see [`serve_command`]); panics if it
    /// does not come up.
    pub fn start<I, S>(args: I) -> Server
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Server::spawn(serve_command(args)).unwrap_or_else(|exited| panic!("server exited during startup: {exited:?}"))
    }

    /// Spawns a serve command and waits for its `listening on URL` line.
    /// Returns `Err` if the process exits first; panics (after killing it)
    /// if neither happens within [`STARTUP_TIMEOUT`].
    pub fn spawn(mut cmd: Command) -> Result<Server, Exited> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let description = format!("{cmd:?}");
        let started = Instant::now();
        let mut child = spawn(cmd);
        let (stdout, stderr) = (Captured::default(), Captured::default());
        let (lines_tx, lines) = mpsc::channel();
        let out_pipe: ChildStdout = child.stdout.take().expect("piped stdout");
        let err_pipe: ChildStderr = child.stderr.take().expect("piped stderr");
        drain(out_pipe, stdout.clone(), Some(lines_tx));
        let err_reader = drain(err_pipe, stderr.clone(), None);

        let deadline = started + STARTUP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = parse_listening(&line) {
                        let url = url.to_string();
                        return Ok(Server { child, url, stdout, stderr, status: None });
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is exiting.
                    let left = deadline.saturating_duration_since(Instant::now());
                    if let Some(status) = wait_timeout(&mut child, left) {
                        let after = started.elapsed();
                        let _ = err_reader.join();
                        return Err(Exited { status, stdout: stdout.text(), stderr: stderr.text(), after });
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{description} printed no `listening on` line within {STARTUP_TIMEOUT:?}\n\
                     --- stdout ---\n{}\n--- stderr ---\n{}",
                    stdout.text(),
                    stderr.text()
                );
            }
        }
    }

    /// Base URL as printed by the server, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no port in server URL {}", self.url))
    }

    /// Everything the server wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Everything the server wrote on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("wait on server");
        }
        self.status.is_none()
    }

    /// SIGTERM, then wait for the exit; panics (after SIGKILL) if the
    /// server ignores it for [`STOP_TIMEOUT`].
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        send_signal(&self.child, libc::SIGTERM);
        match wait_timeout(&mut self.child, STOP_TIMEOUT) {
            Some(status) => {
                self.status = Some(status);
                status
            }
            None => {
                self.kill();
                panic!("server did not exit within {STOP_TIMEOUT:?} of SIGTERM\n--- stderr ---\n{}", self.stderr());
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let _ = self.child.kill();
        let status = self.child.wait().unwrap_or_else(|_| ExitStatus::from_raw(libc::SIGKILL));
        self.status = Some(status);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The URL in a `listening on URL` line, if `line` is one.
fn parse_listening(line: &str) -> Option<&str> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let url = rest.split(|c: char| c.is_whitespace() || c == '"').next()?;
    (url.starts_with("http://") || url.starts_with("https://")).then_some(url)
}

// ---------------------------------------------------------------------------
// A store and its server
// ---------------------------------------------------------------------------

/// An initialised store in its own temp dir (`data/` and `master.key`
/// beside it), with at most one server running on it.
pub struct Instance {
    // Dropped in declaration order: the server dies before its files go.
    server: Option<Server>,
    pub data_dir: PathBuf,
    pub key_file: PathBuf,
    pub root_token: String,
    pub dir: tempfile::TempDir,
}

impl Instance {
    /// A freshly initialised store, no server yet.
    pub fn init() -> Instance {
        let dir = tempfile::tempdir().expect("create temp dir");
        let data_dir = dir.path().join("data");
        let key_file = dir.path().join("master.key");
        let out = init(&data_dir, &key_file);
        Instance { server: None, data_dir, key_file, root_token: out.root_token, dir }
    }

    /// A freshly initialised store with a server running on it.
    pub fn start() -> Instance {
        let mut instance = Instance::init();
        instance.serve();
        instance
    }

    /// `--data-dir D --key-file K` for this store.
    pub fn store_args(&self) -> Vec<OsString> {
        vec!["--data-dir".into(), self.data_dir.clone().into(), "--key-file".into(), self.key_file.clone().into()]
    }

    /// Starts the server on this store.
    pub fn serve(&mut self) {
        self.serve_with::<_, &str>([]);
    }

    /// Starts the server on this store with extra `serve` arguments.
    pub fn serve_with<I, S>(&mut self, extra: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        assert!(self.server.is_none(), "server already running");
        let mut args = self.store_args();
        args.extend(extra.into_iter().map(|a| a.as_ref().to_owned()));
        self.server = Some(Server::start(args));
    }

    /// Stops the server (SIGTERM) and returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.server.take().expect("no server running").stop()
    }

    /// Kills the server (SIGKILL: no shutdown of any kind) and returns its exit status.
    pub fn kill(&mut self) -> ExitStatus {
        self.server.take().expect("no server running").kill()
    }

    pub fn server(&mut self) -> &mut Server {
        self.server.as_mut().expect("no server running")
    }

    /// Base URL of the running server.
    pub fn url(&self) -> &str {
        self.server.as_ref().expect("no server running").url()
    }

    /// A client holding the root token.
    pub fn root(&self) -> Client {
        self.client(Some(&self.root_token))
    }

    /// A client holding `token` (or none).
    pub fn client(&self, token: Option<&str>) -> Client {
        Client::new(self.url(), token)
    }

    /// Runs the CLI client against the running server with the root token.
    pub fn cli<I, S>(&self, args: I, stdin: Option<&[u8]>) -> CmdOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        cli(self.url(), Some(&self.root_token), args, stdin)
    }
}

// ---------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------

/// HTTP status and body (JSON; a non-JSON body becomes a JSON string, an
/// empty one `null`).
pub type Reply = (u16, Value);

/// A token as returned by `POST /v1/tokens`.
#[derive(Debug, Clone)]
pub struct Token {
    pub token: String,
    pub id: String,
    pub expires_at: String,
}

/// The API over HTTP, as one token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(base_url: &str, token: Option<&str>) -> Client {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("build HTTP client");
        Client::with_http(http, base_url, token)
    }

    /// A client over a custom `reqwest::Client` (e.g. trusting a test CA).
    pub fn with_http(http: reqwest::Client, base_url: &str, token: Option<&str>) -> Client {
        Client { http, base: base_url.trim_end_matches('/').to_string(), token: token.map(str::to_string) }
    }

    /// The same server, another token.
    pub fn with_token(&self, token: Option<&str>) -> Client {
        Client { token: token.map(str::to_string), ..self.clone() }
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `path` (which may hold a query) plus `query` pairs, encoded.
    fn url(&self, path: &str, query: &[(&str, &str)]) -> reqwest::Url {
        let mut url = reqwest::Url::parse(&format!("{}{}", self.base, path))
            .unwrap_or_else(|e| panic!("bad URL {}{path}: {e}", self.base));
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Sends a request with a raw body; the one place requests go out.
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Reply {
        let url = self.url(path, query);
        let mut request = self.http.request(method.clone(), url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some((content_type, bytes)) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type).body(bytes);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{method} {url} failed: {e:?}"));
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap_or_else(|e| panic!("{method} {url}: reading body failed: {e}"));
        (status, parse_body(&bytes))
    }

    /// POSTs a JSON body with `Expect: 100-continue` over plain HTTP/1.1,
    /// sending the body only if the server asks for it. A server may answer
    /// a request announced as too large before reading it; this is how a
    /// client reliably sees that answer (reqwest would still be writing the
    /// body into a closed connection).
    pub async fn post_expect_continue(&self, path: &str, body: &Value) -> Reply {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let url = self.url(path, &[]);
        assert_eq!(url.scheme(), "http", "post_expect_continue speaks plain HTTP only");
        let host = url.host_str().expect("host");
        let port = url.port_or_known_default().expect("port");
        let body = serde_json::to_vec(body).expect("serialize");
        let auth = match &self.token {
            Some(token) => format!("Authorization: Bearer {token}\r\n"),
            None => String::new(),
        };
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut stream =
            tokio::net::TcpStream::connect((host, port)).await.unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        stream.write_all(head.as_bytes()).await.expect("send request head");

        let mut received = Vec::new();
        let (status, body_start) = loop {
            let (status, head_len) = read_response_head(&mut stream, &mut received).await;
            if status != 100 {
                break (status, head_len);
            }
            received.drain(..head_len);
            stream.write_all(&body).await.expect("send request body");
        };
        stream.read_to_end(&mut received).await.expect("read response body");
        (status, parse_body(&received[body_start..]))
    }

    /// Sends a request with an optional JSON body.
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Reply {
        let body = body.map(|b| ("application/json", serde_json::to_vec(b).expect("serialize")));
        self.send_raw(method, path, &[], body).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn get_query(&self, path: &str, query: &[(&str, &str)]) -> Reply {
        self.send_raw(reqwest::Method::GET, path, query, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Reply {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    // --- secrets -----------------------------------------------------------

    /// `POST /v1/secrets {name, value}`; asserts 201, returns the version id.
    pub async fn create_secret(&self, name: &str, value: &str) -> String {
        let reply = self.post("/v1/secrets", &json!({"name": name, "value": value})).await;
        assert_eq!(reply.0, 201, "create {name}: {reply:?}");
        version_id_of(&reply)
    }

    /// `POST NAME:versions {value}`; asserts success, returns the version id.
    pub async fn add_version(&self, name: &str, value: &str) -> String {
        let reply = self.post(&format!("{}:versions", secret_path(name)), &json!({"value": value})).await;
        assert!(matches!(reply.0, 200 | 201), "new version of {name}: {reply:?}");
        version_id_of(&reply)
    }

    /// `GET NAME:value` (label `current`); asserts 200, returns the value.
    pub async fn read_value(&self, name: &str) -> String {
        let reply = self.get(&format!("{}:value", secret_path(name))).await;
        assert_eq!(reply.0, 200, "read {name}: {reply:?}");
        reply.1["value"].as_str().unwrap_or_else(|| panic!("no value: {reply:?}")).to_string()
    }

    /// `GET NAME:value?label=LABEL`.
    pub async fn read_label(&self, name: &str, label: &str) -> Reply {
        self.get_query(&format!("{}:value", secret_path(name)), &[("label", label)]).await
    }

    /// `GET NAME:value?version_id=ID`.
    pub async fn read_version(&self, name: &str, version_id: &str) -> Reply {
        self.get_query(&format!("{}:value", secret_path(name)), &[("version_id", version_id)]).await
    }

    /// `GET NAME` (describe).
    pub async fn describe(&self, name: &str) -> Reply {
        self.get(&secret_path(name)).await
    }

    /// `GET NAME:versions`; asserts 200, returns the `versions` array.
    pub async fn versions(&self, name: &str) -> Vec<Value> {
        let reply = self.get(&format!("{}:versions", secret_path(name))).await;
        assert_eq!(reply.0, 200, "versions of {name}: {reply:?}");
        reply.1["versions"].as_array().unwrap_or_else(|| panic!("no versions array: {reply:?}")).clone()
    }

    /// `GET /v1/secrets` with query pairs.
    pub async fn list(&self, query: &[(&str, &str)]) -> Reply {
        self.get_query("/v1/secrets", query).await
    }

    /// Every secret name visible with `query`, following page tokens.
    pub async fn list_names(&self, query: &[(&str, &str)]) -> Vec<String> {
        self.list_pages(query).await.concat()
    }

    /// Names page by page, following `next_page_token` until it is absent.
    pub async fn list_pages(&self, query: &[(&str, &str)]) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut page_token: Option<String> = None;
        loop {
            let mut q = query.to_vec();
            if let Some(t) = &page_token {
                q.push(("page_token", t));
            }
            let reply = self.list(&q).await;
            assert_eq!(reply.0, 200, "list {q:?}: {reply:?}");
            pages.push(secret_names(&reply.1));
            page_token = reply.1.get("next_page_token").and_then(Value::as_str).map(str::to_string);
            if page_token.is_none() {
                return pages;
            }
            assert!(pages.len() < 10_000, "list never ends");
        }
    }

    // --- policies and tokens -------------------------------------------------

    /// `PUT /v1/policies/NAME {rules}`; asserts success.
    pub async fn put_policy(&self, name: &str, rules: Value) {
        let reply = self.put(&format!("/v1/policies/{name}"), &json!({"rules": rules})).await;
        assert!(matches!(reply.0, 200 | 201 | 204), "put policy {name}: {reply:?}");
    }

    /// `POST /v1/tokens {name, policies, ttl}` (raw reply).
    pub async fn try_create_token(&self, name: &str, policies: &[&str], ttl: &str) -> Reply {
        self.post("/v1/tokens", &json!({"name": name, "policies": policies, "ttl": ttl})).await
    }

    /// Mints a token; asserts success.
    pub async fn create_token(&self, name: &str, policies: &[&str], ttl: &str) -> Token {
        let reply = self.try_create_token(name, policies, ttl).await;
        assert!(matches!(reply.0, 200 | 201), "create token {name}: {reply:?}");
        let field =
            |f: &str| reply.1[f].as_str().unwrap_or_else(|| panic!("token reply lacks {f}: {reply:?}")).to_string();
        Token { token: field("token"), id: field("id"), expires_at: field("expires_at") }
    }
}

/// A response body as JSON (a non-JSON body becomes a string, none `null`).
fn parse_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// Reads from `stream` into `buf` until it holds a complete response head;
/// returns the status code and the head's length. The response is
/// expected to be delimited by the connection's end (`Connection: close`).
async fn read_response_head(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> (u16, usize) {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]);
            assert!(
                !head.to_ascii_lowercase().contains("transfer-encoding: chunked"),
                "chunked responses are not supported here: {head}"
            );
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|code| code.parse().ok())
                .unwrap_or_else(|| panic!("bad response head: {head}"));
            return (status, end + 4);
        }
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk).await.expect("read response head");
        assert!(n > 0, "connection closed before a response: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `/v1/secrets/NAME`.
pub fn secret_path(name: &str) -> String {
    format!("/v1/secrets/{name}")
}

/// The `version_id` of a create / new-version reply.
#[track_caller]
pub fn version_id_of(reply: &Reply) -> String {
    reply.1["version_id"].as_str().unwrap_or_else(|| panic!("reply has no version_id: {reply:?}")).to_string()
}

/// The names in a list reply body.
#[track_caller]
pub fn secret_names(body: &Value) -> Vec<String> {
    body["secrets"]
        .as_array()
        .unwrap_or_else(|| panic!("list reply has no secrets array: {body}"))
        .iter()
        .map(|s| s["name"].as_str().expect("secret has a name").to_string())
        .collect()
}

/// The `error.code` of an error body ("" if none).
pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// The `error.message` of an error body ("" if none).
pub fn error_message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

/// Asserts `reply` is an error with `status` and `code`, and a message.
#[track_caller]
pub fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!((reply.0, error_code(&reply.1)), (status, code), "unexpected reply: {reply:?}");
    assert!(!error_message(&reply.1).is_empty(), "error without a message: {reply:?}");
}

// ---------------------------------------------------------------------------
// Files and randomness
// ---------------------------------------------------------------------------

/// Every regular file under `dir`, recursively, with its contents.
pub fn dir_contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("dir entry").path();
            let kind = std::fs::symlink_metadata(&path).expect("stat").file_type();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                // A file may vanish between listing and reading (SQLite's
                // journal files come and go); skip those.
                if let Ok(bytes) = std::fs::read(&path) {
                    files.insert(path, bytes);
                }
            }
        }
    }
    files
}

/// `len` random bytes from the kernel.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("read /dev/urandom");
    bytes
}

/// A random string of `len` characters from `[A-Za-z0-9]`.
pub fn random_string(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    random_bytes(len).into_iter().map(|b| ALPHABET[b as usize % ALPHABET.len()] as char).collect()
}

/// Whether `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_lines() {
        assert_eq!(parse_listening("listening on http://127.0.0.1:8200"), Some("http://127.0.0.1:8200"));
        assert_eq!(parse_listening(r#"{"msg":"listening on https://127.0.0.1:1 tls"}"#), Some("https://127.0.0.1:1"));
        assert_eq!(parse_listening("starting"), None);
    }

    #[test]
    fn finds_bytes() {
        assert!(contains_bytes(b"xxabcxx", b"abc"));
        assert!(!contains_bytes(b"xxabxcx", b"abc"));
    }
}
