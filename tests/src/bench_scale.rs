//! Scale: a store of a million secrets (size on disk, list pages, memory)
//! and one of 100,000 secrets with rotation schedules (memory and CPU of a
//! server with nothing due). The stores are filled in-process through
//! tumbler's own store calls (see `bench_store`), then the real release
//! server is started on them and measured over HTTP and through `/proc`.

use crate::bench::{
    Report, Section, Spread, cpu_seconds, disk_usage, env_count, http_client, ms, rss_mib, size, thousands,
};
use crate::bench_store::{self, numbered};
use crate::{Instance, secret_names};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Repeats of each single-request latency.
const SAMPLES: usize = 5;

/// Starts the release server on an instance's populated store; returns
/// how long it took to print its address.
async fn serve(mut instance: Instance) -> (Instance, Duration) {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        instance.serve();
        (instance, started.elapsed())
    })
    .await
    .expect("start tumbler")
}

/// A fresh `tumbler init`, off the async workers.
async fn init() -> Instance {
    tokio::task::spawn_blocking(Instance::init).await.expect("tumbler init")
}

/// One `GET /v1/secrets?limit=LIMIT[&page_token=T]`: its time, names and
/// next page token.
async fn list_page(
    http: &reqwest::Client,
    instance: &Instance,
    limit: usize,
    token: Option<&str>,
) -> (Duration, Vec<String>, Option<String>) {
    let mut query = vec![("limit", limit.to_string())];
    if let Some(t) = token {
        query.push(("page_token", t.to_string()));
    }
    let t = Instant::now();
    let reply = http
        .get(format!("{}/v1/secrets", instance.url()))
        .bearer_auth(&instance.root_token)
        .query(&query)
        .send()
        .await
        .expect("list");
    assert_eq!(reply.status(), 200, "list: {:?}", reply.text().await);
    let body: Value = reply.json().await.expect("list JSON");
    let elapsed = t.elapsed();
    let next = body.get("next_page_token").and_then(Value::as_str).map(str::to_string);
    (elapsed, secret_names(&body), next)
}

/// `SAMPLES` timings of the same page.
async fn page_latency(http: &reqwest::Client, instance: &Instance, token: Option<&str>) -> Spread {
    let mut times = Vec::new();
    for _ in 0..SAMPLES {
        times.push(ms(list_page(http, instance, 100, token).await.0));
    }
    Spread::of(&times)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A million secrets: fill, size on disk, start, first and last list
/// page, RSS.
pub async fn million(report: &Report) {
    // A multiple of 1,000, so pages of 1,000 then of 100 end exactly on
    // the last page.
    let n = env_count("TUMBLER_BENCH_SCALE_SECRETS", size(1_000_000, 20_000)).div_ceil(1000).max(1) * 1000;
    let instance = init().await;
    let store = bench_store::open_store(&instance.data_dir, &instance.key_file);
    let filled = bench_store::populate(&store, "bench/s", n, None).await;
    drop(store);
    let on_disk = disk_usage(&instance.data_dir);
    let (mut instance, startup) = serve(instance).await;
    let pid = instance.server().pid();
    let rss_started = rss_mib(pid);
    let http = http_client();

    let first = page_latency(&http, &instance, None).await;

    // To the last page of 100 the way a client would: page tokens only,
    // 1,000 names a page (the most a page holds), then 100 a page.
    let walk = Instant::now();
    let mut seen = 0;
    let mut token: Option<String> = None;
    while seen < n - 1000 {
        let (_, names, next) = list_page(&http, &instance, 1000, token.as_deref()).await;
        seen += names.len();
        token = Some(next.expect("more pages"));
    }
    while seen < n - 100 {
        let (_, names, next) = list_page(&http, &instance, 100, token.as_deref()).await;
        seen += names.len();
        token = Some(next.expect("more pages"));
    }
    let walk = walk.elapsed();
    let (_, names, next) = list_page(&http, &instance, 100, token.as_deref()).await;
    assert_eq!(names.len(), 100, "the last page holds 100 names");
    assert_eq!(names.last(), Some(&numbered("bench/s", n - 1)), "the last page ends with the last secret");
    assert!(next.is_none(), "the last page has no next page");
    let last = page_latency(&http, &instance, token.as_deref()).await;
    let rss_listed = rss_mib(pid);

    let mut section =
        Section::new(&format!("Scale: {} secrets (harness client)", thousands(n)), &["figure", "value", "how"]);
    section.row(vec![
        "fill the store in-process".into(),
        format!("{:.1} s ({:.0} secrets/s)", filled.as_secs_f64(), n as f64 / filled.as_secs_f64()),
        "tumbler's own `secrets::create` in transactions of 10,000; not through HTTP".into(),
    ]);
    section.row(vec!["size on disk".into(), format!("{:.1} MiB", mib(on_disk)), "the data dir, closed".into()]);
    section.row(vec![
        "server start".into(),
        format!("{:.2} s", startup.as_secs_f64()),
        "spawn to `listening on`".into(),
    ]);
    section.row(vec!["RSS after start".into(), format!("{rss_started:.1} MiB"), "VmRSS".into()]);
    section.row(vec![
        "first list page".into(),
        format!("{} ms", first.show(2)),
        format!("`GET /v1/secrets?limit=100`, median of {SAMPLES} (min–max)"),
    ]);
    section.row(vec![
        "last list page".into(),
        format!("{} ms", last.show(2)),
        format!("the same with the `page_token` that leads to the last 100 names, median of {SAMPLES}"),
    ]);
    section.row(vec![
        "walk to the last page".into(),
        format!("{:.1} s", walk.as_secs_f64()),
        format!("{} pages of 1,000 then 9 of 100, following `next_page_token`", thousands((n - 1000) / 1000)),
    ]);
    section.row(vec!["RSS after the walk".into(), format!("{rss_listed:.1} MiB"), "VmRSS".into()]);
    section.note(
        "Filling a million secrets through the HTTP API would take most of an hour, so the store is filled \
         in-process with the same calls the API's create makes (a data key per secret, the value encrypted, \
         version and label rows), then the real release server is started on it with the shipped defaults; every \
         list request is authorised and audited. Page tokens are keyset cursors (the last name of the page), so \
         the last page costs what the first does; the walk reaches it by following tokens, as a client must.",
    );
    report.section(section);
}

/// 100,000 secrets each with a rotation schedule 30 days out: the server's
/// memory and its CPU while nothing is due.
pub async fn idle(report: &Report) {
    let n = env_count("TUMBLER_BENCH_IDLE_SECRETS", size(100_000, 5_000));
    let window = Duration::from_secs(size(20, 5));
    let instance = init().await;
    let store = bench_store::open_store(&instance.data_dir, &instance.key_file);
    // The registry's compiled cache goes elsewhere: the server keeps its
    // own in the data dir, under a key derived from the master key.
    let cache = tempfile::tempdir().expect("tempdir");
    let registry = bench_store::registry(&store, cache.path()).await;
    let config = bench_store::noop_config(&registry, "rate(30 days)").await;
    let filled = bench_store::populate(&store, "bench/r", n, Some(config)).await;
    drop(registry);
    drop(store);
    let (mut instance, startup) = serve(instance).await;
    let pid = instance.server().pid();

    // Start-up work (compiling the built-in plugins, loading the schedule)
    // is not idling: wait for a quiet second first.
    let settle = Instant::now();
    loop {
        let before = cpu_seconds(pid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        if cpu_seconds(pid) - before < 0.02 || settle.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let settled = settle.elapsed();
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    tokio::time::sleep(window).await;
    let (cpu, wall) = (cpu_seconds(pid) - cpu0, t0.elapsed());
    let rss = rss_mib(pid);
    // The schedules are really there: the server shows the first one.
    let reply = http_client()
        .get(format!("{}/v1/secrets/{}:rotation", instance.url(), numbered("bench/r", 0)))
        .bearer_auth(&instance.root_token)
        .send()
        .await
        .expect("rotation config");
    assert_eq!(reply.status(), 200, "the secrets carry rotation configs");
    let mut section = Section::new(
        &format!("Scale: {} secrets with rotation schedules, idle (/proc)", thousands(n)),
        &["figure", "value", "how"],
    );
    section.row(vec![
        "fill the store in-process".into(),
        format!("{:.1} s", filled.as_secs_f64()),
        "secrets with a `noop` rotation config each, `rate(30 days)`".into(),
    ]);
    section.row(vec![
        "server start".into(),
        format!("{:.2} s (+{:.0} s until a quiet second)", startup.as_secs_f64(), settled.as_secs_f64()),
        "spawn to `listening on`, then until CPU < 2% over 1 s".into(),
    ]);
    section.row(vec!["RSS".into(), format!("{rss:.1} MiB"), "VmRSS after the idle window".into()]);
    section.row(vec![
        "idle CPU".into(),
        format!(
            "{:.3}% of one core ({:.2} s CPU in {:.0} s)",
            100.0 * cpu / wall.as_secs_f64(),
            cpu,
            wall.as_secs_f64()
        ),
        "utime + stime of the server over the window".into(),
    ]);
    section.note(
        "One run (the step is slow; the figures are stable from run to run). The scheduler sleeps until the \
         earliest due time, indexed in SQLite, so an idle server with nothing due should use next to no CPU.",
    );
    report.section(section);
}
