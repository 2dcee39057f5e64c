//! The plugin sandbox against hostile components (real fixtures from
//! `plugins/testing`): time, memory, traps, output floods, ungranted calls
//! and every way around an HTTP grant. The runtime runs in-process.

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tumbler::crypto::MasterKey;
use tumbler::plugins::output::LOG_CAP;
use tumbler::plugins::{PluginErrorKind, RuntimeLimits, Step, StepOutcome};
use tumbler_tests::fixtures::{TestRuntime, context, input};
use tumbler_tests::http_target::HttpTarget;

const STEP_TIMEOUT: Duration = Duration::from_secs(2);

fn limits() -> RuntimeLimits {
    RuntimeLimits { step_timeout: STEP_TIMEOUT, ..RuntimeLimits::default() }
}

async fn run(fixture: &str, step: Step, params: Value, grants: Value) -> StepOutcome {
    run_with(limits(), fixture, step, params, grants).await
}

async fn run_with(limits: RuntimeLimits, fixture: &str, step: Step, params: Value, grants: Value) -> StepOutcome {
    let rt = TestRuntime::new(limits);
    let plugin = rt.load(fixture).await;
    rt.runtime.run_step(&plugin, step, input(params), context(fixture, grants)).await
}

fn failure(outcome: &StepOutcome) -> (PluginErrorKind, String) {
    match &outcome.result {
        Ok(_) => panic!("the step succeeded; log:\n{}", outcome.log),
        Err(e) => (e.kind, e.message.clone()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_fails_within_the_timeout_while_the_host_keeps_serving() {
    let rt = TestRuntime::new(limits());
    let plugin = rt.load("test-loop").await;
    // Real store reads run beside the spinning plugin, on the same runtime.
    let dir = tempfile::tempdir().unwrap();
    let store = tumbler::store::Store::create(dir.path(), MasterKey::generate()).unwrap();
    let window = STEP_TIMEOUT - Duration::from_millis(500);
    // The reads of another request, a task of its own, with no plugin
    // running first: how many this machine, loaded as it is now, does in
    // the window.
    let alone = tokio::spawn(reads_for(store.clone(), window)).await.unwrap();
    let started = Instant::now();
    let other_request = tokio::spawn(reads_for(store.clone(), window));
    // Reads in the plugin's own task too: they progress only when the
    // plugin yields, so each one finishing within 500 ms shows it does.
    let step = rt.runtime.run_step(&plugin, Step::Set, input(json!({})), context("test-loop", json!({})));
    let (outcome, same_task) = tokio::join!(step, reads_for(store.clone(), window));
    let elapsed = started.elapsed();
    let beside = other_request.await.unwrap();
    let (kind, message) = failure(&outcome);
    assert_eq!(kind, PluginErrorKind::Timeout, "{message}");
    assert!(message.contains("test-loop") && message.contains("set"), "{message}");
    assert!(elapsed >= STEP_TIMEOUT && elapsed < STEP_TIMEOUT + Duration::from_secs(3), "took {elapsed:?}");
    assert!(
        beside * 2 >= alone,
        "another task did only {beside} reads while the plugin spun, against {alone} in the same time with no plugin"
    );
    // At most 500 ms each (checked in `reads_for`), through the whole window.
    assert!(same_task >= 3, "only {same_task} reads in the plugin's own task while it spun");
}

/// Reads from `store` one after another, 20 ms apart, for `window`; each
/// must complete within 500 ms. Returns how many did.
async fn reads_for(store: tumbler::store::Store, window: Duration) -> usize {
    let started = Instant::now();
    let mut done = 0;
    while started.elapsed() < window {
        let t = Instant::now();
        store
            .read(|conn, _| Ok(conn.query_row("SELECT count(*) FROM secrets", [], |r| r.get::<_, i64>(0))?))
            .await
            .unwrap();
        assert!(t.elapsed() < Duration::from_millis(500), "a read waited {:?}", t.elapsed());
        done += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done
}

#[tokio::test]
async fn memory_growth_past_the_limit_fails_the_step() {
    let outcome = run("test-memhog", Step::Set, json!({}), json!({})).await;
    let (kind, message) = failure(&outcome);
    assert_eq!(kind, PluginErrorKind::OutOfMemory, "{message}");
    assert!(message.contains("64 MiB"), "{message}");
}

#[tokio::test]
async fn memory_a_call_filled_reaches_the_next_call_wiped() {
    let rt = TestRuntime::new(limits());
    let plugin = rt.load("test-memhog").await;
    for round in 0..3 {
        let filled = rt.runtime.run_step(&plugin, Step::Set, input(json!({})), context("test-memhog", json!({}))).await;
        assert_eq!(failure(&filled).0, PluginErrorKind::OutOfMemory, "round {round}");
        let next = rt.runtime.run_step(&plugin, Step::Test, input(json!({})), context("test-memhog", json!({}))).await;
        assert!(next.result.is_ok(), "round {round}: {:?}\n{}", next.result.err(), next.log);
    }
}

#[tokio::test]
async fn a_panic_or_trap_is_a_clear_error_naming_the_plugin_and_step() {
    let outcome = run("test-trap", Step::Set, json!({}), json!({})).await;
    let (kind, message) = failure(&outcome);
    assert_eq!(kind, PluginErrorKind::Trap);
    assert!(message.contains("plugin 'test-trap' step `set`"), "{message}");
    assert!(outcome.log.contains("panicked"), "the panic message is in the captured log: {}", outcome.log);

    let outcome = run("test-trap", Step::Test, json!({}), json!({})).await;
    let (kind, message) = failure(&outcome);
    assert_eq!(kind, PluginErrorKind::Trap);
    assert!(message.contains("step `test`") && message.contains("unreachable"), "{message}");
}

#[tokio::test]
async fn ten_mib_of_output_is_truncated_at_the_cap() {
    // The default step timeout: pushing 20 MiB through the host takes a while in a debug build.
    let outcome = run_with(RuntimeLimits::default(), "test-chatty", Step::Set, json!({}), json!({})).await;
    assert!(outcome.result.is_ok(), "a chatty plugin still succeeds: {:?}", outcome.result.as_ref().err());
    assert!(outcome.log.len() <= LOG_CAP + 200, "log is {} bytes", outcome.log.len());
    assert!(outcome.log.contains("log truncated at 65536 bytes"), "{}", &outcome.log[outcome.log.len() - 200..]);
    assert!(outcome.log.starts_with("stdout line 00000000"), "the start of the output is kept");
}

#[tokio::test]
async fn ungranted_calls_are_denied_with_the_reason() {
    let target = HttpTarget::start().await;
    let cases = [
        json!({"call": "http", "url": target.url("/ok")}),
        json!({"call": "secret", "name": "db/other"}),
        json!({"call": "sql", "host": "127.0.0.1", "port": 5432}),
        json!({"call": "ssh", "host": "127.0.0.1", "port": 22, "username": "u", "password": "p"}),
    ];
    for params in cases {
        let outcome = run("test-probe", Step::Set, params.clone(), json!({})).await;
        let (kind, message) = failure(&outcome);
        assert_eq!(kind, PluginErrorKind::Fatal, "{params}: {message}");
        assert!(message.contains("denied") && message.contains("not granted"), "{params}: {message}");
    }
    assert_eq!(target.hits.total(), 0, "nothing reached the target");
}

/// Runs the probe's http call under the given grant.
async fn http_probe(grant: &str, call: Value) -> StepOutcome {
    run("test-probe", Step::Set, call, json!({"http": [grant]})).await
}

#[tokio::test]
async fn a_granted_url_is_reached() {
    let target = HttpTarget::start().await;
    let outcome = http_probe(&target.url("/ok"), json!({"call": "http", "url": target.url("/ok/x")})).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result.as_ref().err());
    assert!(outcome.log.contains("http: status 200"), "{}", outcome.log);
    assert_eq!(target.hits.get("/ok/x"), 1);
}

#[tokio::test]
async fn a_granted_name_resolving_to_loopback_is_refused() {
    let target = HttpTarget::start().await;
    let by_name = format!("http://localhost:{}/ok", target.addr.port());
    let outcome = http_probe(&by_name, json!({"call": "http", "url": by_name})).await;
    let (_, message) = failure(&outcome);
    assert!(message.contains("denied") && message.contains("internal address"), "{message}");
    assert_eq!(target.hits.total(), 0);
}

#[tokio::test]
async fn userinfo_in_the_url_is_refused() {
    let target = HttpTarget::start().await;
    let sneaky = format!("http://127.0.0.1:{}@localhost:{}/ok", target.addr.port(), target.addr.port());
    let outcome = http_probe(&target.url("/ok"), json!({"call": "http", "url": sneaky})).await;
    let (_, message) = failure(&outcome);
    assert!(message.contains("denied") && message.contains("user:password@"), "{message}");
    assert_eq!(target.hits.total(), 0);
}

#[tokio::test]
async fn dot_segments_cannot_leave_the_granted_prefix() {
    let target = HttpTarget::start().await;
    for url in [target.url("/ok/../other"), target.url("/ok/%2e%2e/other")] {
        let outcome = http_probe(&target.url("/ok"), json!({"call": "http", "url": url})).await;
        let (_, message) = failure(&outcome);
        assert!(message.contains("denied") && message.contains("/other"), "{url}: {message}");
    }
    assert_eq!(target.hits.total(), 0);
}

#[tokio::test]
async fn a_prefix_matches_only_at_a_segment_boundary() {
    let target = HttpTarget::start().await;
    let outcome = http_probe(&target.url("/ok"), json!({"call": "http", "url": target.url("/okX")})).await;
    let (_, message) = failure(&outcome);
    assert!(message.contains("denied"), "{message}");
    assert_eq!(target.hits.total(), 0);
}

#[tokio::test]
async fn a_redirect_out_of_the_grant_is_not_followed() {
    let target = HttpTarget::start().await;
    let outcome = http_probe(&target.url("/ok"), json!({"call": "http", "url": target.url("/ok/redirect")})).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result.as_ref().err());
    assert!(outcome.log.contains("http: status 302"), "the plugin sees the redirect itself: {}", outcome.log);
    assert_eq!(target.hits.get("/ok/redirect"), 1);
    assert_eq!(target.hits.get("/other"), 0, "the host did not follow it");
}

#[tokio::test]
async fn host_and_proxy_headers_are_refused() {
    let target = HttpTarget::start().await;
    for header in ["Host", "proxy-authorization"] {
        let call = json!({"call": "http", "url": target.url("/ok"), "headers": [[header, "evil.example"]]});
        let outcome = http_probe(&target.url("/ok"), call).await;
        let (_, message) = failure(&outcome);
        assert!(message.contains("denied") && message.contains(header), "{message}");
    }
    assert_eq!(target.hits.total(), 0);
}
