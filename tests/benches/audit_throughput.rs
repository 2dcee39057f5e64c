//! Read throughput with auditing on versus off, in the same run: the
//! current binary against a build from before the audit log (a baseline
//! binary you build from an older commit). Run:
//! `TUMBLER_BASELINE_BIN=/path/to/tumbler-before-audit [TUMBLER_BENCH_BIN=target/release/tumbler]
//!  [TUMBLER_BENCH_CLIENTS=32] cargo bench -p tumbler-tests --bench audit_throughput`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tumbler_tests::{Client, Server, run, tumbler_bin};

// ---------------------------------------------------------------------------
// read throughput with auditing on and off (run by hand, see README)
// ---------------------------------------------------------------------------

/// Reads per second against `url` from `clients` concurrent loops for `secs`.
async fn read_throughput(url: &str, token: &str, clients: usize, secs: u64) -> f64 {
    let http = http();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, url, token) = (http.clone(), format!("{url}/v1/secrets/bench/value:value"), token.to_string());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let r = http.get(&url).bearer_auth(&token).send().await.expect("read");
                    assert_eq!(r.status(), 200);
                    r.bytes().await.expect("body");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / secs as f64
}

/// A store initialised and served by `bin`, with one secret to read.
async fn bench_server(bin: &Path, dir: &Path) -> (Server, String) {
    let data = dir.join("data");
    let key = dir.join("master.key");
    let mut init = std::process::Command::new(bin);
    init.args(["init", "--output", "json", "--data-dir"]).arg(&data).arg("--key-file").arg(&key);
    let out = run(init, None);
    out.assert_success();
    let token = out.json()["root_token"].as_str().unwrap().to_string();
    let mut serve = std::process::Command::new(bin);
    serve.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(&data).arg("--key-file").arg(&key);
    serve.env("TUMBLER_LOG", "warn");
    let server = Server::spawn(serve).expect("bench server starts");
    Client::new(server.url(), Some(&token)).create_secret("bench/value", "v").await;
    (server, token)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().expect("http client")
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    rt.block_on(compare());
}

async fn compare() {
    let baseline = PathBuf::from(std::env::var("TUMBLER_BASELINE_BIN").expect("set TUMBLER_BASELINE_BIN"));
    let audited = std::env::var("TUMBLER_BENCH_BIN").map(PathBuf::from).unwrap_or_else(|_| tumbler_bin().to_path_buf());
    let clients: usize = std::env::var("TUMBLER_BENCH_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let secs: u64 = std::env::var("TUMBLER_BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let (mut off, off_token) = bench_server(&baseline, &dir.path().join("off")).await;
    let (mut on, on_token) = bench_server(&audited, &dir.path().join("on")).await;
    // Warm up both, then alternate so neither gets the quieter machine.
    read_throughput(off.url(), &off_token, clients, 1).await;
    read_throughput(on.url(), &on_token, clients, 1).await;
    let mut results = Vec::new();
    for round in 0..2 {
        let a = read_throughput(off.url(), &off_token, clients, secs).await;
        let b = read_throughput(on.url(), &on_token, clients, secs).await;
        println!("round {round}: audit off {a:.0} reads/s, audit on {b:.0} reads/s ({:.0}%)", b / a * 100.0);
        results.push((a, b));
    }
    let (a, b) = results.iter().fold((0.0, 0.0), |acc, r| (acc.0 + r.0, acc.1 + r.1));
    println!("{clients} clients, {secs}s x2: audit off {:.0} reads/s, audit on {:.0} reads/s", a / 2.0, b / 2.0);
    off.stop();
    on.stop();
}
