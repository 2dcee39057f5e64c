//! The read and write paths of a release `tumbler serve` with the shipped
//! defaults (auth, audit and every check on), each next to a baseline run
//! in the same process and the same minutes: a bare axum handler returning
//! the very bytes tumbler returns, and OpenBao's KV v2 read.

use crate::bench::{Report, Section, Spread, for_duration, http_client, ms, size};
use crate::bench_openbao::OpenBao;
use crate::bench_wrk::{self, WrkRun};
use crate::{Instance, random_string};
use serde_json::json;
use std::time::Duration;

/// Connection counts of the read path.
pub const CONNECTIONS: [u32; 3] = [1, 32, 128];
/// The connection count whose ratio is quoted as `read ratio`.
pub const QUOTED_CONNECTIONS: u32 = 32;

/// A release server on a fresh store, started off the async workers
/// (starting one blocks until it prints its address).
pub async fn start_instance() -> Instance {
    tokio::task::spawn_blocking(Instance::start).await.expect("start tumbler")
}

/// A bare axum server answering `GET /value` with `body`, built by this
/// crate (the same profile as tumbler) and on a runtime of its own with as
/// many workers as the server's (one per core), so the harness's own tasks
/// never share its threads. Stops when dropped.
pub struct BareAxum {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BareAxum {
    pub fn start(body: axum::body::Bytes) -> BareAxum {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let url = format!("http://{}/value", listener.local_addr().expect("local addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
            runtime.block_on(async move {
                let app = axum::Router::new().route(
                    "/value",
                    axum::routing::get(move || {
                        let body = body.clone();
                        async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], body) }
                    }),
                );
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .ok();
            });
        });
        BareAxum { url, stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for BareAxum {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One wrk run, off the async workers (wrk blocks until it is done).
async fn wrk(url: &str, headers: Vec<(String, String)>, connections: u32, seconds: u32) -> WrkRun {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        bench_wrk::run(&url, &headers, connections, seconds)
    })
    .await
    .expect("wrk task")
}

/// The runs of one target at one connection count.
#[derive(Default)]
struct Runs(Vec<WrkRun>);

impl Runs {
    fn rps(&self) -> Spread {
        Spread::of(&self.0.iter().map(|r| r.rps).collect::<Vec<_>>())
    }
    fn p50(&self) -> f64 {
        Spread::of(&self.0.iter().map(|r| r.p50_ms).collect::<Vec<_>>()).median
    }
    fn p99(&self) -> f64 {
        Spread::of(&self.0.iter().map(|r| r.p99_ms).collect::<Vec<_>>()).median
    }
    /// Each run's rate over the matching run of `other` (taken in the same
    /// round, so drift in the machine's load hits both alike).
    fn ratio_to(&self, other: &Runs) -> Spread {
        Spread::of(&self.0.iter().zip(&other.0).map(|(a, b)| a.rps / b.rps).collect::<Vec<_>>())
    }
    fn cells(&self) -> Vec<String> {
        vec![self.rps().show(0), format!("{:.2} ms", self.p50()), format!("{:.2} ms", self.p99())]
    }
}

/// Read path: `GET /v1/secrets/app/db:value` on tumbler, the same bytes
/// from bare axum, and the same value from OpenBao's KV v2, loaded by wrk
/// at each connection count, interleaved round by round.
pub async fn read_path(report: &Report) {
    let title = "Read path: `GET /v1/secrets/NAME:value` (wrk)";
    if let Some(why) = bench_wrk::missing() {
        let mut section = Section::new(title, &[]);
        section.note(format!("Skipped: {why}."));
        report.section(section);
        report.target("read ratio at 32 connections", "≥ 0.5", "skipped", None);
        return;
    }
    let runs = size(3, 2);
    let seconds = size(5, 2);
    let instance = start_instance().await;
    let token = instance.root_token.clone();
    let value = json!({"username": "app", "password": random_string(32)}).to_string();
    instance.root().create_secret("app/db", &value).await;
    let tumbler_url = format!("{}/v1/secrets/app/db:value", instance.url());
    let body = http_client().get(&tumbler_url).bearer_auth(&token).send().await.expect("read").bytes().await;
    let body = body.expect("read body");
    let body_len = body.len();
    let bare = BareAxum::start(body);
    let tumbler_headers = vec![("Authorization".to_string(), format!("Bearer {token}"))];

    let bao = match OpenBao::start().await {
        Ok(bao) => {
            let data = serde_json::from_str::<serde_json::Value>(&value).expect("value is JSON");
            bao.must(reqwest::Method::POST, "/v1/secret/data/app/db", Some(&json!({"data": data}))).await;
            Some(bao)
        }
        Err(why) => {
            eprintln!("OpenBao skipped: {why}");
            None
        }
    };
    let bao_url = bao.as_ref().map(|b| format!("{}/v1/secret/data/app/db", b.url));
    let bao_headers = bao.as_ref().map(|b| vec![("X-Vault-Token".to_string(), b.token.clone())]).unwrap_or_default();
    let bao_len = match (&bao, &bao_url) {
        (Some(b), Some(url)) => {
            let reply = http_client().get(url).header("X-Vault-Token", &b.token).send().await.expect("OpenBao read");
            reply.bytes().await.expect("OpenBao body").len()
        }
        _ => 0,
    };

    let mut section = Section::new(
        title,
        &[
            "connections",
            "tumbler reads/s",
            "p50",
            "p99",
            "bare axum reads/s",
            "p50",
            "p99",
            "tumbler / axum",
            "OpenBao reads/s",
            "p50",
            "p99",
            "tumbler / OpenBao",
        ],
    );
    let mut quoted = None;
    for c in CONNECTIONS {
        let (mut ours, mut base, mut peer) = (Runs::default(), Runs::default(), Runs::default());
        for _ in 0..runs {
            ours.0.push(wrk(&tumbler_url, tumbler_headers.clone(), c, seconds).await);
            base.0.push(wrk(&bare.url, Vec::new(), c, seconds).await);
            if let Some(url) = &bao_url {
                peer.0.push(wrk(url, bao_headers.clone(), c, seconds).await);
            }
        }
        let ratio = ours.ratio_to(&base);
        let mut row = vec![c.to_string()];
        row.extend(ours.cells());
        row.extend(base.cells());
        row.push(ratio.show(2));
        if peer.0.is_empty() {
            row.extend(["skipped".to_string(), "–".into(), "–".into(), "–".into()]);
        } else {
            row.extend(peer.cells());
            row.push(ours.ratio_to(&peer).show(2));
        }
        section.row(row);
        if c == QUOTED_CONNECTIONS {
            quoted = Some((ratio, ours.p99(), (!peer.0.is_empty()).then(|| ours.ratio_to(&peer))));
        }
    }

    // OpenBao audits nothing unless told; tumbler always does. One more
    // row at the quoted count against a second OpenBao with a file audit
    // device, to show what that costs it.
    let mut audited_ratio = None;
    if bao.is_some() {
        let audited = OpenBao::start_audited().await.expect("OpenBao with a file audit device");
        let data = serde_json::from_str::<serde_json::Value>(&value).expect("value is JSON");
        audited.must(reqwest::Method::POST, "/v1/secret/data/app/db", Some(&json!({"data": data}))).await;
        let url = format!("{}/v1/secret/data/app/db", audited.url);
        let headers = vec![("X-Vault-Token".to_string(), audited.token.clone())];
        let (mut ours, mut peer) = (Runs::default(), Runs::default());
        for _ in 0..runs {
            ours.0.push(wrk(&tumbler_url, tumbler_headers.clone(), QUOTED_CONNECTIONS, seconds).await);
            peer.0.push(wrk(&url, headers.clone(), QUOTED_CONNECTIONS, seconds).await);
        }
        let ratio = ours.ratio_to(&peer);
        let mut row = vec![format!("{QUOTED_CONNECTIONS}, OpenBao with a file audit device")];
        row.extend(ours.cells());
        row.extend(["–".to_string(), "–".into(), "–".into(), "–".into()]);
        row.extend(peer.cells());
        row.push(ratio.show(2));
        section.row(row);
        audited_ratio = Some(ratio);
    }

    section.note(format!(
        "Each cell: the median of {runs} wrk runs of {seconds} s (min–max for rates); the three targets are run \
         one after another in each round, so drift in the machine's load hits all alike, and each ratio is the \
         median of the per-round ratios. wrk (Debian's) uses 2 threads (1 for 1 connection), `--latency`."
    ));
    section.note(format!(
        "tumbler: a release `tumbler serve` with the shipped defaults (root token checked, the read audited: its \
         record is MAC'd and written into the audit journal, a shared memory map of a file in the data dir, before \
         the {body_len}-byte body is sent; the journal is folded into the chain in SQLite every 10 ms, whose WAL is \
         synced within 200 ms). \
         Bare axum: one handler returning those same {body_len} bytes, built with the same profile, on a \
         multi-threaded tokio runtime with one worker per core as tumbler's."
    ));
    match &bao {
        Some(b) => section.note(format!(
            "OpenBao: {} as `bao server -dev` (in-memory storage, so no disk write on a read; no audit device \
             but in the last row, a second server declaring a `file` audit device in its config), \
             `GET /v1/secret/data/app/db` from KV v2 holding the same value ({bao_len}-byte response).",
            b.version
        )),
        None => section.note(format!(
            "OpenBao: skipped ({}).",
            crate::bench_openbao::binary().err().unwrap_or_else(|| "it did not start".into())
        )),
    };
    report.section(section);

    if let Some((ratio, p99, peer_ratio)) = quoted {
        report.target(
            "read ratio (tumbler / bare axum) at 32 connections",
            "≥ 0.5",
            ratio.show(2),
            Some(ratio.median >= 0.5),
        );
        report.target("read p99 at 32 connections", "≤ 5 ms", format!("{p99:.2} ms"), Some(p99 <= 5.0));
        match peer_ratio {
            Some(r) => report.target(
                "reads vs OpenBao (`-dev`, no audit device) at 32 connections",
                "≥ 5×",
                format!("{}×", r.show(2)),
                Some(r.median >= 5.0),
            ),
            None => report.target("reads vs OpenBao at 32 connections", "≥ 5×", "OpenBao skipped", None),
        }
        if let Some(r) = audited_ratio {
            report.target(
                "reads vs OpenBao with a file audit device, 32 connections",
                "(≥ 5×, for reference)",
                format!("{}×", r.show(2)),
                Some(r.median >= 5.0),
            );
        }
        report.line(format!("read ratio: {:.2}", ratio.median));
    }
}

/// Write path: `POST /v1/secrets/NAME:versions` from the harness's own
/// client, each task adding versions to a secret of its own (versions of
/// one secret are serialised by design, by its generation number).
pub async fn write_path(report: &Report) {
    let runs = size(3, 2);
    let duration = Duration::from_secs(size(5, 2));
    let clients = [1usize, 8, 32];
    let instance = start_instance().await;
    let root = instance.root();
    for c in 0..*clients.iter().max().unwrap_or(&1) {
        root.create_secret(&format!("bench/w{c}"), "initial").await;
    }
    let http = http_client();
    let base = instance.url().to_string();
    let token = instance.root_token.clone();
    let mut section = Section::new(
        "Write path: `POST /v1/secrets/NAME:versions` (harness client)",
        &["clients", "new versions/s", "p50", "p99"],
    );
    let mut best = None::<Spread>;
    for c in clients {
        let (mut rates, mut p50s, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            let load = for_duration(c, duration, move |client| {
                let request = http
                    .post(format!("{base}/v1/secrets/bench/w{client}:versions"))
                    .bearer_auth(&token)
                    .json(&json!({"value": json!({"username": "app", "password": random_string(32)}).to_string()}));
                async move {
                    let reply = request.send().await.expect("new version");
                    let status = reply.status();
                    assert!(status.is_success(), "new version: {status} {:?}", reply.text().await);
                }
            })
            .await;
            rates.push(load.per_second());
            p50s.push(ms(load.p50()));
            p99s.push(ms(load.p99()));
        }
        let rate = Spread::of(&rates);
        section.row(vec![
            c.to_string(),
            rate.show(0),
            format!("{:.2} ms", Spread::of(&p50s).median),
            format!("{:.2} ms", Spread::of(&p99s).median),
        ]);
        if best.is_none_or(|b| rate.median > b.median) {
            best = Some(rate);
        }
    }
    section.note(format!(
        "Each cell: the median of {runs} runs of {} s (min–max for rates). Durability as shipped: SQLite in WAL \
         mode with `synchronous=FULL`; each new version and its audit record are one transaction, fsynced \
         before the 201. Load: the harness's own async client (reqwest, one task per client in a closed loop), \
         since each request needs a different body, which wrk cannot send without a Lua script.",
        duration.as_secs()
    ));
    report.section(section);
    if let Some(best) = best {
        report.target(
            "new versions/s (best client count)",
            "≥ 1,000/s",
            format!("{}/s", best.show(0)),
            Some(best.median >= 1000.0),
        );
    }
}
