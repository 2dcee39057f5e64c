//! Read path: `GET /v1/secrets/NAME:value` on a release tumbler (auth,
//! audit and every check on, the shipped defaults) against a bare axum
//! handler returning a body of the same size, built with the same profile
//! and loaded by the same generator (wrk) in the same run; the ratio is the
//! figure. Run: `cargo bench -p tumbler-tests --bench read_path`.

use axum::Router;
use axum::routing::get;
use std::process::Command;
use tumbler_tests::Instance;

const CONNECTIONS: [u32; 3] = [1, 32, 128];
const RUNS: usize = 3;
const SECONDS: u32 = 5;

struct Figure {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// One wrk run; wrk's latency distribution gives p50 and p99.
fn wrk(url: &str, token: Option<&str>, connections: u32) -> Figure {
    let mut cmd = Command::new("wrk");
    // wrk needs at least one connection per thread.
    let threads = connections.min(2).to_string();
    cmd.args(["--latency", "-t", &threads, "-c", &connections.to_string(), "-d", &format!("{SECONDS}s")]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(url).output().expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Non-2xx"), "errors under load:\n{text}");
    let field = |prefix: &str| -> f64 {
        let line =
            text.lines().find(|l| l.trim_start().starts_with(prefix)).unwrap_or_else(|| panic!("{prefix} in\n{text}"));
        parse_value(line.trim_start().trim_start_matches(prefix).split_whitespace().next().unwrap_or(""))
    };
    Figure { rps: field("Requests/sec:"), p50_ms: field("50%"), p99_ms: field("99%") }
}

/// wrk prints `812.00us`, `1.20ms`, `2.01s` or a plain number.
fn parse_value(v: &str) -> f64 {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().unwrap_or_else(|_| panic!("cannot parse {v:?}")) * scale
}

fn median_of(mut runs: Vec<Figure>) -> (Figure, f64, f64) {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    let (min, max) = (runs[0].rps, runs[runs.len() - 1].rps);
    let mid = runs.swap_remove(runs.len() / 2);
    (mid, min, max)
}

fn main() {
    // SAFETY: set before any thread starts; read by the harness only.
    unsafe { std::env::set_var("TUMBLER_TEST_RELEASE", "1") };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("tokio");
    let instance = Instance::start();
    let value = format!("{{\"username\":\"app\",\"password\":\"{}\"}}", tumbler_tests::random_string(32));
    let tumbler_url = format!("{}/v1/secrets/app/db:value", instance.url());
    let body = rt.block_on(async {
        instance.root().create_secret("app/db", &value).await;
        reqwest::Client::new()
            .get(&tumbler_url)
            .bearer_auth(&instance.root_token)
            .send()
            .await
            .expect("read")
            .bytes()
            .await
            .expect("body")
    });
    let bare_url = rt.block_on(async {
        let app = Router::new().route(
            "/value",
            get(move || {
                let body = body.clone();
                async move { body }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        format!("http://{addr}/value")
    });

    println!(
        "| connections | tumbler reads/s (min-max) | p50 | p99 | bare axum reads/s (min-max) | p50 | p99 | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for c in CONNECTIONS {
        let mut ours = Vec::new();
        let mut bare = Vec::new();
        for _ in 0..RUNS {
            // Interleaved, so drift in the machine's load hits both alike.
            ours.push(wrk(&tumbler_url, Some(&instance.root_token), c));
            bare.push(wrk(&bare_url, None, c));
        }
        let (o, omin, omax) = median_of(ours);
        let (b, bmin, bmax) = median_of(bare);
        println!(
            "| {c} | {:.0} ({omin:.0}-{omax:.0}) | {:.2} ms | {:.2} ms | {:.0} ({bmin:.0}-{bmax:.0}) | {:.2} ms | {:.2} ms | {:.2} |",
            o.rps,
            o.p50_ms,
            o.p99_ms,
            b.rps,
            b.p50_ms,
            b.p99_ms,
            o.rps / b.rps
        );
        if c == 32 {
            println!("read ratio: {:.2}", o.rps / b.rps);
        }
    }
}
