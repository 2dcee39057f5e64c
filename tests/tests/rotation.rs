//! Rotation end to end, through the real binary: configs parsed at the
//! edge, the four steps, crash safety (SIGKILL inside each step, then a
//! restart), retries and failure, the scheduler (on time, once after
//! downtime, a concurrency limit, a removed config), and readers during
//! rotations.

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tumbler_tests::fixtures::fixture_bytes;
use tumbler_tests::gate::Gate;
use tumbler_tests::{Client, Instance, Reply, assert_error, error_message, secret_path};

/// Retries are quick in tests; a gated step may wait up to a minute.
const SERVE_ARGS: &[&str] = &["--rotation-retry-base", "200ms", "--plugin-timeout", "90s"];

fn start(extra: &[&str]) -> Instance {
    let mut instance = Instance::init();
    instance.serve_with(SERVE_ARGS.iter().chain(extra));
    instance
}

async fn upload(client: &Client, name: &str, fixture: &str) {
    let reply = client
        .send_raw(
            reqwest::Method::POST,
            &format!("/v1/plugins/{name}"),
            &[],
            Some(("application/wasm", fixture_bytes(fixture))),
        )
        .await;
    assert_eq!(reply.0, 201, "upload {name}: {reply:?}");
}

async fn set_rotation(client: &Client, secret: &str, body: Value) -> Reply {
    client.put(&format!("{}:rotation", secret_path(secret)), &body).await
}

/// A config for the `gate` plugin (test-gate) steered by `gate` at `prefix`.
fn gate_config(gate: &Gate, prefix: &str) -> Value {
    json!({
        "plugin": "gate",
        "schedule": "rate(30 days)",
        "params": {"gate_url": gate.url(prefix)},
        "grants": {"http": [gate.grant()]},
    })
}

/// A config for the `flaky` plugin (test-flaky) asking `gate` at `prefix`.
fn flaky_config(gate: &Gate, prefix: &str, max_attempts: u32) -> Value {
    json!({
        "plugin": "flaky",
        "schedule": "rate(30 days)",
        "params": {"url": gate.url(prefix)},
        "grants": {"http": [gate.grant()]},
        "max_attempts": max_attempts,
    })
}

async fn rotate(client: &Client, secret: &str) -> String {
    let reply = client.post(&format!("{}:rotate", secret_path(secret)), &json!({})).await;
    assert_eq!(reply.0, 202, "rotate {secret}: {reply:?}");
    assert_eq!(reply.1["already_running"], false, "{reply:?}");
    reply.1["rotation_id"].as_str().expect("rotation_id").to_owned()
}

async fn record(client: &Client, id: &str) -> Value {
    let reply = client.get(&format!("/v1/rotations/{id}")).await;
    assert_eq!(reply.0, 200, "rotation {id}: {reply:?}");
    reply.1
}

/// Polls a rotation until it is no longer running.
async fn wait_end(client: &Client, id: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let r = record(client, id).await;
        if r["status"] != "running" {
            return r;
        }
        assert!(Instant::now() < deadline, "rotation {id} still running after {timeout:?}: {r:#}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn history(client: &Client, secret: &str) -> Vec<Value> {
    let reply = client.get(&format!("{}:rotations", secret_path(secret))).await;
    assert_eq!(reply.0, 200, "history of {secret}: {reply:?}");
    reply.1["rotations"].as_array().expect("rotations").clone()
}

/// `label → version id` of a secret.
async fn labels(client: &Client, secret: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for v in client.versions(secret).await {
        for l in v["labels"].as_array().into_iter().flatten() {
            out.insert(l.as_str().unwrap().to_owned(), v["version_id"].as_str().unwrap().to_owned());
        }
    }
    out
}

/// (step, outcome) of each attempt of a rotation record.
fn attempts(record: &Value) -> Vec<(String, String)> {
    record["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| (a["step"].as_str().unwrap_or("").to_owned(), a["outcome"].as_str().unwrap_or("running").to_owned()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[tokio::test]
async fn noop_rotates_through_the_cli_and_leaves_a_record() {
    let instance = start(&[]);
    let root = instance.root();
    let v0 = root.create_secret("app/db", r#"{"username":"app","password":"initial-password"}"#).await;
    let out = instance.cli(
        [
            "rotation",
            "set",
            "app/db",
            "--plugin",
            "noop",
            "--schedule",
            "0 3 * * *",
            "--window",
            "30m",
            "--output",
            "json",
        ],
        None,
    );
    out.assert_success();
    let config = out.json();
    assert_eq!(config["plugin"], "noop");
    assert_eq!(config["schedule"], "0 3 * * *");
    assert_eq!(config["plugin_sha256"].as_str().unwrap().len(), 64);
    assert!(config["next_due"].as_str().is_some(), "{config}");

    let out = instance.cli(["rotate", "app/db", "--wait", "--output", "json"], None);
    out.assert_success();
    let rec = out.json();
    assert_eq!(rec["status"], "succeeded");
    assert_eq!(rec["trigger"], "manual");
    assert_eq!(attempts(&rec), pairs(&[("create", "ok"), ("set", "ok"), ("test", "ok"), ("finish", "ok")]));
    // The new value is a new password in the same JSON shape; the old one is previous.
    let value: Value = serde_json::from_str(&root.read_value("app/db").await).unwrap();
    assert_eq!(value["username"], "app");
    assert_ne!(value["password"], "initial-password");
    let l = labels(&root, "app/db").await;
    assert_eq!(l["previous"], v0);
    assert_eq!(l["current"], rec["pending_version_id"].as_str().unwrap());
    assert!(!l.contains_key("pending"));
    // The log is shown to a reader of the secret, with values redacted.
    let finish_log = rec["attempts"][3]["log"].as_str().unwrap_or_default();
    assert!(finish_log.contains("finish: no target for app/db"), "{rec:#}");

    let out = instance.cli(["history", "app/db", "--output", "json"], None);
    out.assert_success();
    let h = out.json();
    assert_eq!(h["rotations"].as_array().unwrap().len(), 1);
    assert_eq!(h["rotations"][0]["id"], rec["id"]);

    let out = instance.cli(["rotation", "get", "app/db", "--output", "json"], None);
    out.assert_success();
    assert_eq!(out.json()["last_rotation"]["status"], "succeeded");

    // Each step left an audit record, with an outcome and no value.
    let (status, audit) = root.get_query("/v1/audit", &[("limit", "1000")]).await;
    assert_eq!(status, 200);
    let steps: Vec<&Value> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "rotation.step" && r["detail"]["rotation_id"] == rec["id"])
        .collect();
    assert_eq!(steps.len(), 4, "{audit:#}");
    assert!(steps.iter().all(|r| r["outcome"] == "ok" && r["resource"] == "app/db"));
    assert!(!audit.to_string().contains(value["password"].as_str().unwrap()));

    let metrics = reqwest::get(format!("{}/metrics", instance.url())).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"tumbler_rotations_total{plugin="noop",outcome="succeeded"} 1"#), "{metrics}");

    let out = instance.cli(["rotation", "rm", "app/db"], None);
    out.assert_success();
    assert_error(&root.get(&format!("{}:rotation", secret_path("app/db"))).await, 404, "not_found");
    assert_error(&root.post(&format!("{}:rotate", secret_path("app/db")), &json!({})).await, 404, "not_found");
}

#[tokio::test]
async fn bad_configs_are_refused_naming_the_field() {
    let instance = start(&[]);
    let root = instance.root();
    upload(&root, "flaky", "test-flaky").await;
    root.create_secret("cfg/s", "v").await;
    root.create_secret("cfg/admin", "admin-secret").await;
    let base = json!({"plugin": "noop", "schedule": "rate(1 days)"});
    let cases: Vec<(Value, &str)> = vec![
        (json!({"schedule": "every day"}), "schedule"),
        (json!({"schedule": "0 25 * * *"}), "schedule"),
        (json!({"schedule": "rate(0 hours)"}), "schedule"),
        (json!({"window": "2d"}), "window"),
        (json!({"window": "soon"}), "window"),
        (json!({"plugin": "nope"}), "plugin"),
        (json!({"plugin_version": 99}), "plugin"),
        (json!({"params": [1, 2]}), "params"),
        (json!({"grants": {"sql": ["no-port"]}}), "grants.sql"),
        (json!({"grants": {"ftp": ["x"]}}), "ftp"),
        (json!({"max_attempts": 0}), "max_attempts"),
        (json!({"plugin": "flaky", "params": {"uri": "x"}}), "params.url: is required"),
    ];
    for (patch, field) in cases {
        let mut body = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let reply = set_rotation(&root, "cfg/s", body.clone()).await;
        assert_error(&reply, 400, "invalid_request");
        assert!(error_message(&reply.1).contains(field), "{body}: {}", reply.1);
    }
    assert_error(&set_rotation(&root, "cfg/missing", base.clone()).await, 404, "not_found");

    // Granting a secret needs `read` on it; `admin` on the rotated one is not enough.
    root.put_policy("rotator", json!([{"names": "cfg/s", "capabilities": ["admin", "rotate"]}])).await;
    let token = root.create_token("rotator", &["rotator"], "1h").await;
    let limited = instance.client(Some(&token.token));
    let mut granting = base.clone();
    granting["grants"] = json!({"secrets": ["cfg/admin"]});
    let reply = set_rotation(&limited, "cfg/s", granting.clone()).await;
    assert_error(&reply, 403, "forbidden");
    assert!(error_message(&reply.1).contains("cfg/admin"), "{}", reply.1);
    assert_eq!(set_rotation(&limited, "cfg/s", base.clone()).await.0, 200);
    assert_eq!(set_rotation(&root, "cfg/s", granting).await.0, 200, "root may read cfg/admin");
    // Nothing was stored by the refusals: the config is root's.
    let (_, got) = root.get(&format!("{}:rotation", secret_path("cfg/s"))).await;
    assert_eq!(got["grants"]["secrets"][0], "cfg/admin");
}

/// Holds a rotation inside `step` with the gate, SIGKILLs the server there,
/// restarts it and checks the rotation resumes from that step and
/// completes, with `current` readable and valid throughout and no version
/// duplicated.
/// Starts a rotation of `secret` (created as "initial-value") with the gate
/// plugin, held in `step` until the test opens `/{step}`; returns the
/// secret's first version id and the rotation's id once the plugin waits
/// at the gate (within `within`).
async fn rotation_held_in(gate: &Gate, root: &Client, secret: &str, step: &str, within: Duration) -> (String, String) {
    upload(root, "gate", "test-gate").await;
    let v0 = root.create_secret(secret, "initial-value").await;
    gate.close(&format!("/{step}"));
    assert_eq!(set_rotation(root, secret, gate_config(gate, "")).await.0, 200);
    let id = rotate(root, secret).await;
    gate.wait_for_hits(&format!("/{step}"), 1, within).await;
    (v0, id)
}

/// `GET /v1/rotations/ID?wait=WAIT` on a task of its own: the reply, when
/// it was asked and when it was answered.
fn wait_in_background(instance: &Instance, id: &str, wait: &str) -> tokio::task::JoinHandle<(Reply, Instant, Instant)> {
    let root = instance.root();
    let path = format!("/v1/rotations/{id}?wait={wait}");
    tokio::spawn(async move {
        let asked = Instant::now();
        let reply = root.get(&path).await;
        (reply, asked, Instant::now())
    })
}

async fn crash_inside(step: &str) {
    let gate = Gate::start().await;
    let mut instance = start(&[]);
    let root = instance.root();
    let (v0, id) = rotation_held_in(&gate, &root, "crash/db", step, Duration::from_secs(60)).await;

    let inside = record(&root, &id).await;
    assert_eq!(inside["step"], step);
    let pending = inside["pending_version_id"].as_str().map(str::to_owned);
    // Before finish readers see the old value; from finish on, the new one.
    let expect_current = if step == "finish" { pending.clone().unwrap() } else { v0.clone() };
    assert_eq!(labels(&root, "crash/db").await["current"], expect_current);
    let before_kill = root.read_value("crash/db").await;

    instance.server().kill();
    instance.stop();
    gate.open(&format!("/{step}"));
    instance.serve_with(SERVE_ARGS);
    let root = instance.root();
    // Readable at once after the restart, and still the same value.
    assert_eq!(root.read_value("crash/db").await, before_kill);

    let done = wait_end(&root, &id, Duration::from_secs(90)).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let order = ["create", "set", "test", "finish"];
    let at = order.iter().position(|s| *s == step).unwrap();
    let mut expected: Vec<(&str, &str)> = order[..at].iter().map(|s| (*s, "ok")).collect();
    expected.push((step, "interrupted"));
    expected.extend(order[at..].iter().map(|s| (*s, "ok")));
    assert_eq!(attempts(&done), pairs(&expected), "resumed from {step}: {done:#}");

    let versions = root.versions("crash/db").await;
    assert_eq!(versions.len(), 2, "one new version, none duplicated: {versions:?}");
    let l = labels(&root, "crash/db").await;
    assert_eq!(l["previous"], v0);
    assert_eq!(Some(&l["current"]), done["pending_version_id"].as_str().map(str::to_owned).as_ref());
    if let Some(p) = pending {
        assert_eq!(l["current"], p, "the pending version made before the crash is the one that became current");
    }
    assert_ne!(root.read_value("crash/db").await, "initial-value");
    assert!(!l.contains_key("pending"));
}

#[tokio::test]
async fn a_crash_inside_create_resumes_create() {
    crash_inside("create").await;
}

#[tokio::test]
async fn a_crash_inside_set_resumes_set() {
    crash_inside("set").await;
}

#[tokio::test]
async fn a_crash_inside_test_resumes_test() {
    crash_inside("test").await;
}

#[tokio::test]
async fn a_crash_inside_finish_resumes_finish() {
    crash_inside("finish").await;
}

#[tokio::test]
async fn failed_steps_are_retried_with_growing_waits() {
    let gate = Gate::start().await;
    let instance = start(&[]);
    let root = instance.root();
    upload(&root, "flaky", "test-flaky").await;
    root.create_secret("retry/db", "initial-value").await;
    gate.fail("/set", 3, 503);
    assert_eq!(set_rotation(&root, "retry/db", flaky_config(&gate, "", 5)).await.0, 200);
    let id = rotate(&root, "retry/db").await;
    let done = wait_end(&root, &id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(
        attempts(&done),
        pairs(&[
            ("create", "ok"),
            ("set", "plugin_retryable"),
            ("set", "plugin_retryable"),
            ("set", "plugin_retryable"),
            ("set", "ok"),
            ("test", "ok"),
            ("finish", "ok")
        ])
    );
    // Base 200 ms, doubled each time, jitter in the upper half: ≥100, ≥200, ≥400 ms.
    let times = gate.hit_times("/set");
    let gaps: Vec<u128> = times.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    assert_eq!(gaps.len(), 3);
    for (gap, least) in gaps.iter().zip([100, 200, 400]) {
        assert!(*gap >= least, "waits {gaps:?}");
    }
    assert_eq!(root.versions("retry/db").await.len(), 2);
}

#[tokio::test]
async fn a_rotation_out_of_attempts_drops_pending_keeps_current_and_alerts() {
    let gate = Gate::start().await;
    let instance = start(&["--alert-webhook", &gate.url("/alerts")]);
    let root = instance.root();
    upload(&root, "flaky", "test-flaky").await;
    let v0 = root.create_secret("fail/db", "initial-value").await;
    gate.fail("/set", 1000, 503);
    assert_eq!(set_rotation(&root, "fail/db", flaky_config(&gate, "", 3)).await.0, 200);
    let id = rotate(&root, "fail/db").await;
    let done = wait_end(&root, &id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["step"], "set");
    assert_eq!(done["error_code"], "plugin_retryable");
    assert_eq!(gate.hits("/set"), 3);
    let pending = done["pending_version_id"].as_str().unwrap().to_owned();

    // current untouched, the pending version gone, the next due time set.
    let versions = root.versions("fail/db").await;
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(labels(&root, "fail/db").await, BTreeMap::from([("current".to_owned(), v0)]));
    assert_error(&root.read_version("fail/db", &pending).await, 404, "not_found");
    assert_eq!(root.read_value("fail/db").await, "initial-value");
    let (_, config) = root.get(&format!("{}:rotation", secret_path("fail/db"))).await;
    assert!(config["next_due"].as_str().is_some(), "{config}");
    assert_eq!(config["last_rotation"]["error_code"], "plugin_retryable");

    // The alert: secret, rotation, step and code; no value, no plugin text.
    let deadline = Instant::now() + Duration::from_secs(20);
    while gate.posts("/alerts").is_empty() {
        assert!(Instant::now() < deadline, "no alert delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alert: Value = serde_json::from_str(&gate.posts("/alerts")[0]).unwrap();
    assert_eq!(alert["kind"], "rotation_failed");
    assert_eq!(alert["secret"], "fail/db");
    assert_eq!(alert["rotation_id"], id.as_str());
    assert_eq!(alert["code"], "plugin_retryable");
    assert!(alert["summary"].as_str().unwrap().contains("set"));
    let text = alert.to_string();
    assert!(!text.contains("initial-value") && !text.contains("told to fail"), "{text}");

    // Plugin text (error and log) only for readers of the secret; the log is redacted.
    let full = record(&root, &id).await;
    assert!(full["error"].as_str().unwrap().contains("told to fail"), "{full:#}");
    let log = full["attempts"][1]["log"].as_str().unwrap();
    assert!(log.contains("values in play") && log.contains("[redacted]") && !log.contains("initial-value"), "{log}");
    root.put_policy("ops", json!([{"names": "fail/*", "capabilities": ["rotate"]}])).await;
    let ops = instance.client(Some(&root.create_token("ops", &["ops"], "1h").await.token));
    let seen = record(&ops, &id).await;
    assert_eq!(seen["error_code"], "plugin_retryable");
    assert!(seen.get("error").is_none(), "{seen:#}");
    assert!(seen["attempts"].as_array().unwrap().iter().all(|a| a.get("log").is_none() && a.get("error").is_none()));
    assert!(!history(&ops, "fail/db").await[0].to_string().contains("told to fail"));

    let metrics = reqwest::get(format!("{}/metrics", instance.url())).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"tumbler_rotations_total{plugin="flaky",outcome="failed"} 1"#), "{metrics}");

    // Logs and error texts are stored sealed: not in the database file in clear.
    let mut instance = instance;
    instance.stop();
    // Whole lines as the plugin formatted them: the component itself (in
    // the store and its compiled cache) holds only the pieces.
    let files = tumbler_tests::dir_contents(&instance.data_dir);
    let store_files =
        files.iter().filter(|(p, _)| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("tumbler.db")));
    for (path, bytes) in store_files {
        assert!(
            !tumbler_tests::contains_bytes(&bytes, b"set: values in play"),
            "{} holds a plugin log in clear",
            path.display()
        );
        assert!(
            !tumbler_tests::contains_bytes(&bytes, b"told to fail (503)"),
            "{} holds plugin text in clear",
            path.display()
        );
    }
}

#[tokio::test]
async fn concurrency_is_limited_and_a_second_trigger_gets_the_running_rotation() {
    let gate = Gate::start().await;
    let instance = start(&["--rotation-concurrency", "2"]);
    let root = instance.root();
    upload(&root, "gate", "test-gate").await;
    let mut ids = Vec::new();
    for n in 0..4 {
        let secret = format!("limit/s{n}");
        root.create_secret(&secret, "initial-value").await;
        gate.close(&format!("/s{n}/create"));
        assert_eq!(set_rotation(&root, &secret, gate_config(&gate, &format!("/s{n}"))).await.0, 200);
        ids.push(rotate(&root, &secret).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy: BTreeSet<String> = gate.paths_hit().into_iter().collect();
    assert_eq!(busy.len(), 2, "two rotations run at once: {busy:?}");

    // A second trigger gets the running rotation, not a second one.
    let again = root.post(&format!("{}:rotate", secret_path("limit/s0")), &json!({})).await;
    assert_eq!(again.0, 202);
    assert_eq!(again.1["rotation_id"], ids[0].as_str());
    assert_eq!(again.1["already_running"], true);
    // The running rotation owns `pending`.
    let v = root.versions("limit/s0").await[0]["version_id"].as_str().unwrap().to_owned();
    let reply = root.put(&format!("{}:labels/pending", secret_path("limit/s0")), &json!({"version_id": v})).await;
    assert_error(&reply, 409, "conflict");
    assert!(error_message(&reply.1).contains(&ids[0]), "{}", reply.1);
    let reply = root
        .post(&format!("{}:versions", secret_path("limit/s0")), &json!({"value": "x", "labels": ["pending"]}))
        .await;
    assert_error(&reply, 409, "conflict");

    for n in 0..4 {
        gate.open(&format!("/s{n}/create"));
    }
    for id in &ids {
        assert_eq!(wait_end(&root, id, Duration::from_secs(60)).await["status"], "succeeded");
    }
}

#[tokio::test]
async fn a_wait_on_a_rotation_answers_when_it_ends_or_when_the_wait_is_over() {
    let gate = Gate::start().await;
    let instance = start(&[]);
    let root = instance.root();
    let (_, id) = rotation_held_in(&gate, &root, "wait/s", "set", Duration::from_secs(60)).await;

    // Held in set: the wait runs out and the record says running.
    let asked = Instant::now();
    let reply = root.get(&format!("/v1/rotations/{id}?wait=1s")).await;
    assert_eq!(reply.0, 200, "{reply:?}");
    assert_eq!(reply.1["status"], "running");
    assert!(asked.elapsed() >= Duration::from_millis(900), "answered after {:?}", asked.elapsed());

    // A long wait answers once the rotation has ended, not when the wait is over.
    let waiting = wait_in_background(&instance, &id, "60");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the wait answered while the rotation was held in set");
    gate.open("/set");
    let (reply, asked, answered) = waiting.await.unwrap();
    let took = answered - asked;
    assert_eq!(reply.0, 200, "{reply:?}");
    assert_eq!(reply.1["status"], "succeeded", "{:#}", reply.1);
    assert!(took < Duration::from_secs(30), "answered after {took:?}, not when the rotation ended");

    // An ended rotation is answered at once, whatever the wait.
    let asked = Instant::now();
    assert_eq!(root.get(&format!("/v1/rotations/{id}?wait=60s")).await.1["status"], "succeeded");
    assert!(asked.elapsed() < Duration::from_secs(30));

    for bad in ["61s", "soon", "-1", "2m"] {
        let reply = root.get(&format!("/v1/rotations/{id}?wait={bad}")).await;
        assert_error(&reply, 400, "invalid_request");
        assert!(error_message(&reply.1).contains("up to 60s"), "{bad}: {}", reply.1);
    }
    let reply = root.get(&format!("/v1/rotations/{id}?whenever=1")).await;
    assert_error(&reply, 400, "invalid_request");
}

#[tokio::test]
async fn a_wait_answers_as_soon_as_a_break_glass_overtakes_the_rotation() {
    let gate = Gate::start().await;
    let instance = start(&[]);
    let root = instance.root();
    let (_, id) = rotation_held_in(&gate, &root, "wait/b", "set", Duration::from_secs(60)).await;
    let waiting = wait_in_background(&instance, &id, "60s");
    // Just past the waiter's first once-a-second re-read, so that the next
    // one is most of a second away.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!waiting.is_finished(), "the wait answered while the rotation was held in set");

    // The overtaken rotation's executor stays inside `set` (the gate is
    // shut); its waiter still hears at once, not at its next re-read.
    let (status, started) = root.post(&format!("{}:revoke", secret_path("wait/b")), &json!({"reason": "leaked"})).await;
    assert_eq!(status, 202, "{started}");
    let revoked = Instant::now();
    let (reply, _, answered) = waiting.await.unwrap();
    assert_eq!(reply.0, 200, "{reply:?}");
    assert_eq!(reply.1["status"], "failed", "{:#}", reply.1);
    assert_eq!(reply.1["error_code"], "overtaken", "{:#}", reply.1);
    let after = answered.saturating_duration_since(revoked);
    assert!(after < Duration::from_millis(500), "answered {after:?} after the break glass");

    gate.open("/set");
    let broken = wait_end(&root, started["rotation_id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(broken["status"], "succeeded", "{broken:#}");
}

#[tokio::test]
async fn a_rotation_whose_plugin_was_deleted_fails_with_a_clear_error() {
    let gate = Gate::start().await;
    let instance = start(&[]);
    let root = instance.root();
    let (v0, id) = rotation_held_in(&gate, &root, "gone/db", "create", Duration::from_secs(30)).await;

    // Pinned by a config: the plugin cannot be removed.
    let reply = root.delete("/v1/plugins/gate").await;
    assert_error(&reply, 409, "conflict");
    assert!(error_message(&reply.1).contains("gone/db"), "{}", reply.1);
    let (_, described) = root.get("/v1/plugins/gate").await;
    assert_eq!(described["used_by"], json!(["gone/db"]));
    // Config removed, then the plugin, while a rotation still runs on it.
    assert_eq!(root.delete(&format!("{}:rotation", secret_path("gone/db"))).await.0, 200);
    assert_eq!(root.delete("/v1/plugins/gate").await.0, 200);
    gate.open("/create");

    let done = wait_end(&root, &id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error_code"], "plugin_missing");
    assert_eq!(done["step"], "set");
    assert!(done["error"].as_str().unwrap().contains("no longer registered"), "{done:#}");
    assert_eq!(labels(&root, "gone/db").await, BTreeMap::from([("current".to_owned(), v0)]));
    assert_eq!(root.read_value("gone/db").await, "initial-value");
    assert_eq!(root.get("/v1/health").await.0, 200);
}

#[tokio::test]
async fn readers_never_fail_nor_see_pending_under_current_during_100_rotations() {
    let instance = start(&["--rotation-concurrency", "4"]);
    let root = instance.root();
    root.create_secret("read/db", "initial-value").await;
    let config = json!({"plugin": "noop", "schedule": "rate(30 days)"});
    assert_eq!(set_rotation(&root, "read/db", config).await.0, 200);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..8 {
        let (client, stop) = (root.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) = client.get(&format!("{}:value", secret_path("read/db"))).await;
                assert_eq!(status, 200, "{body}");
                let labels: Vec<&str> = body["labels"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
                assert!(labels.contains(&"current") && !labels.contains(&"pending"), "{body}");
                seen.push((
                    body["version_id"].as_str().unwrap().to_owned(),
                    body["value"].as_str().unwrap().to_owned(),
                ));
            }
            seen
        }));
    }
    let mut became_current = BTreeSet::new();
    for _ in 0..100 {
        let id = rotate(&root, "read/db").await;
        let done = wait_end(&root, &id, Duration::from_secs(60)).await;
        assert_eq!(done["status"], "succeeded");
        became_current.insert(done["pending_version_id"].as_str().unwrap().to_owned());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut reads = 0;
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for r in readers {
        for (version, value) in r.await.unwrap() {
            reads += 1;
            // Each version id always carries the same value, and is either
            // the first one or one a rotation finished with.
            assert_eq!(values.entry(version.clone()).or_insert_with(|| value.clone()), &value);
            assert!(became_current.contains(&version) || value == "initial-value", "{version}");
        }
    }
    assert!(reads > 100, "readers ran throughout ({reads} reads)");
}

#[tokio::test]
async fn overdue_secrets_rotate_once_after_downtime() {
    let mut instance = start(&[]);
    let root = instance.root();
    for n in 0..3 {
        let secret = format!("late/s{n}");
        root.create_secret(&secret, "initial-value").await;
        let config = json!({"plugin": "noop", "schedule": "rate(1 minutes)"});
        assert_eq!(set_rotation(&root, &secret, config).await.0, 200);
    }
    instance.stop();
    // The server was down for an hour: sixty slots of each secret were missed.
    let hour_ago =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 - 3_600_000;
    let db = rusqlite::Connection::open(instance.data_dir.join("tumbler.db")).unwrap();
    db.execute("UPDATE rotation_configs SET next_slot = ?1, next_due = ?1", [hour_ago]).unwrap();
    drop(db);
    instance.serve_with(SERVE_ARGS);
    let root = instance.root();
    tokio::time::sleep(Duration::from_secs(5)).await;
    for n in 0..3 {
        let secret = format!("late/s{n}");
        let h = history(&root, &secret).await;
        assert_eq!(h.len(), 1, "{secret} rotated once: {h:#?}");
        assert_eq!(h[0]["trigger"], "schedule");
        assert_eq!(wait_end(&root, h[0]["id"].as_str().unwrap(), Duration::from_secs(30)).await["status"], "succeeded");
        let (_, config) = root.get(&format!("{}:rotation", secret_path(&secret))).await;
        let next = config["next_due"].as_str().unwrap().to_owned();
        assert!(next > now_rfc3339(), "next due {next} is in the future");
    }
}

/// Now as RFC 3339 UTC to the second, comparable as a string with the API's times.
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[tokio::test]
async fn a_rate_of_one_minute_rotates_on_time_and_a_removed_config_stops() {
    let instance = start(&[]);
    let root = instance.root();
    for secret in ["timed/kept", "timed/removed"] {
        root.create_secret(secret, "initial-value").await;
        let config = json!({"plugin": "noop", "schedule": "rate(1 minutes)"});
        assert_eq!(set_rotation(&root, secret, config).await.0, 200);
    }
    let set_at = Instant::now();
    assert_eq!(root.delete(&format!("{}:rotation", secret_path("timed/removed"))).await.0, 200);
    // Two slots: about 60 s and 120 s after the config was set.
    let deadline = set_at + Duration::from_secs(150);
    let mut finished_at = Vec::new();
    while finished_at.len() < 2 {
        assert!(Instant::now() < deadline, "two scheduled rotations within 150 s");
        let h = history(&root, "timed/kept").await;
        if h.len() > finished_at.len() && h.iter().all(|r| r["status"] == "succeeded") {
            finished_at.push(set_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let h = history(&root, "timed/kept").await;
    assert!(h.iter().all(|r| r["trigger"] == "schedule"), "{h:#?}");
    for (n, at) in finished_at.iter().enumerate() {
        let slot = Duration::from_secs(60 * (n as u64 + 1));
        assert!(*at >= slot && *at < slot + Duration::from_secs(5), "rotation {} at {at:?}, slot {slot:?}", n + 1);
    }
    assert!(history(&root, "timed/removed").await.is_empty(), "a removed config does not rotate");
}

#[tokio::test]
async fn a_new_upload_under_the_same_name_does_not_change_what_a_config_runs() {
    let instance = start(&[]);
    let root = instance.root();
    root.create_secret("app/pinned", "initial-value").await;
    upload(&root, "pinned", "noop").await;
    let reply = set_rotation(&root, "app/pinned", json!({"plugin": "pinned", "schedule": "rate(30 days)"})).await;
    assert_eq!(reply.0, 200, "{reply:?}");
    let pinned_sha = reply.1["plugin_sha256"].as_str().expect("plugin_sha256").to_owned();

    // Version 2 of the same name traps in `set`.
    upload(&root, "pinned", "test-trap").await;
    let id = rotate(&root, "app/pinned").await;
    let done = wait_end(&root, &id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "the config still runs the code it pinned: {done:#}");
    let config = root.get(&format!("{}:rotation", secret_path("app/pinned"))).await.1;
    assert_eq!(config["plugin_sha256"], pinned_sha.as_str());

    // Setting the config again pins the new version, and now it traps.
    assert_eq!(
        set_rotation(&root, "app/pinned", json!({"plugin": "pinned", "schedule": "rate(30 days)"})).await.0,
        200
    );
    let id = rotate(&root, "app/pinned").await;
    let done = wait_end(&root, &id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed", "{done:#}");
}

#[tokio::test]
async fn a_break_glass_overtakes_a_running_rotation_which_never_promotes_its_version() {
    let gate = Gate::start().await;
    let instance = start(&[]);
    let root = instance.root();
    upload(&root, "gate", "test-gate").await;
    let v0 = root.create_secret("glass/db", "initial-value").await;
    assert_eq!(set_rotation(&root, "glass/db", gate_config(&gate, "")).await.0, 200);
    gate.close("/set");
    let overtaken = rotate(&root, "glass/db").await;
    gate.wait_for_hits("/set", 1, Duration::from_secs(30)).await;
    let its_pending = labels(&root, "glass/db").await["pending"].clone();

    let path = format!("{}:revoke", secret_path("glass/db"));
    let reply = root.post(&path, &json!({})).await;
    assert_error(&reply, 400, "invalid_request");
    let reply = root.post(&path, &json!({"reason": "key pasted in chat"})).await;
    assert_eq!(reply.0, 202, "{reply:?}");
    assert_eq!(reply.1["already_running"], false, "{reply:?}");
    let glass = reply.1["rotation_id"].as_str().unwrap().to_owned();
    assert_ne!(glass, overtaken);
    // A second call while it is in progress joins it.
    let again = root.post(&path, &json!({"reason": "again"})).await;
    assert_eq!((again.0, again.1["already_running"].clone()), (202, json!(true)), "{again:?}");
    assert_eq!(again.1["rotation_id"], json!(glass));

    // The overtaken rotation ended at once; its pending version is gone.
    let old = record(&root, &overtaken).await;
    assert_eq!((old["status"].clone(), old["error_code"].clone()), (json!("failed"), json!("overtaken")), "{old:#}");
    assert!(root.versions("glass/db").await.iter().all(|v| v["version_id"] != json!(its_pending)));

    // Its executor is still inside `set`; once that returns it must change nothing.
    gate.open("/set");
    let done = wait_end(&root, &glass, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["trigger"], "break_glass");
    let after = labels(&root, "glass/db").await;
    assert_ne!(after["current"], its_pending, "the overtaken rotation never promotes its version");
    assert_ne!(after["current"], v0);
    assert_eq!(after["previous"], v0);
    assert!(!after.contains_key("pending"), "{after:?}");
    assert_eq!(record(&root, &overtaken).await["status"], "failed");
    let (_, audit) = root.get_query("/v1/audit", &[("limit", "1000")]).await;
    let reasons: Vec<&Value> = audit["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["action"] == "secret.break_glass" && r["status"] == 202)
        .collect();
    assert_eq!(reasons.len(), 2, "both calls are audited: {reasons:#?}");
    assert!(reasons.iter().any(|r| r["detail"]["reason"] == "key pasted in chat"), "{reasons:#?}");
}

/// Sends `head` then, after a pause (so the body comes in a packet of its
/// own, as many clients send it), `body` on `stream`; returns the response
/// head and body.
async fn exchange_with_late_body(stream: &mut tokio::net::TcpStream, head: &str, body: &[u8]) -> (String, Value) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    stream.write_all(head.as_bytes()).await.unwrap();
    if !body.is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(body).await.unwrap();
    }
    let mut reader = BufReader::new(stream);
    let mut response_head = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await.unwrap().unwrap();
        assert!(n > 0, "the connection closed before a whole response head: {response_head:?}");
        if line == "\r\n" {
            break;
        }
        response_head.push_str(&line);
    }
    let length: usize = response_head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .expect("content-length");
    let mut response_body = vec![0; length];
    reader.read_exact(&mut response_body).await.unwrap();
    (response_head, serde_json::from_slice(&response_body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_rotate_with_an_empty_object_keeps_the_connection_and_any_other_body_is_refused() {
    let mut instance = start(&[]);
    let root = instance.root();
    root.create_secret("body/s", "v").await;
    assert_eq!(set_rotation(&root, "body/s", json!({"plugin": "noop", "schedule": "rate(30 days)"})).await.0, 200);
    let port = instance.server().port();
    let token = instance.root_token.clone();
    let post = |body: &str| {
        format!(
            "POST /v1/secrets/body/s:rotate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    };

    // `{}` arriving after the head: answered 202 on a connection that
    // stays open for the next request.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (head, started) = exchange_with_late_body(&mut stream, &post("{}"), b"{}").await;
    assert!(head.starts_with("HTTP/1.1 202"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("connection: close"), "{head}");
    let id = started["rotation_id"].as_str().expect("rotation_id").to_owned();
    let get =
        format!("GET /v1/rotations/{id}?wait=30s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n");
    let (head, ended) = exchange_with_late_body(&mut stream, &get, b"").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(ended["status"], "succeeded", "{ended}");

    // A body the route never reads (a GET's) is answered, and the answer
    // says the connection closes, since the body is still on the wire.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let get_with_body = format!(
        "GET /v1/rotations/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 2\r\n\r\n"
    );
    let (head, record) = exchange_with_late_body(&mut stream, &get_with_body, b"{}").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(record["status"], "succeeded", "{record}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");

    // A body with fields is refused, naming what to send, and starts nothing.
    for body in [r#"{"wait": true}"#, "[]", "not json"] {
        let reply = root
            .send_raw(
                reqwest::Method::POST,
                &format!("{}:rotate", secret_path("body/s")),
                &[],
                Some(("application/json", body.as_bytes().to_vec())),
            )
            .await;
        assert_error(&reply, 400, "invalid_request");
        assert!(error_message(&reply.1).contains("POST :rotate takes no request body"), "{reply:?}");
    }
    assert_eq!(history(&root, "body/s").await.len(), 1, "only the first rotation ran");
}
