//! Real servers for tests that need a target: PostgreSQL (scram-sha-256
//! password authentication), MariaDB (password authentication) and
//! OpenSSH's sshd (its own config, host key and `authorized_keys`). Each
//! runs from a throwaway directory on a loopback port of its own, is
//! stopped when dropped, and dies with the test process (see `spawn`).
//!
//! `scripts/test.sh` installs the packages when they are missing.
//!
//! ```text
//! let pg = Postgres::start();
//! pg.psql("CREATE ROLE app LOGIN PASSWORD 'x'");
//! let sshd = Sshd::start(&ssh_keypair("test").public_key);
//! ```

use super::{CmdOutput, STARTUP_TIMEOUT, STOP_TIMEOUT, random_string, run, send_signal, spawn, wait_timeout};
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid of a system user.
fn user_ids(name: &str) -> (u32, u32) {
    let c_name = CString::new(name).expect("user name has no NUL");
    // SAFETY: getpwnam returns a pointer to static storage or null; read at once.
    let entry = unsafe { libc::getpwnam(c_name.as_ptr()) };
    assert!(!entry.is_null(), "there is no {name:?} user (is the server package installed?)");
    // SAFETY: non-null pointer from getpwnam.
    unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
}

/// The name of the user the tests run as.
pub fn current_user() -> String {
    // SAFETY: getpwuid returns a pointer to static storage or null; read at once.
    let entry = unsafe { libc::getpwuid(libc::geteuid()) };
    assert!(!entry.is_null(), "the current uid has no passwd entry");
    // SAFETY: pw_name is a NUL-terminated string in that storage.
    unsafe { std::ffi::CStr::from_ptr((*entry).pw_name) }.to_string_lossy().into_owned()
}

fn chown(path: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().expect("create a temp dir")
}

/// The first of `candidates` that exists, else `name` on `PATH`.
fn find_binary(name: &str, candidates: &[PathBuf], package: &str) -> PathBuf {
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return found.clone();
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| panic!("{name} not found: install {package} (scripts/test.sh does)"))
}

/// A long-running server process whose output goes to a log file. Dropping
/// it sends `stop_signal`, then SIGKILL if it lingers.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
    stop_signal: libc::c_int,
    /// Reaped: its pid may belong to another process now, never signal it.
    stopped: bool,
}

impl Daemon {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf, stop_signal: libc::c_int) -> Daemon {
        let out = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file handle");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        Daemon { name, child: spawn(cmd), log, stop_signal, stopped: false }
    }

    /// Polls `ready` until it says yes; panics with the log if the server
    /// exits or takes longer than [`STARTUP_TIMEOUT`].
    fn wait_ready(&mut self, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if ready() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited during startup ({status})\n--- log ---\n{}", self.name, self.log_text());
            }
            if Instant::now() >= deadline {
                panic!("{} not ready within {STARTUP_TIMEOUT:?}\n--- log ---\n{}", self.name, self.log_text());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Sends `stop_signal`, then SIGKILL if the server lingers, and reaps it.
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        send_signal(&self.child, self.stop_signal);
        if wait_timeout(&mut self.child, STOP_TIMEOUT).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.stopped = true;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tcp_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

fn expect_success(what: &str, out: CmdOutput) -> String {
    assert!(out.success(), "{what} failed: {out:?}");
    out.stdout.trim_end().to_owned()
}

/// A self-signed certificate for `localhost` and `127.0.0.1` written to
/// `dir` as `server.crt` and `server.key` (mode 0600, as servers insist).
fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("generate a self-signed certificate");
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, certified.cert.pem()).expect("write server.crt");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod server.key");
    (cert, key)
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

/// A PostgreSQL cluster of its own: `initdb` with scram-sha-256 for every
/// connection, listening on 127.0.0.1 only. Run as the `postgres` user
/// when the tests run as root (`initdb` refuses root).
pub struct Postgres {
    pub port: u16,
    /// A superuser who logs in with `password` over TCP.
    pub superuser: String,
    pub password: String,
    bin: PathBuf,
    server: PgServer,
    // Field order: the server stops before its directory is removed.
    daemon: Daemon,
    dir: tempfile::TempDir,
}

/// How to (re)start a cluster's server process.
struct PgServer {
    bin: PathBuf,
    data: PathBuf,
    dir: PathBuf,
    port: u16,
    settings: Vec<String>,
    /// Certificate and key files, when TLS is on.
    tls: Option<(PathBuf, PathBuf)>,
    /// Who runs it (the `postgres` user when the tests run as root).
    owner: Option<(u32, u32)>,
}

impl PgServer {
    fn spawn(&self) -> Daemon {
        let mut server = Command::new(self.bin.join("postgres"));
        server.arg("-D").arg(&self.data).args([
            "-p",
            &self.port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
        ]);
        server.arg("-c").arg(format!("unix_socket_directories={}", self.dir.display()));
        for setting in &self.settings {
            server.args(["-c", setting]);
        }
        if let Some((cert, key)) = &self.tls {
            server.args(["-c", "ssl=on"]);
            server.arg("-c").arg(format!("ssl_cert_file={}", cert.display()));
            server.arg("-c").arg(format!("ssl_key_file={}", key.display()));
        }
        server.current_dir(&self.dir);
        if let Some((uid, gid)) = self.owner {
            server.uid(uid).gid(gid);
        }
        // SIGINT: PostgreSQL's fast shutdown. Each run starts the log afresh.
        let mut daemon = Daemon::spawn("postgres", server, self.dir.join("server.log"), libc::SIGINT);
        let isready = self.bin.join("pg_isready");
        let port = self.port;
        daemon.wait_ready(|| {
            let mut cmd = Command::new(&isready);
            cmd.args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()]);
            run(cmd, None).success()
        });
        daemon
    }
}

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::start_with(&[])
    }

    /// With extra server settings, `name=value` each (e.g.
    /// `log_statement=all`, to show what reached the server log).
    pub fn start_with(settings: &[&str]) -> Postgres {
        Postgres::launch(settings, false)
    }

    /// With TLS on, using a self-signed certificate for `localhost` and
    /// `127.0.0.1` (clients may still connect without TLS).
    pub fn start_with_tls() -> Postgres {
        Postgres::launch(&[], true)
    }

    fn launch(settings: &[&str], tls: bool) -> Postgres {
        let bin = postgres_bin_dir();
        let dir = temp_dir("tumbler-pg-");
        let owner = is_root().then(|| user_ids("postgres"));
        if let Some(ids) = owner {
            chown(dir.path(), ids);
        }
        let as_owner = |cmd: &mut Command| {
            cmd.current_dir(dir.path());
            if let Some((uid, gid)) = owner {
                cmd.uid(uid).gid(gid);
            }
        };
        let superuser = "tumbler_admin".to_owned();
        let password = random_string(24);
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password).expect("write the password file");
        if let Some(ids) = owner {
            chown(&pwfile, ids);
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            &superuser,
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        initdb.arg("--pwfile").arg(&pwfile);
        as_owner(&mut initdb);
        expect_success("initdb", run(initdb, None));

        let port = free_port();
        let mut server = PgServer {
            bin: bin.clone(),
            data,
            dir: dir.path().to_path_buf(),
            port,
            settings: settings.iter().map(|s| s.to_string()).collect(),
            tls: None,
            owner,
        };
        if tls {
            let (cert, key) = self_signed_certificate(dir.path());
            for file in [&cert, &key] {
                if let Some(ids) = owner {
                    chown(file, ids);
                }
            }
            server.tls = Some((cert, key));
        }
        let daemon = server.spawn();
        Postgres { port, superuser, password, bin, server, daemon, dir }
    }

    /// Stops the server (fast shutdown), keeping its data, as a target
    /// that goes down would; [`Postgres::restart`] brings it back.
    pub fn stop(&mut self) {
        self.daemon.stop();
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        self.daemon.stop();
        self.daemon = self.server.spawn();
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `sql` as the superuser in database `postgres`; returns the
    /// unaligned, tuples-only output. Panics if it fails.
    pub fn psql(&self, sql: &str) -> String {
        expect_success(&format!("psql {sql:?}"), self.psql_as(&self.superuser, &self.password, "postgres", sql))
    }

    /// Runs `sql` logged in as `user` with `password` over TCP, so a test
    /// can check that a credential works (or is refused).
    pub fn psql_as(&self, user: &str, password: &str, database: &str, sql: &str) -> CmdOutput {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", user, "-d", database, "-c", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10");
        run(cmd, None)
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.daemon.log_text()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// The newest `/usr/lib/postgresql/N/bin`, else wherever `initdb` is on PATH.
fn postgres_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let initdb = find_binary("initdb", &[], "postgresql");
    initdb.parent().expect("initdb has a directory").to_path_buf()
}

// ---------------------------------------------------------------------------
// MariaDB
// ---------------------------------------------------------------------------

/// A MariaDB server of its own (`mariadb-install-db`, then `mariadbd` with
/// its own datadir, socket and port, bound to 127.0.0.1), with a superuser
/// who logs in with a password over TCP.
pub struct Mariadb {
    pub port: u16,
    pub superuser: String,
    pub password: String,
    socket: PathBuf,
    daemon: Daemon,
    dir: tempfile::TempDir,
}

impl Mariadb {
    pub fn start() -> Mariadb {
        Mariadb::launch(false)
    }

    /// With TLS on, using a self-signed certificate for `localhost` and
    /// `127.0.0.1` (clients may still connect without TLS).
    pub fn start_with_tls() -> Mariadb {
        Mariadb::launch(true)
    }

    fn launch(tls: bool) -> Mariadb {
        let server_bin = find_binary(
            "mariadbd",
            &[PathBuf::from("/usr/sbin/mariadbd"), PathBuf::from("/usr/sbin/mysqld")],
            "mariadb-server",
        );
        let install_db = find_binary("mariadb-install-db", &[], "mariadb-server");
        let dir = temp_dir("tumbler-mariadb-");
        let data = dir.path().join("data");
        let socket = dir.path().join("mysqld.sock");
        // mariadbd refuses to run as root unless told to.
        let run_as = is_root().then_some("--user=root");

        // A tmpdir of its own: servers started side by side in a shared
        // /tmp have been seen to remove each other's temporary tables.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("create the server's tmpdir");
        let mut install = Command::new(install_db);
        install
            .args(["--no-defaults", "--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args(run_as)
            .current_dir(dir.path());
        expect_success("mariadb-install-db", run(install, None));

        let port = free_port();
        let mut server = Command::new(server_bin);
        server
            .args(["--no-defaults", "--bind-address=127.0.0.1", "--skip-name-resolve", "--innodb-buffer-pool-size=16M"])
            // Without a config file the default would be latin1.
            .args(["--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.path().join("mariadbd.pid").display()))
            .arg(format!("--port={port}"))
            .args(run_as)
            .current_dir(dir.path());
        if tls {
            let (cert, key) = self_signed_certificate(dir.path());
            server.arg(format!("--ssl-cert={}", cert.display())).arg(format!("--ssl-key={}", key.display()));
        }
        let mut daemon = Daemon::spawn("mariadbd", server, dir.path().join("server.log"), libc::SIGTERM);
        daemon.wait_ready(|| tcp_accepts(port) && socket.exists());

        let superuser = "tumbler_admin".to_owned();
        let password = random_string(24);
        let db = Mariadb { port, superuser, password, socket, daemon, dir };
        db.sql(&format!(
            "CREATE USER '{0}'@'%' IDENTIFIED BY '{1}'; GRANT ALL ON *.* TO '{0}'@'%' WITH GRANT OPTION;",
            db.superuser, db.password
        ));
        db
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `sql` as root over the server's socket; returns the batch
    /// output without column names. Panics if it fails.
    pub fn sql(&self, sql: &str) -> String {
        let mut cmd = Command::new("mariadb");
        cmd.args(["--no-defaults", "--default-character-set=utf8mb4"])
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "-N", "-B", "-e", sql]);
        expect_success(&format!("mariadb {sql:?}"), run(cmd, None))
    }

    /// Runs `sql` logged in as `user` with `password` over TCP, so a test
    /// can check that a credential works (or is refused).
    pub fn sql_as(&self, user: &str, password: &str, sql: &str) -> CmdOutput {
        let mut cmd = Command::new("mariadb");
        cmd.args([
            "--no-defaults",
            "--default-character-set=utf8mb4",
            "--protocol=TCP",
            "-h",
            "127.0.0.1",
            "-P",
            &self.port.to_string(),
            "-u",
            user,
        ])
        .args(["--connect-timeout=10", "-N", "-B", "-e", sql])
        .env("MYSQL_PWD", password);
        run(cmd, None)
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.daemon.log_text()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

// ---------------------------------------------------------------------------
// sshd
// ---------------------------------------------------------------------------

/// An OpenSSH key pair made by `ssh-keygen`.
pub struct SshKeyPair {
    /// The private key, OpenSSH PEM.
    pub private_key: String,
    /// The `authorized_keys` line.
    pub public_key: String,
}

/// A fresh ed25519 key pair, unencrypted.
pub fn ssh_keypair(comment: &str) -> SshKeyPair {
    ssh_keypair_of_type("ed25519", comment)
}

/// A fresh unencrypted key pair of `key_type` (`ssh-keygen -t`: `ed25519`,
/// `rsa`, `ecdsa`).
pub fn ssh_keypair_of_type(key_type: &str, comment: &str) -> SshKeyPair {
    let dir = temp_dir("tumbler-sshkey-");
    let path = dir.path().join("id");
    let mut cmd = Command::new(find_binary("ssh-keygen", &[], "openssh-client"));
    cmd.args(["-q", "-t", key_type, "-N", "", "-C", comment, "-f"]).arg(&path);
    expect_success("ssh-keygen", run(cmd, None));
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    SshKeyPair { private_key: read(&path), public_key: read(&path.with_extension("pub")).trim_end().to_owned() }
}

/// `SHA256:...` of a public key file, as `ssh-keygen -lf` prints it.
pub fn ssh_fingerprint(public_key_file: &Path) -> String {
    let mut cmd = Command::new(find_binary("ssh-keygen", &[], "openssh-client"));
    cmd.arg("-lf").arg(public_key_file);
    let line = expect_success("ssh-keygen -lf", run(cmd, None));
    line.split_whitespace().nth(1).expect("ssh-keygen -lf prints bits, fingerprint, comment").to_owned()
}

/// sshd with its own config, ed25519 host key, port (on 127.0.0.1) and
/// `authorized_keys` file, accepting public keys for the user the tests
/// run as. No PAM, no password logins.
pub struct Sshd {
    pub port: u16,
    /// Who logs in: the user the tests run as.
    pub user: String,
    /// The host key's fingerprint, `SHA256:...`.
    pub host_key_fingerprint: String,
    authorized_keys: PathBuf,
    daemon: Daemon,
    dir: tempfile::TempDir,
}

impl Sshd {
    /// Starts sshd accepting the keys in `authorized_keys` (lines of an
    /// `authorized_keys` file).
    pub fn start(authorized_keys: &str) -> Sshd {
        let dir = temp_dir("tumbler-sshd-");
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, format!("{authorized_keys}\n")).expect("write authorized_keys");
        let port = free_port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                 UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nLogLevel VERBOSE\n",
                host_key_path(dir.path()).display(),
                dir.path().join("sshd.pid").display(),
                authorized.display()
            ),
        )
        .expect("write sshd_config");
        if is_root() {
            // The privilege-separation directory sshd insists on.
            std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        }
        let host_key_fingerprint = new_host_key(dir.path());
        let daemon = launch_sshd(dir.path(), port);
        Sshd { port, user: current_user(), host_key_fingerprint, authorized_keys: authorized, daemon, dir }
    }

    /// Stops the server, as a host that goes down would; [`Sshd::restart`]
    /// brings it back with the same host key.
    pub fn stop(&mut self) {
        self.daemon.stop();
    }

    /// Starts the server again on the same port, config and host key.
    pub fn restart(&mut self) {
        self.daemon.stop();
        self.daemon = launch_sshd(self.dir.path(), self.port);
    }

    /// Restarts the server on the same port with a new host key, as a
    /// re-installed (or impersonated) host would look.
    pub fn rekey(&mut self) {
        // Stopped first, so the old process never serves the new key.
        self.daemon.stop();
        self.host_key_fingerprint = new_host_key(self.dir.path());
        self.daemon = launch_sshd(self.dir.path(), self.port);
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The `authorized_keys` file as it is now.
    pub fn authorized_keys(&self) -> String {
        std::fs::read_to_string(&self.authorized_keys).expect("read authorized_keys")
    }

    /// Where `authorized_keys` is, e.g. to append to it in a command.
    pub fn authorized_keys_path(&self) -> &Path {
        &self.authorized_keys
    }

    /// What sshd has logged so far.
    pub fn log(&self) -> String {
        self.daemon.log_text()
    }
}

fn host_key_path(dir: &Path) -> PathBuf {
    dir.join("ssh_host_ed25519_key")
}

/// Writes a new ed25519 host key into `dir` (replacing any) and returns
/// its fingerprint.
fn new_host_key(dir: &Path) -> String {
    let key = host_key_path(dir);
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(key.with_extension("pub"));
    let mut keygen = Command::new(find_binary("ssh-keygen", &[], "openssh-client"));
    keygen.args(["-q", "-t", "ed25519", "-N", "", "-C", "tumbler-test-host", "-f"]).arg(&key);
    expect_success("ssh-keygen (host key)", run(keygen, None));
    ssh_fingerprint(&key.with_extension("pub"))
}

fn launch_sshd(dir: &Path, port: u16) -> Daemon {
    let sshd = find_binary("sshd", &[PathBuf::from("/usr/sbin/sshd")], "openssh-server");
    let mut server = Command::new(sshd);
    // -D: stay in the foreground; -e: log to stderr (the log file).
    server.args(["-D", "-e", "-f"]).arg(dir.join("sshd_config"));
    let mut daemon = Daemon::spawn("sshd", server, dir.join("sshd.log"), libc::SIGTERM);
    daemon.wait_ready(|| ssh_banner(port));
    daemon
}

/// True once the server on `port` greets with an SSH banner.
fn ssh_banner(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut banner = [0u8; 4];
    stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-"
}
